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


def _mistakes():
    from ls_video.callbacks import EMA, JointImageVideo
    from ls_video.callbacks.threads import CPUThreads
    from ls_video.datamodules import LatentVideoDataModule
    from ls_video.datamodules.clips import ClipSpec
    from ls_video.metrics.frechet import feature_stats
    from ls_video.metrics.toy import parse_prompt

    return [(lambda: EMA(decay=1.5), "decay"), (lambda: JointImageVideo(mode="concat"), "mode"),
            (lambda: CPUThreads(num_threads=0), "num_threads"),
            (lambda: LatentVideoDataModule("x.tar", batch_size=0), "batch_size"),
            (lambda: ClipSpec(clip_start="middle-ish"), "clip_start"),
            (lambda: feature_stats(np.zeros((1, 3))), "features"), (lambda: parse_prompt("a dog"), "toy prompt")]


def test_user_mistakes_in_callbacks_datamodules_and_metrics_are_usage_errors():
    """Fails if one of these raise sites falls back to a plain ValueError: since the interim rule that made every
    ValueError of these packages one line is gone, the user would get a traceback."""
    for make, text in _mistakes():
        with pytest.raises(UsageError, match=text):
            make()


def test_a_plain_value_error_in_a_datamodule_keeps_its_traceback():
    """Fails if errors are told apart by the module that raised them again (a bug in datamodules/ would print
    one line and exit 2, and could not be debugged)."""
    from ls_video.datamodules.synthetic_videos import synthetic_frames

    @command("prog")
    def run(argv: list[str] | None) -> int:
        next(synthetic_frames(2, 8, 8, pattern="plaid"))  # a caller bug, not a user's input
        return 0

    with pytest.raises(ValueError, match="pattern"):
        run([])


def test_storage_that_cannot_be_reached_is_one_line(capsys):
    """Fails if a shard that cannot be read from its storage (after the retries) prints a traceback like a bug: it
    is the network's doing, and the message names the URL and the reason."""
    from ls_video.datamodules.storage import ShardReadError

    @command("prog")
    def run(argv: list[str] | None) -> int:
        raise ShardReadError("timeout", "http://127.0.0.1:9/shard-000000.tar: no bytes for 30 s (3 tries)")

    assert run([]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "shard-000000.tar" in err and len(err.strip().splitlines()) == 1
