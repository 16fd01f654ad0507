"""LoRA (ls_video/lora.py, configs/lora.yaml): the adapter sees the shift, trains alone, checkpoints alone, survives
two processes, EMA and a resume, and exports as a merged diffusers folder and as PEFT / Kohya adapter files that
diffusers' own loader reads back to the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from shipped import ROOT, run, shipped_toy, write

from ls_video.checkpoint import EMA_KEY, load_checkpoint
from ls_video.commands.export import export
from ls_video.errors import UsageError
from ls_video.lora import KOHYA_FILE, PEFT_FILE, LoraSettings, add_lora, merge_lora
from ls_video.testing.tiny import tiny_unet
from ls_video.unet import TemporalConfig, apply_temporal_mixing, video_unet_forward


def lora_unet(targets: str = "resnet+attention", act_fn: str = "silu") -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = apply_temporal_mixing(tiny_unet(act_fn=act_fn), TemporalConfig(shift_fraction=0.25))
    add_lora(unet, LoraSettings(rank=4, target_modules=targets))
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return unet


@pytest.mark.parametrize("act_fn", ["silu", "relu"])
def test_the_adapter_on_conv1_sees_the_shifted_input(act_fn):
    """A video through the live adapter equals the same video through the merged weights, with gradients on as in
    training (the ReLU case fails if the shift hook stays on the wrapped convolution: the low-rank branch would
    then see unshifted frames; SiLU blocks shift in place, which would hide it)."""
    unet = lora_unet(act_fn=act_fn)
    x, t, text = torch.randn(2, 4, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 5, 32)
    live = video_unet_forward(unet, x, t, text).detach()
    merge_lora(unet)
    merged = video_unet_forward(unet, x, t, text).detach()
    assert not any("lora" in n for n, _ in unet.named_parameters())
    torch.testing.assert_close(live, merged, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("targets, convs", [("resnet+attention", True), ("attention", False)])
def test_only_the_adapter_trains_and_the_targets_decide_where(targets, convs):
    """Every trainable tensor is an adapter's; the default reaches every ResNet block's conv1 (fails if the
    base stays trainable or the conv targets are lost)."""
    unet = lora_unet(targets)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    conv1 = {n.split(".conv1.")[0] for n in trainable if ".conv1.lora_A" in n}
    resnets = {n for n, m in unet.named_modules() if type(m).__name__ == "ResnetBlock2D"}
    assert conv1 == (resnets if convs else set())


def test_lora_and_trainable_patterns_together_are_refused(tiny_base):
    from ls_video.module import LatentShiftModule
    from ls_video.optim import OptimConfig

    with pytest.raises(UsageError, match="trainable_patterns"):
        LatentShiftModule(tiny_base, optim=OptimConfig(trainable_patterns=["conv1"]), lora=LoraSettings(rank=2))


def lora_run(tmp_path: Path, base: str, **trainer) -> Path:
    cfg = shipped_toy(tmp_path, base, **trainer)
    cfg["model"].update(yaml.safe_load((ROOT / "configs" / "lora.yaml").read_text())["model"])
    cfg["model"]["lora"]["rank"] = 4
    return write(cfg, tmp_path / "config.yaml")


def test_shipped_lora_overlay_in_two_processes_resumes_and_exports(tiny_base, tmp_path):
    """configs/toy.yaml + configs/lora.yaml with every callback, 2 DDP processes: the checkpoint holds only the
    adapter (raw and EMA); a resume continues; the merged export is a plain diffusers U-Net with the base's keys;
    the PEFT and Kohya files load through diffusers' ``load_lora_weights`` to exactly the merged weights."""
    config = lora_run(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=4, val_check_interval=2)
    done = run("fit", "-c", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    unet_keys = [k for k in ckpt["state_dict"] if k.startswith("unet.")]
    assert unet_keys and all(".lora_" in k for k in unet_keys)
    assert sorted(ckpt[EMA_KEY]) == sorted(k[len("unet."):] for k in unet_keys)

    resumed = run("fit", "-c", str(config), "--trainer.max_steps", "6", "--ckpt_path", str(ckpt_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(ckpt_path)["global_step"] == 6

    export(str(ckpt_path), str(tmp_path / "merged"))
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged" / "unet").state_dict()
    base = UNet2DConditionModel.from_pretrained(Path(tiny_base) / "unet").state_dict()
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith((".weight",)) and any(t in k for t in ("conv1", "conv2", "to_")) for k in changed)

    export(str(ckpt_path), str(tmp_path / "adapter"), adapter_only=True)
    for weight_name in (PEFT_FILE, KOHYA_FILE):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(str(tmp_path / "adapter"), weight_name=weight_name)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        loaded = pipe.unet.state_dict()
        for key in merged:
            torch.testing.assert_close(loaded[key], merged[key], rtol=1e-5, atol=1e-6, msg=f"{weight_name}: {key}")
    assert TemporalConfig.load(tmp_path / "adapter").shift_fraction == 0.25


def test_adapter_only_export_of_a_full_checkpoint_is_a_one_line_error(tmp_path):
    ckpt = tmp_path / "full.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"pretrained_model_name_or_path": "x"}}, ckpt)
    with pytest.raises(UsageError, match="needs a LoRA checkpoint"):
        export(str(ckpt), str(tmp_path / "out"), adapter_only=True)
