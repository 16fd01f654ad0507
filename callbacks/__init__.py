"""Training callbacks: EMA weights, video logging, image-video joint batches, data health."""

from callbacks.data_health import DataHealth
from callbacks.ema import EMA
from callbacks.joint import JointImageVideo
from callbacks.video_logger import VideoLogger

__all__ = ["DataHealth", "EMA", "JointImageVideo", "VideoLogger"]
