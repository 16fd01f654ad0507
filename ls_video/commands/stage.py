"""One stage of a recipe run as its own process: printed, run in the current folder, timed.

The demo (``ls_video.commands.demo``) and the motion-transfer table (``ls_video.toy.motion_transfer``) run their
stages through ``python -m`` with this, so a clone and an installed wheel run them the same way.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time


def run_stage(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Print ``cmd``, run it (one CPU thread unless ``OMP_NUM_THREADS`` is set; the toy models gain nothing
    from more, and on a shared 2-core machine two threads made sampling 5x slower, docs/TOY.md), raise on a
    non-zero exit, and return its elapsed seconds."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={"OMP_NUM_THREADS": "1", **os.environ, **(env or {})})
    return time.perf_counter() - start
