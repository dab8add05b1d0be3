"""The ``k8s`` shimlet: model servers as Deployments/StatefulSets + Services on a Kubernetes cluster.

Files: first the four every shimlet has (see
:mod:`modserv_shim.shimlets`), then its helpers:

``shimlet``     the plugin and its contracts (create, status, delete, scale, logs, watch,
                render, inspect_model, request, shared_model_volume, run_volume_task)
``options``     every option with its type, default and meaning (``model_volume`` too)
``render``      what a service looks like: Deployment / StatefulSet / Service / validation
                Job manifests and the endpoint URL
``status``      workload + pods -> phase; ``reasons``: pod states in plain words
``naming``      Kubernetes names and labels derived from the service id
``podspec``     the pod spec pieces behind ``render``: scheduling, resources, model volume, probes
``kube``        lightkube with retries, error translation, the service proxy
``informer``    list + watch of one kind, resumed and relisted on errors
``cache``       the watch cache that ``status`` answers from
``validation``  the model check where the pods see it (model_root or a Job)
``tasks``       a pipeline's program as a Job on the model volume, mounted read-write (quantization)
"""

from modserv_shim.shimlets.k8s.options import K8sOptions, ModelVolume
from modserv_shim.shimlets.k8s.shimlet import K8sShimlet

__all__ = ["K8sOptions", "K8sShimlet", "ModelVolume"]
