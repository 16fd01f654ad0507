"""Generation modes of the app: the place where the modes of issue #36 plug in.

A mode is a name, a label, the extra inputs it shows in the page (built inside ``gr.Blocks``) and a
function that turns a request's settings (with ``Settings.mode_args``, the values of those inputs) into
extra keyword arguments of the pipeline call plus the matching extra ``ls-video sample`` flags, so the
command shown beside each result still remakes it. Prompt travel needs no mode: a prompt written as key frames,
``0:a red square moving left|8:a red square moving right``, travels in every mode, as in ``ls-video sample``.
A new mode (a video or image upload) is one more ``Mode`` in ``MODES``, e.g.::

    MODES["loop"] = Mode("loop", "Loop (last frame flows into the first)", build=lambda: [gr.Slider(...)],
                         inputs=("overlap",), apply=lambda s: ({"loop": True, ...}, ["--loop", ...]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ls_video.app.engine import Settings


def _text(s: Settings) -> tuple[dict[str, Any], list[str]]:
    return {}, []


def _loop(s: Settings) -> tuple[dict[str, Any], list[str]]:
    return {"loop": True}, ["--loop"]


@dataclass(frozen=True)
class Mode:
    """One way of generating: ``build()`` makes its extra Gradio inputs (named ``inputs``, in order: their
    values arrive as ``Settings.mode_args``); ``apply(settings)`` -> (pipeline kwargs, extra sample flags)."""

    name: str
    label: str
    apply: Callable[[Settings], tuple[dict[str, Any], list[str]]] = _text
    build: Callable[[], list[Any]] = field(default=lambda: [])
    inputs: Sequence[str] = ()


MODES: dict[str, Mode] = {
    "text": Mode("text", "Text to video"),
    "loop": Mode("loop", "Seamless loop (the last frame flows into the first)", apply=_loop),
}
