"""GPU placement by product: is the GPU a deploy asks for on this Docker host?

The Engine keeps no inventory of GPU products (a device request asks for "N GPUs", any
of them), so a deploy for an ``NVIDIA H20`` on a host with two L4s would start, load
for minutes and fail, or worse, serve on the wrong hardware.  The admin names the
host's GPUs in an Engine label, which ``docker info`` (``GET /info``) shows under
``Labels``::

    /etc/docker/daemon.json:   {"labels": ["org.modserv-shim.gpu.product=NVIDIA H20"]}
    or:                        dockerd --label org.modserv-shim.gpu.product="NVIDIA H20"

(several products: comma-separated, ``NVIDIA H20,NVIDIA L4``; labels are reloaded with
``SIGHUP`` to dockerd, no restart needed).  A deploy whose ``acceleratorType`` is not
among them fails at once, naming what the host has.  A host without the label gets no
check (as before).  Names match ignoring case and the difference between spaces,
hyphens and underscores (``NVIDIA-H20`` is ``NVIDIA H20``, as GPU feature discovery
spells it).

For the capacity metrics the host's GPU count comes from a second label,
``org.modserv-shim.gpu.count=8`` (the Engine counts no GPUs either); it is reported under the one
product the first label names, or as ``nvidia.com/gpu`` without one (with several products the
split is unknown and no count is reported).

Swarm's generic resources (``--node-generic-resource``) are not read: their kinds name
a resource type (``NVIDIA-GPU``), not a product.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from modserv_shim.errors import PermanentStepError
from modserv_shim.shimlets.docker.engine import Engine

GPU_PRODUCT_LABEL = "org.modserv-shim.gpu.product"
GPU_COUNT_LABEL = "org.modserv-shim.gpu.count"


def _labels(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    labels = info.get("Labels") or []
    if isinstance(labels, Mapping):  # not the Engine's shape, but harmless to accept
        labels = [f"{k}={v}" for k, v in labels.items()]
    return [(key.strip(), value) for key, _, value in (str(item).partition("=") for item in labels)]


def host_products(info: Mapping[str, Any]) -> list[str]:
    """The GPU products the Engine's labels name (``Labels`` of ``GET /info``: ``key=value`` strings)."""
    products: list[str] = []
    for key, value in _labels(info):
        if key == GPU_PRODUCT_LABEL:
            products += [p.strip().strip('"') for p in value.split(",") if p.strip().strip('"')]
    return list(dict.fromkeys(products))


def host_gpus(info: Mapping[str, Any]) -> dict[str, int]:
    """The host's GPUs by product for the capacity metrics (see the module docstring); {} when not labelled."""
    counts = [value.strip().strip('"') for key, value in _labels(info) if key == GPU_COUNT_LABEL]
    if not counts or not counts[-1].isdigit():
        return {}
    products = host_products(info)
    if len(products) > 1:
        return {}
    return {products[0] if products else "nvidia.com/gpu": int(counts[-1])}


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


def refusal(wanted: str | None, products: Sequence[str], engine_url: str) -> str | None:
    """Why ``wanted`` cannot run on a host with ``products``; None when it can (or the host names none)."""
    if not wanted or not products or _key(wanted) in {_key(p) for p in products}:
        return None
    has = ", ".join(products)
    return (f"the Docker host at {engine_url} has no {wanted} GPU: it has {has} (Engine label {GPU_PRODUCT_LABEL});"
            f" deploy with acceleratorType {products[0]!r}, or on a Docker host with {wanted}")


async def check(engine: Engine, wanted: str | None) -> None:
    """Refuse at once (PermanentStepError) a GPU product the host says it does not have."""
    if not wanted:
        return
    why = refusal(wanted, host_products(await engine.info()), engine.url)
    if why is not None:
        raise PermanentStepError(why, details={"problem": "gpu_product", "wanted": wanted})
