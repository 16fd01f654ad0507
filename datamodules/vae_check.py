"""Shards against the model, before step 1: latents made by another VAE train silently on garbage."""

from __future__ import annotations

import json
import logging

from ls_video.datamodules.storage import RemoteOptions, tar_samples
from ls_video.errors import UsageError

log = logging.getLogger(__name__)


class VaeMismatchError(UsageError):
    """The shards were made with a VAE other than the model's."""


def first_meta(url: str, remote: RemoteOptions | None = None) -> dict | None:
    """The ``.json`` of the first sample of shard ``url`` (``None`` when it cannot be read)."""
    for sample in tar_samples(url, handler=lambda err: True, opts=remote):
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError):
                return None
            return meta if isinstance(meta, dict) else None
    return None


def check_vae(url: str, meta: dict | None, vae, model_name: str | None) -> None:
    """Compare the VAE recorded in ``meta`` (``url``'s first sample, :func:`first_meta`) with ``vae``; raise
    :class:`VaeMismatchError`.

    Shards without the record (made before it existed) are not checked, with a note in the log.
    """
    from ls_video.components import vae_fingerprint

    if not meta or "vae_fingerprint" not in meta:
        log.info("%s carries no VAE record (made by an older preprocessing job): not checked against the model", url)
        return
    ours = {"vae_fingerprint": vae_fingerprint(vae), "latent_channels": int(vae.config.latent_channels),
            "scaling_factor": float(vae.config.scaling_factor)}
    differ = [k for k, v in ours.items() if k in meta and meta[k] != v]
    if differ:
        theirs = ", ".join(f"{k}={meta[k]}" for k in differ)
        mine = ", ".join(f"{k}={ours[k]}" for k in differ)
        raise VaeMismatchError(f"{url} was made with VAE {meta.get('vae')!r} ({theirs}) but the model's VAE "
                               f"{model_name!r} has {mine}; preprocess with the model's VAE, or pass "
                               "--data.init_args.allow_vae_mismatch true")
