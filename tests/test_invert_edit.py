import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lib_smooth.ddim import guided_eps, sample
from lib_smooth.invert import Inversion, invert_image, prompt_switch_conds, reconstruct, switch_index
from lib_smooth.jobs import run_invert
from lib_smooth.requests import EditRequest, InvertRequest

from helpers import b64


def circle() -> Image.Image:
    image = Image.new("RGB", (96, 64), "navy")  # not square: centre-cropped to 64×64
    ImageDraw.Draw(image).ellipse((32, 16, 64, 48), fill="orange")
    return image


def test_switch_index_follows_the_official_demo():
    assert switch_index(50, 0.8) == 10  # source for step indices below (1 − r)·50
    assert switch_index(50, 1.0) == 0 and switch_index(50, 0.0) == 50
    assert prompt_switch_conds("s", "t", 5, 0.6) == ["s", "s", "t", "t", "t"]
    with pytest.raises(ValueError):
        switch_index(50, 1.5)


def test_edit_extremes_equal_plain_sampling(sd1):
    inversion = invert_image(sd1, circle(), "an orange circle", steps=6, width=64, height=64)
    assert inversion.x_T.shape == (1, 4, 8, 8)
    plain = reconstruct(sd1, inversion, guidance=5.0)
    # r = 0: the target prompt is never used
    assert torch.equal(reconstruct(sd1, inversion, 5.0, target_prompt="a green square", switch_ratio=0.0), plain)
    # r = 1: every step uses the target prompt, i.e. plain sampling with the target prompt
    uncond, target = sd1.encode_prompts([""], 64, 64), sd1.encode_prompts(["a green square"], 64, 64)
    expected = sample(guided_eps(sd1, target, uncond, 5.0), inversion.x_T, sd1.alphas_cumprod, 6)
    assert torch.allclose(reconstruct(sd1, inversion, 5.0, target_prompt="a green square", switch_ratio=1.0), expected)
    middle = reconstruct(sd1, inversion, 5.0, target_prompt="a green square", switch_ratio=0.5)
    assert not torch.allclose(middle, plain) and not torch.allclose(middle, expected)


def test_inversion_returns_trajectory_and_no_text_mode_differs(sd1):
    with_text = invert_image(sd1, circle(), "an orange circle", steps=4, width=64, height=64, return_trajectory=True)
    assert len(with_text.trajectory) == 5 and torch.equal(with_text.trajectory[-1], with_text.x_T)
    assert torch.equal(with_text.trajectory[0], with_text.x_0)
    no_text = invert_image(sd1, circle(), "an orange circle", steps=4, width=64, height=64, mode="ddim-no-text")
    assert not torch.equal(no_text.x_T, with_text.x_T)
    assert Inversion.from_dict(with_text.to_dict()).prompt == "an orange circle"
    with pytest.raises(ValueError, match="inversion mode"):
        invert_image(sd1, circle(), "x", steps=4, width=64, height=64, mode="null-text-maybe")


def test_encode_is_deterministic(sd1):
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(sd1.encode_images(image), sd1.encode_images(image))  # posterior mode, no sampling


def test_invert_job_reports_metrics_against_the_prepared_input(sd1):
    result = run_invert(sd1, InvertRequest(image=b64(circle()), prompt="an orange circle", steps=5, width=64, height=64))
    assert result.input.size == (64, 64) and result.reconstruction.size == (64, 64)
    a = np.asarray(result.input, dtype=np.float64) / 255
    b = np.asarray(result.reconstruction, dtype=np.float64) / 255
    assert result.metrics["mse"] == pytest.approx(float(np.mean((2 * a - 2 * b) ** 2)))
    assert result.metrics["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)))
    assert 0 < result.metrics["ssim"] < 1
    assert result.sidecar["job"] == "invert" and result.sidecar["metrics"] == result.metrics


def test_edit_job_returns_three_images(sd1):
    request = EditRequest(image=b64(circle()), prompt="an orange circle", target_prompt="a green square", steps=5, width=64, height=64)
    result = run_invert(sd1, request)
    assert result.edited is not None and result.sidecar["job"] == "edit"
    assert result.sidecar["settings"]["target_prompt"] == "a green square" and result.sidecar["settings"]["switch_ratio"] == 0.8
