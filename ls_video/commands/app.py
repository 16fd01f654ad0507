"""Serve a Latent-Shift model as a web page (Gradio): prompt in, video out, with the command that remakes it.

    ls-video app --model outputs/demo/model          (after make demo; or --model assets/toy-base)
    ls-video app --model ORG/NAME --host 0.0.0.0 --port 7860 --concurrency 2
    ls-video app --model ORG/NAME --write-space space/   (the files a Hugging Face Space needs)

Needs the ``app`` extra: ``pip install 'ls-video[app]'`` (gradio). The model is loaded once; requests wait in
a queue (``--max-queue``) and ``--concurrency`` of them run at once. A request the server will not run (an
empty prompt, a size the VAE cannot take, too many frames, out of memory) gets a one-line message on the
page and the server goes on. See docs/APP.md.
"""

from __future__ import annotations

import argparse
import sys

from ls_video.errors import UsageError, command

PROG = "ls-video app"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Example: ls-video app --model outputs/demo/model (docs/APP.md)")
    p.add_argument("--model", required=True,
                   help="diffusers folder or Hub id (ORG/NAME), exported folder, or Lightning .ckpt "
                        "(assets/toy-base: the shipped toy base)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    p.add_argument("--concurrency", type=int, default=1, help="requests generated at once (the rest wait)")
    p.add_argument("--max-queue", type=int, default=32, help="requests that may wait; more are turned away")
    p.add_argument("--max-frames", type=int, default=64, help="most frames one request may ask for")
    p.add_argument("--max-size", type=int, default=1024, help="most pixels either side of a video")
    p.add_argument("--max-steps", type=int, default=150, help="most denoising steps one request may ask for")
    p.add_argument("--out", default=None, help="folder for the generated files (default: a new temporary folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights dtype for sampling")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--raw", action="store_true", help="a .ckpt's raw weights (default: its EMA weights if any)")
    weights.add_argument("--ema", action="store_true", help="a .ckpt's EMA weights; an error when it has none")
    p.add_argument("--write-space", metavar="DIR", default=None,
                   help="write app.py, requirements.txt and README.md of a Hugging Face Space serving --model "
                        "to DIR, and exit")
    p.add_argument("--space-requirement", default="ls-video[app]",
                   help="with --write-space: the requirements.txt line that installs this project "
                        "(e.g. 'ls-video[app] @ git+https://github.com/ORG/latent-shift')")
    args = p.parse_args(argv)
    for name in ("concurrency", "max_queue", "max_frames", "max_size", "max_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be 0..65535, got {args.port}")
    return args


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_space:
        from ls_video.app.space import write_space

        paths = write_space(args.write_space, args.model, args.space_requirement, max_frames=args.max_frames)
        print(f"wrote {', '.join(paths)}: push {args.write_space} to a Gradio Space (docs/APP.md)")
        return 0
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("ls-video app needs gradio: pip install 'ls-video[app]' (or pip install gradio)") from None
    from ls_video.app.engine import Engine, Limits
    from ls_video.app.ui import launch
    from ls_video.quiet import quiet
    from ls_video.shipped import shipped_path

    quiet()
    engine = Engine(shipped_path(args.model), device=args.device, dtype=args.dtype, out=args.out,
                    limits=Limits(args.max_frames, args.max_size, args.max_steps),
                    ema=False if args.raw else (True if args.ema else None))
    print(f"{PROG}: serving {args.model} on {engine.device} at http://{args.host}:{args.port} "
          f"(files in {engine.out})", flush=True)
    launch(engine, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
           max_queue=args.max_queue)
    return 0


if __name__ == "__main__":
    sys.exit(main())
