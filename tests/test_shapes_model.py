"""The embedded shapes-sd1 model: what is committed, that both copies are the same model, that it draws its prompts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lab import shapes
from lib_smooth.backends import load_model
from lib_smooth.backends.shapes_model import CHECKPOINT, DIFFUSERS_DIR, TEXT_ENCODER_CONFIG, UNET_CONFIG, VAE_CONFIG
from lib_smooth.ddim import guided_eps, sample
from lib_smooth.images import tensor_to_pils
from lib_smooth.interpolate import seed_noise

WEIGHT_FILES = sorted(DIFFUSERS_DIR.rglob("*.safetensors")) + [CHECKPOINT]


def test_weights_are_fp16_and_25_mb_at_most_for_both_copies():
    assert len(WEIGHT_FILES) == 4  # unet, vae, text encoder; the single file
    assert sum(path.stat().st_size for path in WEIGHT_FILES) <= 25_000_000
    for path in WEIGHT_FILES:
        with safe_open(str(path), "pt") as weights:
            dtypes = {
                weights.get_slice(key).get_dtype()
                for key in weights.keys()
                if "alphas" not in key and "betas" not in key and "posterior" not in key and "sqrt" not in key and "log_one_minus" not in key
            }
        assert dtypes == {"F16"}, path


def test_architecture_is_sd1_at_the_documented_sizes(shapes_model):
    assert shapes_model.arch == "sd1" and shapes_model.parameterization == "eps" and shapes_model.vae_scale == 8
    unet, vae, text = shapes_model.unet_model.config, shapes_model.vae.config, shapes_model.text_encoders[0].config
    assert tuple(unet.block_out_channels) == UNET_CONFIG["block_out_channels"] and unet.cross_attention_dim == text.hidden_size
    assert tuple(vae.block_out_channels) == VAE_CONFIG["block_out_channels"] and vae.latent_channels == 4
    assert text.vocab_size == TEXT_ENCODER_CONFIG["vocab_size"] == 49408 == len(shapes_model.tokenizers[0])
    # the training report travels with the weights
    report = json.loads((DIFFUSERS_DIR / "training_report.json").read_text())
    assert report["total_training_minutes"] > 0 and report["detector"]


def test_single_file_is_the_same_model_as_the_diffusers_folder(shapes_model):
    """The WebUI copy (ldm layout, text encoder named by a WebUI-root-relative path in its yaml) loads
    back to the same network: equal text features, UNet outputs and decoded images."""
    single = load_model(CHECKPOINT)
    prompt = [shapes.spec_for(0, 1).caption]
    torch.testing.assert_close(single.encode_prompts(prompt, 64, 64), shapes_model.encode_prompts(prompt, 64, 64))
    x, t = seed_noise(0, (1, 4, 8, 8)), torch.tensor([500])
    cond = shapes_model.encode_prompts(prompt, 64, 64)
    torch.testing.assert_close(single.unet(x, t, cond), shapes_model.unet(x, t, cond))
    torch.testing.assert_close(single.decode_latents(x), shapes_model.decode_latents(x))
    assert single.scaling_factor == pytest.approx(shapes_model.scaling_factor)


def test_samples_follow_their_prompts(shapes_model):
    """Held-out prompts (data seed 1), DDIM 25 steps, CFG 5: the detector reads back the asked colour and
    shape — the issue's target is 80 %. On the shipped weights: 64 of 64 colours, 60 of 64 shapes (the
    misses are small stars with blunt points); bench/RESULTS.md has 256 prompts."""
    specs = [shapes.spec_for(i, 1) for i in range(64)]
    cond = shapes_model.encode_prompts([s.caption for s in specs], 64, 64)
    uncond = shapes_model.encode_prompts([""], 64, 64)
    noise = torch.cat([seed_noise(i, (1, 4, 8, 8)) for i in range(len(specs))])
    images = tensor_to_pils(shapes_model.decode_latents(sample(guided_eps(shapes_model, cond, uncond, 5.0), noise, shapes_model.alphas_cumprod, 25)))
    accuracy = shapes.accuracy(images, specs)
    assert accuracy["colour"] >= 0.9 and accuracy["both"] >= 0.8


def test_the_noise_decides_what_a_partial_prompt_leaves_open(shapes_model):
    """Under "a red shape" (64 seeds, DDIM 25, CFG 5) the shapes are red but the rest varies from seed to
    seed, as pose and layout do in Stable Diffusion. Shipped weights: red 54 of 64; every shape appears
    (square 33, circle 28, star and triangle once each); backgrounds 2.8 bits, positions 2.3 bits."""
    from lab.recipe.train_shapes_model import draw_prompt

    images = draw_prompt(shapes_model, "a red shape", 64, 5.0, 25)
    found = [shapes.detect(image) for image in images]
    assert sum(d.colour == "red" for d in found) >= 48
    spread = shapes.diversity(images, ["shape", "background", "position"])
    assert len(spread["shape"]["counts"]) >= 3 and spread["shape"]["top_share"] <= 0.7
    assert spread["background"]["entropy_bits"] >= 2.0 and spread["position"]["entropy_bits"] >= 1.5
