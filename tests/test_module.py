import lightning as L
import pytest
import torch

from ls_video.module import LatentShiftModule
from ls_video.objective import ObjectiveConfig
from ls_video.optim import OptimConfig
from ls_video.performance import PerformanceConfig
from ls_video.unet import TemporalConfig, get_temporal_config


def kw(components: dict) -> dict:
    """Tiny components as the module's ``components`` argument."""
    return {"components": dict(components)}


def batch(b=2, f=3):
    return {"latents": torch.randn(b, f, 4, 8, 8), "captions": ["a red square moving left", "a blue circle"][:b]}


def test_loads_from_base_folder_and_freezes(tiny_base):
    m = LatentShiftModule(tiny_base)
    assert get_temporal_config(m.unet).temporal_mixing == "shift"
    assert not any(p.requires_grad for p in m.vae.parameters())
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    m.train()
    assert m.unet.training and not m.vae.training and not m.text_encoder.training
    opt = m.configure_optimizers()["optimizer"]
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in m.unet.parameters()}


def test_explicit_components(components):
    m = LatentShiftModule(**kw(components), temporal=TemporalConfig(temporal_mixing="none"))
    assert get_temporal_config(m.unet).temporal_mixing == "none"
    with pytest.raises(ValueError, match="pretrained_model_name_or_path"):
        LatentShiftModule(components=dict(vae=components["vae"]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_step_learns(components, prediction_type):
    torch.manual_seed(0)
    objective = ObjectiveConfig(prediction_type=prediction_type, snr_gamma=5.0, caption_dropout=0.0)
    m = LatentShiftModule(**kw(components), objective=objective, optim=OptimConfig(warmup_steps=0, learning_rate=1e-3))
    opt = m.configure_optimizers()["optimizer"]
    b = batch()
    fixed = torch.full((2,), 500)
    with torch.no_grad():
        start = m.diffusion_loss(b["latents"], m.encode_text(b["captions"]), fixed, torch.Generator().manual_seed(1))
    for _ in range(15):
        opt.zero_grad()
        loss = m.diffusion_loss(b["latents"], m.encode_text(b["captions"]), fixed, torch.Generator().manual_seed(1))
        loss.backward()
        opt.step()
    assert loss.item() < start.item()
    assert all(p.grad is None for p in m.vae.parameters())


def test_caption_dropout_uses_empty_prompt(components):
    """The objective's probability (1.0 here) decides for training batches; other batches are never dropped."""
    m = LatentShiftModule(**kw(components), objective=ObjectiveConfig(caption_dropout=1.0))
    b = batch()
    dropped = m.text_embeddings(b, dropout=True)
    assert torch.allclose(dropped, m.encode_text([""]).expand_as(dropped))
    kept = m.text_embeddings(b)
    assert torch.allclose(kept, m.encode_text(b["captions"]))


def test_precomputed_text_embeddings_are_used(components):
    m = LatentShiftModule(**kw(components), objective=ObjectiveConfig(caption_dropout=0.0))
    b = batch()
    b["text_embeds"] = torch.zeros(2, 16, 32)
    assert torch.equal(m.text_embeddings(b), b["text_embeds"])


def test_trainable_patterns_select_parameters(components):
    m = LatentShiftModule(**kw(components), optim=OptimConfig(trainable_patterns=["conv1"]))
    names = [n for n, p in m.unet.named_parameters() if p.requires_grad]
    assert names and all("conv1" in n for n in names)


def test_fit_checkpoint_holds_only_trainable_state(tiny_base, tmp_path):
    m = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
    data = [batch(2, 2) for _ in range(2)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer = L.Trainer(max_steps=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        limit_val_batches=1, enable_model_summary=False, accelerator="cpu")
    trainer.fit(m, loader, loader)
    ckpt_path = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    ckpt = torch.load(ckpt_path, weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("unet.") for k in keys)
    assert not any(k.startswith(("vae.", "text_encoder.")) for k in keys)
    restored = LatentShiftModule.load_from_checkpoint(ckpt_path, weights_only=True)
    for (name, a), b in zip(m.unet.state_dict().items(), restored.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_performance_options(components):
    m = LatentShiftModule(**kw(components), performance=PerformanceConfig(channels_last=True),
                          optim=OptimConfig(fused_adamw=None))
    conv = m.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    opt = m.configure_optimizers()["optimizer"]
    assert not opt.defaults.get("fused")  # CPU parameters: the fused kernel is not used
    loss = m.training_step(batch(), 0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("precision,vae_dtype,text_dtype", [("bf16-mixed", torch.bfloat16, torch.bfloat16),
                                                             ("32-true", torch.float32, torch.float32)])
def test_frozen_parts_run_in_the_training_precision(components, tmp_path, precision, vae_dtype, text_dtype):
    """(``16-mixed`` keeps the VAE in fp32; Lightning turns it into ``bf16-mixed`` on CPUs, so it is not
    tested here.)"""
    m = LatentShiftModule(**kw(components))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader([batch(), batch()], batch_size=None)
    trainer.fit(m, train_dataloaders=loader)
    assert next(m.vae.parameters()).dtype == vae_dtype and next(m.text_encoder.parameters()).dtype == text_dtype
    assert next(m.unet.parameters()).dtype == torch.float32  # the trained weights stay fp32 (mixed precision)
    assert trainer.global_step == 2
