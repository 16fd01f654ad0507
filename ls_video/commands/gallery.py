"""``DIR/index.html``: one self-contained page with every sample (animated GIF), its prompt, seed and scores,
the metrics table and, given a training run, its loss curves. Relative paths only, no network."""

from __future__ import annotations

import glob
import html
import os

import numpy as np

from ls_video.video_io import write_gif

SCORES = ("direction", "direction_ok", "step_acc", "color", "shape")  # per-video rows of ls_video.metrics.toy
CURVES = ("train/loss", "val/loss")


def scalars(run_dir: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}`` of the TensorBoard event files under ``run_dir`` (empty when none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, tuple[list[int], list[float]]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in set(acc.Tags()["scalars"]) & set(CURVES):
            steps, values = out.setdefault(tag, ([], []))
            for event in acc.Scalars(tag):
                steps.append(event.step)
                values.append(event.value)
    return out


def plot_curves(curves: dict[str, tuple[list[int], list[float]]], path: str) -> None:
    """One PNG with the training and validation loss against the optimizer step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for tag, (steps, values) in sorted(curves.items()):
        order = np.argsort(steps)
        ax.plot(np.asarray(steps)[order], np.asarray(values)[order], marker="o" if tag == "val/loss" else None,
                label=tag, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape(str(value))


def write_gallery(folder: str, videos: list[np.ndarray], result: dict, run_dir: str | None = None) -> str:
    """Write ``folder/index.html`` (and ``folder/gifs/``, ``folder/curves.png``); returns the page's path."""
    gif_dir = os.path.join(folder, "gifs")
    os.makedirs(gif_dir, exist_ok=True)
    rows = (result.get("per_video") or []) + (result.get("per_image") or []) or [{} for _ in videos]
    cards = []
    for i, (video, row) in enumerate(zip(videos, rows, strict=True)):
        name = f"{i:03d}.gif"
        write_gif(os.path.join(gif_dir, name), video)
        scores = " ".join(f"{k} {_fmt(row[k])}" for k in SCORES if k in row)
        caption = html.escape(row.get("prompt", ""))
        cards.append(f'<figure><img src="gifs/{name}" alt="{caption}"><figcaption>{caption}<br>seed '
                     f'{_fmt(row.get("seed", ""))}<br><small>{scores}</small></figcaption></figure>')
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in result.items()
                    if isinstance(v, (int, float)))
    curves = ""
    if run_dir:
        data = scalars(run_dir)
        if data:
            plot_curves(data, os.path.join(folder, "curves.png"))
            curves = '<h2>Learning curves</h2><img src="curves.png" alt="loss curves">'
        logdir = os.path.relpath(run_dir, folder)  # from the page's own folder: no machine's absolute path
        curves += (f"<p>All curves: <code>tensorboard --logdir {html.escape(logdir)}</code> (from this page's "
                   "folder)</p>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Latent-Shift samples</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; width: 128px; font-size: 11px; text-align: center; }}
figure img {{ width: 128px; height: 128px; image-rendering: pixelated; background: #000; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} th, td {{ padding: 2px 10px; text-align: left; }}
</style></head><body>
<h1>Latent-Shift samples ({len(videos)} videos)</h1>
<h2>Metrics</h2><table>{table}</table>
{curves}
<h2>Samples</h2><div class="grid">
{chr(10).join(cards)}
</div></body></html>
"""
    path = os.path.join(folder, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path
