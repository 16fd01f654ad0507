import json

import numpy as np
from lightning.fabric.loggers import TensorBoardLogger

from ls_video.commands.eval import main
from ls_video.toy.world import ToyWorld
from ls_video.video_io import write_video


def test_eval_html_writes_a_self_contained_gallery(tmp_path):
    world = ToyWorld(size=32, num_frames=6, object_size=8, min_travel=0.6, max_speed=4)
    clips = world.clips(3, "val", seed=0)
    rows = []
    for i, clip in enumerate(clips):
        write_video(tmp_path / f"{i}.mp4", world.render(clip))
        rows.append({"file": f"{i}.mp4", "prompt": clip.caption, "seed": i})
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": rows}))
    run = tmp_path / "run"
    logger = TensorBoardLogger(run, name="tb")
    for step in range(5):
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    logger.log_metrics({"val/loss": 0.3}, step=4)
    logger.finalize("success")

    assert main([str(tmp_path), "--html", "--run", str(run)]) == 0
    page = (tmp_path / "index.html").read_text()
    assert page.count("<figure>") == 3 and rows[0]["prompt"] in page and "direction_acc" in page
    assert "http" not in page and "tensorboard --logdir run</code>" in page  # relative to the page's folder
    assert str(tmp_path) not in page  # no absolute path of the machine that made it
    for i in range(3):
        assert (tmp_path / "gifs" / f"{i:03d}.gif").read_bytes().startswith(b"GIF89a")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert np.isfinite(json.loads((tmp_path / "metrics.json").read_text())["direction_acc"])


def test_eval_run_must_be_a_folder(tmp_path, capsys):
    assert main([str(tmp_path), "--html", "--run", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
