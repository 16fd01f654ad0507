"""User mistakes end in one line and exit code 2; bugs keep their traceback; ``--debug`` shows every traceback."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ls_video.errors import DEBUG_ENV, UsageError, command
from ls_video.video_io import write_mp4

ROOT = Path(__file__).resolve().parents[1]


@command("prog")
def buggy(argv: list[str] | None) -> int:
    write_mp4("never.mp4", np.zeros((2, 3)))  # a caller bug: frames of the wrong shape, a plain ValueError
    return 0


@command("prog")
def mistaken(argv: list[str] | None) -> int:
    raise UsageError("--rank must be >= 1, got 0")


@command("prog")
def missing(argv: list[str] | None) -> int:
    raise FileNotFoundError(f"model not found: {argv[0]}")


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")  # off, and restored afterwards (--debug sets it in os.environ)


def test_a_bug_in_library_code_keeps_its_traceback():
    """Fails if every ValueError is reported as a user mistake again (the bug would be undebuggable)."""
    with pytest.raises(ValueError, match="expected frames of shape"):
        buggy([])


@pytest.mark.parametrize("main, args, text", [(mistaken, [], "UsageError: --rank must be >= 1"),
                                              (missing, ["/no/model"], "model not found: /no/model")])
def test_a_user_mistake_is_one_line_and_exit_2(main, args, text, capsys):
    """Fails if user errors leak a traceback or another exit code."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("prog: error: ") and text in err and len(err.strip().splitlines()) == 1


def test_debug_flag_and_environment_show_the_traceback(monkeypatch):
    """Fails if ``--debug`` or ``LS_VIDEO_DEBUG=1`` still hide a user error's traceback, or if ``--debug``
    reaches the command's own argument parser."""
    with pytest.raises(FileNotFoundError, match="/no/model$"):
        missing(["--debug", "/no/model"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UsageError):
        mistaken([])


def test_ls_video_debug_prints_the_traceback(tmp_path):
    """End to end through the console script: one line without ``--debug``, the traceback with it."""
    cmd = [sys.executable, "-m", "ls_video.cli", "export", str(tmp_path / "none.ckpt"), str(tmp_path / "o")]
    plain = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "checkpoint not found" in plain.stderr
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], cwd=ROOT, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "checkpoint not found" in debug.stderr
