"""Worker pods from their Service's EndpointSlices: the pool follows the pods.

Behind one Service name a worker pool is, to gRPC, one address: balancing, retries on
another worker, ejection, admission and the pool-size metrics would all see a pool of
one, and pods an autoscaler adds would get no traffic until connections are remade.
With ``DEEPREC_DISCOVERY=endpointslices`` the frontend reads the Service's EndpointSlices
(list, then watch, resumed from the last resourceVersion, relisted when the API server
says it is too old or the watch breaks) and keeps one pool member per ready pod:
- a pod that turns ready joins once it describes the same model and version;
- a pod that turns NotReady or terminating, or goes, gets no new sub-batches at once,
  and its channel closes after the calls in flight (a grace).
RBAC: get, list and watch on endpointslices (discovery.k8s.io) in the namespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

# kubernetes is imported where a watch starts: it takes about 0.4 s, which a frontend
# that does not discover its workers (and the CLI) should not pay.
if TYPE_CHECKING:
    from kubernetes import client as k8s
    from kubernetes import watch as k8s_watch

log = logging.getLogger("deeprec")

SERVICE_LABEL = "kubernetes.io/service-name"
WATCH_SECONDS = 60  # the API server ends each watch after this; it is resumed at once
REQUEST_TIMEOUT_S = 10.0
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
DRAIN_S = 30.0  # a removed member's calls in flight get this long before its channel closes
JOIN_RETRY_S = 2.0  # a ready pod that failed its join is tried again after this


# -- what the slices say (pure) -----------------------------------------------------------------


def slice_port(endpoint_slice: dict, port: int) -> int | None:
    """The slice's port for a Service port: its only one, else the one named grpc, else
    the one numbered ``port`` (the slice lists target ports, not the Service's)."""
    ports = [p for p in endpoint_slice.get("ports") or [] if p.get("port")]
    if len(ports) == 1:
        return int(ports[0]["port"])
    for wanted in (lambda p: p.get("name") == "grpc", lambda p: int(p["port"]) == port):
        for p in ports:
            if wanted(p):
                return int(p["port"])
    return None


def ready_addresses(slices: Iterable[dict], port: int) -> list[str]:
    """HOST:PORT of every ready endpoint, sorted. Ready unset counts as ready (the API's
    rule); terminating endpoints do not count, even while still ready."""
    found = set()
    for endpoint_slice in slices:
        number = slice_port(endpoint_slice, port)
        if number is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating"):
                continue
            for address in endpoint.get("addresses") or []:
                found.add(f"[{address}]:{number}" if ":" in address else f"{address}:{number}")
    return sorted(found)


def parse_service(entry: str, default_namespace: str) -> tuple[str, str, int]:
    """``SERVICE[.NAMESPACE[.svc...]]:PORT`` -> (namespace, service, port)."""
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{entry!r}: expected SERVICE[.NAMESPACE]:PORT")
    parts = host.split(".")
    namespace = parts[1] if len(parts) > 1 and parts[1] != "svc" else default_namespace
    return namespace, parts[0], int(port)


# -- the watch (a thread: the kubernetes client blocks) ---------------------------------------


class EndpointSliceWatch:
    """Ready addresses of one Service; ``on_change(addresses)`` (from this watch's
    thread) whenever they change."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        service: str,
        port: int,
        on_change: Callable[[list[str]], None],
        watch_seconds: int = WATCH_SECONDS,
    ):
        from kubernetes import client as k8s

        self.api = k8s.DiscoveryV1Api(api_client)
        self.namespace, self.service, self.port = namespace, service, port
        self.on_change, self.watch_seconds = on_change, watch_seconds
        self.selector = f"{SERVICE_LABEL}={service}"
        self.slices: dict[str, dict] = {}
        self.resource_version: str | None = None
        self.addresses: list[str] | None = None
        self._stop = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self._thread: threading.Thread | None = None

    def __str__(self) -> str:
        return f"EndpointSlices of Service {self.namespace}/{self.service}"

    def list_now(self) -> list[str]:
        """List the slices (ApiException or urllib3 errors when the API says no)."""
        response = self.api.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=self.selector,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        document = json.loads(response.data)
        self.slices = {s["metadata"]["name"]: s for s in document.get("items") or []}
        self.resource_version = (document.get("metadata") or {}).get("resourceVersion")
        return self._changed()

    def _changed(self) -> list[str]:
        addresses = ready_addresses(self.slices.values(), self.port)
        if addresses != self.addresses:
            self.addresses = addresses
            self.on_change(addresses)
        return addresses

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.service}")
        self._thread.daemon = True  # a watch blocked in a read must not hold up exit
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(1.0)

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.list_now()
                self._follow()
                delay = RETRY_FIRST_S
            except Exception as err:  # the API is unreachable or refused: list again later
                if self._stop.is_set():
                    return
                log.warning("%s: %s; listing again in %.1f s", self, _reason(err), delay)
                self.resource_version = None
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _follow(self) -> None:
        """Apply watch events until the watch ends (then it is resumed from the last
        resourceVersion) or says the version is too old (then the caller lists again)."""
        from kubernetes import watch as k8s_watch

        self._watch = k8s_watch.Watch()
        stream = self._watch.stream(
            self.api.list_namespaced_endpoint_slice,
            self.namespace,
            label_selector=self.selector,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            _request_timeout=self.watch_seconds + REQUEST_TIMEOUT_S,
        )
        for event in stream:
            if self._stop.is_set():
                return
            kind, raw = event["type"], event.get("raw_object") or {}
            if kind == "ERROR":
                if raw.get("code") != 410:
                    log.warning("%s: watch error %s", self, raw.get("message"))
                self.resource_version = None  # 410 Gone: too old, list afresh
                return
            metadata = raw.get("metadata") or {}
            self.resource_version = metadata.get("resourceVersion") or self.resource_version
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self.slices.pop(metadata.get("name"), None)
            else:
                self.slices[metadata.get("name")] = raw
            self._changed()


def _reason(err: Exception) -> str:
    from kubernetes.client.exceptions import ApiException

    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}"
    return f"{type(err).__name__}: {err}"


# -- the pool follows (on the event loop) ---------------------------------------------------------


class Membership:
    """Keeps a pool's discovered members equal to the ready addresses: ``join(address)``
    (a coroutine) makes a checked worker and its channel, or raises to leave it out."""

    def __init__(self, pool, join, members: Iterable[str] = (), drain_s: float = DRAIN_S):
        self.pool, self.join, self.drain_s = pool, join, drain_s
        self.members = set(members)  # addresses this follows (the pool may hold others)
        self.wanted: list[str] = sorted(self.members)  # the latest ready set reported
        self.channels: dict[str, object] = {}
        self._lock = asyncio.Lock()  # one change at a time, in the order they came
        self._tasks: set[asyncio.Task] = set()

    def changed(self, loop: asyncio.AbstractEventLoop, addresses: list[str]) -> None:
        """From the watch's thread: apply ``addresses`` on the loop."""
        loop.call_soon_threadsafe(self._spawn, addresses)

    def _spawn(self, addresses: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self.apply(addresses))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply(self, addresses: list[str]) -> None:
        self.wanted = addresses
        async with self._lock:
            if addresses is not self.wanted:  # a newer set came while this one waited
                return
            wanted = set(addresses)
            failed = False
            for address in sorted(self.members - wanted):
                self.members.discard(address)
                self.pool.remove(address)
                channel = self.channels.pop(address, None)
                log.info("%s pool: %s left (not ready or gone)", self.pool.name, address)
                if channel is not None:  # its calls in flight finish first
                    self._spawn_close(channel)
            for address in sorted(wanted - self.members):
                try:
                    worker, channel = await self.join(address)
                except Exception as err:
                    log.warning(
                        "%s pool: %s not added (again in %.0f s): %s",
                        self.pool.name,
                        address,
                        JOIN_RETRY_S,
                        err,
                    )
                    failed = True
                    continue
                self.members.add(address)
                self.channels[address] = channel
                self.pool.add(address, worker)
                log.info("%s pool: %s joined", self.pool.name, address)
            if failed:  # no slice change may come to retry it: try again on a timer
                asyncio.get_running_loop().call_later(JOIN_RETRY_S, self._retry, addresses)

    def _retry(self, addresses: list[str]) -> None:
        if addresses is self.wanted:  # still the latest: nothing newer superseded it
            self._spawn(addresses)

    def _spawn_close(self, channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace=self.drain_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
