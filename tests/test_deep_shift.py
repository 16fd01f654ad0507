"""``deep_shift_frames`` (issue 29, part 4): the lowest-resolution blocks shift k frames; default unchanged."""

import pytest
import torch

from ls_video.testing.tiny import tiny_unet
from ls_video.unet import TemporalConfig, apply_temporal_mixing, video_unet_forward


def _moved(unet) -> list[int]:
    return [h.frames_moved for m in unet.modules() for h in getattr(m, "_forward_pre_hooks", {}).values()
            if hasattr(h, "frames_moved")]


def test_default_moves_one_frame_everywhere_and_deep_blocks_move_k():
    assert set(_moved(apply_temporal_mixing(tiny_unet(), TemporalConfig("shift")))) == {1}
    unet = apply_temporal_mixing(tiny_unet(), TemporalConfig("shift", deep_shift_frames=3))
    deep = [m for part in (unet.down_blocks[-1], unet.mid_block, unet.up_blocks[0]) for m in part.modules()]
    deep_hooks = [h for m in deep for h in m._forward_pre_hooks.values() if hasattr(h, "frames_moved")]
    assert deep_hooks and all(h.frames_moved == 3 for h in deep_hooks)
    assert _moved(unet).count(1) == len(_moved(unet)) - len(deep_hooks) > 0
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in tiny_unet().parameters())


def test_deep_shift_reaches_further_and_one_frame_is_unchanged():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 12, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 5, 32, generator=g)
    far = x.clone()
    far[:, -1] += 1.0  # change only the last frame
    unet = tiny_unet().eval()
    with torch.no_grad():
        out = {}
        for k in (1, 4):
            apply_temporal_mixing(unet, TemporalConfig("shift", shift_fraction=0.25, deep_shift_frames=k))
            diff = video_unet_forward(unet, x, t, ctx) - video_unet_forward(unet, far, t, ctx)
            out[k] = diff[0].abs().amax((1, 2, 3))
            one = video_unet_forward(unet, x[:, :1], t, ctx)
            apply_temporal_mixing(unet, TemporalConfig("none"))
            assert torch.equal(one, video_unet_forward(unet, x[:, :1], t, ctx))  # F = 1: still the identity
    reach = {k: int((v > 0).sum()) for k, v in out.items()}  # frames that see the last one
    assert reach[4] > reach[1]


def test_deep_shift_frames_must_be_positive():
    with pytest.raises(ValueError, match="deep_shift_frames"):
        TemporalConfig("shift", deep_shift_frames=0)
