"""Cached text embeddings (datamodules/text_cache.py): preprocess writes the text encoder's output per caption and
the empty prompt's; training from them never loads the text encoder; shards from another text encoder are refused."""

from __future__ import annotations

import dataclasses
import io
import json

import lightning as L
import numpy as np
import pytest
import torch
import transformers
import webdataset as wds

from ls_video.components import load_components
from ls_video.datamodules.latent_video import LatentVideoDataModule
from ls_video.datamodules.preprocess import preprocess
from ls_video.datamodules.text_cache import EMPTY_FILE
from ls_video.errors import UsageError
from ls_video.module import LatentShiftModule
from ls_video.objective import ObjectiveConfig
from ls_video.optim import OptimConfig
from ls_video.testing.tiny import tiny_components
from ls_video.text import encode_prompts
from ls_video.toy.world import ToyWorld


@pytest.fixture()
def cached_shards(tiny_base, tmp_path):
    videos = ToyWorld(size=32, num_frames=4, object_size=8).write_videos(tmp_path / "videos", 6, "train")
    assert videos
    out = tmp_path / "shards"
    preprocess(str(tmp_path / "videos"), tiny_base, str(out), num_frames=4, fps=None, frame_stride=1, size=32,
               shard_size=3, num_workers=0, accelerator="cpu", text_encoder=tiny_base)
    return out


def samples(out):
    return [s for shard in sorted(out.glob("shard-*.tar"))
            for s in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)]


def test_preprocess_writes_each_captions_embedding_and_the_empty_prompts(cached_shards, tiny_base):
    """Fails if a sample carries another caption's states, or the empty-prompt file is not the encoder's ""."""
    parts = load_components(tiny_base)
    got = samples(cached_shards)
    assert len(got) == 6
    captions = [s["txt"].decode() for s in got]
    want = encode_prompts(captions, parts["tokenizer"], parts["text_encoder"]).numpy()
    for i, s in enumerate(got):
        embeds = np.load(io.BytesIO(s["text_embeds.npy"]), allow_pickle=False)
        assert embeds.dtype == np.float16
        np.testing.assert_allclose(embeds, want[i], rtol=1e-2, atol=1e-2)
    assert len({s["txt"] for s in got}) > 1 and not np.allclose(want[0], want[-1])
    empty = np.load(cached_shards / EMPTY_FILE, allow_pickle=False)
    np.testing.assert_allclose(empty, encode_prompts([""], parts["tokenizer"], parts["text_encoder"])[0].numpy(),
                               rtol=1e-2, atol=1e-2)
    assert json.loads(got[0]["json"])["text_shape"] == list(empty.shape)


def fit(module, shards, tmp_path, steps=3):
    data = LatentVideoDataModule(str(shards / "shard-{000000..000001}.tar"), batch_size=2, num_workers=0,
                                 shuffle_buffer=0)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    return data


def test_training_from_cached_embeddings_never_loads_the_text_encoder(cached_shards, tiny_base, tmp_path,
                                                                       monkeypatch):
    """Fails if the module (or anything in fit) loads a text encoder, or caption dropout ignores the cached
    empty-prompt embedding."""
    module = LatentShiftModule(tiny_base, cached_text_embeddings=True, optim=OptimConfig(warmup_steps=0),
                               objective=ObjectiveConfig(caption_dropout=0.5))
    assert module.text_encoder is None

    def refuse(*args, **kwargs):
        raise AssertionError("a text encoder was loaded")

    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", refuse)
    data = fit(module, cached_shards, tmp_path)
    assert module.global_step == 3 and module._sampling_text_encoder.module is None
    batch = data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    module.objective.config = dataclasses.replace(module.objective.config, caption_dropout=1.0)
    dropped = module.text_embeddings(batch, dropout=True)
    empty = torch.from_numpy(np.load(cached_shards / EMPTY_FILE, allow_pickle=False)).float()
    torch.testing.assert_close(dropped.float(), empty.expand_as(dropped))


def test_shards_from_another_text_encoder_are_refused(cached_shards, tiny_base, tmp_path):
    """A model whose text encoder differs from the one that made the shards (same width, other weights) stops
    before step 1 (fails if the check compares nothing but the width)."""
    other = tiny_components(seed=1)["text_encoder"]
    with pytest.raises(UsageError, match="made by text encoder"):
        fit(LatentShiftModule(tiny_base, components={"text_encoder": other}), cached_shards, tmp_path)


def test_cached_training_needs_shards_with_embeddings(tiny_base, tmp_path):
    from ls_video.datamodules.synthetic import write_synthetic_shards

    write_synthetic_shards(tmp_path / "plain", num_shards=2, per_shard=2, shape=(4, 4, 16, 16))
    with pytest.raises(UsageError, match="carry no text embeddings"):
        fit(LatentShiftModule(tiny_base, cached_text_embeddings=True), tmp_path / "plain", tmp_path)
