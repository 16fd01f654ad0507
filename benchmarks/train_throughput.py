"""Training throughput at real size: clips/s and peak memory per optimisation setting.

    python benchmarks/train_throughput.py [--batch 4] [--frames 16] [--latent 32] [--steps 6]
        [--configs base,channels_last,checkpointing,compile,compile_none] [--precision bf16-mixed]

The real training step (``LatentShiftModule`` in a Lightning ``Trainer``: text encoding, noise,
U-Net forward + backward, AdamW) on SD-1.5-sized components with random weights, 16 frames of 32x32
latents (256x256 videos), from pinned in-memory batches. Attention is PyTorch SDPA (diffusers'
default processor). Configurations (each adds to ``base``):

* ``base``: bf16-mixed, SDPA, fused AdamW (on GPU), shift on, no checkpointing, eager;
* ``channels_last``: U-Net in channels_last;
* ``checkpointing``: gradient checkpointing;
* ``compile``: ``torch.compile`` of the U-Net (compilation is excluded: only steps after the warm-up
  are timed); ``compile_none``: the same without the shift, for the compiled shift-overhead ratio;
* ``none``: eager without the shift (the eager shift-overhead ratio).

Prints one row per configuration; last line ``train_clips_per_s=<base>``. Meant for a GPU; on CPU
use a small ``--latent``/``--frames``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import lightning as L
import torch

from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig
from ls_video.performance import PerformanceConfig
from ls_video.testing.presets import sd15_components
from ls_video.unet import TemporalConfig

NONE = TemporalConfig("none")
CONFIGS = {
    "base": {},
    "none": dict(temporal=NONE),
    "channels_last": dict(performance=PerformanceConfig(channels_last=True)),
    "checkpointing": dict(performance=PerformanceConfig(gradient_checkpointing=True)),
    "compile": dict(performance=PerformanceConfig(compile_unet=True)),
    "compile_none": dict(performance=PerformanceConfig(compile_unet=True), temporal=NONE),
}


class StepTimer(L.Callback):
    """Wall time of each optimizer step, the device synchronised."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


class RandomClips(torch.utils.data.Dataset):
    def __init__(self, n: int, frames: int, latent: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.latents = torch.randn(n, frames, 4, latent, latent, generator=g).half()

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "captions": "a red square moving left"}


def run(name: str, args) -> dict:
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init where it runs: fast
        parts = sd15_components()
    optim = OptimConfig(learning_rate=1e-5, warmup_steps=0, lr_schedule="constant")
    module = LatentShiftModule(components=parts, **CONFIGS[name], optim=optim)
    data = torch.utils.data.DataLoader(RandomClips(args.batch * (args.steps + args.warmup), args.frames, args.latent),
                                       batch_size=args.batch, pin_memory=torch.cuda.is_available(), num_workers=1)
    timer = StepTimer()
    trainer = L.Trainer(max_steps=args.steps + args.warmup, precision=args.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0, devices=1)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, data)
    step = statistics.median(timer.times[args.warmup:])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    del trainer, module, data
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dict(step_s=step, clips_per_s=args.batch / step, peak_gib=peak, warmup_s=sum(timer.times[:args.warmup]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4, help="clips per step")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--latent", type=int, default=32, help="latent size (32 = 256x256 pixels)")
    p.add_argument("--steps", type=int, default=6, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (compilation, allocator)")
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision")
    p.add_argument("--configs", default="base,none,channels_last,checkpointing,compile,compile_none",
                   help=f"comma-separated, from {', '.join(CONFIGS)}")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device={device} batch={args.batch} frames={args.frames} latent={args.latent} "
          f"precision={args.precision}", flush=True)
    print("| config | clips/s | step s | peak GiB | warm-up s |\n|---|---|---|---|---|", flush=True)
    results = {}
    for name in args.configs.split(","):
        try:
            r = results[name] = run(name, args)
        except Exception as e:  # one failing setting (e.g. out of memory) must not lose the others
            print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:150]} | | | |", flush=True)
            gc.collect()
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            continue
        print(f"| {name} | {r['clips_per_s']:.2f} | {r['step_s']:.3f} | {r['peak_gib']:.1f} | {r['warmup_s']:.1f} |",
              flush=True)
    if "base" in results and "none" in results:
        print(f"train_shift_ratio_eager={results['base']['step_s'] / results['none']['step_s']:.3f}")
    if "compile" in results and "compile_none" in results:
        print(f"train_shift_ratio_compiled={results['compile']['step_s'] / results['compile_none']['step_s']:.3f}")
    if "base" in results:
        print(f"train_clips_per_s={results['base']['clips_per_s']:.2f}")


if __name__ == "__main__":
    main()
