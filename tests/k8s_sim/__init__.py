"""k8s-sim: a TEST DOUBLE of a Kubernetes cluster for ModelServeShim's tests.

Nothing here is shipped: it lets the ``k8s`` shimlet be tested with the real ``lightkube`` client
over real HTTP, on machines with no cluster.  ``run_sim()`` (in :mod:`.fixtures`) starts an API
server on ``127.0.0.1`` in a background thread and returns a :class:`~.fixtures.Sim` to steer it.

Module layout::

    fixtures.py     run_sim() / Sim: start, stop, kubeconfig, faults, hooks, request log
    server.py       ASGI app: URL routing, Status errors, watch streams, pod logs, service proxy
    api.py          REST semantics: create/get/list/replace/patch/apply/delete, /status, /scale
    store.py        objects, global resourceVersion, bounded event history, watchers
    cluster.py      SimConfig, NodeSpec, bootstrap and the reconcile loop
    controllers.py  Deployment/ReplicaSet/StatefulSet/Job controllers, GC, scheduler pass
    scheduler.py    node filtering and "0/3 nodes are available: ..." messages
    kubelet.py      pod lifecycle, container states, faults, Job outcomes, logs
    faults.py       PodFault / ApiFault
    managed.py      server-side apply field ownership (managedFields)
    merge.py        JSON merge patch, strategic-merge approximation, JSON patch
    validation.py   kubernetes-validate (strict) + the server's semantic checks
    defaults.py     server-side defaulting
    selection.py    label and field selectors
    events.py       v1 Event recording
    resources.py    the kinds served, errors.py Status bodies, quantity.py, util.py

What is real (behaves like kube-apiserver / the controllers):
  * URL layout, verbs, ``Status`` bodies and codes (400/401/404/405/409/410/415/422/429/500/503) with
    the real message texts; ``Content-Type: application/json``.
  * uid, one global monotonically increasing resourceVersion, creationTimestamp, generateName,
    ``metadata.generation`` bumped only when something outside metadata/status changes; writes that
    change nothing are no-ops (resourceVersion unchanged, no watch event).
  * Optimistic concurrency (409 on a stale resourceVersion), 409 AlreadyExists, 404 for a missing
    namespace, dry-run, ``/status`` (main-resource writes ignore status) and ``/scale``
    (autoscaling/v1 Scale).
  * Server-side apply: create (201) or merge; fields a manager stops applying are removed; conflicts
    with other managers are 409 unless ``force=true``; identical re-apply is a no-op.
  * Label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and field selectors
    (per-kind allow-list, 400 otherwise) on list, watch and deletecollection; limit/continue paging.
  * Watch: from a resourceVersion, from "now" with synthetic ADDED events, selector transitions
    delivered as ADDED/DELETED, BOOKMARK events (Go zero-value objects, as the real server sends),
    ``sendInitialEvents``, ``timeoutSeconds``, and 410 Expired (as an ERROR event) once the
    resourceVersion has left the bounded history.
  * Validation with the official JSON schemas (``kubernetes-validate``, strict) plus names, labels,
    selector-vs-template, restart policies, GPU requests==limits, immutable fields -> 422 Invalid.
  * Defaulting (replicas, strategies, pod spec, probes, services' clusterIP, ...), zero counts omitted
    from workload status (``readyReplicas`` is absent, not 0, while nothing is ready).
  * Deletion: Background propagation through ownerReferences by a garbage collector; batch/v1 Jobs
    default to Orphan, as on a real cluster (pass ``propagationPolicy=Background``).
  * Controllers: Deployment -> ReplicaSet -> Pods with ``pod-template-hash`` names and labels,
    revisions, Recreate; StatefulSet ordinals; Job pods with the real labels and conditions.
  * Scheduler: nodeSelector, required node affinity, taints/tolerations, cordons, cpu/memory/pods/
    extended resources; the real "0/N nodes are available" message; FailedScheduling events.
  * Pod states: ContainerCreating, Running/Ready, ErrImagePull <-> ImagePullBackOff,
    CrashLoopBackOff with restartCount and lastState.terminated, OOMKilled (137),
    CreateContainerConfigError, never-ready; kubelet and controller Events.

What is simplified:
  * No authentication beyond one bearer token; no RBAC, admission webhooks, quotas or CRDs.
  * managedFields: leaf fields only, no sets, no status ownership (see ``managed.py``); strategic merge
    has no ``$patch`` directives; unknown fields are rejected (422) rather than dropped with a warning.
  * RollingUpdate is maxSurge 100 % / maxUnavailable 0; no ControllerRevisions; no volume or PVC
    provisioning (PVCs are Bound at once); no preemption, pod affinity or topology spread.
  * All containers of a pod share one state; readiness is a delay, not a probe; Job pods with
    ``restartPolicy: OnFailure`` behave like ``Never``; Job retries have no back-off delay.
  * Deleting a namespace removes its content at once; pod grace periods use
    ``SimConfig.pod_grace_seconds`` (default 0: immediate) instead of the requested seconds.
  * Logs are one buffer per pod (``previous=true`` returns it too); ``follow`` polls every 50 ms.
  * The service proxy forwards to a backend URL the test registers (per service, or one default for
    all), not to pod IPs.
  * API faults (``ApiFault``): Status errors, or a TCP reset before the request is handled or after it
    (the write took effect, the answer is lost).
  * Timings are scaled down (tens of milliseconds) and configurable in ``SimConfig``.
"""

from .cluster import NodeSpec, SimConfig
from .faults import ApiFault, PodFault, PodFaultKind
from .fixtures import Sim, eventually, run_sim, wait_until
from .kubelet import JobResult

__all__ = ["ApiFault", "JobResult", "NodeSpec", "PodFault", "PodFaultKind", "Sim", "SimConfig", "eventually",
           "run_sim", "wait_until"]
