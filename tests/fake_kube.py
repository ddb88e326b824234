"""A fake Kubernetes API server at the HTTP wire: ConfigMaps in memory, requests recorded.

Just enough of ``/api/v1/namespaces/{ns}/configmaps[/{name}]`` (GET, POST, PATCH) for the
real ``kubernetes`` client to talk to it: objects and errors in the API's JSON wire format
(errors are ``Status`` objects), merge patches applied the way the API server applies them
to a ConfigMap (maps merge key by key, ``null`` deletes). And EndpointSlices
(``/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices``): list by label selector, and
watch (``?watch=true``): events after a resourceVersion, streamed as chunked JSON lines as
the test changes the slices (``put_slice``, ``delete_slice``).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


def parse_qs(query: str) -> dict[str, str]:
    return dict(parse_qsl(query))


PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/configmaps(?:/(?P<name>[^/]+))?$")
SLICES = re.compile(r"^/apis/discovery.k8s.io/v1/namespaces/(?P<namespace>[^/]+)/endpointslices$")
SERVICE_LABEL = "kubernetes.io/service-name"
MERGE_PATCHES = {"application/strategic-merge-patch+json", "application/merge-patch+json"}
# Fields the server owns: a patch or a create cannot set them.
SERVER_FIELDS = ("name", "namespace", "uid", "creationTimestamp")


@dataclass
class Request:
    method: str
    path: str
    content_type: str | None
    body: object  # the parsed JSON body, or None


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 merge patch; for a ConfigMap it is what a strategic merge patch does too."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class FakeKube:
    """Serve on 127.0.0.1 (a free port) while used as a context manager; ``url`` is the host.

    ``intercept``, when set, sees every request first and may answer it instead:
    return ``(http_status, json_body)``, or None to let the fake handle it.
    """

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[Request] = []
        self.intercept: Callable[[Request], tuple[int, dict] | None] | None = None
        self._lock = threading.RLock()  # intercept may call put()
        self._versions = itertools.count(1)
        self.slices: dict[tuple[str, str], dict] = {}
        self.slice_events: list[tuple[int, str, dict]] = []  # (resourceVersion, type, object)
        self._slices_changed = threading.Condition(self._lock)
        self._closing = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval, so that shutdown() returns at once.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:  # open watches end, so their handler threads can be joined
            self._closing = True
            self._slices_changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def put(self, namespace: str, configmap: dict) -> dict:
        """Store a ConfigMap as if someone else had created it; returns the stored object."""
        with self._lock:
            return self._store(namespace, copy.deepcopy(configmap), created=True)

    def get(self, namespace: str, name: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self.objects.get((namespace, name)))

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    # EndpointSlices, as the endpoint slice controller would write them.

    def put_slice(self, namespace: str, name: str, service: str, endpoints, port=50061) -> dict:
        """Create or replace a slice. ``endpoints``: (address, ready) pairs; ready may be
        None (unset: ready, by the API's rule) or "terminating"."""
        listed = []
        for address, ready in endpoints:
            conditions = {}
            if ready == "terminating":
                conditions = {"ready": False, "serving": True, "terminating": True}
            elif ready is not None:
                conditions = {"ready": ready}
            listed.append({"addresses": [address], "conditions": conditions})
        with self._lock:
            version = next(self._versions)
            kind = "MODIFIED" if (namespace, name) in self.slices else "ADDED"
            body = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {SERVICE_LABEL: service},
                    "resourceVersion": str(version),
                },
                "addressType": "IPv4",
                "endpoints": listed,
                "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
            }
            self.slices[(namespace, name)] = body
            self.slice_events.append((version, kind, copy.deepcopy(body)))
            self._slices_changed.notify_all()
            return copy.deepcopy(body)

    def delete_slice(self, namespace: str, name: str) -> None:
        with self._lock:
            body = self.slices.pop((namespace, name))
            version = next(self._versions)
            body["metadata"]["resourceVersion"] = str(version)
            self.slice_events.append((version, "DELETED", body))
            self._slices_changed.notify_all()

    def _slice_matches(self, body: dict, namespace: str, selector: str | None) -> bool:
        if body["metadata"]["namespace"] != namespace:
            return False
        if not selector:
            return True
        key, _, value = selector.partition("=")
        return body["metadata"]["labels"].get(key) == value

    def list_slices(self, namespace: str, selector: str | None) -> tuple[int, dict]:
        items = [
            copy.deepcopy(b)
            for _, b in sorted(self.slices.items())
            if self._slice_matches(b, namespace, selector)
        ]
        version = max([v for v, _, _ in self.slice_events], default=0)
        return 200, {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": str(version)},
            "items": items,
        }

    def slice_events_after(self, namespace, selector, after: int, until: float) -> list:
        """Events newer than ``after`` (waits until there are some, ``until`` or close)."""
        with self._lock:
            while True:
                found = [
                    (v, t, copy.deepcopy(b))
                    for v, t, b in self.slice_events
                    if v > after and self._slice_matches(b, namespace, selector)
                ]
                remaining = until - time.monotonic()
                if found or self._closing or remaining <= 0:
                    return found
                self._slices_changed.wait(remaining)

    # The API, called by the handler with the lock held.

    def handle(self, request: Request) -> tuple[int, dict]:
        self.requests.append(request)
        if self.intercept is not None:
            answer = self.intercept(request)
            if answer is not None:
                return answer
        path, _, query = request.path.partition("?")
        slices = SLICES.match(path)
        if slices is not None and request.method == "GET":
            return self.list_slices(slices["namespace"], parse_qs(query).get("labelSelector"))
        route = PATH.match(path)
        if route is None:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = route["namespace"], route["name"]
        if request.method == "GET":
            return self._read(namespace, name) if name else self._list(namespace)
        if request.method == "POST" and name is None:
            return self._create(namespace, request)
        if request.method == "PATCH" and name is not None:
            return self._patch(namespace, name, request)
        return 405, status(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _read(self, namespace: str, name: str) -> tuple[int, dict]:
        found = self.objects.get((namespace, name))
        if found is None:
            return 404, status(404, "NotFound", f'configmaps "{name}" not found')
        return 200, copy.deepcopy(found)

    def _list(self, namespace: str) -> tuple[int, dict]:
        items = [copy.deepcopy(o) for (ns, _), o in sorted(self.objects.items()) if ns == namespace]
        return 200, {
            "apiVersion": "v1",
            "kind": "ConfigMapList",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    def _create(self, namespace: str, request: Request) -> tuple[int, dict]:
        media_type = (request.content_type or "application/json").split(";")[0].strip()
        if media_type != "application/json":  # no Content-Type reads as JSON, as on the real one
            return 415, status(
                415, "UnsupportedMediaType", f"this fake reads JSON, not {media_type}"
            )
        body = request.body
        problem = _invalid(body)
        if problem:
            return 400, status(400, "BadRequest", problem)
        body = copy.deepcopy(body)  # the recorded request keeps what the client sent
        metadata = body.setdefault("metadata", {})
        name = metadata.get("name")
        if not name:
            return 422, status(
                422, "Invalid", "ConfigMap is invalid: metadata.name: Required value"
            )
        if metadata.get("namespace", namespace) != namespace:
            return 400, status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the"
                " request",
            )
        if (namespace, name) in self.objects:
            return 409, status(409, "AlreadyExists", f'configmaps "{name}" already exists')
        return 201, copy.deepcopy(self._store(namespace, body, created=True))

    def _patch(self, namespace: str, name: str, request: Request) -> tuple[int, dict]:
        media_type = (request.content_type or "").split(";")[0].strip()
        if media_type not in MERGE_PATCHES:
            # The real server takes JSON patches too; this fake only does merge patches.
            return 415, status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format"
                f" - accepted media types include: {', '.join(sorted(MERGE_PATCHES))}",
            )
        if not isinstance(request.body, dict):
            return 400, status(400, "BadRequest", "the patch must be a JSON object")
        current = self.objects.get((namespace, name))
        if current is None:
            return 404, status(404, "NotFound", f'configmaps "{name}" not found')
        patched = merge_patch(current, request.body)
        problem = _invalid(patched)
        if problem:
            return 422, status(422, "Invalid", problem)
        patched["metadata"].update({k: current["metadata"][k] for k in SERVER_FIELDS})
        return 200, copy.deepcopy(self._store(namespace, patched, created=False))

    def _store(self, namespace: str, configmap: dict, created: bool) -> dict:
        configmap.update(apiVersion="v1", kind="ConfigMap")
        metadata = configmap.setdefault("metadata", {})
        if created:
            metadata.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp="2025-01-01T00:00:00Z",
            )
        metadata["resourceVersion"] = str(next(self._versions))
        self.objects[(namespace, metadata["name"])] = configmap
        return configmap


def _invalid(configmap: object) -> str:
    """What makes ``configmap`` no valid ConfigMap, or ""."""
    if not isinstance(configmap, dict):
        return "the body must be a JSON object"
    if configmap.get("kind", "ConfigMap") != "ConfigMap":
        return f"kind {configmap['kind']!r} sent to the configmaps endpoint"
    if configmap.get("apiVersion", "v1") != "v1":
        return f"apiVersion {configmap['apiVersion']!r} sent to the v1 endpoint"
    data = configmap.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return "data must map keys to strings"
    labels = (configmap.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        return "metadata.labels must map keys to strings"
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        params = parse_qs(query)
        if SLICES.match(path) and params.get("watch") in ("true", "1"):
            self._watch_slices(SLICES.match(path)["namespace"], params)
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = Request(self.command, self.path, self.headers.get("Content-Type"), body)
        fake: FakeKube = self.server.fake
        with fake._lock:
            code, answer = fake.handle(request)
        payload = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _watch_slices(self, namespace: str, params: dict) -> None:
        """A watch: chunked JSON lines, one event each, until timeoutSeconds or close."""
        fake: FakeKube = self.server.fake
        fake.requests.append(Request("GET", self.path, None, None))
        after = int(params.get("resourceVersion") or 0)
        until = time.monotonic() + float(params.get("timeoutSeconds") or 30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while time.monotonic() < until and not fake._closing:
                events = fake.slice_events_after(
                    namespace, params.get("labelSelector"), after, until
                )
                for version, kind, body in events:
                    line = json.dumps({"type": kind, "object": body}).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    after = version
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client stopped watching
            pass

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # quiet: pytest shows failures anyway
        pass
