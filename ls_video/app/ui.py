"""The Gradio page over an :class:`~ls_video.app.engine.Engine`: inputs, progress, video, files, command.

The one event is exposed to API clients as ``/generate``; its inputs, in order: prompt, negative prompt,
frames, height, width, steps, guidance, seed, random seed, scheduler, fps, mode, then each mode's own
inputs (:mod:`ls_video.app.modes`). Outputs: the mp4, [mp4, gif], the ``ls-video sample`` command, the
settings as JSON.
"""

from __future__ import annotations

import inspect
import os
import traceback
from typing import Any

from ls_video.app.engine import Engine, Settings
from ls_video.app.modes import MODES
from ls_video.errors import UsageError, one_line

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a test or an offline machine

TITLE = "Latent-Shift: text to video"
API_INPUTS = ("prompt", "negative_prompt", "num_frames", "height", "width", "steps", "guidance_scale", "seed",
              "random_seed", "scheduler", "fps", "mode")  # the /generate endpoint's inputs, in order


def run_request(engine: Engine, values: list[Any], progress: Any = None) -> tuple[str, list[str], str, dict]:
    """One page request -> (mp4, [mp4, gif], command, settings); ``gr.Error`` (one line) when it fails."""
    import gradio as gr

    prompt, negative, frames, height, width, steps, guidance, seed, random_seed, scheduler, fps, mode = values[:12]
    names = [n for m in MODES.values() for n in m.inputs]
    mode_values = dict(zip(names, values[12:], strict=True))
    try:
        s = Settings(prompt=prompt or "", negative_prompt=negative or "", num_frames=int(frames), height=int(height),
                     width=int(width), num_inference_steps=int(steps), guidance_scale=float(guidance),
                     seed=None if random_seed else int(seed), scheduler=scheduler, fps=float(fps), mode=mode,
                     mode_args={n: mode_values[n] for n in MODES[mode].inputs} if mode in MODES else {})
        on_step = None
        if progress is not None:
            progress(0, desc="denoising")

            def on_step(done: int, total: int) -> None:
                progress((done, total), desc="denoising", unit="steps")

        result = engine.generate(s, on_step=on_step)
    except (UsageError, ValueError, TypeError) as err:
        raise gr.Error(str(err) if isinstance(err, UsageError) else one_line(err), print_exception=False) from None
    except Exception as err:  # a bug: the traceback goes to the server's log, one line to the page
        traceback.print_exc()
        raise gr.Error(f"generation failed: {one_line(err)}", print_exception=False) from None
    settings = {**result.settings, "seconds": round(result.seconds, 2)}
    return result.mp4, [result.mp4, result.gif], result.command, settings


def build_app(engine: Engine, title: str = TITLE):
    """The ``gr.Blocks`` page (not launched; queue it with :func:`launch`)."""
    import gradio as gr

    lim = engine.limits
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nModel: `{engine.model}` on {engine.device}. Each result comes with the "
                    "`ls-video sample` command that makes it again.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="a red square moving left", elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                mode = gr.Dropdown([(m.label, m.name) for m in MODES.values()], value="text", label="Mode",
                                   visible=len(MODES) > 1, elem_id="mode")
                mode_inputs: list[Any] = []
                for m in MODES.values():  # each mode's own inputs (issue #36), shown while it is chosen
                    with gr.Group(visible=m.name == "text") as group:
                        built = m.build()
                    mode_inputs += built
                    if len(MODES) > 1:
                        mode.change(lambda v, n=m.name: gr.Group(visible=v == n), mode, group)
                with gr.Row():
                    frames = gr.Slider(1, lim.max_frames, value=min(16, lim.max_frames), step=1, label="Frames")
                    fps = gr.Slider(1, 30, value=8, step=1, label="FPS")
                with gr.Row():
                    size_max = max(lim.max_size // engine.stride * engine.stride, engine.stride)
                    height = gr.Slider(engine.stride, size_max, value=engine.native, step=engine.stride,
                                       label="Height")
                    width = gr.Slider(engine.stride, size_max, value=engine.native, step=engine.stride,
                                      label="Width")
                with gr.Row():
                    steps = gr.Slider(1, lim.max_steps, value=min(25, lim.max_steps), step=1, label="Steps")
                    guidance = gr.Slider(1.0, 15.0, value=4.0, step=0.5, label="Guidance")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                    random_seed = gr.Checkbox(False, label="Random seed")
                    scheduler = gr.Dropdown(engine.schedulers, value="ddim", label="Scheduler")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True, loop=True, interactive=False, elem_id="video")
                files = gr.File(label="Download (mp4, gif)", file_count="multiple", interactive=False)
                command = gr.Code(label="Remake it with", language="shell", interactive=False, wrap_lines=True,
                                  elem_id="command")
                settings = gr.JSON(label="Settings")

        inputs = [prompt, negative, frames, height, width, steps, guidance, seed, random_seed, scheduler, fps, mode,
                  *mode_inputs]

        def generate(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
            return run_request(engine, list(values), progress)

        # named parameters for API clients (gradio reads the signature): client.predict(prompt=..., num_frames=...)
        names = [*API_INPUTS, *(n for m in MODES.values() for n in m.inputs)]
        generate.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
            + [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())])

        button.click(generate, inputs, [video, files, command, settings], api_name="generate")
        prompt.submit(generate, inputs, [video, files, command, settings], api_name=False)
    return demo


def launch(engine: Engine, host: str = "127.0.0.1", port: int = 7860, share: bool = False, concurrency: int = 1,
           max_queue: int = 32, block: bool = True, **kwargs: Any):
    """Queue the page (``concurrency`` requests run at once, ``max_queue`` wait) and serve it."""
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[engine.out], ssr_mode=False,
                prevent_thread_lock=not block, show_error=True, **kwargs)
    return demo
