"""A real inference worker with one injected fault: it dies by SIGSEGV in the middle of
the first sub-batch it runs, as a worker hitting a native-code bug would.

Run as a child process by tests: ``python tests/crashing_worker.py MODEL_DIR``; it prints
"serving on 127.0.0.1:PORT" once it listens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from deeprec.inference import main as inference_main


def crash(feeds, threads):
    os.kill(os.getpid(), signal.SIGSEGV)


async def serve(model_dir: str) -> None:
    servicer = inference_main.build_servicer(model_dir, "cpu", 1)
    servicer.runner.batcher.run = crash  # the session run, where a native-code bug would strike
    server = await inference_main.start(servicer, "127.0.0.1", 0)
    print(f"serving on 127.0.0.1:{server.port}", flush=True)
    await server.run_until_signalled()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
