"""`deeprec serve frontend`: the public Recommender API in front of worker pools."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from deeprec.common import kube, settings
from deeprec.common.features import DEFAULT_LIMITS, ModelSignature
from deeprec.common.limits import RequestLimits
from deeprec.common.methods import RECOMMEND, RECOMMENDER, service_name
from deeprec.common.policy import Policy, PolicyTable
from deeprec.common.policy import describe as describe_policy
from deeprec.common.server import Server, channel, setup_logging
from deeprec.common.telemetry import Telemetry
from deeprec.common.telemetry import setup as setup_telemetry
from deeprec.common.wire_reader import request_reader
from deeprec.models.repository import ModelRepository, is_repository
from deeprec.v1 import (
    inference_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
)

from .admission import Admission
from .deployments import Deployment, Deployments, Pool
from .discovery import EndpointSliceWatch, Membership, parse_service
from .local import LocalConfig, load_deployment
from .repository import DEFAULT_MAX_MODELS, RepositoryServicer
from .servicer import RecommenderServicer
from .watch import PolicyWatcher
from .workers import RemoteWorker, WorkerStub

log = logging.getLogger("deeprec")
REPOSITORY = service_name(repository_pb2, "ModelRepository")


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


def _local(config: LocalConfig, described: ModelSignature | None, new_admission):
    """The in-process pool's deployment of one artifact (which must be the remote
    workers' model and version, if there are remote workers), or None."""
    if config.count == 0:
        return None
    if not config.model:
        raise StartupError("--local-workers needs --model: the artifact they run")
    try:
        deployment = load_deployment(config, config.model, new_admission)
    except (OSError, ValueError) as err:
        raise StartupError(f"cannot load the model for the local workers: {err}") from None
    signature = deployment.signature
    if described and (described.name, described.version) != (signature.name, signature.version):
        deployment.close()
        raise StartupError(
            f"local workers run {signature.name}/v{signature.version} but the remote "
            f"workers serve {described.name}/v{described.version}"
        )
    return deployment


def _from_repository(
    config: LocalConfig, repository: ModelRepository, new_admission
) -> Deployments:
    """Every model of the repository at its highest version, on in-process workers."""
    if config.count == 0:
        raise StartupError(
            f"model repository {repository.root}: its models run on in-process workers "
            "(--local-workers N)"
        )
    deployments = Deployments()
    for name in repository.models():
        version, path = repository.resolve(name)
        try:
            deployment = load_deployment(config, path, new_admission, name, version, "repository")
        except (OSError, ValueError) as err:
            for loaded in deployments:
                loaded.close()
            raise StartupError(f"model repository: cannot load {name}/{version}: {err}") from None
        deployments.install(deployment)
    return deployments


async def build_servicer(
    workers: list[str],
    gpu_workers: list[str],
    batch_size: int,
    offload_threshold: int,
    limits: RequestLimits = DEFAULT_LIMITS,
    connect_timeout: float = 30.0,
    telemetry: Telemetry | None = None,
    new_admission: Callable[[], Admission] = Admission,
    local: LocalConfig | None = None,
    max_models: int = DEFAULT_MAX_MODELS,
    run_threads: int = 0,
    merge_delay_us: int = 0,
) -> RecommenderServicer:
    """The servicer over the given pools: remote workers, and in-process ones running
    ``local.model``, an artifact (one model) or a model repository (each of its models).
    The policy every model starts with: ``batch_size``, ``offload_threshold``,
    ``run_threads`` and ``merge_delay_us``, until the scheduler sends one."""
    local = local or LocalConfig()
    telemetry = telemetry or Telemetry()
    policies = PolicyTable(
        Policy(
            "", batch_size, offload_threshold, threads=run_threads, merge_delay_us=merge_delay_us
        )
    )
    if local.model and is_repository(local.model):
        if workers or gpu_workers:
            raise StartupError(
                "a model repository is served by in-process workers; remote worker pools "
                "serve the one model they run: give --model an artifact to combine them"
            )
        repository = ModelRepository(Path(local.model))
        deployments = _from_repository(local, repository, new_admission)
        load = functools.partial(
            load_deployment, local, new_admission=new_admission, source="repository"
        )
        control = RepositoryServicer(deployments, repository, load, max_models)
        return RecommenderServicer(deployments, policies, limits, telemetry.meter, control)
    if not workers and not gpu_workers and not local.count:
        raise StartupError(
            "no workers given (--local-workers with --model, --workers and/or --gpu-workers)"
        )
    interceptors = telemetry.client_interceptors()
    cpu_stubs, gpu_stubs = _stubs(workers, interceptors), _stubs(gpu_workers, interceptors)
    described = (
        await describe(cpu_stubs | gpu_stubs, connect_timeout) if workers or gpu_workers else None
    )
    in_process = _local(local, described, new_admission)
    if not cpu_stubs and not in_process:
        raise StartupError(
            "a CPU worker pool is needed (--workers or --local-workers): the GPU pool takes "
            "only queries of at least T items"
        )
    signature = described or in_process.signature

    def remote(stubs):
        return {a: RemoteWorker.serving(stub, signature) for a, stub in stubs.items()}

    # One deployment: the in-process pool (if any) with the remote workers beside it.
    deployment = in_process or Deployment(
        signature, Pool.of("cpu", {}), None, new_admission(), "workers"
    )
    for address, worker in remote(cpu_stubs).items():
        deployment.cpu.add(address, worker)
    deployment.gpu = Pool.of("gpu", remote(gpu_stubs)) if gpu_stubs else None
    if described:
        deployment.source = "workers"
    deployments = Deployments()
    deployments.install(deployment)
    return RecommenderServicer(deployments, policies, limits, telemetry.meter)


async def start(
    servicer: RecommenderServicer, host: str, port: int, telemetry: Telemetry | None = None
) -> Server:
    telemetry = telemetry or Telemetry()
    server = Server(
        [RECOMMENDER, REPOSITORY],
        interceptors=telemetry.server_interceptors(),
        rebalance=True,
        readers={RECOMMEND: request_reader(recommender_pb2.RecommendRequest)},
    )
    server.add(recommender_pb2_grpc.add_RecommenderServicer_to_server, servicer)
    server.add(repository_pb2_grpc.add_ModelRepositoryServicer_to_server, servicer.control)
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
    """Start each watch, keeping its pool's remote members equal to its ready pods (the
    frontend's one deployment: remote pools serve one model)."""
    if not watches:
        return []
    loop = asyncio.get_running_loop()
    (deployment,) = servicer.deployments.currents()
    join = join_checked(deployment.signature, interceptors, timeout)
    followed = []
    for pool, watch in watches.items():
        membership = Membership(deployment.pools[pool], join, watch.addresses)
        watch.on_change = functools.partial(membership.changed, loop)
        watch.start()
        followed.append(membership)
    return followed


def _describe(servicer, deployment) -> str:
    policy = servicer.policies.get(deployment.name)
    return (
        f"{deployment.name} v{deployment.version} on {deployment.cpu.slots} cpu / "
        f"{deployment.gpu.slots if deployment.gpu else 0} gpu worker slots, "
        f"{describe_policy(policy)}"
    )


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
            functools.partial(Admission, args.max_items_in_flight, args.admission_budget_ms),
            LocalConfig.from_args(args),
            args.max_models,
            args.run_threads,
            args.merge_delay_us,
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
    log.info(
        "serving on %s:%d: %s%s",
        args.host,
        server.port,
        ", ".join(_describe(servicer, d) for d in servicer.deployments),
        f", policies from scheduler {args.scheduler}" if args.scheduler else "",
    )
    await server.run_until_signalled()
    await servicer.control.finish()
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
