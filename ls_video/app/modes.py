"""Generation modes of the app: the place where the modes of issue #36 plug in.

A mode is a name, a label, the extra inputs it shows in the page (built inside ``gr.Blocks``) and a
function that turns a request's settings (with ``Settings.mode_args``, the values of those inputs) into
extra keyword arguments of the pipeline call plus the matching extra ``ls-video sample`` flags, so the
command shown beside each result still remakes it. Only plain text-to-video is here; a new mode (loop,
prompt travel, a video or image upload) is one more ``Mode`` in ``MODES``, e.g.::

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
}
