"""Secrets in the k8s shimlet's dry-run rendering are masked (objects and YAML text)."""

from __future__ import annotations

import json
from pathlib import Path

from modserv_shim.allowlist import RequestPolicy
from modserv_shim.plugins import DeployContext, PluginContext
from modserv_shim.spec import DeploySpec, redact


def test_redact_masks_env_values_in_k8s_manifests(tmp_path: Path) -> None:
    """redact() drops _under_env when it walks a list, so a container's env
    ``[{"name": ..., "value": ...}]`` (k8s podspec.py:118) is shown in the dry run's
    ``rendered.workload`` with the secret in clear."""
    from modserv_shim.runtimes import LaunchParams, LlamaCppRuntime
    from modserv_shim.shimlets.k8s import K8sShimlet

    launch = LlamaCppRuntime().render(
        LaunchParams("tiny", "/models/tiny.gguf", context_length=2048, env={"HF_TOKEN": "hf_s3cretvalue"},
                     policy=RequestPolicy(env_names=frozenset({"HF_TOKEN"}))),  # as an admin would allow it
        target="container")
    shimlet = K8sShimlet(PluginContext("k8s", tmp_path, {"namespace": "default"}))
    spec = DeploySpec(modelName="tiny", modelFile="/models/tiny.gguf", env={"HF_TOKEN": "hf_s3cretvalue"})
    workload = shimlet.render(DeployContext("tiny-1", spec, launch, 1))
    assert "hf_s3cretvalue" not in json.dumps(redact({"workload": dict(workload)}))
