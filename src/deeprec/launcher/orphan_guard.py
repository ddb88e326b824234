"""Run a command that dies with its launcher: ``python -m deeprec.launcher.orphan_guard PPID CMD``.

The launcher stops its children itself, but if it is killed outright (SIGKILL, OOM) it
cannot. On Linux this shim asks the kernel to send SIGTERM to the child when the parent
dies (PR_SET_PDEATHSIG, which survives exec), then execs the real command, keeping its
pid. Setting it here rather than in a ``preexec_fn`` keeps fork safe in a threaded
(gRPC) parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(
            "usage: python -m deeprec.launcher.orphan_guard PARENT_PID COMMAND...", file=sys.stderr
        )
        return 2
    parent = int(argv[0])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the guard was set
            return 1
    os.execv(argv[1], argv[1:])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
