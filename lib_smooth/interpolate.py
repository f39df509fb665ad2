"""Smooth interpolation: slerp between two initial latents x_T, lerp between two text conditionings.

Between two images both are DDIM-inverted first (see :mod:`lib_smooth.invert`); between two seeds the
endpoints are their Gaussian noises. Frame k of N uses the ratio w_k = k/(N−1), so frames 0 and N−1
are the endpoints themselves. Gaussian latents live near a sphere, which is why x_T is blended with
spherical interpolation (a straight line would pass through lower-norm, blurrier latents).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .backend import Backend, Conditioning, cond_lerp
from .ddim import guided_eps, sample

PARALLEL_DOT = 0.9995  # above this cosine, slerp's sin(θ) is too small to divide by: use lerp


def frame_ratios(frames: int) -> torch.Tensor:
    """w_k = k/(N−1) for k = 0…N−1 (a single frame uses w = 0)."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    return torch.linspace(0.0, 1.0, frames) if frames > 1 else torch.zeros(1)


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | float, dot_threshold: float = PARALLEL_DOT) -> torch.Tensor:
    """Spherical interpolation of two same-shaped tensors, treated as flat vectors.

        θ = arccos(â·b̂),  slerp(a, b; w) = sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b

    Returns one tensor per weight, stacked in a new first dimension (a batch-1 input keeps its batch
    dimension merged: (1, C, H, W) inputs give (len(weights), C, H, W)). Nearly parallel inputs
    (cos θ > `dot_threshold`) fall back to the linear blend (1−w)·a + w·b.
    """
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1).to(a.device)
    flat_a, flat_b = a.double().reshape(-1), b.double().reshape(-1)
    cos = torch.dot(flat_a, flat_b) / (flat_a.norm() * flat_b.norm())
    if cos.abs() > dot_threshold:
        coef_a, coef_b = 1 - w, w
    else:
        theta = torch.arccos(cos.clamp(-1, 1))
        coef_a, coef_b = torch.sin((1 - w) * theta) / torch.sin(theta), torch.sin(w * theta) / torch.sin(theta)
    out = coef_a[:, None] * flat_a[None] + coef_b[:, None] * flat_b[None]
    shape = a.shape[1:] if a.dim() > 0 and a.shape[0] == 1 else a.shape
    return out.reshape(len(w), *shape).to(a.dtype)


def seed_noise(seed: int, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal latent noise from a seed, drawn on the CPU so every device gives the same x_T,
    then moved to `device` (the model's: sampling there avoids a transfer per step)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def render_frames(
    backend: Backend,
    x_T_a: torch.Tensor,
    x_T_b: torch.Tensor,
    cond_a: Conditioning,
    cond_b: Conditioning,
    uncond: Optional[Conditioning],
    frames: int,
    steps: int,
    guidance: float,
    batch_size: int = 8,
    on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
    ratios: Optional[torch.Tensor] = None,
    uncond_b: Optional[List[Conditioning]] = None,
) -> torch.Tensor:
    """Sample the N interpolation frames and return their latents x_0 (N, C, h, w).

    x_T is slerped, the conditioning lerped (identical conditionings stay identical); frames are
    denoised `batch_size` at a time. `uncond` is one conditioning or a per-step list (null-text
    inversion); with `uncond_b`, a second per-step list, the two are lerped per frame too.
    `on_step(step, steps, x)` is called after every DDIM step of every batch (progress, previews,
    interruption).
    """
    ratios = frame_ratios(frames) if ratios is None else ratios
    x_T = slerp(x_T_a, x_T_b, ratios)
    latents: List[torch.Tensor] = []
    for start in range(0, len(ratios), batch_size):
        w = ratios[start : start + batch_size]
        cond = cond_lerp(cond_a, cond_b, w)
        frame_uncond = uncond if uncond_b is None else [cond_lerp(a, b, w) for a, b in zip(uncond, uncond_b)]
        eps_fn = guided_eps(backend, cond, frame_uncond, guidance)
        latents.append(sample(eps_fn, x_T[start : start + batch_size], backend.alphas_cumprod, steps, callback=on_step))
    return torch.cat(latents)
