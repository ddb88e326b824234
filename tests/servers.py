"""Real deeprec servers for tests: in-process on a background event loop, or as processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec.common.features import encode_features
from deeprec.common.limits import RequestLimits
from deeprec.frontend import main as frontend_main
from deeprec.frontend.local import LocalConfig
from deeprec.inference import main as inference_main
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc


class Loop:
    """An asyncio loop on a daemon thread, so sync tests can host grpc.aio servers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class InProcessCluster:
    """Workers and a frontend as grpc.aio servers on 127.0.0.1 in this process."""

    def __init__(
        self,
        model_dir,
        workers=2,
        gpu_workers=0,
        batch_size=0,
        offload_threshold=0,
        worker_addresses=None,
        max_items=4096,
        telemetry=None,
        embeddings="auto",
        local_workers=0,
        worker_threads=1,
        split_min_items=LocalConfig.split_min_items,
    ):
        self.model_dir = model_dir
        self.worker_threads = worker_threads
        self.local = LocalConfig(
            local_workers, str(model_dir), 1, embeddings, split_min_items=split_min_items
        )
        self.n_workers, self.n_gpu = workers, gpu_workers
        self.batch_size, self.offload_threshold = batch_size, offload_threshold
        self.extra_workers = worker_addresses or []
        self.max_items = max_items
        self.telemetry = telemetry
        self.embeddings = embeddings
        self.servers = []

    def __enter__(self):
        self.loop = Loop()
        self.worker_servicers = []
        addresses, gpu_addresses = list(self.extra_workers), []
        for device, count, out in (
            ("cpu", self.n_workers, addresses),
            ("gpu", self.n_gpu, gpu_addresses),
        ):
            for _ in range(count):
                servicer = inference_main.build_servicer(
                    self.model_dir,
                    device,
                    self.worker_threads,
                    allow_cpu_fallback=True,
                    embeddings=self.embeddings,
                )
                server = self.loop.run(
                    inference_main.start(servicer, "127.0.0.1", 0, self.telemetry)
                )
                self.servers.append(server)
                self.worker_servicers.append(servicer)
                out.append(f"127.0.0.1:{server.port}")
        self.worker_addresses, self.gpu_addresses = addresses, gpu_addresses
        self.frontend = self.loop.run(
            frontend_main.build_servicer(
                addresses,
                gpu_addresses,
                self.batch_size,
                self.offload_threshold,
                RequestLimits(max_items=self.max_items),
                connect_timeout=10,
                telemetry=self.telemetry,
                local=self.local,
            )
        )
        server = self.loop.run(frontend_main.start(self.frontend, "127.0.0.1", 0, self.telemetry))
        self.servers.append(server)
        self.address = f"127.0.0.1:{server.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = recommender_pb2_grpc.RecommenderStub(self.channel)
        return self

    def __exit__(self, *exc):
        self.channel.close()
        for server in reversed(self.servers):
            self.loop.run(server.stop(0))
        self.frontend.close()
        self.loop.close()


def request_for(spec, inputs, model="", ids_dtype=None) -> recommender_pb2.RecommendRequest:
    request = recommender_pb2.RecommendRequest(model=model)
    encode_features(
        request.features,
        inputs.get("dense"),
        {f.name: inputs[f"{f.name}_ids"] for f in spec.features},
        {f.name: inputs[f"{f.name}_lengths"] for f in spec.features},
        ids_dtype,
    )
    return request


def deeprec_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`deeprec ARGS` as a user runs it: a child process, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "deeprec.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(condition, timeout: float = 300.0, every: float = 0.05) -> bool:
    """Poll ``condition`` until it holds; False if it never did within ``timeout`` (a
    bound for a broken run, generous for a busy machine: not a measure of speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not healthy after {timeout} s")
            time.sleep(0.1)


class WorkerProcess:
    """`deeprec serve inference` (or ``service``) as a real child process."""

    def __init__(self, model_dir, *extra, service="inference", env=None):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deeprec.cli",
                "serve",
                service,
                "--model",
                str(model_dir),
                "--port",
                str(self.port),
                "--threads",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def wait_healthy(self):
        wait_healthy(self.address)
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc.poll() is None and _pid_exists(self.proc.pid)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sigterm_under_load(process, method, requests, timeout=30.0) -> list:
    """Send ``requests`` at once through ``method`` (a blocking stub method) and SIGTERM
    ``process`` (a WorkerProcess) once the first is answered, the rest being queued by
    then. Each outcome: the number of scores answered, or the status code."""
    method(requests[0], timeout=timeout)  # warm: the first of the load is answered fast

    def call(request):
        try:
            return len(scores_of(method(request, timeout=timeout)))
        except grpc.RpcError as err:
            return err.code()

    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(call, r) for r in requests]
        futures[0].result()
        process.proc.send_signal(signal.SIGTERM)
        return [f.result() for f in futures]


def assert_stopped_cleanly(process, outcomes: list, items: int) -> None:
    """After sigterm_under_load: the process exited 0 saying so; what it had taken was
    answered whole, the rest refused (UNAVAILABLE, or CANCELLED by gRPC when never
    dispatched); nothing half-answered."""
    assert process.proc.wait(30) == 0
    refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert all(o == items or o in refused for o in outcomes), outcomes
    assert outcomes.count(items) >= 2
    assert "shutting down" in process.proc.stderr.read()


def scores_of(response) -> np.ndarray:
    from deeprec.common.tensors import decode

    return decode(response.scores, "scores")


class ShardProcess(WorkerProcess):
    """`deeprec serve shard` as a real child process."""

    def __init__(self, model_dir, plan_path, shard, *extra):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deeprec.cli",
                "serve",
                "shard",
                "--model",
                str(model_dir),
                "--plan",
                str(plan_path),
                "--shard",
                str(shard),
                "--port",
                str(self.port),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
