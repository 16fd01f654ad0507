"""The toy world: synthetic "moving shapes" videos, the project's stand-in for WebVid."""

from ls_video.toy.world import COLORS, DIRECTIONS, SHAPES, ToyClip, ToyWorld, all_prompts

__all__ = ["COLORS", "DIRECTIONS", "SHAPES", "ToyClip", "ToyWorld", "all_prompts"]
