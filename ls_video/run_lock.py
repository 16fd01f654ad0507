"""One live run per run folder: ``fit`` takes ``{root}/.ls-video.lock`` (its pid and host) and a second run
into the same folder is refused in one line; a lock left by a dead process is taken over."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import time

from ls_video.errors import UsageError

LOCK_NAME = ".ls-video.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_first_process() -> bool:
    """Whether this is the launch's first process (the others of a distributed run share its lock)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: str) -> tuple[int, str] | None:
    """(pid, host) written in the lock file, ``None`` if it is unreadable (being written or garbage)."""
    try:
        pid, host = open(path).read().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def acquire(root: str) -> str:
    """Take the lock of run folder ``root`` for this process (released at exit); raises :class:`UsageError`
    naming the holder when a live process has it."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_NAME)
    me, host = os.getpid(), socket.gethostname()
    for attempt in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and attempt < 4:  # being written by the run that just created it
                time.sleep(0.1)
                continue
            if holder == (me, host):
                return path
            if holder is not None and (holder[1] != host or _alive(holder[0])):
                where = "" if holder[1] == host else f" on {holder[1]}"
                raise UsageError(f"run folder {root} is in use by another run (pid {holder[0]}{where}, lock "
                                 f"{path}): use another --trainer.default_root_dir, or stop that run first"
                                 ) from None
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{me} {host}\n")
        atexit.register(release, path)
        return path
    raise UsageError(f"could not take the run folder lock {path} (another run is starting there)")


def release(path: str) -> None:
    """Remove the lock if this process still holds it."""
    if _holder(path) == (os.getpid(), socket.gethostname()):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
