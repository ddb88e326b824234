"""The model zoo: ONNX graphs agree with the independent NumPy reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deeprec.models import arch, info, reference, zoo
from deeprec.models.graphs import build_graph, table_param
from deeprec.models.inputs import random_inputs
from deeprec.models.onnxgraph import FLOAT, make_model
from deeprec.models.params import param_shapes
from deeprec.models.runtime import open_session
from deeprec.models.spec import POOLING_SUM, dense_input_names, input_names

RTOL, ATOL = 1e-5, 1e-6


def _with_empty_samples(inputs: dict, spec) -> dict:
    """Make sample 0 have no ids at all, and the last sample none for the first feature."""
    out = dict(inputs)
    for i, feature in enumerate(spec.features):
        ids, lengths = out[f"{feature.name}_ids"], out[f"{feature.name}_lengths"].copy()
        drop = [0] + ([len(lengths) - 1] if i == 0 and len(lengths) > 1 else [])
        keep = np.ones(len(ids), bool)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        for s in drop:
            keep[starts[s] : starts[s + 1]] = False
            lengths[s] = 0
        out[f"{feature.name}_ids"], out[f"{feature.name}_lengths"] = ids[keep], lengths
    return out


def _dense_feeds(artifact, inputs: dict) -> dict:
    pooled, sequences = reference.lookups(artifact, inputs)
    feeds = {"dense": inputs["dense"]} if "dense" in inputs else {}
    for name, vectors in pooled.items():
        feeds[f"{name}_pooled"] = vectors.astype(np.float32)
    for name, (rows, lengths) in sequences.items():
        feeds[f"{name}_rows"] = rows.astype(np.float32)
        feeds[f"{name}_lengths"] = lengths
    return feeds


@pytest.mark.parametrize("batch", [1, 7, 256])
@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_whole_dense_and_reference_agree(tiny_zoo, name, batch):
    artifact = tiny_zoo[name]
    spec = artifact.spec
    inputs = _with_empty_samples(random_inputs(spec, batch, np.random.default_rng(batch)), spec)
    assert sorted(inputs) == sorted(input_names(spec))

    whole = open_session(artifact.graph("whole"), threads=1).run(inputs)[0]
    feeds = _dense_feeds(artifact, inputs)
    assert sorted(feeds) == sorted(dense_input_names(spec))
    dense = open_session(artifact.graph("dense"), threads=1).run(feeds)[0]
    expected = reference.forward(artifact, inputs)

    assert whole.shape == (batch, spec.heads) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dense, expected, rtol=RTOL, atol=ATOL)
    if batch > 1:  # scores must depend on the inputs, or the comparison proves little
        assert whole.std(axis=0).min() > 1e-4


def test_empty_sample_pools_to_zeros(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    inputs = random_inputs(spec, 3, np.random.default_rng(0))
    for feature in spec.features:
        inputs[f"{feature.name}_ids"] = np.zeros(0, np.int64)
        inputs[f"{feature.name}_lengths"] = np.zeros(3, np.int64)
    whole = open_session(artifact.graph("whole"), threads=1).run(inputs)[0]
    feeds = {"dense": inputs["dense"]}
    feeds |= {f"{f.name}_pooled": np.zeros((3, 8), np.float32) for f in spec.features}
    dense = open_session(artifact.graph("dense"), threads=1).run(feeds)[0]
    np.testing.assert_allclose(whole, dense, rtol=RTOL, atol=ATOL)


def test_every_architecture_is_in_the_zoo():
    archs = {zoo.preset(n, "tiny").architecture for n in zoo.MODEL_NAMES}
    assert archs == {"dlrm", "ncf", "wnd", "mtwnd", "din", "dien"}
    assert zoo.preset("mtwnd", "paper").heads > 1
    assert zoo.preset("din", "tiny").feature("history").pooling != POOLING_SUM


def test_paper_sizes_follow_deeprecsys():
    rmc1 = zoo.preset("rmc1", "paper")
    assert [(t.rows, t.dim) for t in rmc1.tables] == [(4_000_000, 32)] * 8
    assert {f.mean_lookups for f in rmc1.features} == {80}
    assert rmc1.config == {"bottom_mlp": [64, 32], "top_mlp": [256, 64, 1]}
    assert rmc1.dense_features == 128
    assert len(zoo.preset("rmc2", "paper").tables) == 32
    assert zoo.preset("rmc3", "paper").dense_features == 2560
    assert len(zoo.preset("wnd", "paper").tables) == 27
    for name in zoo.MODEL_NAMES:
        assert zoo.preset(name, "paper").table_bytes >= zoo.preset(name, "small").table_bytes
        assert zoo.preset(name, "small").table_bytes < 400e6


def test_unknown_model_and_size_are_refused():
    with pytest.raises(ValueError, match="unknown model 'rmc9'"):
        zoo.preset("rmc9", "tiny")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        zoo.preset("rmc1", "huge")


def test_registry_covers_every_zoo_model():
    # Every architecture is used by some model (but "imported": `deeprec model import`'s,
    # whose dense part is the user's graph), and every model's is registered.
    zoo_architectures = set(arch.ARCHITECTURES) - {"imported"}
    assert {zoo.MODELS[name] for name in zoo.MODEL_NAMES} == zoo_architectures
    assert all(a.name == name for name, a in arch.ARCHITECTURES.items())
    for name in zoo.MODEL_NAMES:
        for size in zoo.SIZES:
            assert zoo.preset(name, size).architecture == zoo.MODELS[name]
    with pytest.raises(ValueError, match="unknown architecture 'rnn'"):
        arch.get("rnn")


def test_the_preset_table_has_every_model_at_every_size():
    assert set(zoo.TABLE) == {(name, size) for name in zoo.MODEL_NAMES for size in zoo.SIZES}


@pytest.mark.parametrize(("name", "size"), sorted(zoo.TABLE))
def test_every_preset_entry_builds(name, size):
    """Spec and both graphs for every table entry, the graphs type-checked against the
    parameter shapes. Parameters go in as graph inputs (shapes without bytes: paper tables
    are GBs); tiny_zoo writes, loads and runs the tiny artifacts."""
    spec = zoo.preset(name, size)
    shapes = param_shapes(spec) | {table_param(t.name): (t.rows, t.dim) for t in spec.tables}
    used = {}
    for whole in (True, False):
        b = build_graph(spec, whole)
        used[whole] = set(b.params)
        for param in sorted(b.params):
            b.input(param, FLOAT, list(shapes[param]))
        model = onnx.shape_inference.infer_shapes(
            make_model(b, [], spec.name), strict_mode=True, data_prop=True
        )
        dims = model.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["N", spec.heads]
    assert used[True] == set(shapes)
    assert used[False] == set(param_shapes(spec))
    assert info.flops_per_item(spec) > 0


def test_small_keeps_the_paper_layers_and_lookups():
    for name in zoo.MODEL_NAMES:
        paper, small = zoo.preset(name, "paper"), zoo.preset(name, "small")
        assert (small.config, small.heads, small.dense_features) == (
            paper.config,
            paper.heads,
            paper.dense_features,
        )
        assert small.features == paper.features
        assert [t.dim for t in small.tables] == [t.dim for t in paper.tables]
