"""gRPC method paths the services, clients and benchmarks call by path (raw bytes in or
out), taken from the proto descriptors so that a renamed service cannot drift."""

from __future__ import annotations

from deeprec.v1 import inference_pb2, recommender_pb2


def service_name(module, service: str) -> str:
    """'deeprec.v1.Recommender' for (recommender_pb2, 'Recommender')."""
    return module.DESCRIPTOR.services_by_name[service].full_name


RECOMMENDER = service_name(recommender_pb2, "Recommender")
INFERENCE = service_name(inference_pb2, "Inference")
RECOMMEND = f"/{RECOMMENDER}/Recommend"
PREDICT = f"/{INFERENCE}/Predict"
