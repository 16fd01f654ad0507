"""Where the videos and captions of a preprocessing job come from.

* a folder of videos with same-name ``.txt`` captions (``clip.mp4`` + ``clip.txt``);
* a CSV or JSONL file of ``path, caption`` rows (paths relative to the file's folder);
* WebVid's CSV (``videoid, name`` columns): ``path`` becomes ``{video_dir}/{videoid}.mp4``;
* raw-video WebDataset shards as video2dataset writes them (``{key}.mp4`` + ``{key}.txt`` +
  ``{key}.json``): local paths, brace patterns (``raw/{00000..00099}.tar``), URLs or ``pipe:`` commands,
  read as streams by :mod:`ls_video.datamodules.clip_stream`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

from webdataset.shardlists import expand_urls

from ls_video.errors import UsageError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".png", ".jpg", ".jpeg")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Source:
    """One input clip: a file path and its caption."""

    path: str
    caption: str


def _from_folder(folder: str) -> list[Source]:
    out = []
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in VIDEO_EXTENSIONS:
            continue
        caption_file = os.path.join(folder, stem + ".txt")
        caption = open(caption_file, encoding="utf-8", errors="replace").read().strip() \
            if os.path.isfile(caption_file) else ""
        out.append(Source(os.path.join(folder, name), caption))
    return out


def _row_to_source(row: dict, root: str, video_dir: str | None) -> Source:
    if "path" in row:
        path, caption = row["path"], row.get("caption", "")
    elif "videoid" in row:  # WebVid: videoid,name[,page_dir,...]
        path, caption = f"{row['videoid']}.mp4", row.get("name", "")
    else:
        raise UsageError(f"rows need 'path' (and 'caption') or WebVid's 'videoid' and 'name'; got {sorted(row)}")
    base = video_dir or root
    return Source(path if os.path.isabs(path) else os.path.join(base, path), str(caption))


def list_sources(src: str, video_dir: str | None = None) -> list[Source]:
    """All clips named by ``src`` (a folder, ``.csv`` or ``.jsonl``), in a stable order."""
    if os.path.isdir(src):
        return _from_folder(src)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"video source not found: {src}")
    root = os.path.dirname(os.path.abspath(src))
    with open(src, encoding="utf-8") as f:
        if src.endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
        elif src.endswith(".csv"):
            rows = list(csv.DictReader(f))
        else:
            raise UsageError(f"--videos must be a folder, .csv or .jsonl file, got {src}")
    return [_row_to_source(row, root, video_dir) for row in rows]


def shard_urls(src: str) -> list[str] | None:
    """The raw-video tar shards ``src`` names (brace patterns expanded), or ``None`` if it names no shards.

    Raises ``FileNotFoundError`` when ``src`` names local shards and none of them exists.
    """
    if os.path.isdir(src):
        return None
    remote = src.startswith("pipe:") or "://" in src
    urls = expand_urls(src)
    if not remote and not all(u.endswith(SHARD_SUFFIXES) for u in urls):
        return None
    if not remote and not any(os.path.isfile(u) for u in urls):
        raise FileNotFoundError(f"no input shard found: {src}")
    return urls
