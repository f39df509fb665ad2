"""Reconstruction quality and time per image: DDIM inversion against null-text inversion.

For each image: invert (guidance 1), reconstruct at guidance 7.5, and report the time, the latent error
‖x̂₀ − x₀‖/‖x₀‖ and PSNR / SSIM of the decoded image against the input. With no --model the tiny
random-weight SD1 model is used: its random VAE cannot reproduce images, so only the latent error and
the times mean anything there.

    python -m bench.inversion_cost [--model PATH] [--steps 50] [--size 64]
        [--device cuda --dtype float16 --output bench/results/inversion_cost_cuda.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.machine import describe
from lab.shapes import samples
from lib_smooth.backends import open_model
from lib_smooth.invert import invert_image, reconstruct
from lib_smooth.jobs import decode
from lib_smooth.metrics import psnr, ssim


def test_images(size: int) -> list:
    """Three drawn images with their captions (the first of lab.shapes' deterministic set)."""
    return [(spec.caption, image) for image, spec in samples(3, seed=0, size=size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "inversion_cost.json"))
    args = parser.parse_args()
    backend, model = open_model(args.model, device=args.device, dtype=args.dtype)
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)
    images = test_images(args.size)
    first_prompt, first_image = images[0]
    invert_image(backend, first_image, first_prompt, steps=2, width=args.size, height=args.size, mode="null-text", inner_steps=1)  # warm-up
    rows = []
    for mode in ("ddim", "null-text"):
        for prompt, image in images:
            start = time.perf_counter()
            inversion = invert_image(
                backend, image, prompt, steps=args.steps, width=args.size, height=args.size, mode=mode, inner_steps=args.inner_steps
            )
            sync()
            seconds = time.perf_counter() - start
            latent = reconstruct(backend, inversion, guidance=7.5)
            output = decode(backend, latent)[0]
            rows.append(
                {
                    "mode": mode,
                    "prompt": prompt,
                    "inversion_seconds": seconds,
                    "latent_error": float((latent - inversion.x_0).norm() / inversion.x_0.norm()),
                    "psnr": psnr(image, output),
                    "ssim": ssim(image, output),
                }
            )
    summary = {}
    for mode in ("ddim", "null-text"):
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {key: sum(r[key] for r in mine) / len(mine) for key in ("inversion_seconds", "latent_error", "psnr", "ssim")}
    result = {
        "model": model,
        "steps": args.steps,
        "size": args.size,
        "guidance": 7.5,
        "null_text_inner_steps": args.inner_steps,
        "machine": describe(args.device),
        "dtype": args.dtype,
        "mean": summary,
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"{'mode':10s} {'s/image':>8s} {'latent err':>10s} {'PSNR':>7s} {'SSIM':>6s}")
    for mode, m in summary.items():
        print(f"{mode:10s} {m['inversion_seconds']:8.2f} {m['latent_error']:10.4f} {m['psnr']:7.2f} {m['ssim']:6.3f}")


if __name__ == "__main__":
    main()
