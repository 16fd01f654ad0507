"""Training callbacks: EMA weights, video logging, image-video joint batches, data health, bucket counts,
preemption, CPU threads, speed."""

from ls_video.callbacks.bucket_counts import BucketCounts
from ls_video.callbacks.data_health import DataHealth
from ls_video.callbacks.ema import EMA
from ls_video.callbacks.joint import JointImageVideo
from ls_video.callbacks.preemption import Preemption
from ls_video.callbacks.speed import StepSpeed
from ls_video.callbacks.threads import CPUThreads
from ls_video.callbacks.video_logger import VideoLogger

__all__ = ["BucketCounts", "CPUThreads", "DataHealth", "EMA", "JointImageVideo", "Preemption", "StepSpeed",
           "VideoLogger"]
