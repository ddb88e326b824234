"""What a frontend tells clients about a served model (Recommender.DescribeModels), and
the model signature a client gets back from it: one home for both directions."""

from __future__ import annotations

from dataclasses import asdict

from deeprec.v1 import recommender_pb2

from .features import FeatureSignature, ModelSignature
from .limits import RequestLimits
from .policy import Policy


def served_model(
    signature: ModelSignature, limits: RequestLimits, policy: Policy
) -> recommender_pb2.ServedModel:
    out = recommender_pb2.ServedModel(
        name=signature.name,
        version=signature.version,
        architecture=signature.architecture,
        dense_features=signature.dense_features,
        heads=signature.heads,
        int32_ids=signature.ids_fit_int32,
        max_items=limits.max_items,
        max_ids_per_item=limits.max_ids_per_item,
        batch_size=policy.batch_size,
        offload_threshold=policy.offload_threshold,
        policy_version=policy.version,
    )
    for f in signature.features:
        out.features.add(**asdict(f))  # the proto's fields have the same names
    return out


class NoSuchModel(LookupError):
    pass


def pick_model(
    reply: recommender_pb2.DescribeModelsResponse, model: str, address: str
) -> recommender_pb2.ServedModel:
    """The one ServedModel a DescribeModels reply names (by ``model``, or the only one)."""
    named = [m for m in reply.models if not model or m.name == model]
    if len(named) == 1:
        return named[0]
    served = ", ".join(m.name for m in reply.models) or "none"
    if not named:
        raise NoSuchModel(f"{address} does not serve {model!r} (it serves: {served})")
    raise NoSuchModel(f"{address} serves several models ({served}): name one")


def signature_of(model: recommender_pb2.ServedModel) -> ModelSignature:
    """The signature a client builds queries from (deeprec.workload.queries)."""
    features = tuple(
        FeatureSignature(f.name, f.table, f.rows, f.dim, f.pooling, f.mean_lookups or 1.0)
        for f in model.features
    )
    return ModelSignature(
        model.name,
        model.version,
        model.architecture,
        model.dense_features,
        model.heads,
        features,
    )
