"""benchmarks/memory.py at tiny size on the CPU: every row runs the shipped SD config in its own process and is
written as soon as it is measured; a row that cannot run says why in one line and the next rows still run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from shipped import ROOT


@pytest.mark.slow  # three training processes: about 1 min on a quiet 2-core machine
def test_memory_rows_run_in_their_own_processes_and_report_as_they_go(tmp_path):
    """Fails if a row's overlay (LoRA, checkpointing off) breaks the shipped config, if a failing row stops the
    table, or if rows are not appended to memory.jsonl."""
    rows = ["full-16x256", "full8bit-16x256-ckpt", "lora64-16x256-ckpt"]
    r = subprocess.run([sys.executable, "benchmarks/memory.py", "--size", "tiny", "--steps", "3", "--precision",
                        "32-true", "--rows", ",".join(rows), "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [json.loads(line) for line in (tmp_path / "memory.jsonl").read_text().splitlines()]
    assert [g["row"] for g in got] == rows
    for g in (got[0], got[2]):
        assert g["status"] == "ok" and g["steps_per_s"] > 0 and g["peak_rss_gib"] > 0.1, g
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "needs bitsandbytes" in got[1]["status"] and "\n" not in got[1]["status"]
    assert "lora64-16x256-ckpt" in r.stdout.splitlines()[-1]
