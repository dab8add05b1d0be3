"""Unit tests of the simulated cluster's building blocks (selectors, quantities, merges, scheduler, store)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tests.k8s_sim import resources as r
from tests.k8s_sim.errors import StatusError
from tests.k8s_sim.managed import ManagerEntry, delete_path, field_set, read_managers, render_path, write_managers
from tests.k8s_sim.merge import apply_json_patch, json_merge_patch, strategic_merge
from tests.k8s_sim.quantity import parse_quantity
from tests.k8s_sim.scheduler import schedule
from tests.k8s_sim.selection import FieldSelector, LabelSelector
from tests.k8s_sim.store import Store


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("app=llm", {"app": "llm"}, True),
    ("app==llm,tier!=gpu", {"app": "llm", "tier": "cpu"}, True),
    ("tier in (gpu, cpu)", {"tier": "cpu"}, True),
    ("tier notin (gpu,cpu)", {"tier": "cpu"}, False),
    ("tier notin (gpu)", {}, True),
    ("app,!legacy", {"app": "x"}, True),
    ("!legacy", {"legacy": "1"}, False),
    ("", {"anything": "goes"}, True),
])
def test_label_selector_parsing(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


def test_label_selector_errors_and_object_form() -> None:
    with pytest.raises(StatusError) as err:
        LabelSelector.parse("app in gpu")
    assert err.value.code == 400
    spec = {"matchLabels": {"app": "llm"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}
    assert LabelSelector.from_spec(spec).matches({"app": "llm", "tier": "a"})
    assert not LabelSelector.from_spec(spec).matches({"app": "llm"})
    assert str(LabelSelector.parse("b=2,a in (y,x),!c")) == "b=2,a in (x,y),!c"


def test_field_selector() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    assert FieldSelector.parse("spec.nodeName=n1,status.phase!=Pending", r.POD).matches(pod)
    with pytest.raises(StatusError):
        FieldSelector.parse("spec.nodeName=n1", r.CONFIGMAP)


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Fraction(1, 2)), ("2", Fraction(2)), ("64Gi", Fraction(64 * 2**30)), ("1G", Fraction(10**9)),
    ("1e3", Fraction(1000)), ("1.5", Fraction(3, 2)), (4, Fraction(4)),
])
def test_quantities(text: str | int, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="quantities must match"):
        parse_quantity("lots")


def test_merges() -> None:
    target = {"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 1}]}], "keep": 1}}
    patch = {"spec": {"containers": [{"name": "a", "image": "y"}, {"name": "b", "image": "z"}], "keep": None}}
    merged = strategic_merge(target, patch)
    assert merged == {"spec": {"containers": [{"name": "a", "image": "y", "ports": [{"containerPort": 1}]},
                                              {"name": "b", "image": "z"}]}}
    assert json_merge_patch(target, patch)["spec"]["containers"] == patch["spec"]["containers"]
    ops = [{"op": "replace", "path": "/spec/keep", "value": 2}, {"op": "add", "path": "/spec/new", "value": [1]},
           {"op": "test", "path": "/spec/keep", "value": 2}]
    assert apply_json_patch(target, ops)["spec"]["keep"] == 2
    with pytest.raises(ValueError, match="testing value"):
        apply_json_patch(target, [{"op": "test", "path": "/spec/keep", "value": 5}])


def test_managed_fields_round_trip() -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    paths = field_set(obj)
    assert ("f:metadata", "f:labels", "f:a") in paths
    item = ("f:spec", "f:containers", 'k:{"name":"c"}')
    assert item in paths and (*item, "f:image") in paths
    assert render_path((*item, "f:image")) == '.spec.containers[name="c"].image'
    write_managers(obj, [ManagerEntry("m", "Apply", "v1", "t", paths)])
    assert read_managers(obj)[0].paths == paths
    delete_path(obj, item)
    assert obj["spec"]["containers"] == []


def _node(name: str, gpus: int = 0, **labels: str) -> dict[str, object]:
    alloc = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {"metadata": {"name": name, "labels": labels}, "spec": {}, "status": {"allocatable": alloc}}


def _pod(gpus: int = 0, node: str | None = None) -> dict[str, object]:
    container: dict[str, object] = {"name": "c", "image": "i"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, object] = {"containers": [container]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p"}, "spec": spec}


def test_scheduler_messages_and_placement() -> None:
    nodes = [_node("a", 1), _node("b", 2), _node("c")]
    assert schedule(_pod(2), nodes, []).node == "b"
    assert schedule(_pod(2), nodes, [_pod(1, node="b")]).message == (
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
        "3 No preemption victims found for incoming pod.")
    assert schedule(_pod(), [], []).message == "no nodes available to schedule pods"
    # Least allocated wins: the CPU pod avoids the node already running a pod.
    assert schedule(_pod(), [_node("x"), _node("y")], [_pod(node="x")]).node in ("x", "y")


def test_store_history_and_expiry() -> None:
    store = Store(history_size=3)
    for i in range(5):
        store.put(r.CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": f"c{i}", "namespace": "default"}})
    assert [e.rv for e in store.events_since(3)] == [4, 5]
    with pytest.raises(StatusError) as err:
        store.events_since(1)
    assert err.value.code == 410
    assert store.events_since(5) == []
    store.advance()
    store.compact()
    with pytest.raises(StatusError):
        store.events_since(5)
    assert store.events_since(6) == []
