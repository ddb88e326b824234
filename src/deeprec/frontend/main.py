"""`deeprec serve frontend`: the public Recommender API in front of worker pools."""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from deeprec.common import kube, settings
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature
from deeprec.common.limits import RequestLimits
from deeprec.common.policy import Policy, PolicyTable
from deeprec.common.server import Server, channel, setup_logging
from deeprec.common.telemetry import Telemetry
from deeprec.common.telemetry import setup as setup_telemetry
from deeprec.common.wire_reader import request_reader
from deeprec.models.artifact import load_artifact
from deeprec.v1 import inference_pb2, recommender_pb2, recommender_pb2_grpc

from .admission import Admission
from .discovery import EndpointSliceWatch, Membership, parse_service
from .local import LocalConfig
from .servicer import Pool, RecommenderServicer
from .watch import PolicyWatcher
from .workers import RemoteWorker, WorkerStub

log = logging.getLogger("deeprec")
SERVICE = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
RECOMMEND = f"/{SERVICE}/Recommend"


class StartupError(RuntimeError):
    pass


def parse_addresses(text: str | None) -> list[str]:
    return [a.strip() for a in (text or "").split(",") if a.strip()]


async def describe(stubs: dict, timeout: float) -> ModelSignature:
    """Ask every worker what it serves; they must all serve the same model version."""
    signatures = {}
    for address, stub in stubs.items():
        try:
            reply = await stub.Describe(
                inference_pb2.DescribeRequest(), timeout=timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            raise StartupError(
                f"worker {address} did not answer Describe within {timeout:g} s "
                f"({err.code().name}: {err.details()})"
            ) from None
        signatures[address] = ModelSignature.from_proto(reply)
        log.info(
            "worker %s: %s v%s on %s (%s)",
            address,
            reply.name,
            reply.version,
            reply.device,
            reply.provider,
        )
    distinct = {(s.name, s.version) for s in signatures.values()}
    if len(distinct) > 1:
        listing = ", ".join(f"{a}={s.name}/v{s.version}" for a, s in signatures.items())
        raise StartupError(f"workers serve different models: {listing}")
    return next(iter(signatures.values()))


def _stubs(addresses: list[str], interceptors=()) -> dict:
    return {a: WorkerStub(channel(a, interceptors)) for a in addresses}


def _local(config: LocalConfig, described: ModelSignature | None):
    """The in-process workers and the signature of the artifact they run (which must be
    the remote workers' model and version, if there are remote workers)."""
    if config.count == 0:
        return {}, None
    if not config.model:
        raise StartupError("--local-workers needs --model: the artifact they run")
    try:
        artifact = load_artifact(config.model)
    except (OSError, ValueError) as err:
        raise StartupError(f"cannot load the model for the local workers: {err}") from None
    signature = ModelSignature.from_spec(artifact.spec, artifact.version)
    if described and (described.name, described.version) != (signature.name, signature.version):
        raise StartupError(
            f"local workers run {signature.name}/v{signature.version} but the remote "
            f"workers serve {described.name}/v{described.version}"
        )
    workers = config.open(artifact)
    for worker in workers.values():  # before the port opens, as a worker process does
        log.info("in-process workers: warm-up run %.0f ms", worker.runner.warm_up(signature))
    return workers, signature


async def build_servicer(
    workers: list[str],
    gpu_workers: list[str],
    batch_size: int,
    offload_threshold: int,
    limits: RequestLimits = DEFAULT_LIMITS,
    connect_timeout: float = 30.0,
    telemetry: Telemetry | None = None,
    admission: Admission | None = None,
    local: LocalConfig | None = None,
) -> RecommenderServicer:
    local = local or LocalConfig()
    if not workers and not gpu_workers and not local.count:
        raise StartupError(
            "no workers given (--local-workers with --model, --workers and/or --gpu-workers)"
        )
    telemetry = telemetry or Telemetry()
    interceptors = telemetry.client_interceptors()
    cpu_stubs, gpu_stubs = _stubs(workers, interceptors), _stubs(gpu_workers, interceptors)
    described = (
        await describe(cpu_stubs | gpu_stubs, connect_timeout) if workers or gpu_workers else None
    )
    in_process, local_signature = _local(local, described)
    signature = described or local_signature
    if not cpu_stubs and not in_process:
        raise StartupError(
            "a CPU worker pool is needed (--workers or --local-workers): the GPU pool takes "
            "only queries of at least T items"
        )

    def remote(stubs):
        return {a: RemoteWorker.serving(stub, signature) for a, stub in stubs.items()}

    policies = PolicyTable(Policy(signature.name, batch_size, offload_threshold))
    return RecommenderServicer(
        signature,
        Pool.of("cpu", {**in_process, **remote(cpu_stubs)}),
        Pool.of("gpu", remote(gpu_stubs)) if gpu_stubs else None,
        policies,
        limits,
        telemetry.meter,
        admission,
    )


async def start(
    servicer: RecommenderServicer, host: str, port: int, telemetry: Telemetry | None = None
) -> Server:
    telemetry = telemetry or Telemetry()
    server = Server(
        [SERVICE],
        interceptors=telemetry.server_interceptors(),
        rebalance=True,
        readers={RECOMMEND: request_reader(recommender_pb2.RecommendRequest)},
    )
    server.add(recommender_pb2_grpc.add_RecommenderServicer_to_server, servicer)
    await server.start(host, port)
    return server


def join_checked(signature: ModelSignature, interceptors, timeout: float):
    """A coroutine function making the pool member for a discovered address: its channel,
    once the worker there describes the same model and version (else it raises)."""

    async def join(address: str):
        worker_channel = channel(address, interceptors)
        stub = WorkerStub(worker_channel)
        try:  # the same check as the workers given at startup get
            described = await describe({address: stub}, timeout)
            if (described.name, described.version) != (signature.name, signature.version):
                raise ValueError(
                    f"it serves {described.name}/v{described.version}, the pool "
                    f"{signature.name}/v{signature.version}"
                )
        except BaseException:
            await worker_channel.close()
            raise
        return RemoteWorker.serving(stub, signature), worker_channel

    return join


async def initial_addresses(watch: EndpointSliceWatch, timeout: float) -> list[str]:
    """The ready addresses of a discovered pool at startup: listed again until one pod is
    ready, for up to ``timeout`` seconds (the workers may still be building the model)."""
    loop = asyncio.get_running_loop()
    deadline, delay, why = loop.time() + timeout, 0.5, "no ready endpoint"
    while True:
        try:
            addresses = await asyncio.to_thread(watch.list_now)
        except Exception as err:  # the API refused or is unreachable: say which
            why = f"{type(err).__name__}: {err}"
        else:
            if addresses:
                return addresses
        if loop.time() + delay > deadline:
            raise StartupError(f"{watch}: {why} within {timeout:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def discover_pools(args, api_client, namespace: str) -> dict[str, EndpointSliceWatch]:
    """One EndpointSlice watch per remote pool named by a Service, with its initial list."""
    watches = {}
    for pool, text in (("cpu", args.workers), ("gpu", args.gpu_workers)):
        entries = parse_addresses(text)
        if not entries:
            continue
        if len(entries) > 1:
            raise StartupError(
                f"--discovery endpointslices: give one Service per pool, not {entries}"
            )
        try:
            service_ns, service, port = parse_service(entries[0], namespace)
        except ValueError as err:
            raise StartupError(str(err)) from None
        watch = EndpointSliceWatch(api_client, service_ns, service, port, lambda _: None)
        await initial_addresses(watch, args.connect_timeout)
        watches[pool] = watch
    return watches


def follow(servicer, watches: dict, interceptors, timeout: float) -> list[Membership]:
    """Start each watch, keeping its pool's remote members equal to its ready pods."""
    loop = asyncio.get_running_loop()
    join = join_checked(servicer.signature, interceptors, timeout)
    followed = []
    for pool, watch in watches.items():
        membership = Membership(servicer.pools[pool], join, watch.addresses)
        watch.on_change = functools.partial(membership.changed, loop)
        watch.start()
        followed.append(membership)
    return followed


async def serve(args) -> int:
    telemetry = setup_telemetry("frontend")
    watches = {}
    try:
        if args.discovery == "endpointslices":
            try:
                api_client = kube.in_cluster_client()
            except kube.NotInCluster as err:
                raise StartupError(f"--discovery endpointslices needs a pod: {err}") from None
            watches = await discover_pools(args, api_client, kube.pod_namespace())
        servicer = await build_servicer(
            watches["cpu"].addresses if "cpu" in watches else parse_addresses(args.workers),
            watches["gpu"].addresses if "gpu" in watches else parse_addresses(args.gpu_workers),
            args.batch_size,
            args.offload_threshold,
            RequestLimits.from_args(args),
            args.connect_timeout,
            telemetry,
            Admission(args.max_items_in_flight, args.admission_budget_ms),
            LocalConfig.from_args(args),
        )
    except StartupError as err:
        log.error("%s", err)
        return 1
    server = await start(servicer, args.host, args.port, telemetry)
    follow(servicer, watches, telemetry.client_interceptors(), args.connect_timeout)
    watcher = None
    if args.scheduler:
        watcher = PolicyWatcher(args.scheduler, servicer.policies, f"{args.host}:{server.port}")
        servicer.metrics.follow(watcher)
        watcher.start()
    policy = servicer.policies.get(servicer.signature.name)
    log.info(
        "serving on %s:%d: %s, %d cpu (%d in-process) / %d gpu workers, B=%d T=%d%s",
        args.host,
        server.port,
        servicer.signature.name,
        servicer.pools["cpu"].slots,
        args.local_workers,
        servicer.pools["gpu"].slots if servicer.pools["gpu"] else 0,
        policy.batch_size,
        policy.offload_threshold,
        f", policies from scheduler {args.scheduler}" if args.scheduler else "",
    )
    await server.run_until_signalled()
    for watch in watches.values():
        watch.stop()
    if watcher:
        await watcher.stop()
    servicer.close()
    telemetry.shutdown()
    return 0


def run(args) -> int:
    setup_logging(f"frontend:{args.port}")
    return asyncio.run(serve(args))


def add_arguments(parser) -> None:
    settings.add_arguments(parser, "frontend")  # flags and DEEPREC_* twins: settings.SETTINGS
    parser.set_defaults(func=run)
