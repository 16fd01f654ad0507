"""Memory the frozen parts save under mixed precision: resident memory before / after the cast.

    python benchmarks/frozen_memory.py [--precision bf16-mixed]

Builds SD-1.5-preset VAE and text encoder (random weights, ``ls_video/testing/presets.py``) in a
``LatentShiftModule`` (a tiny U-Net, which is not what is measured), reads the process's resident
memory (Linux ``/proc/self/status``), runs the module's ``setup`` as ``fit`` would under
``--precision``, reads it again. Last line: ``frozen_rss_mib=<before> -> <after>``.
"""

from __future__ import annotations

import argparse
import gc
import types

from ls_video.module import LatentShiftModule
from ls_video.testing.presets import sd15_components
from ls_video.testing.tiny import tiny_unet


def rss_mib() -> float:
    gc.collect()
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "16-mixed", "32-true"],
                   help="the Trainer precision whose setup is run")
    args = p.parse_args()
    parts = sd15_components()
    parts["unet"] = tiny_unet(cross_attention_dim=parts["text_encoder"].config.hidden_size)
    module = LatentShiftModule(components=parts)
    frozen = sum(p.numel() for m in (module.vae, module.text_encoder) for p in m.parameters())
    before = rss_mib()
    module._trainer = types.SimpleNamespace(precision=args.precision)  # what setup reads of the Trainer
    module.setup("fit")
    after = rss_mib()
    print(f"frozen parameters {frozen / 1e6:.1f}M, precision {args.precision}")
    print(f"frozen_rss_mib={before:.0f} -> {after:.0f}")


if __name__ == "__main__":
    main()
