"""The files a Hugging Face Space (Gradio SDK) needs to serve this app: ``app.py``, ``requirements.txt``
and ``README.md`` with the Space's front matter (``ls-video app --write-space DIR``)."""

from __future__ import annotations

import os

APP_PY = '''"""Hugging Face Space entry point, written by `ls-video app --write-space`: the Latent-Shift app.

The Space runs this file; settings come from the Space's variables (Settings -> Variables) when set.
"""

import os

from ls_video.commands.app import main

main([
    "--model", os.environ.get("LS_VIDEO_MODEL", {model!r}),
    "--host", "0.0.0.0",
    "--port", os.environ.get("PORT", "7860"),
    "--max-frames", os.environ.get("LS_VIDEO_MAX_FRAMES", "{max_frames}"),
    "--concurrency", os.environ.get("LS_VIDEO_CONCURRENCY", "1"),
])
'''

README_MD = """---
title: {title}
emoji: 🎞️
colorFrom: blue
colorTo: green
sdk: gradio
app_file: app.py
pinned: false
---

# {title}

Text to video with the Latent-Shift model `{model}` (`ls-video app`). Each result comes with the
`ls-video sample` command that makes it again. Set `LS_VIDEO_MODEL` in the Space's variables to serve
another model.
"""


def write_space(folder: str | os.PathLike, model: str, requirement: str, max_frames: int = 64,
                title: str = "Latent-Shift text to video") -> list[str]:
    """Write ``app.py``, ``requirements.txt`` (``requirement``: how the Space installs this project, e.g.
    ``ls-video[app] @ git+https://...``) and ``README.md`` to ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    files = {
        "app.py": APP_PY.format(model=str(model), max_frames=int(max_frames)),
        "requirements.txt": f"{requirement}\ngradio\n",
        "README.md": README_MD.format(title=title, model=model),
    }
    paths = []
    for name, text in files.items():
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        paths.append(path)
    return paths
