"""How precise must the latents be for the VAE to draw the right shape, and how precise are the UNet's?

Every caption of lab.shapes names exactly one image, so a perfect text-to-image model would
produce that image's latents exactly. On held-out images (data seed 1) this measures, in units of the
latents' standard deviation:

1. the decoder's tolerance: Gaussian noise of σ added to the true latents, decoded, read back by the
   shapes detector;
2. the UNet's error: its x̂₀ for the true caption from x_t at several timesteps (guidance 1), and the
   DDIM samples for the captions (the training check's setting: 25 steps, CFG 5), against the true
   latents;
3. two yardsticks: the distance to another held-out image, and to the same image with another shape.

    python -m lab.recipe.latent_precision [--model PATH] [--images 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from lab import shapes
from lab.recipe.train_shapes_model import sample_latents
from lib_smooth.backends import open_model
from lib_smooth.images import pil_to_tensor, tensor_to_pils
from lib_smooth.metrics import psnr
from lib_smooth.regularizer import predict_x0

SIZE = 64


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def encode(backend, specs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels in [−1, 1], scaled latents) of the specs' renders."""
    pixels = torch.cat([pil_to_tensor(shapes.render(spec, SIZE)) for spec in specs])
    return pixels, backend.encode_images(pixels)


def yardsticks(backend, latents: torch.Tensor, specs: list, std: float) -> dict:
    other_shape = [dataclasses.replace(spec, shape=next(s for s in shapes.SHAPES if s != spec.shape)) for spec in specs]
    shuffled = torch.randperm(len(specs), generator=torch.Generator().manual_seed(0))
    return {"another_image": rms(latents, latents[shuffled]) / std, "same_image_another_shape": rms(latents, encode(backend, other_shape)[1]) / std}


@torch.no_grad()
def decoder_tolerance(backend, latents: torch.Tensor, pixels: torch.Tensor, specs: list, sigmas: list, std: float) -> list:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for sigma in sigmas:
        decoded = backend.decode_latents(latents + sigma * std * torch.randn(latents.shape, generator=generator)).clamp(-1, 1)
        rows.append({"sigma": sigma, **shapes.accuracy(tensor_to_pils(decoded), specs), "psnr": psnr((decoded + 1) / 2, (pixels + 1) / 2)})
    return rows


@torch.no_grad()
def unet_error(backend, latents: torch.Tensor, specs: list, timesteps: list, std: float) -> dict:
    cond = backend.encode_prompts([spec.caption for spec in specs], SIZE, SIZE)
    generator = torch.Generator().manual_seed(1)
    x0_error = {}
    for t in timesteps:
        a_t = backend.alphas_cumprod[t].expand(len(specs))
        noisy = a_t.sqrt().view(-1, 1, 1, 1) * latents + (1 - a_t).sqrt().view(-1, 1, 1, 1) * torch.randn(latents.shape, generator=generator)
        x0 = predict_x0(backend.unet(noisy, torch.full((len(specs),), t), cond), noisy, a_t, "eps")
        x0_error[str(t)] = rms(x0, latents) / std
    samples = sample_latents(backend, specs, 5.0, 25)
    return {"x0_error_by_timestep": x0_error, "ddim_sample_error": rms(samples, latents) / std}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="diffusers folder or single file (default: the embedded shapes-sd1)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    parser.add_argument("--timesteps", type=int, nargs="+", default=[250, 500, 750, 999])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latent_precision.json"))
    args = parser.parse_args()
    backend, description = open_model(args.model)
    specs = [shapes.spec_for(i, 1) for i in range(args.images)]
    pixels, latents = encode(backend, specs)
    std = float(latents.std())
    tolerance = decoder_tolerance(backend, latents, pixels, specs, args.sigmas, std)
    for row in tolerance:
        print(f"decoder, σ {row['sigma']:4.2f} std: colour {row['colour']:.1%} shape {row['shape']:.1%} PSNR {row['psnr']:.1f} dB")
    error = unet_error(backend, latents, specs, args.timesteps, std)
    for t, value in error["x0_error_by_timestep"].items():
        print(f"UNet x̂₀ error at t = {t}: {value:.3f} std")
    print(f"DDIM samples (25 steps, CFG 5) against the true latents: {error['ddim_sample_error']:.3f} std")
    scale = yardsticks(backend, latents, specs, std)
    print(
        f"yardsticks: another image {scale['another_image']:.3f} std, the same image with another shape {scale['same_image_another_shape']:.3f} std"
    )
    result = {"model": description, "images": args.images, "latent_std": std, "decoder_tolerance": tolerance, **error, "yardsticks": scale}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
