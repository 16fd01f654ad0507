"""The errors a user can cause, and the one way every command reports them: one line, exit code 2."""

from __future__ import annotations

import functools
import sys
from argparse import ArgumentError
from collections.abc import Callable


class BadDataError(RuntimeError):
    """Too much of the training data could not be read (raised by ``callbacks.DataHealth``)."""


# Raised by every rank at the same step (the decision is agreed first): only rank zero prints it.
EVERY_RANK = (BadDataError, FloatingPointError)
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, BadDataError, FloatingPointError, ArgumentError,
               OSError)


def one_line(err: BaseException) -> str:
    """The error as one line (argument errors from jsonargparse span several)."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    if isinstance(err, ArgumentError):
        return f"{text[:400]} (see --help)"
    return f"{type(err).__name__}: {text}"


def global_rank() -> int:
    """This process's rank in a Lightning run (0 outside one)."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def command(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a ``main(argv) -> int``: expected failures print ``{prog}: error: ...`` and return 2."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv) or 0
            except USER_ERRORS as err:
                if not isinstance(err, EVERY_RANK) or global_rank() == 0:
                    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                return 2

        return run

    return wrap
