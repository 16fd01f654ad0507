"""The 16-frame long-range metrics (issue 29): 1.0 on rendered clips, and each fails on a broken clip."""

import dataclasses

import numpy as np
import pytest

from ls_video.metrics.toy import count_objects, long_range, score_long
from ls_video.toy.world import ToyWorld

WORLD = ToyWorld(size=32, num_frames=16, object_size=8, max_speed=1, min_travel=0.45)  # configs/toy16.yaml
KEYS = ("identity", "constant", "direction_all", "direction_late", "single")


def _clip(direction: str = "right", color: str = "red", shape: str = "square"):
    rng = np.random.default_rng(0)
    return next(c for c in (WORLD.sample_clip(rng) for _ in range(2000))
                if (c.direction, c.color, c.shape) == (direction, color, shape))


def test_rendered_clips_score_one_everywhere():
    clips = WORLD.clips(64)
    result = score_long([WORLD.render(c) for c in clips], [c.caption for c in clips])
    assert all(result[k] == 1.0 for k in KEYS), result
    assert result["spread"] == 0.0


def test_colour_change_at_frame_9_breaks_identity_only():
    clip = _clip(shape="circle")
    video = WORLD.render(clip)
    blue = dataclasses.replace(clip, color="blue")
    video[9:] = np.stack([WORLD.render_frame(blue, p) for p in clip.positions[9:]])
    got = long_range(video, clip.direction)
    assert not got["identity"]
    assert got["constant"] and got["direction_all"] and got["direction_late"] and got["single"]


def test_shape_change_breaks_identity():
    clip = _clip()
    video = WORLD.render(clip)
    disc = dataclasses.replace(clip, shape="circle")
    video[9:] = np.stack([WORLD.render_frame(disc, p) for p in clip.positions[9:]])
    assert not long_range(video, clip.direction)["identity"]


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_reversal_at_frame_8_breaks_velocity_and_direction(direction):
    clip = _clip(direction)
    pos = clip.positions[:9] + clip.positions[7::-1][:7]  # back the way it came from frame 9 on
    video = np.stack([WORLD.render_frame(clip, p) for p in pos])
    got = long_range(video, direction)
    assert not got["constant"] and not got["direction_late"] and not got["direction_all"]
    assert got["identity"] and got["single"]


def test_late_reversal_keeps_whole_clip_direction_but_not_second_half():
    clip = _clip("down")
    pos = clip.positions[:12] + clip.positions[10:6:-1]
    got = long_range(np.stack([WORLD.render_frame(clip, p) for p in pos]), "down")
    assert got["direction_all"] and not got["direction_late"] and not got["constant"]


def test_speed_change_breaks_constant_velocity():
    clip = _clip("left")
    x0, y0 = clip.positions[0]
    xs = [x0 - t for t in range(8)] + [x0 - 7 - 2 * t for t in range(1, 9)]  # 1 px/frame, then 2
    video = np.stack([WORLD.render_frame(clip, (max(0, x), y0)) for x in xs])
    got = long_range(video, "left")
    assert not got["constant"] and got["direction_all"] and got["direction_late"]


def test_static_object_is_not_constant_velocity():
    clip = _clip()
    video = np.stack([WORLD.render_frame(clip, clip.positions[0])] * 16)
    got = long_range(video, clip.direction)
    assert not got["constant"] and not got["direction_all"] and got["identity"] and got["single"]


def test_second_object_or_missing_frame_breaks_single():
    clip = _clip("up")
    video = WORLD.render(clip)
    two = video.copy()
    two[10, 0:4, 0:4] = 200  # a second blob in one frame
    assert not long_range(two, "up")["single"]
    gone = video.copy()
    gone[5] = 0  # the object vanishes for a frame
    got = long_range(gone, "up")
    assert not got["single"] and not got["constant"]


def test_count_objects_ignores_specks():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True
    mask[6, 6] = True  # 1 px: a speck
    assert count_objects(mask) == 1
    mask[5:8, 5:8] = True
    assert count_objects(mask) == 2


def test_toy_vae_resolves_one_pixel_per_frame():
    """configs/toy16.yaml's motion survives the base's VAE: the decoded object moves 1 px every frame,
    and the latent centroid moves about 1/4 latent px per frame, forward on almost every step."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained("assets/toy-base", subfolder="vae").eval()
    with torch.no_grad():
        bg = vae.encode(torch.full((1, 3, 32, 32), -1.0)).latent_dist.mean
    lat, dec = [], []
    for clip in WORLD.clips(16):
        video = torch.from_numpy(WORLD.render(clip)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            z = vae.encode(video).latent_dist.mean
            frames = ((vae.decode(z).sample.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        unit = np.array({"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[clip.direction], float)
        e = (z - bg).abs().sum(1)
        e = torch.where(e > 0.25 * e.amax((1, 2), keepdim=True), e, 0.0).numpy()  # the object's latent pixels
        ys, xs = np.mgrid[0 : e.shape[1], 0 : e.shape[2]]
        cents = np.stack([(e * xs).sum((1, 2)), (e * ys).sum((1, 2))], 1) / e.sum((1, 2))[:, None]
        lat.append(np.diff(cents, axis=0) @ unit)
        masks = [f.max(-1) > 80 for f in frames]
        cents = np.array([(np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()) for m in masks])
        dec.append(np.diff(cents, axis=0) @ unit)
    lat, dec = np.concatenate(lat), np.concatenate(dec)
    assert ((dec > 0.5) & (dec < 1.5)).all() and abs(dec.mean() - 1) < 0.05
    assert 0.2 < lat.mean() < 0.3 and (lat > 0).mean() > 0.9
