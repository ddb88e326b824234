"""Triton python-backend model: a deeprec artifact's whole-model ONNX graph on ONNX Runtime.

``deeprec bench peers`` copies this file into a Triton model repository as ``model.py``,
with a first line ``SITE_PACKAGES = [...]`` naming the benchmark's virtualenv. Triton's
python stub embeds the interpreter's libpython but not its PYTHONPATH, so without that
line it would import whatever NumPy the system has (and may return empty outputs).

One Triton batch element is one whole query: inputs ``dense`` [1, N, D], ``F_ids``
[1, total] and ``F_lengths`` [1, N] per feature, output ``scores`` [1, N, heads]. Every
input allows ragged batches, so the dynamic batcher may hand ``execute`` several queries
of different sizes; they run as one ONNX Runtime call over all their items, then the
scores are split back per query.
"""

import json
import sys

sys.path[:0] = [p for p in globals().get("SITE_PACKAGES", ()) if p not in sys.path]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("threads", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            params["graph"], options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        # Items per query: the rows of dense, else the length of one lengths input.
        self.count_input = (
            "dense"
            if "dense" in self.inputs
            else next(name for name in self.inputs if name.endswith("_lengths"))
        )
        # Outputs go out by DLPack too where this Triton takes NumPy 2's capsules (2.51
        # does, 2.41 does not); otherwise by the NumPy constructor. Under NumPy 1 the probe
        # itself is unsafe (2.41's stub dies on a NumPy 1 capsule), so it is skipped.
        self.tensor = pb_utils.Tensor
        if int(np.__version__.split(".")[0]) >= 2:
            try:
                pb_utils.Tensor.from_dlpack("scores", np.zeros((1, 1, 1), np.float32))
                self.tensor = pb_utils.Tensor.from_dlpack
            except Exception:
                pass

    def execute(self, requests):
        try:
            # DLPack, not as_numpy(): the stub's as_numpy() is built for NumPy 1 and, under
            # NumPy 2, hands back arrays of the first element repeated. Keep the Tensors
            # alive: the arrays are views of their shared memory.
            tensors = {
                name: [pb_utils.get_input_tensor_by_name(r, name) for r in requests]
                for name in self.inputs
            }
            arrays = {name: [np.from_dlpack(t)[0] for t in ts] for name, ts in tensors.items()}
            counts = [len(a) for a in arrays[self.count_input]]
            feeds = {name: np.concatenate(parts) for name, parts in arrays.items()}
            for name in feeds:  # ids may come as int32 (half the bytes); the graph takes int64
                if name.endswith("_ids"):
                    feeds[name] = feeds[name].astype(np.int64, copy=False)
            scores = self.session.run(None, feeds)[0]
        except Exception as err:  # answer every request with the error, keep serving
            error = pb_utils.TritonError(f"{type(err).__name__}: {err}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in counts:
            part = np.ascontiguousarray(scores[start : start + n][None])
            responses.append(pb_utils.InferenceResponse([self.tensor("scores", part)]))
            start += n
        return responses
