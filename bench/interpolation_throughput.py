"""Interpolation throughput against the bound set by the UNet evaluations alone.

Runs a seed-to-seed interpolation through lib_smooth.jobs.run_interpolate with a backend whose UNet,
VAE and text-encoder calls are timed, and reports frames per second, UNet evaluations per frame, and
how much of the wall time is spent outside the UNet (VAE decoding listed apart: it is model work too,
but not the UNet's). The goal is ≤ 10 % outside the UNet and VAE.

    python -m bench.interpolation_throughput [--model PATH] [--frames 24] [--steps 25] [--size 64]
        [--device cuda --dtype float16 --output bench/results/interpolation_throughput_cuda.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.machine import describe
from lib_smooth.backends import open_model
from lib_smooth.jobs import run_interpolate
from lib_smooth.requests import InterpolateRequest


class TimedBackend:
    """Forwards everything to a backend and adds up the seconds spent in each model call."""

    def __init__(self, inner):
        self.inner, self.seconds, self.samples = inner, defaultdict(float), defaultdict(int)
        # GPU calls return before the work is done: wait for it, or the time lands in the next call
        self.sync = torch.cuda.synchronize if inner.device.type == "cuda" else (lambda: None)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, kind, fn, *args):
        self.sync()
        start = time.perf_counter()
        out = fn(*args)
        self.sync()
        self.seconds[kind] += time.perf_counter() - start
        self.samples[kind] += args[0].shape[0] if hasattr(args[0], "shape") else len(args[0])
        return out

    def unet(self, x, t, cond):
        return self._timed("unet", self.inner.unet, x, t, cond)

    def decode_latents(self, latents):
        return self._timed("vae_decode", self.inner.decode_latents, latents)

    def encode_prompts(self, prompts, width, height):
        return self._timed("text", self.inner.encode_prompts, prompts, width, height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "interpolation_throughput.json"))
    args = parser.parse_args()
    inner, model = open_model(args.model, device=args.device, dtype=args.dtype)
    request = InterpolateRequest(
        prompt_a="a red circle on a blue background",
        seed_a=1,
        seed_b=2,
        frames=args.frames,
        steps=args.steps,
        width=args.size,
        height=args.size,
        batch_size=args.batch_size,
    )
    run_interpolate(inner, InterpolateRequest(**{**request.__dict__, "frames": 2, "steps": 2}))  # warm-up
    backend = TimedBackend(inner)
    start = time.perf_counter()
    run_interpolate(backend, request)
    total = time.perf_counter() - start
    unet, decode, text = backend.seconds["unet"], backend.seconds["vae_decode"], backend.seconds["text"]
    other = total - unet - decode - text
    result = {
        "model": model,
        "frames": args.frames,
        "steps": args.steps,
        "size": args.size,
        "batch_size": args.batch_size,
        "machine": describe(args.device),
        "dtype": args.dtype,
        "seconds": total,
        "frames_per_second": args.frames / total,
        "unet_evaluations_per_frame": backend.samples["unet"] / args.frames,
        "unet_seconds": unet,
        "vae_decode_seconds": decode,
        "text_seconds": text,
        "other_seconds": other,
        "overhead_over_unet_and_vae": other / (unet + decode),
        "overhead_over_unet_alone": (total - unet) / unet,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
