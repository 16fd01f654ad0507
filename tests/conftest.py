"""Shared fixtures: tiny SD-layout components and folders, made locally (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A tiny random Stable-Diffusion-1.x-layout folder written with ``save_pretrained``."""
    from ls_video.testing.tiny import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("tiny_base") / "base")


@pytest.fixture()
def components():
    from ls_video.testing.tiny import tiny_components

    return tiny_components(seed=0)
