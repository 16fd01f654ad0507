"""What the command line offers works: subcommands without a step behind them are refused in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["test", "predict"])
def test_subcommands_without_a_step_are_not_offered(name):
    """``LatentShiftModule`` has no ``test_step`` / ``predict_step``: Lightning would fail only after loading
    everything; the CLI refuses them at once (sampling is ``ls-video sample``)."""
    r = subprocess.run([sys.executable, "train.py", name, "-c", "configs/toy.yaml"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
