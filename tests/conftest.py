"""Shared fixtures: the real CLIP tokenizer built offline and tiny real-architecture models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer

    return write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="session")
def tiny_models(tokenizer_dir):
    """Build each tiny model once per session; tests that change weights must restore them."""
    from lib_smooth.testing import build_tiny_backend

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = build_tiny_backend(arch, seed=0, tokenizer_dir=tokenizer_dir)
        return cache[arch]

    return get


@pytest.fixture
def sd1(tiny_models):
    return tiny_models("sd1")


@pytest.fixture(scope="session")
def shapes_model():
    """The embedded, trained shapes-sd1 model (lib_smooth/models/shapes-sd1)."""
    from lib_smooth.backends import open_model

    return open_model()[0]
