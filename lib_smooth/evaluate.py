"""Model-level smoothness under the paper's ISTD protocol (Smooth Diffusion Sec. 4.1, Supp. A.3).

For each prompt and each of `pairs` noise pairs (ε_a, ε_b): sample the `points` images of
slerp(ε_a, ε_b, η), η = 0, 1/(points−1), …, 1 (paper: 11 points) with that one prompt and DDIM, and
measure the sequence. Per prompt the figures are averaged over its pairs; the report gives their
mean over prompts (the paper's number is `mean.istd`). Pair j of prompt p uses the seeds
seed + 2k and seed + 2k + 1 with k = p·pairs + j, so every compared model sees the same noises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .backend import Backend
from .images import tensor_to_pils
from .interpolate import frame_ratios, render_frames, seed_noise
from .metrics import Smoothness, mean_smoothness, smoothness


@dataclass
class IstdReport:
    mean: Smoothness  # averaged over prompts; mean.istd is the paper's ISTD
    per_prompt: List[Smoothness]
    prompts: List[str]
    width: int
    height: int
    pairs: int
    points: int

    @property
    def istd(self) -> float:
        return self.mean.istd

    def as_dict(self) -> dict:
        return {
            "istd": self.mean.istd,
            "mean": self.mean.as_dict(),
            "per_prompt": [dict(prompt=p, **s.as_dict()) for p, s in zip(self.prompts, self.per_prompt)],
            "resolution": [self.width, self.height],
            "pairs": self.pairs,
            "points": self.points,
        }


def evaluate_istd(
    backend: Backend,
    prompts: Sequence[str],
    pairs: int = 1,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 7.5,
    width: int = 512,
    height: int = 512,
    points: int = 11,
    negative_prompt: str = "",
    batch_size: int = 11,
    on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> IstdReport:
    shape = (1, backend.latent_channels, height // backend.vae_scale, width // backend.vae_scale)
    uncond = backend.encode_prompts([negative_prompt], width, height) if guidance != 1.0 else None
    ratios = frame_ratios(points)
    per_prompt = []
    for p, prompt in enumerate(prompts):
        cond = backend.encode_prompts([prompt], width, height)
        sequences = []
        for j in range(pairs):
            k = p * pairs + j
            noise_a, noise_b = seed_noise(seed + 2 * k, shape, backend.device), seed_noise(seed + 2 * k + 1, shape, backend.device)
            latents = render_frames(backend, noise_a, noise_b, cond, cond, uncond, points, steps, guidance, batch_size, on_step, ratios)
            images = tensor_to_pils(torch.cat([backend.decode_latents(latents[i : i + batch_size]) for i in range(0, points, batch_size)]))
            sequences.append(smoothness(images))
        per_prompt.append(mean_smoothness(sequences))
    return IstdReport(mean_smoothness(per_prompt), per_prompt, list(prompts), width, height, pairs, points)
