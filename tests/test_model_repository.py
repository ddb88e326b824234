"""Several models and versions in one frontend: the repository, routing, a version roll
under load with real processes, unloading, the admin guard and `deeprec model list`."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from servers import Loop, WorkerProcess, deeprec_cli, request_for, scores_of, wait_until

from deeprec.common.errors import InvalidArgument, NotFound
from deeprec.frontend.admission import Admission
from deeprec.frontend.deployments import DRAINING, Deployment, Deployments, Pool
from deeprec.models import reference, zoo
from deeprec.models.artifact import load_artifact, write_artifact
from deeprec.models.inputs import random_inputs
from deeprec.models.repository import ModelRepository, NotInRepository, is_repository
from deeprec.scheduler.core import SchedulerConfig
from deeprec.scheduler.main import Scheduler
from deeprec.v1 import (
    recommender_pb2,
    recommender_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

TOKEN = "roll-token"


def _build(root, name, version, seed):
    write_artifact(zoo.preset(name, "tiny"), root / name / version, seed=seed)
    return load_artifact(root / name / version)


# -- the repository and the routing table (no processes) -----------------------------------


def test_the_repository_lists_versions_in_numeric_order_and_resolves_the_highest(tmp_path):
    for version in ("2", "10", "1"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "model.json").write_text("{}")
    (tmp_path / "m" / "11").mkdir()  # an unfinished build: no model.json yet
    repository = ModelRepository(tmp_path)
    assert is_repository(tmp_path) and not is_repository(tmp_path / "m" / "1")
    assert repository.models() == {"m": ["1", "2", "10"]}
    assert repository.resolve("m") == ("10", tmp_path / "m" / "10")
    assert repository.resolve("m", "2")[0] == "2"
    with pytest.raises(NotInRepository, match=r"no version '11' .*versions: 1, 2, 10"):
        repository.resolve("m", "11")
    with pytest.raises(NotInRepository, match=r"'x' is not in the repository \(it holds: m\)"):
        repository.resolve("x")
    for bad in ("..", "../m", "m/1", "", "-m", "a" * 65):
        with pytest.raises(ValueError):
            repository.resolve(bad)


def _deployment(tiny_zoo, name, version) -> Deployment:
    from deeprec.common.features import ModelSignature

    signature = ModelSignature.from_spec(tiny_zoo[name].spec, version)
    return Deployment(signature, Pool.of("cpu", {}), None, Admission(), "repository")


def test_routing_by_model_and_version_and_what_a_roll_replaces(tiny_zoo):
    deployments = Deployments()
    rmc1_v1 = _deployment(tiny_zoo, "rmc1", "1")
    deployments.install(rmc1_v1)
    assert deployments.route("") is rmc1_v1  # the only model: a query need not name it
    din = _deployment(tiny_zoo, "din", "3")
    deployments.install(din)
    with pytest.raises(InvalidArgument, match="model is required: this frontend serves rmc1, din"):
        deployments.route("")
    assert deployments.route("din") is din and deployments.route("din", "3") is din
    with pytest.raises(NotFound, match=r"din has no version '4' loaded \(loaded: 3\)"):
        deployments.route("din", "4")
    rmc1_v2 = _deployment(tiny_zoo, "rmc1", "2")
    assert deployments.install(rmc1_v2) == [rmc1_v1]
    assert rmc1_v1.state == DRAINING and deployments.route("rmc1") is rmc1_v2
    assert deployments.remove("rmc1", "1") == []  # no longer loaded
    assert deployments.remove("rmc1") == [rmc1_v2]
    with pytest.raises(NotFound, match=r"'rmc1' is not served \(serving din\)"):
        deployments.route("rmc1")
    assert [d.name for d in deployments] == ["din"]
    deployments.remove("din")
    for name in ("", "din"):
        with pytest.raises(NotFound, match="no model is loaded here"):
            deployments.route(name)


# -- real processes ---------------------------------------------------------------------------


class Traffic:
    """Threads sending queries for one model until stopped; every reply is kept."""

    def __init__(self, address, artifacts: dict, model: str, threads: int = 2):
        self.address, self.artifacts, self.model = address, artifacts, model
        self.replies, self.errors = [], []
        self.stop = threading.Event()
        self.answered = threading.Condition()
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, seed):
        spec = next(iter(self.artifacts.values())).spec
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            while not self.stop.is_set():
                inputs = random_inputs(spec, int(rng.integers(1, 9)), rng)
                try:
                    reply = stub.Recommend(request_for(spec, inputs, model=self.model), timeout=60)
                except grpc.RpcError as err:
                    self.errors.append((err.code(), err.details()))
                    continue
                with self.answered:
                    self.replies.append((inputs, reply))
                    self.answered.notify_all()

    def wait_for(self, predicate, timeout=120.0) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: predicate(self.replies), timeout), (
                f"{len(self.replies)} replies, errors {self.errors[:3]}"
            )

    def check_scores(self) -> None:
        """Each reply equals the reference of the version that says it answered."""
        for inputs, reply in self.replies:
            artifact = self.artifacts[reply.info.model_version]
            np.testing.assert_allclose(
                scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
            )


def _repository_stub(channel):
    return repository_pb2_grpc.ModelRepositoryStub(channel)


def test_a_version_roll_under_load_fails_no_query_and_unload_drains(tmp_path):
    rmc1 = {"1": _build(tmp_path, "rmc1", "1", seed=7)}
    din = {"1": _build(tmp_path, "din", "1", seed=7)}
    frontend = WorkerProcess(
        tmp_path, "--local-workers", "1", service="frontend", env={"DEEPREC_ADMIN_TOKEN": TOKEN}
    ).wait_healthy()
    auth = [("authorization", f"Bearer {TOKEN}")]
    try:
        with grpc.insecure_channel(frontend.address) as channel:
            control = _repository_stub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                control.LoadModel(repository_pb2.LoadModelRequest(name="rmc1"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

            with (
                Traffic(frontend.address, rmc1, "rmc1") as traffic,
                Traffic(frontend.address, din, "din", threads=1) as other,
            ):
                traffic.wait_for(lambda r: len(r) >= 10)
                rmc1["2"] = _build(tmp_path, "rmc1", "2", seed=8)  # a new version appears
                loaded = control.LoadModel(
                    repository_pb2.LoadModelRequest(name="rmc1"), timeout=120, metadata=auth
                )
                assert (loaded.model.version, loaded.model.state) == ("2", "serving")
                assert [(m.version, m.state) for m in loaded.replaced] == [("1", "draining")]
                # Every query sent from now on is answered by version 2.
                answered_before = len(traffic.replies)
                traffic.wait_for(lambda r: sum(rep.info.model_version == "2" for _, rep in r) >= 10)
                assert all(
                    reply.info.model_version == "2"
                    for _, reply in traffic.replies[answered_before + 2 :]
                )
                other.wait_for(lambda r: len(r) >= 10)
            assert traffic.errors == [] and other.errors == []
            assert {reply.info.model_version for _, reply in traffic.replies} == {"1", "2"}
            traffic.check_scores()
            other.check_scores()

            listing = control.ListModels(repository_pb2.ListModelsRequest(), timeout=10).models
            states = {(m.name, m.version): (m.state, m.current) for m in listing}
            assert states[("rmc1", "2")] == ("serving", True)
            assert states[("din", "1")] == ("serving", True)
            assert states[("rmc1", "1")] in {("draining", False), ("available", False)}

            # Unloading din: it answers NOT_FOUND from then on; rmc1 serves on.
            unloaded = control.UnloadModel(
                repository_pb2.UnloadModelRequest(name="din"), timeout=30, metadata=auth
            )
            assert [(m.name, m.version) for m in unloaded.unloaded] == [("din", "1")]
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            inputs = random_inputs(din["1"].spec, 3, np.random.default_rng(0))
            with pytest.raises(grpc.RpcError) as gone:
                stub.Recommend(request_for(din["1"].spec, inputs, model="din"), timeout=30)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            assert "is not served (serving rmc1)" in gone.value.details()
            described = stub.DescribeModels(recommender_pb2.DescribeModelsRequest(), timeout=10)
            assert [(m.name, m.version) for m in described.models] == [("rmc1", "2")]

        listed = deeprec_cli("model", "list", "--target", frontend.address)
        assert listed.returncode == 0, listed.stderr
        assert "rmc1 v2: serving (current) [repository]" in listed.stdout
        assert "din v1: available [repository]" in listed.stdout
    finally:
        assert frontend.terminate() == 0


def test_two_models_at_once_keep_separate_policies_from_the_scheduler(tmp_path):
    artifacts = {name: _build(tmp_path, name, "1", seed=7) for name in ("rmc1", "din")}
    loop = Loop()
    scheduler = Scheduler(SchedulerConfig(tune=False), interval=0.2)
    port = loop.run(scheduler.start("127.0.0.1", 0))
    frontend = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for name, batch_size in (("rmc1", 2), ("din", 0)):
                policy = scheduler_pb2.Policy(model=name, batch_size=batch_size)
                stub.SetPolicy(scheduler_pb2.SetPolicyRequest(policy=policy, pin=True), timeout=10)
        frontend = WorkerProcess(
            tmp_path,
            "--local-workers",
            "1",
            "--scheduler",
            f"127.0.0.1:{port}",
            "--batch-size",
            "5",
            service="frontend",
        ).wait_healthy()
        expected = {"rmc1": 2, "din": 0}
        with grpc.insecure_channel(frontend.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            request = recommender_pb2.DescribeModelsRequest()

            # The frontend applies the scheduler's stream once connected: wait for it.
            def batch_sizes():
                models = stub.DescribeModels(request, timeout=10).models
                return {m.name: m.batch_size for m in models}

            assert wait_until(lambda: batch_sizes() == expected), batch_sizes()
        traffic = {name: Traffic(frontend.address, {"1": a}, name) for name, a in artifacts.items()}
        with traffic["rmc1"], traffic["din"]:
            for load in traffic.values():
                load.wait_for(lambda r: len(r) >= 15)
        for name, load in traffic.items():
            assert load.errors == []
            load.check_scores()
            for _, reply in load.replies:
                n = scores_of(reply).shape[0]
                assert reply.info.batch_size == expected[name]
                assert reply.info.sub_batches == (-(-n // 2) if name == "rmc1" else 1)
    finally:
        if frontend is not None:
            assert frontend.terminate() == 0
        loop.run(scheduler.stop())
        loop.close()


def test_a_load_whose_caller_gave_up_still_ends_installed(tmp_path):
    """A client's deadline must not strand a model half-opened (its run threads live on
    with nothing routing to them): the load finishes on its own and is installed."""
    from deeprec.common.limits import RequestLimits
    from deeprec.common.policy import Policy, PolicyTable
    from deeprec.frontend import main as frontend_main
    from deeprec.frontend.local import LocalConfig, load_deployment
    from deeprec.frontend.repository import RepositoryServicer
    from deeprec.frontend.servicer import RecommenderServicer

    _build(tmp_path, "rmc1", "1", seed=7)
    release, started = threading.Event(), threading.Event()

    def slow_load(path, name, version):  # the real load, once the test lets it go on
        started.set()
        release.wait(60)
        return load_deployment(LocalConfig(1, None), path, name=name, version=version)

    loop = Loop()
    deployments = Deployments()
    control = RepositoryServicer(deployments, ModelRepository(tmp_path), slow_load)
    servicer = RecommenderServicer(
        deployments, PolicyTable(Policy("", 0, 0)), RequestLimits(), control=control
    )
    server = loop.run(frontend_main.start(servicer, "127.0.0.1", 0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = _repository_stub(channel)
            call = stub.LoadModel.future(repository_pb2.LoadModelRequest(name="rmc1"), timeout=30)
            assert started.wait(30)
            call.cancel()  # the client goes away while the model is being opened
            release.set()

            def listing():
                models = stub.ListModels(repository_pb2.ListModelsRequest(), timeout=10).models
                return [(m.name, m.version, m.state) for m in models]

            # The load ends on its own: wait for it to show.
            assert wait_until(lambda: listing() == [("rmc1", "1", "serving")]), listing()
    finally:
        loop.run(server.stop(0))
        servicer.close()
        loop.close()


ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}


def test_loads_unloads_and_queries_racing_each_other_get_only_deliberate_answers(tmp_path):
    """Threads loading, unloading and querying two models (and names that do not exist)
    at once, against a real frontend: every answer is a score per item or a deliberate
    status, and the frontend stays up and serves the survivors afterwards."""
    artifacts = {name: _build(tmp_path, name, "1", seed=7) for name in ("rmc1", "din")}
    _build(tmp_path, "rmc1", "2", seed=8)
    frontend = WorkerProcess(tmp_path, "--local-workers", "1", service="frontend").wait_healthy()
    outcomes, stop = [], threading.Event()

    def control(seed):
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(frontend.address) as channel:
            stub = _repository_stub(channel)
            while not stop.is_set():
                name = str(rng.choice(["rmc1", "din", "nope", "../x"]))
                version = str(rng.choice(["", "1", "2", "9"]))
                kind = rng.choice(["load", "unload", "list"])
                try:
                    if kind == "load":
                        stub.LoadModel(
                            repository_pb2.LoadModelRequest(name=name, version=version), timeout=60
                        )
                    elif kind == "unload":
                        stub.UnloadModel(
                            repository_pb2.UnloadModelRequest(name=name, version=version),
                            timeout=60,
                        )
                    else:
                        stub.ListModels(repository_pb2.ListModelsRequest(), timeout=60)
                    outcomes.append((kind, grpc.StatusCode.OK, ""))
                except grpc.RpcError as err:
                    outcomes.append((kind, err.code(), err.details()))

    def query(seed):
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(frontend.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            while not stop.is_set():
                name = str(rng.choice(["rmc1", "din"]))
                inputs = random_inputs(artifacts[name].spec, int(rng.integers(1, 6)), rng)
                try:
                    reply = stub.Recommend(
                        request_for(artifacts[name].spec, inputs, model=name), timeout=60
                    )
                    n = len(inputs[f"{artifacts[name].spec.features[0].name}_lengths"])
                    got = scores_of(reply).shape[0]
                    ok = grpc.StatusCode.OK if got == n else "wrong length"  # fails below
                    outcomes.append(("query", ok, f"{got} scores for {n} items"))
                except grpc.RpcError as err:
                    outcomes.append(("query", err.code(), err.details()))

    threads = [threading.Thread(target=control, args=(k,)) for k in range(2)]
    threads += [threading.Thread(target=query, args=(10 + k,)) for k in range(2)]
    try:
        for thread in threads:
            thread.start()

        # Until enough of each kind happened (an event count, not a time).
        def enough():
            kinds = {(k, c == grpc.StatusCode.OK) for k, c, _ in list(outcomes)}
            wanted = {("load", True), ("unload", True), ("query", True)}
            return len(outcomes) > 300 and wanted <= kinds

        assert wait_until(enough), outcomes[-5:]
        stop.set()
        for thread in threads:
            thread.join(120)
        assert len(outcomes) > 300
        bad = [o for o in outcomes if o[1] != grpc.StatusCode.OK and o[1] not in ALLOWED]
        assert not bad, bad[:5]
        assert all(details for _, code, details in outcomes if code != grpc.StatusCode.OK)
        assert frontend.alive()
        with grpc.insecure_channel(frontend.address) as channel:
            stub = _repository_stub(channel)
            stub.LoadModel(repository_pb2.LoadModelRequest(name="din"), timeout=60)
            inputs = random_inputs(artifacts["din"].spec, 3, np.random.default_rng(1))
            reply = recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                request_for(artifacts["din"].spec, inputs, model="din"), timeout=60
            )
            np.testing.assert_allclose(
                scores_of(reply),
                reference.forward(artifacts["din"], inputs),
                rtol=1e-5,
                atol=1e-6,
            )
    finally:
        stop.set()
        assert frontend.terminate() == 0
