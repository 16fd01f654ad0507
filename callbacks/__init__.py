"""Training callbacks: EMA weights, video logging, image-video joint batches."""

from callbacks.ema import EMA
from callbacks.joint import JointImageVideo
from callbacks.video_logger import VideoLogger

__all__ = ["EMA", "JointImageVideo", "VideoLogger"]
