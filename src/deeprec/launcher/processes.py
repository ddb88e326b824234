"""deeprec child processes: spawn, wait until SERVING, stop in phases. One home for the
launcher, the benchmarks and the tests.

Children listen on port 0 and report the port they got in their "serving on HOST:PORT"
log line, so there is no race for free ports. Each child runs in its own process group
(a terminal's Ctrl-C reaches only the launcher, which stops children in order) and, on
Linux, dies with the launcher even if the launcher is killed (orphan_guard).

``Supervisor.supervise`` keeps children running the way a Kubernetes Deployment does: one
that exits on its own is started again on the same address after a CrashLoopBackOff-style
delay (``Backoff``), until a stop is requested.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec.common.server import sync_channel

# Children are started from one thread that lives as long as the launcher: the kernel's
# parent-death signal (orphan_guard) fires when the *thread* that forked a child exits, so
# a child restarted from a short-lived thread would be stopped when that thread ends.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deeprec-spawner")

SERVING_LINE = re.compile(r"serving on (\[[^\]]+\]|[^\s:]+):(\d+)")


# How often the supervision thread looks at its children (death is noticed within this).
SUPERVISE_EVERY = 0.1


class LaunchError(RuntimeError):
    """A child could not start or died; the message carries the tail of its log."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM, Ctrl-C) while children were starting."""


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (empty log)"


def health_status(address: str, timeout: float = 1.0) -> int | None:
    """The grpc.health.v1 status of service "" at ``address``, None if unreachable."""
    with sync_channel(address) as chan:  # mutual TLS too, when DEEPREC_TLS_DIR is set
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return reply.status


def exit_reason(code: int | None) -> str:
    """``signal SIGKILL`` or ``code 1``, from a Popen return code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class Backoff:
    """CrashLoopBackOff for one child, as pure arithmetic: the wait before the next restart
    is ``first`` s, doubling with each crash in a row up to ``cap``; a run that lasted
    ``reset_after`` s or more ends the streak."""

    first: float = 0.2
    cap: float = 10.0
    reset_after: float = 30.0
    streak: int = 0  # crashes in a row

    def next_delay(self, ran_for: float) -> float:
        """The wait before restarting a child that just exited after ``ran_for`` s."""
        if ran_for >= self.reset_after:
            self.streak = 0
        self.streak += 1
        return min(self.cap, self.first * 2.0 ** min(self.streak - 1, 64))


@dataclass
class _Watch:
    """The supervision thread's view of one child."""

    backoff: Backoff
    launched: float  # monotonic time the current process started (or was last seen held)
    down_since: float | None = None  # when its exit was noticed; None once serving again
    restart_at: float | None = None  # when the pending restart is due


def _serving(address: str | None) -> bool:
    return (
        address is not None
        and health_status(address, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING
    )


@dataclass
class Child:
    name: str  # e.g. "worker-0", "shard-1-0", "frontend"
    argv: list[str]  # after `deeprec`
    log_path: Path
    process: subprocess.Popen | None = None
    address: str | None = None
    exit_code: int | None = None
    killed: bool = False  # needed SIGKILL
    env: dict = field(default_factory=dict)  # set on top of the launcher's environment
    restarts: int = 0  # by the supervision thread, after the child exited on its own
    held: bool = False  # down on purpose (a fault's kill): not the supervisor's to restart
    cpus: tuple[int, ...] = ()  # the cores it may run on (empty: any)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def failure(self, what: str) -> LaunchError:
        return LaunchError(
            f"{self.name} {what}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def reported_address(self) -> str | None:
        try:
            match = SERVING_LINE.search(self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        return f"{match.group(1)}:{match.group(2)}" if match else None


@dataclass
class Supervisor:
    log_dir: str | os.PathLike | None = None
    grace: float = 15.0  # per stop phase, before SIGKILL
    stop_requested: threading.Event | None = None  # checked while waiting
    say: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))
    cli: tuple[str, ...] = (sys.executable, "-m", "deeprec.cli")  # how to run `deeprec`
    children: list[Child] = field(default_factory=list)
    # Serializes the supervision thread's restarts with kill/restart/stop from other threads.
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _halt: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _watcher: threading.Thread | None = field(default=None, init=False, repr=False)
    rounds: int = field(default=0, init=False)  # supervision looks so far (tests wait on it)

    def __post_init__(self):
        self.log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="deeprec-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(
        self, name: str, argv: list[str], env: dict | None = None, cpus: tuple[int, ...] = ()
    ) -> Child:
        child = Child(
            name, list(argv), self.log_dir / f"{name}.log", env=dict(env or {}), cpus=tuple(cpus)
        )
        self._launch(child, "wb")
        self.children.append(child)
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL, as a crash would: no graceful shutdown. The child stays down (the
        supervision thread leaves it alone) until ``restart``."""
        with self._lock:
            child.held = True
            self._signal(child, signal.SIGKILL)
            child.exit_code = child.process.wait()
            child.killed = True

    def restart(self, child: Child, timeout: float) -> None:
        """Start a stopped child again on the same address (callers keep their channels)."""
        with self._lock:
            if child.alive():
                raise LaunchError(f"{child.name} is still running")
            child.held = True  # ours until it is SERVING (or failed to start)
            self._relaunch(child)
        try:
            self.wait_healthy([child], timeout)
        finally:
            child.held = False  # from now on, supervised like any other child

    def _relaunch(self, child: Child) -> None:
        if child.address is not None:
            port = child.address.rsplit(":", 1)[1]
            i = child.argv.index("--port")
            child.argv[i + 1] = port
        child.exit_code, child.killed = None, False
        self._launch(child, "ab")

    def _launch(self, child: Child, mode: str) -> None:
        guard = [sys.executable, "-m", "deeprec.launcher.orphan_guard"]
        if child.cpus:
            guard += ["--cpus", ",".join(map(str, child.cpus))]
        guard.append(str(os.getpid()))
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **child.env}
        with open(child.log_path, mode) as log:
            child.process = _SPAWNER.submit(
                subprocess.Popen,
                [*guard, *self.cli, *child.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                process_group=0,
            ).result()

    def wait_healthy(self, children: list[Child], timeout: float) -> None:
        """Wait for each child's "serving on" line, then for health SERVING."""
        deadline = time.monotonic() + timeout
        for child in children:
            while True:
                if self.stop_requested is not None and self.stop_requested.is_set():
                    raise Interrupted("stop requested while starting")
                if not child.alive():
                    raise child.failure(
                        f"exited with code {child.process.returncode} while starting"
                    )
                if time.monotonic() > deadline:
                    state = (
                        "did not report a port"
                        if child.address is None
                        else f"listens on {child.address} but is not SERVING"
                    )
                    raise child.failure(f"{state} within {timeout:g} s")
                if child.address is None:
                    child.address = child.reported_address()
                if (
                    child.address is not None
                    and health_status(child.address) == health_pb2.HealthCheckResponse.SERVING
                ):
                    break
                time.sleep(0.1)

    # -- supervision --------------------------------------------------------------------------

    def supervise(
        self, backoff: Callable[[], Backoff] = Backoff, every: float = SUPERVISE_EVERY
    ) -> None:
        """From now until ``stop`` (or ``stop_requested``), restart any child that exits on
        its own, on its address, after its ``Backoff`` delay. Children a fault ``kill``ed
        are left to the fault's ``restart``."""
        if self._watcher is not None:
            raise RuntimeError("already supervising")
        self._halt.clear()
        self._watcher = threading.Thread(
            target=self._watch, args=(backoff, every), name="deeprec-supervise", daemon=True
        )
        self._watcher.start()

    @property
    def supervising(self) -> bool:
        return self._watcher is not None and self._watcher.is_alive()

    def _watch(self, backoff: Callable[[], Backoff], every: float) -> None:
        states: dict[str, _Watch] = {}
        while not self._halt.wait(every):
            if self.stop_requested is not None and self.stop_requested.is_set():
                continue  # a stop is coming: a child that exits now stays down
            for child in list(self.children):
                with self._lock:
                    if self._halt.is_set():
                        return
                    now = time.monotonic()
                    state = states.setdefault(child.name, _Watch(backoff(), now))
                    probe = self._tend(child, state, now)
                    process = child.process
                # A restarted child counts as back when health says SERVING (probed
                # outside the lock: a fault's kill must not wait for it).
                if probe and _serving(child.address):
                    with self._lock:
                        if child.process is process and state.down_since is not None:
                            down = time.monotonic() - state.down_since
                            state.down_since = None
                            self.say(f"{child.name} is serving again after {down:.1f} s")
            self.rounds += 1

    def _tend(self, child: Child, state: _Watch, now: float) -> bool:
        """One look at one child (under the lock). True: it was restarted and is running
        but not yet known to be SERVING again."""
        if child.held or child.process is None:
            state.launched, state.down_since, state.restart_at = now, None, None
            return False
        if child.alive():
            return state.down_since is not None
        if state.restart_at is None:  # an exit not seen before (maybe while restarting)
            child.exit_code = child.process.returncode
            delay = state.backoff.next_delay(now - state.launched)
            state.restart_at = now + delay
            if state.down_since is None:
                state.down_since = now
            self.say(
                f"{child.name} exited ({exit_reason(child.exit_code)}); restart "
                f"#{child.restarts + 1} in {delay:.1f} s"
            )
        elif now >= state.restart_at:
            self._relaunch(child)
            child.restarts += 1
            state.launched, state.restart_at = now, None
        return False

    def _halt_supervision(self) -> None:
        self._halt.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    # -- stop ---------------------------------------------------------------------------------

    def stop(self, phases: list[Callable[[Child], bool]] = ()) -> dict[str, int]:
        """Stop children phase by phase (each phase a predicate on the child), whatever is
        left last. SIGTERM, wait ``grace`` s, then SIGKILL. Returns each exit code.
        Supervision ends first: nothing stopped here is restarted."""
        self._halt_supervision()
        remaining = list(self.children)
        for phase in [*phases, lambda child: True]:
            now = [c for c in remaining if phase(c)]
            remaining = [c for c in remaining if not phase(c)]
            self.terminate(now)
        return {c.name: c.exit_code for c in self.children}

    def terminate(self, children: list[Child]) -> None:
        running = [c for c in children if c.process and c.exit_code is None]
        for child in running:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.exit_code = child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(
                    f"{child.name} (pid {child.pid}) did not stop within {self.grace:g} s; "
                    "killing it"
                )
                self._signal(child, signal.SIGKILL)
                child.killed = True
                child.exit_code = child.process.wait()

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        if child.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)  # its group: anything it started goes too

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
