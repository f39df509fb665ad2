"""Pieces of the embedded model's training recipe (bench/train_shapes_model.py) that are not exercised by
loading the shipped weights: the optional latent noise and min-SNR weights, and the learning-rate shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from train_shapes_model import cosine_lr, min_snr_weights, with_latent_noise  # noqa: E402


def test_latent_noise_is_off_at_zero_and_scales_with_the_latents_std():
    latents = 3.0 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert with_latent_noise(latents, 0.0) is latents
    torch.manual_seed(1)
    added = with_latent_noise(latents, 0.25) - latents
    assert added.mean().item() == pytest.approx(0.0, abs=0.02)
    assert added.std().item() == pytest.approx(0.25 * latents.std().item(), rel=0.03)


def test_min_snr_weights_by_hand():
    # ᾱ = 0.5 → SNR 1 → weight 1; ᾱ = 0.9 → SNR 9 → min(9, 5)/9; ᾱ = 0.1 → SNR 1/9 → 1
    weights = min_snr_weights(torch.tensor([0.5, 0.9, 0.1]), 5.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 5 / 9, 1.0]))


def test_cosine_lr_warms_up_then_falls_to_its_floor():
    assert cosine_lr(0, 100, 10) == pytest.approx(0.1) and cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_lr(100, 100, 10, floor=0.1) == pytest.approx(0.1)
