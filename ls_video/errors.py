"""The errors a user can cause, and the one way every command reports them: one line, exit code 2.

Anything else is a bug and keeps its traceback. ``--debug`` (on any command) or ``LS_VIDEO_DEBUG=1`` shows
the traceback of user errors too.
"""

from __future__ import annotations

import functools
import os
import sys
from argparse import ArgumentError
from collections.abc import Callable

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LS_VIDEO_DEBUG"


class UsageError(ValueError):
    """A mistake the user can fix: a wrong argument or option, a missing file, input the code cannot use."""


class BadDataError(RuntimeError):
    """Too much of the training data could not be read (raised by ``ls_video.callbacks.DataHealth``)."""


class UnreachableError(OSError):
    """Data the run needs could not be read from its storage (network, object store): the environment, not a bug."""


class DataStalledError(UnreachableError):
    """No training data arrived for ``stall_timeout`` seconds (every shard unreadable): the storage is down."""


class DiskFullError(OSError):
    """A checkpoint could not be written: its disk is full (the earlier checkpoints are intact)."""


class DivergedError(FloatingPointError):
    """Training stopped after too many non-finite losses in a row (raised by ``ls_video.nonfinite``)."""


USER_ERRORS = (UsageError, BadDataError, DivergedError, UnreachableError, DiskFullError, ArgumentError,
               FileNotFoundError, NotADirectoryError)
# Raised by every rank at the same step (the decision is agreed first): only rank zero prints it.
EVERY_RANK = (BadDataError, DivergedError, DataStalledError)


def one_line(err: BaseException) -> str:
    """The error as one line (argument errors from jsonargparse span several)."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    if isinstance(err, ArgumentError):
        return f"{text[:400]} (see --help)"
    return f"{type(err).__name__}: {text}"


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a user's mistake (one line) rather than a bug (traceback): by its type only."""
    return isinstance(err, USER_ERRORS)


def global_rank() -> int:
    """This process's rank in a Lightning run (0 outside one)."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def take_debug_flag(argv: list[str] | None) -> list[str] | None:
    """``argv`` (``None``: the command line, edited in place) without ``--debug``; when it was there, turn
    debugging on, for child processes too."""
    args = sys.argv[1:] if argv is None else list(argv)
    if DEBUG_FLAG in args:
        os.environ[DEBUG_ENV] = "1"
        args = [a for a in args if a != DEBUG_FLAG]
    if argv is None:
        sys.argv[1:] = args
        return None
    return args


def command(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a ``main(argv) -> int``: user errors print ``{prog}: error: ...`` and return 2."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = take_debug_flag(argv)
            try:
                return main(argv) or 0
            except Exception as err:
                if debugging() or not is_user_error(err):
                    raise
                if not isinstance(err, EVERY_RANK) or global_rank() == 0:
                    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                return 2

        return run

    return wrap
