"""The deploy request of the brief's curl flows: what the API tests send to the test-double shimlet and pipeline."""

from __future__ import annotations

DEPLOY = {
    "modelName": "llama-3-8b",
    "modelFile": "/models/llama-3-8b",
    "resourceRequirements": {"acceleratorType": "NVIDIA H20", "acceleratorCount": 1, "cpu": "4", "memory": "16Gi"},
    "replicaCount": 1,
}
