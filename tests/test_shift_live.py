"""The shift never disappears silently (issue #34, item 4): wrapped U-Nets get their frames or an error, hook
counts are the hooks registered now, LoRA load / fuse / unload keep the shift, and the frame count is per thread."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from diffusers import UNet2DConditionModel

from ls_video.errors import UsageError
from ls_video.lora import PEFT_FILE, LoraSettings, add_lora, merge_lora, save_adapter
from ls_video.pipeline import LatentShiftPipeline
from ls_video.testing.tiny import tiny_unet
from ls_video.unet import (
    TemporalConfig,
    apply_temporal_mixing,
    num_shift_hooks,
    refresh_shift_hooks,
    using_frames,
    video_unet_forward,
)

RESNETS = 8  # ResnetBlock2D in the tiny U-Net: one shift hook each


def inputs(b: int = 2, f: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, 4, 8, 8, generator=g), torch.tensor([10, 700][:b]), torch.randn(b, 5, 32, generator=g)


def shifted_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return apply_temporal_mixing(tiny_unet(**overrides).eval(), TemporalConfig(shift_fraction=0.25))


def lora_unet(act_fn: str = "silu") -> UNet2DConditionModel:
    """A shifted U-Net with a trained-looking adapter (``lora_B`` non-zero) added the project's way."""
    unet = shifted_unet(act_fn=act_fn)
    add_lora(unet, LoraSettings(rank=4))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return unet


class Wrapper(torch.nn.Module):
    """What DDP and accelerate put around a model: the model as ``.module``, forward delegated."""

    def __init__(self, module: torch.nn.Module, attribute: str = "module") -> None:
        super().__init__()
        setattr(self, attribute, module)
        self.attribute = attribute

    def forward(self, *args, **kwargs):
        return getattr(self, self.attribute)(*args, **kwargs)


def test_a_wrapped_unet_is_sampled_as_video():
    """DDP / accelerate-style wrapper (``.module``), nested in a ``torch.compile`` wrapper: the video through the
    wrappers equals the video through the U-Net (the old code gave the wrapper a null context: frames independent)."""
    unet = shifted_unet()
    x, t, ctx = inputs()
    with torch.no_grad():
        direct = video_unet_forward(unet, x, t, ctx)
        wrapped = video_unet_forward(Wrapper(unet), x, t, ctx)
        unshifted = video_unet_forward(apply_temporal_mixing(shifted_unet(), TemporalConfig("none")), x, t, ctx)
    assert not torch.allclose(direct, unshifted)
    assert torch.equal(wrapped, direct)
    compiled_ddp = torch.compile(Wrapper(unet))  # (lazy: nothing is compiled unless it is called)
    with using_frames(compiled_ddp, 3):
        assert unet._latent_shift.state.num_frames == 3


def test_peft_get_peft_model_adapter_sees_the_shift_and_unload_keeps_it():
    """PEFT's own ``get_peft_model`` on a shifted U-Net wraps ``conv1`` after the hook was installed. Through the
    ``PeftModel`` (under autograd, ReLU blocks: the shift is out of place) the video equals the one of the merged
    weights (old code: the hook stayed on the inner convolution, the adapter's branch saw unshifted frames);
    after PEFT's ``merge_and_unload`` the shift is still live."""
    from peft import LoraConfig, get_peft_model

    unet = shifted_unet(act_fn="relu")
    x, t, ctx = inputs()
    peft_model = get_peft_model(unet, LoraConfig(r=4, target_modules=["conv1", "to_q"], init_lora_weights=False))
    live = video_unet_forward(peft_model, x, t, ctx).detach()
    merged = peft_model.merge_and_unload()  # the plain U-Net again, adapter folded into its weights
    torch.testing.assert_close(video_unet_forward(merged, x, t, ctx).detach(), live, rtol=1e-4, atol=1e-5)
    assert num_shift_hooks(merged) == RESNETS


@pytest.mark.parametrize("wrap, message", [
    (lambda u: Wrapper(u, "net"), "cannot reach"),
    (torch.nn.DataParallel, "DataParallel"),
])
def test_an_unreachable_or_splitting_wrapper_is_a_usage_error(wrap, message):
    """A wrapper that hides the U-Net under another name, or DataParallel (splits the folded clip across devices,
    runs replicas in other threads): one-line UsageError, not a silent image model (the old null context)."""
    with pytest.raises(UsageError, match=message):
        with using_frames(wrap(shifted_unet()), 3):
            pass


def test_hook_count_is_the_live_hooks_and_unload_lora_keeps_the_shift():
    """diffusers' ``unet.unload_lora()`` replaces the adapter-wrapped ``conv1`` (where the shift hook sat) by the
    plain convolution. The count must say 0 hooks are live (the old count said 8: a stored number), and the next
    video call must still shift (old: frames independent after the unload)."""
    unet = lora_unet()
    unet.unload_lora()  # drops the adapter: the base weights remain
    assert num_shift_hooks(unet) == 0
    x, t, ctx = inputs()
    with torch.no_grad():
        after = video_unet_forward(unet, x, t, ctx)
        reference = video_unet_forward(shifted_unet(), x, t, ctx)
    assert num_shift_hooks(unet) == RESNETS
    torch.testing.assert_close(after, reference, rtol=0, atol=0)


def test_fuse_then_unload_keeps_the_shift():
    """diffusers' ``fuse_lora`` + ``unload_lora`` (what ``pipe.fuse_lora(); pipe.unload_lora_weights()`` call on
    the U-Net) give the same video as the project's ``merge_lora`` (old: the shift was gone after the unload)."""
    x, t, ctx = inputs()
    fused, merged = lora_unet(), merge_lora(lora_unet())
    fused.fuse_lora()
    fused.unload_lora()
    with torch.no_grad():
        torch.testing.assert_close(video_unet_forward(fused, x, t, ctx), video_unet_forward(merged, x, t, ctx))


def test_an_adapter_loaded_by_diffusers_sees_the_shifted_input(tmp_path):
    """``unet.load_lora_adapter`` (what ``pipe.load_lora_weights`` calls) wraps ``conv1`` after the shift hook was
    installed: the adapter's branch must see the shifted input as in training (ReLU blocks under autograd shift
    out of place, so the old hook on the inner convolution left the adapter's branch unshifted)."""
    trained = lora_unet(act_fn="relu")
    save_adapter(trained, LoraSettings(rank=4), str(tmp_path))
    loaded = shifted_unet(act_fn="relu")
    loaded.load_lora_adapter(str(tmp_path), weight_name=PEFT_FILE, prefix="unet")
    x, t, ctx = inputs()
    expected = video_unet_forward(trained, x, t, ctx).detach()
    got = video_unet_forward(loaded, x, t, ctx).detach()
    torch.testing.assert_close(got, expected)
    assert not refresh_shift_hooks(loaded)  # the call moved the hooks already
    assert num_shift_hooks(loaded) == RESNETS


def test_two_threads_sample_1_and_6_frames_at_once(tiny_base):
    """Two threads sample with one U-Net at the same moment (a barrier inside the U-Net makes every denoising
    step overlap): a 1-frame and a 6-frame clip, each equal to what it gives alone. Old code: one frame count for
    all threads, so one thread sampled at the other's count."""
    pipe = LatentShiftPipeline.from_pretrained(tiny_base)
    pipe.set_progress_bar_config(disable=True)
    other = LatentShiftPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet,
                                type(pipe.scheduler).from_config(pipe.scheduler.config))
    other.set_progress_bar_config(disable=True)
    jobs = {"image": (pipe, dict(num_frames=1, num_videos_per_prompt=6)),  # both: 12 images per U-Net call
            "video": (other, dict(num_frames=6, num_videos_per_prompt=1))}

    def sample(name: str) -> torch.Tensor:
        p, kw = jobs[name]
        return p("a red square moving left", num_inference_steps=3, output_type="pt",
                 generator=torch.Generator().manual_seed(0), **kw).frames

    alone = {name: sample(name) for name in jobs}
    barrier = threading.Barrier(2, timeout=60)

    def meet(module: torch.nn.Module, args: tuple) -> None:
        barrier.wait()  # both threads are inside the U-Net, each at its own frame count

    handle = pipe.unet.conv_in.register_forward_pre_hook(meet)
    together, errors = {}, []

    def worker(name: str) -> None:
        try:
            together[name] = sample(name)
        except BaseException as err:  # noqa: BLE001 (reported by the main thread)
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        handle.remove()
    assert not errors, errors
    for name in jobs:
        assert torch.equal(together[name], alone[name]), name


def test_bad_temporal_settings_are_one_line_usage_errors(tmp_path):
    """``deep_shift_frames`` below 1, an unknown key in a hand-edited ``latent_shift.json``, a frame count of 0:
    UsageError (one line from the CLI), not a bare ValueError / TypeError traceback."""
    with pytest.raises(UsageError, match="deep_shift_frames"):
        TemporalConfig(deep_shift_frames=0)
    (tmp_path / "latent_shift.json").write_text(json.dumps({"temporal_mixing": "shift", "shift_fracton": 0.2}))
    with pytest.raises(UsageError, match="shift_fracton"):
        TemporalConfig.load(tmp_path)
    with pytest.raises(UsageError, match="num_frames"):
        using_frames(shifted_unet(), 0)
