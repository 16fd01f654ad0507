"""The latent shard format (see docs/DATA.md) and its safe reader.

One WebDataset sample per clip:

* ``latents.npy`` float16 ``(F, C, h, w)`` **unscaled** VAE latents (the posterior mean; the model
  multiplies by ``vae.config.scaling_factor``), saved and loaded without pickle;
* ``txt`` the caption (UTF-8);
* ``json`` metadata: source, frame indices, fps, original size, VAE and scaling factor, ``scaled``;
* optional ``text_embeds.npy`` float16 ``(L, D)`` precomputed text-encoder states.

Members that could carry pickles (``.pyd``, ``.pickle``, ``.pkl``, ``.pth``, ``.pt``) are refused.
"""

from __future__ import annotations

import io
import json

import numpy as np

UNSAFE_EXTENSIONS = ("pyd", "pickle", "pkl", "pth", "pt")


class UnsafeShardError(ValueError):
    """A shard holds a member that could execute code when loaded."""


class BadSampleError(ValueError):
    """A sample that cannot be used; ``reason`` is a short key for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_sample(key: str, latents: np.ndarray, caption: str, meta: dict,
                  text_embeds: np.ndarray | None = None) -> dict:
    """A dict for ``webdataset.TarWriter.write``."""
    sample = {"__key__": key, "latents.npy": npy_bytes(latents.astype(np.float16)),
              "txt": caption.encode("utf-8"), "json": json.dumps(meta).encode("utf-8")}
    if text_embeds is not None:
        sample["text_embeds.npy"] = npy_bytes(text_embeds.astype(np.float16))
    return sample


def check_safe(sample: dict) -> None:
    """Raise :class:`UnsafeShardError` if any member could hold a pickle."""
    for name in sample:
        if name.startswith("__"):
            continue
        if name.rsplit(".", 1)[-1].lower() in UNSAFE_EXTENSIONS:
            raise UnsafeShardError(f"refusing shard member '{sample.get('__key__')}.{name}' from "
                                   f"{sample.get('__url__', '?')}: pickle-capable formats are never loaded")


def decode_sample(sample: dict, latent_channels: int | None = None) -> dict:
    """Raw tar members -> ``{"latents": (F, C, h, w) float16, "caption": str, "meta": dict, ...}``.

    Raises :class:`UnsafeShardError` for pickle members and :class:`BadSampleError` for anything
    unusable (missing keys, bad array, non-finite values, bad caption).
    """
    check_safe(sample)
    if "latents.npy" not in sample:
        raise BadSampleError("missing_latents", str(sample.get("__key__")))
    try:
        latents = load_npy(sample["latents.npy"])
    except Exception as err:  # noqa: BLE001 - numpy raises several types for corrupt bytes
        raise BadSampleError("corrupt_npy", f"{type(err).__name__}: {err}") from None
    if latents.ndim != 4 or not np.issubdtype(latents.dtype, np.floating):
        raise BadSampleError("bad_shape", f"expected float (F, C, h, w), got {latents.dtype} {latents.shape}")
    if latent_channels is not None and latents.shape[1] != latent_channels:
        raise BadSampleError("bad_shape", f"expected {latent_channels} channels, got {latents.shape[1]}")
    if not np.isfinite(latents).all():
        raise BadSampleError("non_finite")
    try:
        caption = sample.get("txt", b"").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadSampleError("bad_caption", "not UTF-8") from None
    if not caption:
        raise BadSampleError("empty_caption", str(sample.get("__key__")))
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadSampleError("bad_json") from None
    out = {"latents": latents, "caption": caption, "meta": meta, "key": sample.get("__key__", "")}
    if "text_embeds.npy" in sample:
        try:
            out["text_embeds"] = load_npy(sample["text_embeds.npy"])
        except Exception as err:  # noqa: BLE001
            raise BadSampleError("corrupt_npy", f"text_embeds: {err}") from None
    return out
