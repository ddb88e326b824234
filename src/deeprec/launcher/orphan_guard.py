"""Run a command that dies with its launcher:
``python -m deeprec.launcher.orphan_guard [--cpus 1,2] PPID CMD``.

The launcher stops its children itself, but if it is killed outright (SIGKILL, OOM) it
cannot. On Linux this shim asks the kernel to send SIGTERM to the child when the parent
dies (PR_SET_PDEATHSIG, which survives exec), then execs the real command, keeping its
pid. Setting it here rather than in a ``preexec_fn`` keeps fork safe in a threaded
(gRPC) parent. ``--cpus`` pins the command to those cores the same way (the affinity
survives exec, and every thread the command starts inherits it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    cpus = None
    if argv[:1] == ["--cpus"] and len(argv) > 1:
        cpus = {int(c) for c in argv[1].split(",")}
        argv = argv[2:]
    if len(argv) < 2:
        print(
            "usage: python -m deeprec.launcher.orphan_guard [--cpus LIST] PARENT_PID COMMAND...",
            file=sys.stderr,
        )
        return 2
    parent = int(argv[0])
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the guard was set
            return 1
    os.execv(argv[1], argv[1:])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
