"""Train Latent-Shift with the Lightning CLI. ``python train.py --help`` explains every option.

    python train.py fit -c configs/toy.yaml           (the same as: ls-video fit -c configs/toy.yaml)
    python train.py fit -c configs/toy.yaml --ckpt_path last
    python train.py validate -c configs/toy.yaml --ckpt_path last
"""

import sys

from ls_video.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
