"""A real Hugging Face cache, laid out from a local folder exactly as ``huggingface_hub`` downloads a repo.

    HF_HOME/hub/models--ORG--NAME/
        blobs/<etag>                       one file per content (git blob sha1; sha256 for LFS weights)
        refs/main                          the commit hash ``main`` points at
        snapshots/<commit>/<path>          relative symlinks into ../blobs
        trees/<commit>.json                the repo's file listing (what ``snapshot_download`` caches)

With ``HF_HOME`` pointing at the folder and ``HF_HUB_OFFLINE=1``, ``from_pretrained("ORG/NAME")`` (diffusers,
transformers, huggingface_hub) loads it without a network: the tests' stand-in for a downloaded Hub model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".model")


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub's ``/tree`` endpoint) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_folder(hf_home: str | os.PathLike, repo_id: str) -> Path:
    """``HF_HOME/hub/models--ORG--NAME``."""
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def add_to_cache(folder: str | os.PathLike, hf_home: str | os.PathLike, repo_id: str,
                 revision: str = "main") -> Path:
    """Put every file under ``folder`` into the cache as repo ``repo_id`` at ``revision``; returns the snapshot
    folder. The commit hash is derived from the contents, so the same folder gives the same snapshot."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entries, blobs = {}, {}
    for path in files:
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        entry = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if path.suffix in LFS_SUFFIXES:
            sha256 = hashlib.sha256(data).hexdigest()
            entry.update(lfs_sha256=sha256, lfs_size=len(data))
            blobs[rel] = (sha256, data)  # LFS files are stored under their sha256
        else:
            blobs[rel] = (entry["blob_id"], data)  # others under their git blob id (the etag)
        entries[rel] = entry
    commit = hashlib.sha1(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    repo = cache_folder(hf_home, repo_id)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, (etag, data) in blobs.items():
        blob = repo / "blobs" / etag
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}, indent=2))
    return snapshot
