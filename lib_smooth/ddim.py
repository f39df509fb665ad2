"""Deterministic DDIM (η = 0) sampling and inversion over a noise-prediction callable.

Notation: ᾱ_t is the cumulative product of the training schedule (``alphas_cumprod``). A latent at
noise level ᾱ is x = √ᾱ·x̂₀ + √(1−ᾱ)·ε. One DDIM step moves a latent from level ᾱ_from to ᾱ_to:

    x̂₀  = (x − √(1−ᾱ_from)·ε) / √ᾱ_from
    x'  = √ᾱ_to·x̂₀ + √(1−ᾱ_to)·ε

Sampling walks the timesteps downward (ᾱ grows), inversion walks them upward with the same step,
evaluating ε at the *target* timestep as the standard DDIM inversion does (ε(x_{t−1}, t) ≈ ε(x_t, t)).

Timesteps are the "leading" DDIM grid of Stable Diffusion (diffusers' DDIMScheduler with
steps_offset=1, the WebUI's DDIM): t_i = i·⌊T/n⌋ + 1, i = 0…n−1; below the first one the level is
ᾱ_0 (``set_alpha_to_one=False``).

An `eps_fn(x, t, step_index)` returns ε for a batch x at timestep t. :func:`guided_eps` builds one from
a backend with classifier-free guidance; editing and null-text inversion swap conditionings per step.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .backend import Backend, Conditioning, cond_cat, cond_expand, cond_tokens

EpsFn = Callable[[torch.Tensor, int, int], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]


def ddim_timesteps(steps: int, train_steps: int = 1000) -> List[int]:
    """The n DDIM timesteps in sampling order (descending), e.g. 50 → [981, 961, …, 1]."""
    stride = train_steps // steps if steps >= 1 else 0
    # the last timestep (steps − 1)·stride + 1 must exist: 1000 steps of a 1000-step schedule would need t = 1000
    if steps < 1 or (steps - 1) * stride + 1 > train_steps - 1:
        raise ValueError(f"steps must be in 1..{train_steps - 1}, got {steps}")
    return [i * stride + 1 for i in reversed(range(steps))]


def level(alphas_cumprod: torch.Tensor, t: Optional[int]) -> float:
    """ᾱ at timestep t; None stands for the clean end of the chain (ᾱ_0, as SD's DDIM uses)."""
    return float(alphas_cumprod[0 if t is None else t])


def model_output_to_eps(output: torch.Tensor, x: torch.Tensor, alpha: float, parameterization: str) -> torch.Tensor:
    """ε from the UNet output at level ᾱ: eps-models predict it, v-models predict v = √ᾱ·ε − √(1−ᾱ)·x₀."""
    if parameterization == "eps":
        return output
    if parameterization == "v":
        return alpha**0.5 * output + (1 - alpha) ** 0.5 * x
    raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move x from level ᾱ_from to ᾱ_to along the DDIM (η = 0) path given ε; both directions."""
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def guided_eps(
    backend: Backend,
    cond: Conditioning | Sequence[Conditioning],
    uncond: Conditioning | Sequence[Conditioning] | None = None,
    guidance: float = 7.5,
) -> EpsFn:
    """ε with classifier-free guidance: ε_u + w·(ε_c − ε_u); w = 1 (or no uncond) evaluates ε_c alone.

    `cond` / `uncond` are a conditioning (batch 1 or the latent batch) or one per step: a sequence
    indexed by the step index, which is how prompt-switch editing and null-text inversion vary them.
    Both branches run in one UNet call — or in two when the prompts have different token counts
    (a WebUI prompt over 75 tokens), as the WebUI's own sampler does, so neither is padded.
    """
    per_step_cond = isinstance(cond, (list, tuple))
    per_step_uncond = isinstance(uncond, (list, tuple))

    def eps_fn(x: torch.Tensor, t: int, index: int) -> torch.Tensor:
        batch = x.shape[0]
        c = cond_expand(cond[index] if per_step_cond else cond, batch)
        timesteps = torch.full((batch,), t, dtype=torch.long)
        alpha = level(backend.alphas_cumprod, t)
        # the model answers on its own device; the DDIM arithmetic happens on x's
        if uncond is None or guidance == 1.0:
            out = backend.unet(x, timesteps, c).to(x.device)
            return model_output_to_eps(out, x, alpha, backend.parameterization)
        u = cond_expand(uncond[index] if per_step_uncond else uncond, batch)
        if cond_tokens(u) == cond_tokens(c):
            out = backend.unet(torch.cat([x, x]), torch.cat([timesteps, timesteps]), cond_cat([u, c])).to(x.device)
            eps_u, eps_c = model_output_to_eps(out, torch.cat([x, x]), alpha, backend.parameterization).chunk(2)
        else:
            eps_u, eps_c = (
                model_output_to_eps(backend.unet(x, timesteps, branch).to(x.device), x, alpha, backend.parameterization) for branch in (u, c)
            )
        return eps_u + guidance * (eps_c - eps_u)

    return eps_fn


def sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Denoise x_T (at the level of the first DDIM timestep) to x_0 in `steps` DDIM steps."""
    timesteps = ddim_timesteps(steps, len(alphas_cumprod))
    x = x_T.float()
    for index, t in enumerate(timesteps):
        t_next = timesteps[index + 1] if index + 1 < steps else None
        eps = eps_fn(x, t, index)
        x = ddim_step(x, eps, level(alphas_cumprod, t), level(alphas_cumprod, t_next))
        if callback is not None:
            callback(index, steps, x)
    return x


def invert(
    eps_fn: EpsFn,
    x_0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    callback: Optional[StepCallback] = None,
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, List[torch.Tensor]]:
    """DDIM inversion: noise the clean latent x_0 up to x_T deterministically.

    `eps_fn` is called with the step index of the *sampling* order, so a per-step conditioning list
    means the same thing for inversion and sampling. With `return_trajectory` the latents at every
    level are returned too, clean first: [x_0, x_{t_1}, …, x_T] (steps + 1 tensors).
    """
    timesteps = ddim_timesteps(steps, len(alphas_cumprod))
    x = x_0.float()
    trajectory = [x]
    for count, t in enumerate(reversed(timesteps)):
        index = steps - 1 - count
        t_prev = timesteps[index + 1] if index + 1 < steps else None
        eps = eps_fn(x, t, index)
        x = ddim_step(x, eps, level(alphas_cumprod, t_prev), level(alphas_cumprod, t))
        trajectory.append(x)
        if callback is not None:
            callback(count, steps, x)
    return (x, trajectory) if return_trajectory else x
