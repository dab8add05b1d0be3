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


def host_products(info: Mapping[str, Any]) -> list[str]:
    """The GPU products the Engine's labels name (``Labels`` of ``GET /info``: ``key=value`` strings)."""
    labels = info.get("Labels") or []
    if isinstance(labels, Mapping):  # not the Engine's shape, but harmless to accept
        labels = [f"{k}={v}" for k, v in labels.items()]
    products: list[str] = []
    for item in labels:
        key, _, value = str(item).partition("=")
        if key.strip() == GPU_PRODUCT_LABEL:
            products += [p.strip().strip('"') for p in value.split(",") if p.strip().strip('"')]
    return list(dict.fromkeys(products))


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
