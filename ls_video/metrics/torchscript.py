"""TorchScript feature networks (StyleGAN-V's I3D and C3D, the StyleGAN2-ADA Inception-v3) from a path or URL.

A URL the user gives is downloaded once into ``LS_VIDEO_CACHE`` (default ``~/.cache/ls_video/metrics``);
nothing downloads by default. TorchScript archives hold tensors and TorchScript code, not pickled Python
objects, so loading one runs no arbitrary Python. The SHA-256 of the file goes into every result.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request

import torch

from ls_video.errors import UsageError


def is_url(path: str) -> bool:
    return urllib.parse.urlparse(str(path)).scheme in ("http", "https")


def is_torchscript_path(path: str) -> bool:
    """A ``.pt`` / ``.pth`` name (file or URL): the published extractors ship as TorchScript archives."""
    name = urllib.parse.urlparse(str(path)).path if is_url(path) else str(path)
    return name.lower().endswith((".pt", ".pth"))


def cache_dir() -> str:
    return os.environ.get("LS_VIDEO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ls_video", "metrics"))


def fetch(path: str) -> str:
    """A local file for ``path``: the path itself, or the URL downloaded once into :func:`cache_dir`."""
    if not is_url(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature network {path} not found")
        return path
    name = os.path.basename(urllib.parse.urlparse(path).path) or "network.pt"
    local = os.path.join(cache_dir(), hashlib.sha256(path.encode()).hexdigest()[:12] + "-" + name)
    if not os.path.isfile(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = local + ".part"
        with urllib.request.urlopen(path) as response, open(tmp, "wb") as f:  # noqa: S310 (a URL the user gave)
            shutil.copyfileobj(response, f)
        os.replace(tmp, local)
    return local


def sha256_file(path: str) -> str:
    """Full SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_torchscript(path: str, device: str = "cpu") -> tuple[torch.jit.ScriptModule, str, str]:
    """``(module in eval mode on device, local file, SHA-256)``; a non-TorchScript file is a one-line error."""
    local = fetch(path)
    try:
        module = torch.jit.load(local, map_location=device).eval()
    except RuntimeError as err:
        raise UsageError(f"{path} is not a TorchScript archive ({str(err).splitlines()[0][:120]})") from err
    return module, local, sha256_file(local)
