import math

import numpy as np
import pytest
import torch
from PIL import Image

from lib_smooth.metrics import (
    EXPLANATIONS,
    adjacent_distances,
    istd,
    lpips_distance,
    mean_smoothness,
    mse,
    psnr,
    reconstruction_metrics,
    smoothness,
    ssim,
)


def ramp(values):
    """1×1 single-colour frames whose red channel takes the given values (other channels 0)."""
    return [np.array([[[v, 0.0, 0.0]]]) for v in values]


def test_istd_of_equal_steps_is_zero():
    frames = [np.full((8, 8, 3), k / 10) for k in range(11)]
    assert istd(frames) == pytest.approx(0.0, abs=1e-12)


def test_istd_by_hand():
    # distances 0.1, 0.2, 0.3 → population std = sqrt(((−0.1)² + 0² + 0.1²)/3)
    assert adjacent_distances(ramp([0.0, 0.1, 0.3, 0.6])) == pytest.approx([0.1, 0.2, 0.3])
    assert istd(ramp([0.0, 0.1, 0.3, 0.6])) == pytest.approx(math.sqrt(0.02 / 3))


def test_istd_sums_over_pixels_and_channels():
    # every pixel and channel moves by 0.1 on a 4×4×3 image: each distance is 0.1·√48
    frames = [np.full((4, 4, 3), v) for v in (0.0, 0.1, 0.2)]
    assert adjacent_distances(frames) == pytest.approx([0.1 * math.sqrt(48)] * 2)


def test_input_kinds_agree():
    rng = np.random.default_rng(0)
    uint8 = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(5)]
    as_float = [f / 255.0 for f in uint8]
    as_pil = [Image.fromarray(f) for f in uint8]
    as_tensor = [torch.from_numpy(f).permute(2, 0, 1) for f in as_float]
    values = [istd(uint8), istd(as_float), istd(as_pil), istd(as_tensor)]
    assert values == pytest.approx([values[0]] * 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        istd([f * 255.0 for f in as_float])


def test_scaled_steps_change_istd_but_not_the_normalised_value():
    small = smoothness(ramp([0.0, 0.01, 0.03, 0.06]))  # steps 0.01, 0.02, 0.03
    large = smoothness(ramp([0.0, 0.02, 0.06, 0.12]))  # the same steps doubled
    assert small.istd == pytest.approx(0.01 * math.sqrt(2 / 3))
    assert large.istd == pytest.approx(2 * small.istd)
    assert small.normalized_istd == pytest.approx(math.sqrt(2 / 3) / 2)
    assert large.normalized_istd == pytest.approx(small.normalized_istd)
    assert small.mean_step == pytest.approx(0.02) and large.mean_step == pytest.approx(0.04)


def test_equal_istd_with_different_normalised_values():
    short = smoothness(ramp([0.0, 0.01, 0.03, 0.06]))  # steps 0.01, 0.02, 0.03: mean 0.02
    long = smoothness(ramp([0.0, 0.11, 0.23, 0.36]))  # steps 0.11, 0.12, 0.13: mean 0.12
    assert long.istd == pytest.approx(short.istd)
    assert short.normalized_istd == pytest.approx(math.sqrt(2 / 3) * 0.01 / 0.02)
    assert long.normalized_istd == pytest.approx(math.sqrt(2 / 3) * 0.01 / 0.12)


def test_path_length_jump_ratio_and_endpoints():
    s = smoothness(ramp([0.2, 0.3, 0.3, 0.9, 0.8]))  # steps 0.1, 0, 0.6, 0.1
    assert s.distances == pytest.approx([0.1, 0.0, 0.6, 0.1])
    assert s.path_length == pytest.approx(0.8)
    assert s.mean_step == pytest.approx(0.2)
    assert s.max_step_ratio == pytest.approx(3.0)
    assert s.endpoint_distance == pytest.approx(0.6)
    assert set(EXPLANATIONS) <= set(s.as_dict())


def test_still_sequence_counts_as_even():
    s = smoothness([np.zeros((2, 2, 3))] * 4)
    assert (s.istd, s.normalized_istd, s.max_step_ratio) == (0.0, 0.0, 1.0)


def test_mean_over_sequences():
    a, b = smoothness(ramp([0.0, 0.1, 0.3])), smoothness(ramp([0.0, 0.3, 0.4]))
    m = mean_smoothness([a, b])
    assert m.istd == pytest.approx(0.075) and m.mean_step == pytest.approx(0.175)  # (0.05 + 0.1)/2, (0.15 + 0.2)/2
    assert m.distances == pytest.approx([0.2, 0.15])


def test_mse_and_psnr_by_hand():
    a, b = np.full((16, 16, 3), 0.5), np.full((16, 16, 3), 0.6)
    assert mse(a, b) == pytest.approx(0.04)  # on the [−1, 1] scale: (2·0.1)²
    assert psnr(a, b) == pytest.approx(20.0)  # 10·log10(1 / 0.01)
    assert psnr(a, a) == float("inf")


def brute_force_ssim(a: np.ndarray, b: np.ndarray) -> float:
    size, sigma = 11, 1.5
    coords = np.arange(size) - 5
    g = np.exp(-(coords**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for c in range(3):
        for i in range(a.shape[0] - size + 1):
            for j in range(a.shape[1] - size + 1):
                x, y = a[i : i + size, j : j + size, c], b[i : i + size, j : j + size, c]
                mx, my = (w * x).sum(), (w * y).sum()
                vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
                cov = (w * x * y).sum() - mx * my
                values.append(((2 * mx * my + 1e-4) * (2 * cov + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    return float(np.mean(values))


def test_ssim_matches_a_brute_force_window_loop():
    rng = np.random.default_rng(1)
    a = rng.random((16, 14, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(brute_force_ssim(a, b), abs=1e-9)
    assert ssim(a, b) < 0.99


def test_lpips_is_a_number_or_reported_unavailable():
    a = np.zeros((32, 32, 3))
    value, note = lpips_distance(a, a)
    if value is None:
        assert note.startswith("LPIPS unavailable")
        metrics = reconstruction_metrics(a, a)
        assert metrics["lpips"] is None and metrics["lpips_note"] == note
    else:
        assert value == pytest.approx(0.0, abs=1e-6) and note == ""
