"""Files the project ships beside its code: ``configs/`` and the toy base ``assets/toy-base``.

In a clone they are folders of the checkout; in an installed wheel they are package data of ``ls_video``
(``ls_video.configs``, ``ls_video.assets``: the same names in a clone, see ``ls_video/__init__.py``). Commands
accept the clone's relative paths (``-c configs/toy.yaml``, ``assets/toy-base``) from any folder:
a path that does not exist where the command runs is looked up among the shipped files.
"""

from __future__ import annotations

import importlib.resources
import os

SHIPPED_FOLDERS = ("configs", "assets")


def shipped_path(path: str) -> str:
    """``path`` itself when it exists (or is absolute); a missing ``configs/...`` or ``assets/...`` path: the
    shipped copy (clone or installed package); ``NAME`` alone: ``configs/NAME.yaml`` (``ls-video fit -c toy``)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    parts = path.replace(os.sep, "/").split("/")
    if len(parts) == 1 and not path.endswith((".yaml", ".yml")):
        parts = ["configs", f"{path}.yaml"]
    if parts[0] not in SHIPPED_FOLDERS or len(parts) < 2:
        return path
    try:
        candidate = importlib.resources.files(f"ls_video.{parts[0]}").joinpath(*parts[1:])
    except ModuleNotFoundError:
        return path
    return str(candidate) if candidate.is_file() or candidate.is_dir() else path


def shipped_args(args: list[str]) -> list[str]:
    """Command-line arguments with the values of ``-c`` / ``--config`` / ``--data`` and of
    ``--model.pretrained_model_name_or_path`` resolved by :func:`shipped_path`."""
    keys = ("-c", "--config", "--data", "--model.pretrained_model_name_or_path")
    out = list(args)
    for i, arg in enumerate(out):
        if arg in keys and i + 1 < len(out):
            out[i + 1] = shipped_path(out[i + 1])
        elif arg.startswith(tuple(f"{k}=" for k in keys[1:])):
            key, value = arg.split("=", 1)
            out[i] = f"{key}={shipped_path(value)}"
    return out
