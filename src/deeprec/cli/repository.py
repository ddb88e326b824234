"""`deeprec model list|load|unload`: the models a running frontend serves, and rolling
them (load and unload are admin RPCs, guarded like `deeprec policy set`)."""

from __future__ import annotations

import sys

import grpc

from deeprec.common import argtypes
from deeprec.common.config import env
from deeprec.common.server import sync_channel
from deeprec.v1 import repository_pb2, repository_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def state_line(model) -> str:
    current = " (current)" if model.current else ""
    busy = f", {model.in_flight} in flight" if model.in_flight else ""
    return f"{model.name} v{model.version}: {model.state}{current}{busy} [{model.source}]"


def _call(args, method: str, request, timeout: float):
    stub = repository_pb2_grpc.ModelRepositoryStub(sync_channel(args.target))
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    return getattr(stub, method)(request, timeout=timeout, metadata=metadata)


def _run(action) -> int:
    try:
        action()
    except grpc.RpcError as err:
        print(f"deeprec: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


def list_models(args) -> int:
    def action():
        reply = _call(args, "ListModels", repository_pb2.ListModelsRequest(), 10)
        for model in reply.models:
            print(state_line(model))
        if not reply.models:
            print("no models")

    return _run(action)


def load(args) -> int:
    def action():
        request = repository_pb2.LoadModelRequest(name=args.name, version=args.version)
        reply = _call(args, "LoadModel", request, args.timeout)
        print(state_line(reply.model))
        for old in reply.replaced:
            print(f"  replaces {state_line(old)}")

    return _run(action)


def unload(args) -> int:
    def action():
        request = repository_pb2.UnloadModelRequest(name=args.name, version=args.version)
        for model in _call(args, "UnloadModel", request, 10).unloaded:
            print(state_line(model))

    return _run(action)


def add_commands(sub) -> None:
    """The subcommands, on `deeprec model`'s subparsers."""
    for name, func, text in (
        ("list", list_models, "the models a running frontend serves, and its repository's"),
        ("load", load, "load a repository model (or a new version) into a running frontend"),
        ("unload", unload, "stop serving a model (or one version): drain, then unload"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--target", default=DEFAULT_TARGET, help="a frontend's address")
        if func is not list_models:
            p.add_argument("name", help="model name (a directory of the repository)")
            p.add_argument("--version", default="", help="default: the highest, or every one")
            p.add_argument(
                "--token",
                default=env("DEEPREC_ADMIN_TOKEN", ""),
                help="admin token, if the frontend requires one",
            )
        else:
            p.set_defaults(token="")
        if func is load:
            p.add_argument(
                "--timeout",
                type=argtypes.positive,
                default=300.0,
                help="seconds to wait for load + warm-up",
            )
        p.set_defaults(func=func)
