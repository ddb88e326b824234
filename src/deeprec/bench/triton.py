"""NVIDIA Triton Inference Server as a peer: find the binary, write a model repository,
start and stop the server, and a gRPC client for its KServe v2 ``ModelInfer``.

The ``tritonserver`` binary ships inside the ``nvidia-pytriton`` wheel (the ``peers``
extra). It is found without importing pytriton, whose client side needs a tritonclient
that newer releases pin to protobuf < 7; only the binary is used. There is no ONNX Runtime backend
on PyPI, so the model runs in Triton's python backend (``triton_model.py``) on the same
ONNX Runtime and graph as deeprec, with Triton's dynamic batcher on.

The client needs only four messages of Triton's ``grpc_service.proto``; they are built
here from a descriptor (same field numbers), so no generated code and no tritonclient.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from deeprec.common.features import ModelSignature, validate
from deeprec.launcher.processes import LaunchError, log_tail
from deeprec.v1 import recommender_pb2
from deeprec.workload.client import BadResponse, LoadClient
from deeprec.workload.queries import Query

MODEL = "deeprec"
INSTALL_HINT = (
    "Triton is an optional peer: pip install --no-deps nvidia-pytriton==0.7.0 (its wheel "
    "bundles tritonserver), or pip install -e '.[peers]' in a virtualenv without the load "
    "extra, or --triton-dir DIR of an unpacked wheel"
)


class TritonUnavailable(RuntimeError):
    """No runnable tritonserver here; the message says how to get one."""


# -- the binary -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonDist:
    root: Path  # .../pytriton/tritonserver: bin/, backends/, python_backend_stubs/
    libs: Path  # the wheel's bundled shared libraries

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_triton(package: str | os.PathLike | None = None) -> TritonDist:
    """The tritonserver of the ``pytriton`` package directory given (or in
    DEEPREC_TRITON_DIR; e.g. an unpacked wheel), else of the installed pytriton wheel,
    checked to be runnable."""
    package = package or os.environ.get("DEEPREC_TRITON_DIR") or None
    if package is None:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonUnavailable(f"nvidia-pytriton is not installed. {INSTALL_HINT}")
        package = next(iter(spec.submodule_search_locations))
    package = Path(package)
    dist = TritonDist(package / "tritonserver", package.parent / "nvidia_pytriton.libs")
    for needed in (dist.binary, dist.root / "backends" / "python" / "libtriton_python.so"):
        if not needed.is_file():
            raise TritonUnavailable(f"{needed} is missing. {INSTALL_HINT}")
    if not dist.stub().is_file():
        raise TritonUnavailable(
            f"this Triton build has no python backend stub for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} ({dist.stub()})"
        )
    return dist


def site_packages() -> list[str]:
    """This interpreter's import path entries that hold packages (venv first)."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths += [p for p in sys.path if p.endswith("site-packages")]
    # The editable install of deeprec itself is not needed by the model: only numpy, ORT.
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


def environment(dist: TritonDist) -> dict[str, str]:
    """The python stub embeds libpython: this interpreter's own, first on the path."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [libdir, str(dist.libs), os.environ.get("LD_LIBRARY_PATH", "")]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}
    env.pop("PYTHONPATH", None)  # the stub does not use it; model.py sets sys.path
    return env


# -- the model repository -------------------------------------------------------------------


@dataclass(frozen=True)
class TritonConfig:
    instances: int = 2  # python-backend model instances (processes)
    threads: int = 1  # ONNX Runtime intra-op threads per instance
    max_batch: int = 8  # queries the dynamic batcher may merge into one execution
    queue_delay_us: int = 0  # how long the batcher may hold a query to batch more


def config_pbtxt(signature: ModelSignature, graph: Path, config: TritonConfig) -> str:
    """Triton model configuration: one batch element = one query (ragged inputs)."""
    inputs = []
    if signature.dense_features:
        inputs.append(("dense", "TYPE_FP32", f"-1, {signature.dense_features}"))
    ids = "TYPE_INT32" if signature.ids_fit_int32 else "TYPE_INT64"  # as deeprec's clients
    for f in signature.features:
        inputs += [(f"{f.name}_ids", ids, "-1"), (f"{f.name}_lengths", "TYPE_INT64", "-1")]
    lines = [
        f'name: "{MODEL}"',
        'backend: "python"',
        f"max_batch_size: {config.max_batch}",
        "input [",
        ",\n".join(
            f'  {{ name: "{name}" data_type: {dtype} dims: [ {dims} ] allow_ragged_batch: true }}'
            for name, dtype, dims in inputs
        ),
        "]",
        "output [",
        f'  {{ name: "scores" data_type: TYPE_FP32 dims: [ -1, {signature.heads} ] }}',
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {config.queue_delay_us} }}",
        f"instance_group [ {{ count: {config.instances} kind: KIND_CPU }} ]",
        "parameters [",
        f'  {{ key: "graph" value: {{ string_value: "{graph}" }} }},',
        f'  {{ key: "threads" value: {{ string_value: "{config.threads}" }} }}',
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_repository(artifact, signature: ModelSignature, out: Path, config: TritonConfig) -> Path:
    """A model repository under ``out`` serving ``artifact``'s whole graph as MODEL."""
    model = out / "models" / MODEL
    (model / "1").mkdir(parents=True, exist_ok=True)
    graph = Path(artifact.graph("whole")).resolve()
    (model / "config.pbtxt").write_text(config_pbtxt(signature, graph, config))
    template = (Path(__file__).parent / "triton_model.py").read_text()
    (model / "1" / "model.py").write_text(f"SITE_PACKAGES = {site_packages()!r}\n{template}")
    return out / "models"


def backend_dir(dist: TritonDist, out: Path) -> Path:
    """backends/python with this Python's stub next to the backend library (as pytriton
    does, but with links instead of a copy of the whole distribution)."""
    python = out / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    links = {s.name: s for s in (dist.root / "backends" / "python").iterdir() if s.is_file()}
    links["triton_python_backend_stub"] = dist.stub()
    for name, source in links.items():
        link = python / name
        if link.is_symlink() or link.exists():
            link.unlink()  # a directory reused with another Triton build
        link.symlink_to(source)
    return out / "backends"


# -- the server -----------------------------------------------------------------------------


def free_port(host: str) -> int:
    # Triton takes fixed ports only; the race with another process is small and reported.
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver as a child process on ``host`` (gRPC only), ready when start returns."""

    def __init__(
        self,
        dist: TritonDist,
        artifact,
        workdir: Path,
        config: TritonConfig = TritonConfig(),
        host: str = "127.0.0.1",
        startup_timeout: float = 120.0,
    ):
        self.dist, self.artifact, self.workdir = dist, artifact, Path(workdir)
        self.config, self.host, self.startup_timeout = config, host, startup_timeout
        self.signature = ModelSignature.from_spec(artifact.spec, artifact.version)
        self.process: subprocess.Popen | None = None
        self.address: str | None = None
        self.log_path = self.workdir / "tritonserver.log"
        # The stubs' shared-memory regions get a name of ours, to be removed on stop.
        self.shm_prefix = f"deeprec_bench_triton_{os.getpid()}_{id(self):x}_"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        repository = write_repository(self.artifact, self.signature, self.workdir, self.config)
        backends = backend_dir(self.dist, self.workdir)
        port = free_port(self.host)
        argv = [
            str(self.dist.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        guard = [sys.executable, "-m", "deeprec.launcher.orphan_guard", str(os.getpid())]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*guard, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment(self.dist),
                process_group=0,
            )
        self.address = f"{self.host}:{port}"
        self._wait_ready()

    def _failure(self, what: str) -> LaunchError:
        return LaunchError(
            f"tritonserver {what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with grpc.insecure_channel(self.address) as chan:
            ready = chan.unary_unary(
                "/inference.GRPCInferenceService/ModelReady",
                request_serializer=MESSAGES["ModelReadyRequest"].SerializeToString,
                response_deserializer=MESSAGES["ModelReadyResponse"].FromString,
            )
            while True:
                if self.process.poll() is not None:
                    raise self._failure(f"exited with code {self.process.returncode}")
                if time.monotonic() > deadline:
                    raise self._failure(f"model not ready within {self.startup_timeout:g} s")
                with contextlib.suppress(grpc.RpcError):
                    if ready(MESSAGES["ModelReadyRequest"](name=MODEL), timeout=1).ready:
                        return
                time.sleep(0.2)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM to the server's process group (its python stubs too), SIGKILL after
        ``grace``; then SIGKILL whatever is left of the group (a crashed server leaves its
        stubs behind) and remove the shared-memory regions of its stubs."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                code = self.process.wait(grace)
            except subprocess.TimeoutExpired:
                code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if code is None:
            code = self.process.wait()
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()
        return code


# -- the client -----------------------------------------------------------------------------


def _messages() -> dict:
    """ModelReady, ModelInfer and ModelStatistics messages of Triton's grpc_service.proto
    (package ``inference``), only the fields used here, with their upstream numbers."""
    f = descriptor_pb2.FieldDescriptorProto
    string, int64, boolean, raw, nested = (
        f.TYPE_STRING,
        f.TYPE_INT64,
        f.TYPE_BOOL,
        f.TYPE_BYTES,
        f.TYPE_MESSAGE,
    )
    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    def message(name, fields, nested_types=()):
        m = descriptor_pb2.DescriptorProto(name=name)
        for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
            if field_name is None:
                continue  # a field number this client does not use
            m.field.add(name=field_name, number=number, type=kind, label=label, type_name=type_name)
        m.nested_type.extend(nested_types)
        return m

    tensor = [("name", string, one, None), ("datatype", string, one, None)]
    tensor.append(("shape", int64, many, None))
    skip = (None, None, None, None)
    infer_request = message(
        "ModelInferRequest",
        [
            ("model_name", string, one, None),
            ("model_version", string, one, None),
            ("id", string, one, None),
            skip,  # parameters
            ("inputs", nested, many, ".inference.ModelInferRequest.InferInputTensor"),
            ("outputs", nested, many, ".inference.ModelInferRequest.InferRequestedOutputTensor"),
            ("raw_input_contents", raw, many, None),
        ],
        [
            message("InferInputTensor", tensor),
            message("InferRequestedOutputTensor", [("name", string, one, None)]),
        ],
    )
    infer_response = message(
        "ModelInferResponse",
        [
            ("model_name", string, one, None),
            ("model_version", string, one, None),
            ("id", string, one, None),
            skip,  # parameters
            ("outputs", nested, many, ".inference.ModelInferResponse.InferOutputTensor"),
            ("raw_output_contents", raw, many, None),
        ],
        [message("InferOutputTensor", tensor)],
    )
    file = descriptor_pb2.FileDescriptorProto(
        name="deeprec_bench_triton_v2.proto", package="inference", syntax="proto3"
    )
    file.message_type.extend(
        [
            infer_request,
            infer_response,
            message("ModelReadyRequest", [("name", string, one, None)]),
            message("ModelReadyResponse", [("ready", boolean, one, None)]),
            message("ModelStatisticsRequest", [("name", string, one, None)]),
            message(
                "ModelStatistics",
                [
                    ("name", string, one, None),
                    ("version", string, one, None),
                    ("last_inference", f.TYPE_UINT64, one, None),
                    ("inference_count", f.TYPE_UINT64, one, None),
                    ("execution_count", f.TYPE_UINT64, one, None),
                ],
            ),
            message(
                "ModelStatisticsResponse",
                [("model_stats", nested, many, ".inference.ModelStatistics")],
            ),
        ]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{m.name}"))
        for m in file.message_type
    }


MESSAGES = _messages()
SERVICE = "/inference.GRPCInferenceService/"
INFER = SERVICE + "ModelInfer"
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}


def to_triton(queries: list[Query], signature: ModelSignature) -> list[Query]:
    """The same queries as serialized ModelInferRequests (one batch element each)."""
    out = []
    for query in queries:
        request = recommender_pb2.RecommendRequest.FromString(query.payload)
        batch = validate(signature, request.features)
        feeds = {} if batch.dense is None else {"dense": batch.dense}
        ids_dtype = np.int32 if signature.ids_fit_int32 else np.int64  # as config_pbtxt
        for name in batch.ids:
            feeds[f"{name}_ids"] = batch.ids[name].astype(ids_dtype, copy=False)
            feeds[f"{name}_lengths"] = batch.lengths[name]
        infer = MESSAGES["ModelInferRequest"](model_name=MODEL)
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            infer.inputs.add(name=name, datatype=DATATYPES[array.dtype], shape=[1, *array.shape])
            infer.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        infer.outputs.add(name="scores")
        out.append(Query(query.items, infer.SerializeToString()))
    return out


class TritonClient(LoadClient):
    """Sends pre-serialized ModelInferRequests; ``send`` fits ``run_open_loop``."""

    def __init__(self, address: str, timeout: float = 30.0):
        super().__init__(address, timeout, tls=None)
        self._infer = self.channel.unary_unary(
            INFER,
            request_serializer=None,
            response_deserializer=MESSAGES["ModelInferResponse"].FromString,
        )

    async def scores(self, query: Query) -> np.ndarray:
        """float32 [N, heads] for the query's N items (checked, not trusted)."""
        response = await self._infer(query.payload, timeout=self.timeout)
        if not response.outputs:
            raise BadResponse("no outputs")
        shape = list(response.outputs[0].shape)
        if len(shape) != 3 or shape[:2] != [1, query.items]:
            raise BadResponse(f"scores of shape {shape} for {query.items} items")
        raw = response.raw_output_contents[0] if response.raw_output_contents else b""
        if len(raw) != 4 * int(np.prod(shape)):
            raise BadResponse(f"{len(raw)} bytes of scores for shape {shape}")
        return np.frombuffer(raw, dtype="<f4").reshape(shape[1:])

    async def send(self, query: Query) -> str:
        await self.scores(query)
        return "triton"

    async def statistics(self) -> tuple[int, int]:
        """(inference_count, execution_count): queries answered, model executions run."""
        call = self.channel.unary_unary(
            SERVICE + "ModelStatistics",
            request_serializer=MESSAGES["ModelStatisticsRequest"].SerializeToString,
            response_deserializer=MESSAGES["ModelStatisticsResponse"].FromString,
        )
        reply = await call(MESSAGES["ModelStatisticsRequest"](name=MODEL), timeout=self.timeout)
        stats = reply.model_stats[0]
        return stats.inference_count, stats.execution_count
