"""What a model is: tables, sparse features, dense features and architecture settings.

Pure data, no ONNX and no I/O. A ``ModelSpec`` is what ``model.json`` stores (minus the
file index), and what the graph builders and the NumPy reference both read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# A feature pooled by sum gives one vector per sample; a sequence feature keeps its rows
# (per-sample variable length) for attention or a GRU in the dense part.
POOLING_SUM = "sum"
POOLING_SEQUENCE = "sequence"
POOLINGS = (POOLING_SUM, POOLING_SEQUENCE)

TABLE_DTYPE = "float32"


@dataclass(frozen=True)
class TableSpec:
    name: str
    rows: int
    dim: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * 4


@dataclass(frozen=True)
class FeatureSpec:
    """One sparse input: ids into ``table``, a variable number per sample."""

    name: str
    table: str
    pooling: str = POOLING_SUM
    mean_lookups: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # a name in deeprec.models.arch.ARCHITECTURES
    size: str
    dense_features: int
    tables: tuple[TableSpec, ...]
    features: tuple[FeatureSpec, ...]
    heads: int = 1
    # Architecture settings: MLP widths and the like (see arch/, one module per family).
    config: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> TableSpec:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def feature(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def embedding_dim(self) -> int:
        """The common embedding width (every architecture here uses one)."""
        dims = {t.dim for t in self.tables}
        if len(dims) != 1:
            raise ValueError(f"model {self.name} mixes embedding dims {sorted(dims)}")
        return dims.pop()

    @property
    def has_sequences(self) -> bool:
        """Whether any feature is a sequence (its rows reach the graph, not their sum)."""
        return any(f.pooling != POOLING_SUM for f in self.features)

    @property
    def table_bytes(self) -> int:
        return sum(t.nbytes for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tables"] = [asdict(t) for t in self.tables]
        data["features"] = [asdict(f) for f in self.features]
        return data


def input_names(spec: ModelSpec) -> list[str]:
    """Inputs of the whole-model graph, in a stable order."""
    names = ["dense"] if spec.dense_features else []
    for feature in spec.features:
        names += [f"{feature.name}_ids", f"{feature.name}_lengths"]
    return names


def dense_input_names(spec: ModelSpec) -> list[str]:
    """Inputs of the dense-part graph: pooled vectors, or rows + lengths for sequences."""
    names = ["dense"] if spec.dense_features else []
    for feature in spec.features:
        if feature.pooling == POOLING_SUM:
            names.append(f"{feature.name}_pooled")
        else:
            names += [f"{feature.name}_rows", f"{feature.name}_lengths"]
    return names
