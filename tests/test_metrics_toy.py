import json

import numpy as np
import pytest

from ls_video.commands.eval import evaluate
from ls_video.metrics.toy import analyze_video, score, step_accuracy
from ls_video.toy.world import ToyWorld, all_prompts
from ls_video.video_io import write_video


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_moving_objects_score_their_direction(direction):
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    rng = np.random.default_rng(0)
    clip = next(c for c in (world.sample_clip(rng) for _ in range(200)) if c.direction == direction)
    result = score([world.render(clip)], [clip.caption])
    assert result["direction_acc"] == 1.0 and result["step_acc"] == 1.0
    assert result["color_acc"] == 1.0 and result["shape_acc"] == 1.0 and result["consistency"] == 1.0


def test_static_and_blinking_objects_do_not_count_as_motion():
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    clip = world.clips(1)[0]
    static = np.stack([world.render_frame(clip, clip.positions[0])] * 6)
    assert analyze_video(static)["direction"] == "static"
    # a blob that jumps back and forth: ends displaced to the left, but most steps go right
    xs = [20, 4, 8, 12, 16, 2]
    blink = np.stack([world.render_frame(clip, (x, 10)) for x in xs])
    got = analyze_video(blink)
    assert got["direction"] == "left"
    assert step_accuracy(got["centroids"], "left") == pytest.approx(2 / 5)


def test_missing_object_frames_fail_consistency():
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    clip = world.clips(1)[0]
    video = world.render(clip)
    video[3] = 0
    result = score([video], [clip.caption])
    assert result["consistency"] == 0.0 and result["step_acc"] < 1.0


def test_eval_cli_reads_a_sample_folder(tmp_path):
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    clips = world.clips(4)
    rows = []
    for i, clip in enumerate(clips):
        write_video(tmp_path / f"{i}.mp4", world.render(clip))
        rows.append({"prompt": clip.caption, "seed": i, "file": f"{i}.mp4"})
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": rows}))
    result = evaluate(str(tmp_path))
    assert result["direction_acc"] == 1.0 and result["color_acc"] == 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["protocol"]["num_samples"] == 4


def test_prompts_parse():
    assert all(score([np.zeros((2, 8, 8, 3), np.uint8)], [p])["n"] == 1 for p in all_prompts()[:3])


def _write_folder(folder, videos, prompts):
    folder.mkdir(exist_ok=True)
    rows = []
    for i, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        write_video(folder / f"{i}.mp4", video)
        rows.append({"prompt": prompt, "seed": i, "file": f"{i}.mp4", "num_frames": len(video)})
    (folder / "manifest.json").write_text(json.dumps({"samples": rows}))


def test_eval_scores_one_frame_samples_as_images(tmp_path):
    """One-frame samples get image_color_acc / image_shape_acc, apart from the videos' scores; --images adds
    another folder's; the per-sample rows keep the manifest order."""
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    clips = world.clips(4)
    frames = [world.render(c)[:1] for c in clips]
    wrong = [c.image_caption.replace("square", "x").replace("circle", "square").replace("x", "circle")
             for c in clips[2:]]  # shape swapped: colour right, shape wrong
    _write_folder(tmp_path / "mixed", [world.render(clips[0]), frames[0], frames[1]],
                  [clips[0].caption, clips[0].image_caption, clips[1].image_caption])
    result = evaluate(str(tmp_path / "mixed"))
    assert result["direction_acc"] == 1.0 and result["n"] == 1 and result["protocol"]["num_samples"] == 1
    assert result["image_color_acc"] == 1.0 and result["image_shape_acc"] == 1.0 and result["image_n"] == 2
    assert [r["num_frames"] for r in result["per_video"]] == [6, 1, 1]

    _write_folder(tmp_path / "images", frames[2:], wrong)
    result = evaluate(str(tmp_path / "mixed"), images=str(tmp_path / "images"))
    assert result["image_n"] == 4 and result["image_color_acc"] == 1.0 and result["image_shape_acc"] == 0.5
    assert [r["shape_ok"] for r in result["per_image"]] == [False, False]
    saved = json.loads((tmp_path / "mixed" / "metrics.json").read_text())
    assert saved["image_shape_acc"] == 0.5 and saved["protocol"]["images"]["num_samples"] == 4

    only = evaluate(str(tmp_path / "images"))  # an image-only folder: no video keys
    assert "direction_acc" not in only and only["image_color_acc"] == 1.0 and only["protocol"]["num_frames"] == 1
