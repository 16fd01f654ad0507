"""Local folder or Hugging Face Hub id: one rule for every place that takes a model path.

:func:`is_local`: a path that exists, or starts with ``/``, ``./``, ``../`` or ``~``, is a local folder; anything
else (``ORG/NAME``) is a Hub id. :func:`resolve` turns either into a local folder: the path itself, or the snapshot
folder that diffusers / ``huggingface_hub`` download into (or find in) the Hugging Face cache, at ``revision`` and
with the weights of ``variant``. Everything after it (subfolders, ``model_index.json``, ``unet/latent_shift.json``,
an exported baseline's added layers) is then read from that folder. A missing local folder and a Hub id that cannot
be resolved each end in their own one-line error.
"""

from __future__ import annotations

import os
from typing import Any

from ls_video.errors import UsageError

LOCAL_PREFIXES = ("/", "./", "../", "~", "." + os.sep, ".." + os.sep)
SINGLE_MODEL_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # a repo holding one model (e.g. a VAE)
DOWNLOAD_KWARGS = ("revision", "cache_dir", "token", "force_download", "proxies", "local_files_only")


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a local folder (it exists, or starts with ``/``, ``./``, ``../``, ``~``) rather
    than a Hub id."""
    path = os.fspath(path)
    return path in (".", "..") or path.startswith(LOCAL_PREFIXES) or os.path.isabs(path) or os.path.exists(path)


def offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES",
                                                                                               "TRUE")


def resolve(path: str | os.PathLike, revision: str | None = None, variant: str | None = None,
            what: str = "model", **download: Any) -> str:
    """The local folder ``path`` names: itself (``~`` expanded), or for a Hub id its snapshot folder in the
    Hugging Face cache (a pipeline repo through ``DiffusionPipeline.download``, which picks the components' files
    and the ``variant``; a one-model repo such as a VAE through ``snapshot_download``).

    Raises:
        FileNotFoundError: a local folder that does not exist.
        UsageError: a Hub id that cannot be resolved (offline and not cached, unknown repo or revision).
    """
    path = os.fspath(path)
    if not is_local(path) and path.count("/") > 1:  # (a Hub id is ORG/NAME: this was meant as a local path)
        raise FileNotFoundError(f"{what} folder not found: {path} (not a Hub id ORG/NAME either)")
    if is_local(path):
        local = os.path.expanduser(path)
        if not os.path.exists(local):
            raise FileNotFoundError(f"{what} folder not found: {path} (a local path; a Hub id looks like ORG/NAME)")
        return local
    try:
        return _download(path, revision, variant, **download)
    except UsageError:
        raise
    except _not_resolved() as err:
        raise UsageError(_unresolved(path, revision, what, err)) from err


def _not_resolved() -> tuple[type[BaseException], ...]:
    """What huggingface_hub / diffusers raise for a repo, revision or file they cannot get (not cached offline,
    unknown, gated, no network, an id that is not one)."""
    import httpx
    from huggingface_hub.errors import EntryNotFoundError

    return OSError, ValueError, EntryNotFoundError, httpx.HTTPError


def _unresolved(repo: str, revision: str | None, what: str, err: BaseException) -> str:
    from huggingface_hub import constants

    at = f" at revision {revision}" if revision else ""
    local = "or pass a local folder (a path starting with ./ or /)"
    if offline():
        return (f"{what} {repo!r}{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                f"is set: download it once online (hf download {repo}), {local}")
    reason = " ".join(str(err).split())
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return f"{what} {repo!r}{at} could not be resolved on the Hugging Face Hub ({type(err).__name__}: {reason}); " \
           f"check the id, {local}"


def _download(repo: str, revision: str | None, variant: str | None, **download: Any) -> str:
    from huggingface_hub import hf_hub_download, snapshot_download

    from ls_video.pipeline import LatentShiftPipeline  # (the pipeline resolves its path here: imported on use)

    local_only = download.pop("local_files_only", None) or offline()
    try:
        hf_hub_download(repo, "model_index.json", revision=revision, local_files_only=local_only, **download)
        pipeline = True
    except _not_resolved():  # not a pipeline repo (or not reachable: snapshot_download says which)
        pipeline = False
    if pipeline:  # (as LatentShiftPipeline: its own components only, and exported folders name it in model_index)
        return str(LatentShiftPipeline.download(repo, revision=revision, variant=variant, local_files_only=local_only,
                                                **download))
    return str(snapshot_download(repo, revision=revision, allow_patterns=SINGLE_MODEL_FILES,
                                 local_files_only=local_only, **download))


def split_download_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the Hub download options (revision, cache_dir, token, ...) out of ``from_pretrained`` kwargs."""
    return {k: kwargs.pop(k) for k in DOWNLOAD_KWARGS if k in kwargs}
