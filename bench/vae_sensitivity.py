"""How precise must a UNet's latents be for the VAE to draw the right shape?

Encodes held-out images of lib_smooth.shapes, adds Gaussian noise of σ (in units of the scaled latents,
which have unit variance) and decodes; the shapes detector then reads colour and shape back. A decoder
whose shape accuracy collapses at small σ stores shape in latent details finer than an undertrained
UNet gets right — the embedded model's samples have the asked colour but blob shapes (bench/RESULTS.md).

    python bench/vae_sensitivity.py [--vae FOLDER] [--images 200] [--sigmas 0 0.1 0.2 0.4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib_smooth import shapes  # noqa: E402
from lib_smooth.backends.shapes_model import DIFFUSERS_DIR  # noqa: E402
from lib_smooth.images import tensor_to_pils  # noqa: E402
from lib_smooth.metrics import psnr  # noqa: E402


@torch.no_grad()
def sensitivity(vae: torch.nn.Module, count: int, sigmas: list, seed: int = 0) -> list:
    specs = [shapes.spec_for(i, 1) for i in range(count)]  # data seed 1: not trained on
    images = torch.from_numpy(np.stack([np.asarray(shapes.render(spec)) for spec in specs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        noisy = latents + sigma * torch.randn(latents.shape, generator=generator)
        decoded = vae.decode(noisy / vae.config.scaling_factor).sample.clamp(-1, 1)
        row = {"sigma": sigma, **shapes.accuracy(tensor_to_pils(decoded), specs), "psnr": psnr((decoded + 1) / 2, (images + 1) / 2)}
        rows.append(row)
        print(f"σ {sigma:4.2f}: colour {row['colour']:.1%} shape {row['shape']:.1%} both {row['both']:.1%} PSNR {row['psnr']:.1f} dB")
    return rows


def main() -> None:
    from diffusers import AutoencoderKL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default=str(DIFFUSERS_DIR / "vae"), help="a diffusers VAE folder (default: shapes-sd1's)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vae_sensitivity.json"))
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True).float().eval()
    rows = sensitivity(vae, args.images, args.sigmas)
    Path(args.out).write_text(json.dumps({"vae": args.vae, "images": args.images, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
