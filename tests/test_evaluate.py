import pytest
import torch

from lib_smooth.ddim import guided_eps, sample
from lib_smooth.evaluate import evaluate_istd
from lib_smooth.images import tensor_to_pils
from lib_smooth.interpolate import frame_ratios, seed_noise, slerp
from lib_smooth.jobs import run_istd
from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya
from lib_smooth.metrics import istd
from lib_smooth.requests import IstdRequest

from helpers import attention_projections, random_lora


def brute_force_sequence_istd(backend, prompt, seed_a, seed_b, points, steps, guidance):
    cond, uncond = backend.encode_prompts([prompt], 64, 64), backend.encode_prompts([""], 64, 64)
    x_T = slerp(seed_noise(seed_a, (1, 4, 8, 8)), seed_noise(seed_b, (1, 4, 8, 8)), frame_ratios(points))
    frames = []
    for x in x_T:  # one frame at a time, no batching
        latent = sample(guided_eps(backend, cond, uncond, guidance), x[None], backend.alphas_cumprod, steps)
        frames += tensor_to_pils(backend.decode_latents(latent))
    return istd(frames)


def test_model_istd_follows_the_protocol(sd1):
    report = evaluate_istd(sd1, ["a cat", "a dog"], pairs=2, seed=10, steps=3, guidance=5.0, width=64, height=64, points=5, batch_size=3)
    assert (report.width, report.height, report.points, report.pairs) == (64, 64, 5, 2)
    assert report.istd == pytest.approx((report.per_prompt[0].istd + report.per_prompt[1].istd) / 2)
    # prompt 1, pair 1 is k = 3: seeds 10 + 6 and 10 + 7; prompt 1's value is the mean of its two pairs
    pairs = [brute_force_sequence_istd(sd1, "a dog", 10 + 2 * k, 11 + 2 * k, 5, 3, 5.0) for k in (2, 3)]
    assert report.per_prompt[1].istd == pytest.approx(sum(pairs) / 2, rel=1e-3, abs=1e-4)
    assert report.as_dict()["per_prompt"][1]["prompt"] == "a dog" and len(report.mean.distances) == 4


def test_istd_job_with_and_without_lora(sd1, tmp_path):
    shapes = {p: tuple(m.weight.shape) for p, m in attention_projections(sd1.unet_model)}
    layers = {"lora_unet_" + p.replace(".", "_"): LoraLayer(d * 20, u * 20) for p, (d, u) in random_lora(shapes, 4).items()}
    save_kohya(LoraNetwork(layers, "kohya"), tmp_path / "strong.safetensors")
    before = {k: v.clone() for k, v in sd1.unet_model.state_dict().items()}
    request = IstdRequest(
        prompts=["a cat"], points=4, steps=2, width=64, height=64, lora=str(tmp_path / "strong.safetensors"), compare_without_lora=True
    )
    result = run_istd(sd1, request)
    plain = evaluate_istd(sd1, ["a cat"], steps=2, width=64, height=64, points=4, batch_size=11)
    assert result.without_lora.istd == pytest.approx(plain.istd)
    assert result.with_lora.mean.distances != pytest.approx(plain.mean.distances)
    assert result.sidecar["lora"]["sha256"] and "istd_without_lora" in result.sidecar
    assert all(torch.equal(v, sd1.unet_model.state_dict()[k]) for k, v in before.items())  # LoRA removed
