"""The k8s shimlet's pure parts: manifests (strict schema validation), names, options, reasons and phases.

No cluster here: rendered manifests are checked against the official
Kubernetes JSON schemas (``kubernetes-validate``, strict: unknown fields are
errors) for the oldest version we support (1.29) and the newest the package
ships; names and label values are checked against Kubernetes' rules for any
service id (hypothesis); pod states are turned into reasons and phases.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import latest_version

from modserv_shim.errors import PermanentStepError, ValidationFailed
from modserv_shim.plugins import PluginContext, ResourcePhase
from modserv_shim.shimlets.k8s import K8sOptions, K8sShimlet, ModelVolume, naming, podspec, reasons, render
from modserv_shim.shimlets.k8s.status import Track, summarize
from modserv_shim.spec import DeploySpec, ResourceRequirements, redact
from tests.helpers.k8s_shimlet import context, llama3_context

VERSIONS = ["1.29.0", str(latest_version())]
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def shimlet(**options: Any) -> K8sShimlet:
    return K8sShimlet(PluginContext("k8s", Path("/nonexistent"), {"namespace": "models", **options}))


def rendered_objects() -> list[dict[str, Any]]:
    pvc = {"model_volume": {"type": "pvc", "claim_name": "models", "mount_path": "/models", "sub_path": "hf"}}
    objects: list[dict[str, Any]] = []
    objects += shimlet().render(llama3_context("llama-3-8b-123e4567"))["objects"]
    objects += shimlet(**pvc).render(llama3_context("llama-tp", acceleratorCount=2))["objects"]
    objects += shimlet().render(context("tiny-sts", 3, workloadType="StatefulSet"))["objects"]
    objects += shimlet(model_volume={"type": "hostPath", "path": "/data/models"}).render(
        context("tiny-cpu", resourceRequirements={"cpu": "500m", "memory": "1Gi"},
                modelFile="/data/models/tiny.gguf"))["objects"]
    spec = DeploySpec(modelName="llama-3-8b", modelFile="/models/llama-3-8b",
                      resourceRequirements=ResourceRequirements(acceleratorType="NVIDIA H20", acceleratorCount=1))
    objects.append(render.validation_job(spec, naming.validation_job_name("llama-3-8b"), "models",
                                            K8sOptions.parse(pvc)))
    return objects


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_pass_strict_schema_validation(version: str) -> None:
    objects = rendered_objects()
    assert {o["kind"] for o in objects} == {"Service", "Deployment", "StatefulSet", "Job"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_render_yaml_is_every_object() -> None:
    out = shimlet().render(llama3_context("llama-yaml"))
    assert list(yaml.safe_load_all(out["yaml"])) == redact(out["objects"])  # secrets masked in the text
    assert (out["namespace"], out["name"], out["resourceId"]) == ("models", "llama-yaml", "llama-yaml")


def test_render_is_deterministic() -> None:
    assert shimlet().render(llama3_context("a-b")) == shimlet().render(llama3_context("a-b"))


def test_labels_selector_and_annotations() -> None:
    long_id = "m" * 120
    ctx = context(long_id)
    ctx = type(ctx)(ctx.service_id, ctx.spec, ctx.launch, 1, {**ctx.labels, "bad key!": "x"})
    svc, dep = shimlet().render(ctx)["objects"]
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "modserv-shim"
    assert labels["app.kubernetes.io/instance"] == dep["metadata"]["name"] == svc["metadata"]["name"]
    assert labels["app.kubernetes.io/name"] == "tiny"
    assert "bad key!" not in labels
    assert all(naming.is_label_value(v) for v in labels.values())
    assert dep["metadata"]["annotations"]["modserv-shim/service-id"] == long_id
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"] == {
        "app.kubernetes.io/managed-by": "modserv-shim", "app.kubernetes.io/instance": dep["metadata"]["name"]}
    assert dep["spec"]["template"]["metadata"]["labels"] == labels
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["enableServiceLinks"] is False and pod_spec["automountServiceAccountToken"] is False
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate"}  # no GPUs: rolling is fine


@given(st.text(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_workload_names_are_valid_deterministic_and_distinct(service_id: str) -> None:
    name = naming.workload_name(service_id)
    assert len(name) <= naming.MAX_NAME and DNS1035.match(name)
    assert naming.workload_name(service_id) == name
    assert naming.workload_name(service_id + "x") != name
    value = naming.label_value(service_id)
    assert len(value) <= 63 and LABEL_VALUE.match(value)


def test_readable_ids_are_kept_and_others_hashed() -> None:
    sid = "llama-3-8b-123e4567-e89b-12d3-a456-426614174000"
    assert naming.workload_name(sid) == sid
    prefix = "x" * 60
    a, b = naming.workload_name(prefix + "-1"), naming.workload_name(prefix + "-2")
    assert a != b and a.startswith("x" * 40) and len(a) == 52
    assert naming.workload_name("9lives").startswith("ms-9lives-")
    assert naming.workload_name("UPPER_case") != naming.workload_name("upper-case")
    job = naming.validation_job_name("llama-3-8b")
    assert re.fullmatch(r"llama-3-8b-check-[0-9a-f]{6}", job)


# -- options ---------------------------------------------------------------------------------------------------


def test_unknown_and_mistyped_options_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="unknown k8s shimlet option"):
        K8sOptions.parse({"namspace": "x"})
    with pytest.raises(ValidationFailed, match="api_retries must be an integer"):
        K8sOptions.parse({"api_retries": "3"})
    with pytest.raises(ValidationFailed, match="trust_env must be true or false"):
        K8sOptions.parse({"trust_env": 1})
    with pytest.raises(ValidationFailed, match="images must be a mapping"):
        K8sOptions.parse({"images": {"vllm": 3}})
    with pytest.raises(ValidationFailed, match="endpoint_access"):
        K8sOptions.parse({"endpoint_access": "ingress"})
    with pytest.raises(ValidationFailed, match="namespace"):
        K8sOptions.parse({"namespace": "Models"})
    with pytest.raises(ValidationFailed, match="exclude each other"):
        K8sOptions.parse({"in_cluster": True, "kubeconfig": "/x"})
    with pytest.raises(ValidationFailed, match="must be > 0"):
        K8sOptions.parse({"sync_timeout": 0})
    with pytest.raises(ValidationFailed, match=r"model_volume\.claim is not a known key"):
        K8sOptions.parse({"model_volume": {"type": "pvc", "claim": "x"}})
    with pytest.raises(ValidationFailed, match="claim_name"):
        K8sOptions.parse({"model_volume": {"type": "pvc"}})
    with pytest.raises(ValidationFailed, match=r"model_volume\.type"):
        K8sOptions.parse({"model_volume": {"type": "nfs"}})
    with pytest.raises(ValidationFailed):
        K8sShimlet(PluginContext("k8s", Path("/x"), {"bogus": 1}))
    opts = K8sOptions.parse({"api_timeout": 3, "images": {"vllm": "registry.local/vllm:1"}})
    assert opts.api_timeout == 3.0 and isinstance(opts.api_timeout, float)


def test_the_docs_show_exactly_the_generated_tables() -> None:
    """docs/kubernetes.md's option tables are what the models generate: a block each, nothing added."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md").read_text()
    tables = [K8sOptions.markdown_table(), ModelVolume.markdown_table()]
    assert text.count(tables[0].splitlines()[0]) == len(tables)
    for table in tables:
        assert f"\n\n{table}\n" in text


def test_model_volume_placement() -> None:
    pvc = K8sOptions.parse({"model_volume": {"type": "pvc", "claim_name": "models"}}).model_volume
    volume, mount = podspec.model_volume(pvc, "/models/llama")
    assert volume == {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    assert mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    with pytest.raises(PermanentStepError, match="not on the model volume"):
        podspec.model_volume(pvc, "/data/llama")
    host = K8sOptions().model_volume
    volume, mount = podspec.model_volume(host, "/srv/m/tiny.gguf")
    assert volume == {"name": "model", "hostPath": {"path": "/srv/m/tiny.gguf"}}
    assert mount["mountPath"] == "/srv/m/tiny.gguf"
    assert str(host.relative("/srv/m/tiny.gguf")) == "srv/m/tiny.gguf"


def test_accelerator_labels_and_images() -> None:
    opts = K8sOptions.parse({"accelerator_labels": {"NVIDIA L4": "L4-custom"},
                                    "images": {"llama.cpp": "registry.local/llama:cpu"}})
    assert podspec.accelerator_label("NVIDIA H20", opts) == "NVIDIA-H20"
    assert podspec.accelerator_label("NVIDIA  A100-SXM4-80GB", opts) == "NVIDIA-A100-SXM4-80GB"
    assert podspec.accelerator_label("NVIDIA L4", opts) == "L4-custom"
    with pytest.raises(PermanentStepError, match="accelerator_labels"):
        podspec.accelerator_label("x" * 70, opts)
    dep = shimlet(images={"llama.cpp": "registry.local/llama:cpu"}).render(context("t"))["objects"][1]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/llama:cpu"
    no_gpu_toleration = shimlet(gpu_toleration=False, gpu_resource="amd.com/gpu", gpu_product_label="gpu.type")
    pod = no_gpu_toleration.render(llama3_context("l"))["objects"][1]["spec"]["template"]["spec"]
    assert "tolerations" not in pod and pod["nodeSelector"] == {"gpu.type": "NVIDIA-H20"}
    assert pod["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"


def test_a_launch_spec_without_image_is_refused() -> None:
    ctx = context("t")
    local_only = type(ctx.launch).from_dict({**ctx.launch.to_dict(), "image": ""})
    with pytest.raises(PermanentStepError, match="no container image"):
        shimlet().render(type(ctx)(ctx.service_id, ctx.spec, local_only, 1))


# -- reasons and phases ------------------------------------------------------------------------------------------


def pod(name: str = "p-1", *, ready: bool = False, node: str | None = "n1", waiting: dict[str, Any] | None = None,
        restarts: int = 0, last: dict[str, Any] | None = None, conditions: list[dict[str, Any]] | None = None,
        phase: str = "Running", uid: str = "u1") -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "server", "image": "img:1", "ready": ready, "restartCount": restarts,
                          "state": {"waiting": waiting} if waiting else {"running": {}}}
    if last:
        cs["lastState"] = {"terminated": last}
    conds = conditions or [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": {"name": name, "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "server",
                                                        "readinessProbe": {"httpGet": {"path": "/health"}}}]},
            "status": {"phase": phase, "conditions": conds, "containerStatuses": [cs]}}


def workload(replicas: int = 1, ready: int = 0, generation: int = 1, observed: int | None = 1,
             updated: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed, "readyReplicas": ready or None,
                              "updatedReplicas": replicas if updated is None else updated}
    return {"kind": "Deployment", "metadata": {"name": "w", "generation": generation},
            "spec": {"replicas": replicas}, "status": status}


def verdict(wl: dict[str, Any], pods: list[dict[str, Any]], track: Track | None = None, now: float = 100.0,
            **options: Any) -> tuple[ResourcePhase, str | None]:
    status, _ = summarize(wl, pods, track or Track(), now=now, options=K8sOptions.parse(options),
                          endpoint=None)
    return status.phase, status.reason


def test_reasons_in_plain_words() -> None:
    invalid = pod(waiting={"reason": "InvalidImageName", "message": 'couldn\'t parse image name "a b"'})
    assert reasons.diagnose(invalid) == reasons.Problem(
        reasons.ProblemKind.IMAGE, 'cannot pull the image img:1 (InvalidImageName): couldn\'t parse image name "a b"')
    create = reasons.diagnose(pod(waiting={"reason": "CreateContainerError", "message": "no such device"}))
    assert create is not None and create.permanent and "(CreateContainerError): no such device" in create.text
    crashed = reasons.diagnose(pod(restarts=2, last={"exitCode": 3, "reason": "Error", "message": "boom"}))
    assert crashed is not None and not crashed.permanent
    assert crashed.text == "the server exited (2 restarts so far); last exit: exit code 3; it said: boom"
    assert reasons.diagnose(pod(ready=True)) is None
    evicted = reasons.diagnose(pod(phase="Failed") | {"status": {"phase": "Failed", "reason": "Evicted",
                                                                 "message": "low on memory"}})
    assert evicted is not None and evicted.text == "pod p-1 failed (Evicted: low on memory)"
    sched = pod(node=None, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/3 nodes are available: 3 node(s) were unschedulable. "
                                                   "preemption: 0/3 nodes are available: 3 Preemption is not "
                                                   "helpful for scheduling."}])
    text = reasons.diagnose(sched)
    assert text is not None
    assert text.text == ("cannot be scheduled: every node is cordoned (the scheduler says: 0/3 nodes are"
                         " available: 3 node(s) were unschedulable)")
    assert reasons.progress(pod(node=None)) == "waiting for the scheduler"
    assert reasons.progress(pod()) == "the server is starting (loading the model; waiting for /health to answer)"


def test_phase_decisions() -> None:
    assert verdict(workload(ready=1), [pod(ready=True)])[0] is ResourcePhase.READY
    # Ready pods of the old spec do not make an update READY.
    assert verdict(workload(ready=1, generation=2, observed=1), [pod(ready=True)])[0] is ResourcePhase.PENDING
    assert verdict(workload(ready=1, updated=0), [pod(ready=True)])[0] is ResourcePhase.PENDING
    # A first crash is pending; the third exit before ready fails the deploy.
    crash = {"exitCode": 1, "reason": "Error"}
    assert verdict(workload(), [pod(restarts=1, last=crash)])[0] is ResourcePhase.PENDING
    phase, reason = verdict(workload(), [pod(restarts=3, last=crash,
                                             waiting={"reason": "CrashLoopBackOff"})])
    assert phase is ResourcePhase.FAILED and reason and reason.startswith("the server keeps crashing")
    # After READY the same crash is DEGRADED, and a lost replica without a visible cause too.
    track = Track()
    verdict(workload(2, ready=2), [pod("a", ready=True), pod("b", ready=True)], track)
    assert verdict(workload(2, ready=1), [pod("a", ready=True), pod("b", restarts=5, last=crash)],
                   track)[0] is ResourcePhase.DEGRADED
    assert verdict(workload(2, ready=1), [pod("a", ready=True)], track) == (
        ResourcePhase.DEGRADED, "lost 1 ready replica(s); 1 of 2 replicas ready: waiting for the controller to"
                                " count the ready pods")
    # Scaling up a ready workload is PENDING while the new pods start.
    assert verdict(workload(3, ready=2, generation=2, observed=2), [pod("a", ready=True), pod("b", ready=True),
                                                                     pod("c")], track)[0] is ResourcePhase.PENDING


def test_failed_is_latched_until_a_restart() -> None:
    track = Track()
    bad = pod(waiting={"reason": "ImagePullBackOff", "message": "not found"})
    assert verdict(workload(), [bad], track)[0] is ResourcePhase.FAILED
    assert verdict(workload(), [pod()], track)[0] is ResourcePhase.FAILED  # a flap back to Running
    track.restart(["u1"])
    assert verdict(workload(), [bad], track)[0] is ResourcePhase.PENDING  # the old pod is ignored now
    assert verdict(workload(), [], track) == (ResourcePhase.PENDING, "0 of 1 replicas ready: waiting for pods to be"
                                                                     " created")


def test_unschedulable_grace_and_recheck_time() -> None:
    sched = pod(node=None, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}])
    opts = K8sOptions.parse({"unschedulable_grace": 30})
    track = Track()
    status, recheck = summarize(workload(), [sched], track, now=10.0, options=opts, endpoint=None)
    assert status.phase is ResourcePhase.PENDING and recheck == 40.0
    status, _ = summarize(workload(), [sched], track, now=40.0, options=opts, endpoint=None)
    assert status.phase is ResourcePhase.FAILED


def test_adoption_guesses_whether_it_was_ready() -> None:
    rolled = workload(2, ready=0)
    rolled["status"]["conditions"] = [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
    track = Track()
    track.adopt(rolled)
    assert track.was_ready and track.ready_high == 2
    never = Track()
    never.adopt(workload(1, ready=0))
    assert not never.was_ready


# -- deploy/kubernetes: the manifests that run the shim itself ---------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def deploy_objects() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", VERSIONS)
def test_deploy_manifests_pass_strict_schema_validation(version: str) -> None:
    objects = deploy_objects()
    kinds = {o["kind"] for o in objects}
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                     "ConfigMap", "PersistentVolumeClaim",
                     "Secret", "Deployment", "Service"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml")
                                    if p.name not in ("kustomization.yaml", "secret.example.yaml"))


def test_deploy_config_is_valid_for_the_server_and_the_shimlet() -> None:
    from modserv_shim.config import Settings

    config = next(o for o in deploy_objects() if o["kind"] == "ConfigMap")["data"]["modserv.yaml"]
    data = yaml.safe_load(config)
    settings = Settings(**data)
    assert settings.shimlet == "k8s"
    K8sOptions.parse(settings.shimlets["k8s"])
    shim = next(o for o in deploy_objects() if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert shim["serviceAccountName"] == "modserv-shim"
    args = shim["containers"][0]["args"]
    assert "--host=0.0.0.0" in args and "--shimlet=k8s" in args
    assert shim["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "modserv-shim-tokens"
