"""Training callbacks: EMA weights, video logging, image-video joint batches, data health, bucket counts,
preemption, CPU threads, speed."""

from callbacks.bucket_counts import BucketCounts
from callbacks.data_health import DataHealth
from callbacks.ema import EMA
from callbacks.joint import JointImageVideo
from callbacks.preemption import Preemption
from callbacks.speed import StepSpeed
from callbacks.threads import CPUThreads
from callbacks.video_logger import VideoLogger

__all__ = ["BucketCounts", "CPUThreads", "DataHealth", "EMA", "JointImageVideo", "Preemption", "StepSpeed",
           "VideoLogger"]
