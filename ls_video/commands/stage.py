"""A recipe's stages, each a ``python -m MODULE ...`` process: printed, run in the current folder, timed.

The demo (``ls_video.commands.demo``) and the motion-transfer table (``ls_video.toy.motion_transfer``) run
their stages with :class:`Stages`, so a clone and an installed wheel run them the same way.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time


class Stages:
    """Runs stages and records them: ``seconds`` by stage name, ``log`` the command lines in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.log: list[str] = []

    def run(self, module: str, *args: str, name: str | None = None, env: dict[str, str] | None = None) -> float:
        """Run ``python -m module args`` (one CPU thread unless ``OMP_NUM_THREADS`` is set; the toy models gain
        nothing from more, and on a shared 2-core machine two threads made sampling 5x slower, docs/TOY.md);
        raise on a non-zero exit; return its seconds, also kept under ``name`` when given."""
        cmd = [sys.executable, "-m", module, *args]
        if name is not None:
            print(f"\n== {name}", flush=True)
        print(f"$ {shlex.join(cmd)}", flush=True)
        self.log.append(shlex.join(cmd))
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={"OMP_NUM_THREADS": "1", **os.environ, **(env or {})})
        seconds = time.perf_counter() - start
        if name is not None:
            self.seconds[name] = seconds
        return seconds
