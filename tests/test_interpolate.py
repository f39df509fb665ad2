import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lib_smooth.backend import cond_lerp
from lib_smooth.cache import InversionCache
from lib_smooth.interpolate import frame_ratios, seed_noise, slerp
from lib_smooth.invert import invert_image, reconstruct
from lib_smooth.jobs import decode, run_interpolate
from lib_smooth.requests import InterpolateRequest

from helpers import CountingBackend, b64


def test_frame_ratios():
    assert frame_ratios(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert frame_ratios(1).tolist() == [0.0]


def test_slerp_by_hand_on_orthogonal_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    out = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    h = math.sqrt(0.5)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [h, h], [0.0, 1.0]]), atol=1e-6)


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    b = b * (a.norm() / b.norm())  # equal norms: slerp stays on their sphere
    out = slerp(a, b, frame_ratios(9))
    assert out.shape == (9, 4, 8, 8)
    assert torch.allclose(out[0], a[0], atol=1e-5) and torch.allclose(out[-1], b[0], atol=1e-5)
    norms = out.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, float(a.norm())), rtol=1e-5)
    # whereas the straight line sags in the middle (≈ 1/√2 of the norm for near-orthogonal noise)
    assert float((0.5 * a + 0.5 * b).norm()) < 0.75 * float(a.norm())


def test_slerp_falls_back_to_lerp_for_nearly_parallel_inputs():
    a = torch.randn(1, 16)
    b = a * 2.0 + 1e-4 * torch.randn(1, 16)  # cosine ≈ 1
    out = slerp(a, b, torch.tensor([0.25]))
    assert torch.allclose(out, 0.75 * a + 0.25 * b, atol=1e-6)


def test_cond_lerp_blends_per_frame():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    out = cond_lerp(a, b, torch.tensor([0.0, 0.3, 1.0]))
    assert out.shape == (3, 2, 3) and out[:, 0, 0].tolist() == pytest.approx([0.0, 0.3, 1.0])
    d = cond_lerp({"c": a, "v": torch.zeros(1, 4)}, {"c": b, "v": torch.full((1, 4), 2.0)}, torch.tensor([0.5]))
    assert d["c"][0, 0, 0] == 0.5 and d["v"][0, 0] == 1.0


def test_seed_noise_is_reproducible():
    assert torch.equal(seed_noise(7, (1, 4, 8, 8)), seed_noise(7, (1, 4, 8, 8)))
    assert not torch.equal(seed_noise(7, (1, 4, 8, 8)), seed_noise(8, (1, 4, 8, 8)))


def drawn(colour: str, background: str) -> Image.Image:
    image = Image.new("RGB", (64, 64), background)
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=colour)
    return image


def test_image_interpolation_ends_reproduce_the_inverted_images(sd1):
    a, b = drawn("red", "blue"), drawn("green", "yellow")
    request = InterpolateRequest(prompt_a="a red circle", image_a=b64(a), image_b=b64(b), frames=5, steps=8, width=64, height=64, batch_size=3)
    result = run_interpolate(sd1, request)
    assert len(result.frames) == 5
    for image, frame in ((a, result.frames[0]), (b, result.frames[-1])):
        inversion = invert_image(sd1, image, "a red circle", steps=8, width=64, height=64)
        expected = decode(sd1, reconstruct(sd1, inversion, guidance=7.5))[0]
        difference = np.abs(np.asarray(frame, dtype=int) - np.asarray(expected, dtype=int))
        assert difference.max() <= 1  # equal up to 8-bit rounding of batch-order float noise
    assert result.sidecar["settings"]["image_a"]["sha256"] != result.sidecar["settings"]["image_b"]["sha256"]


def test_cached_inversions_are_reused_when_the_frame_count_changes(sd1):
    cache, counting = InversionCache(), CountingBackend(sd1)
    request = dict(
        prompt_a="a red circle", image_a=b64(drawn("red", "blue")), image_b=b64(drawn("white", "black")), steps=6, width=64, height=64, batch_size=4
    )
    run_interpolate(counting, InterpolateRequest(frames=4, **request), cache)
    assert counting.calls == 2 * 6 + 1 * 6 and cache.misses == 2
    counting.calls = 0
    run_interpolate(counting, InterpolateRequest(frames=8, **request), cache)
    assert cache.hits == 2 and counting.calls == 2 * 6  # two frame batches, no inversion
    # another setting is another key
    run_interpolate(counting, InterpolateRequest(frames=4, inversion_guidance=2.0, **request), cache)
    assert cache.misses == 4
    # and so is another LoRA set or weight: the same image inverts again under a LoRA
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork

    from helpers import attention_projections, random_lora

    shapes = {p: tuple(m.weight.shape) for p, m in attention_projections(sd1.unet_model)}
    network = LoraNetwork({"lora_unet_" + p.replace(".", "_"): LoraLayer(d, u) for p, (d, u) in random_lora(shapes).items()}, "kohya")
    sd1.apply_lora(network, 0.5)
    try:
        run_interpolate(counting, InterpolateRequest(frames=4, **request), cache)
    finally:
        sd1.remove_lora()
    assert cache.misses == 6


def test_seed_interpolation_batches_frames(sd1):
    counting = CountingBackend(sd1)
    request = InterpolateRequest(prompt_a="a cat", seed_a=1, seed_b=2, frames=10, steps=3, guidance=7.5, width=64, height=64, batch_size=4)
    result = run_interpolate(counting, request)
    assert len(result.frames) == 10
    assert counting.calls == 3 * 3 and counting.samples == 3 * 2 * 10  # ⌈10/4⌉ batches × steps, CFG doubles the batch
    assert result.sidecar["settings"]["seed_a"] == 1 and result.sidecar["model_hash"] == sd1.identity


def test_prompt_interpolation_changes_only_through_the_text(sd1):
    request = InterpolateRequest(prompt_a="a red circle", prompt_b="a green square", seed_a=5, seed_b=5, frames=3, steps=4, width=64, height=64)
    frames = run_interpolate(sd1, request).frames
    same_prompt = run_interpolate(sd1, InterpolateRequest(prompt_a="a red circle", seed_a=5, seed_b=6, frames=2, steps=4, width=64, height=64)).frames
    assert np.array_equal(np.asarray(frames[0]), np.asarray(same_prompt[0]))  # same seed, same prompt at w = 0
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[-1]))


def test_compare_without_lora_runs_the_same_job_without_it(sd1, tmp_path):
    """compare_without_lora: the first run is exactly the job with the LoRA, the second exactly the job
    without it (a separate plain run's frames and reconstruction); one progress count over both."""
    from lib_smooth.jobs import run_invert
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya
    from lib_smooth.requests import InvertRequest

    from helpers import attention_projections, random_lora

    shapes = {p: tuple(m.weight.shape) for p, m in attention_projections(sd1.unet_model)}
    layers = {"lora_unet_" + p.replace(".", "_"): LoraLayer(d, u) for p, (d, u) in random_lora(shapes, seed=3).items()}
    save_kohya(LoraNetwork(layers, "kohya"), tmp_path / "smooth.safetensors")
    lora = str(tmp_path / "smooth.safetensors")

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

    common = dict(prompt_a="a cat", seed_a=1, seed_b=2, frames=3, steps=2, width=64, height=64)
    ticks = []
    both = run_interpolate(sd1, InterpolateRequest(**common, lora=lora, compare_without_lora=True), progress=lambda d, t, _: ticks.append((d, t)))
    with_lora, plain = run_interpolate(sd1, InterpolateRequest(**common, lora=lora)), run_interpolate(sd1, InterpolateRequest(**common))
    assert same(both.frames, with_lora.frames) and same(both.without_lora.frames, plain.frames) and not same(plain.frames, with_lora.frames)
    assert both.sidecar["lora"]["name"] == "smooth.safetensors" and both.without_lora.sidecar["lora"] is None
    assert len({t for _, t in ticks}) == 1 and [d for d, _ in ticks] == sorted(d for d, _ in ticks) and ticks[-1][0] == ticks[-1][1]
    assert run_interpolate(sd1, InterpolateRequest(**common)).without_lora is None

    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill="red")
    request = dict(image=b64(picture), prompt="a red circle", steps=2, width=64, height=64)
    both = run_invert(sd1, InvertRequest(**request, lora=lora, compare_without_lora=True))
    plain = run_invert(sd1, InvertRequest(**request))
    assert same([both.without_lora.reconstruction], [plain.reconstruction]) and both.without_lora.metrics == plain.metrics
    assert not same([both.reconstruction], [plain.reconstruction])
