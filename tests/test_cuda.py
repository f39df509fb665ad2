"""The jobs on a GPU give what they give on the CPU (skipped without CUDA).

Seed noise is drawn on the CPU, so both devices start from the same x_T; the model's outputs come back
on its device and sampling must stay there. Differences left are float rounding (cuDNN's TF32
convolutions), a fraction of one 8-bit level per pixel.
"""

import numpy as np
import pytest
import torch

from lib_smooth.backends import open_model
from lib_smooth.cli import main
from lib_smooth.jobs import run_interpolate, run_invert, run_istd
from lib_smooth.requests import EditRequest, InterpolateRequest, IstdRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU checks run on a machine with one")

PROMPT = "a large red circle in the centre on a blue background"


@pytest.fixture(scope="module")
def backends():
    return {device: open_model(device=device)[0] for device in ("cpu", "cuda")}


def pixel_gap(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_interpolation_frames_match_the_cpu(backends):
    request = InterpolateRequest(
        prompt_a=PROMPT,
        prompt_b="a small green square at the top left on a yellow background",
        seed_a=1,
        seed_b=2,
        frames=4,
        steps=10,
        guidance=5.0,
        width=64,
        height=64,
    )
    frames = {device: run_interpolate(backend, request).frames for device, backend in backends.items()}
    assert backends["cuda"].unet_model.conv_in.weight.is_cuda
    assert max(pixel_gap(a, b) for a, b in zip(frames["cpu"], frames["cuda"])) < 1.0


def test_null_text_inversion_and_edit_match_the_cpu(backends, tmp_path):
    from lab.shapes import samples

    image, spec = next(samples(1, seed=3, size=64))
    path = tmp_path / "input.png"
    image.save(path)
    request = EditRequest(
        image=str(path),
        prompt=spec.caption,
        target_prompt=spec.caption.replace(spec.colour, "green", 1),
        steps=10,
        inversion="null-text",
        null_text_steps=3,
        guidance=5.0,
        width=64,
        height=64,
    )
    results = {device: run_invert(backend, request) for device, backend in backends.items()}
    assert results["cuda"].x_T.is_cuda
    assert abs(results["cpu"].metrics["psnr"] - results["cuda"].metrics["psnr"]) < 0.5
    assert pixel_gap(results["cpu"].edited, results["cuda"].edited) < 1.0


def test_istd_matches_the_cpu(backends):
    request = IstdRequest(prompts=[PROMPT], pairs=2, points=5, steps=5, guidance=5.0, width=64, height=64)
    reports = {device: run_istd(backend, request).with_lora for device, backend in backends.items()}
    assert reports["cpu"].istd > 0
    assert reports["cuda"].istd == pytest.approx(reports["cpu"].istd, rel=0.02)


def test_demo_runs_on_cuda(tmp_path):
    assert main(["demo", "--device", "cuda", "--out", str(tmp_path / "demo"), "--steps", "5", "--frames", "4"]) == 0
    assert (tmp_path / "demo" / "index.html").is_file()
