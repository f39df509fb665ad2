"""Null-text inversion (Mokady et al. 2023), as Smooth Diffusion's demo uses it, and its dual form.

Plain DDIM inversion reconstructs poorly under classifier-free guidance, because guidance pushes the
sampling path off the inversion path. Null-text inversion keeps the DDIM-inverted x_T and the prompt,
and instead optimises one unconditional ("null") embedding per sampling step so that the guided DDIM
step lands on the inversion path again. Per sampling step i (timestep t, from x_T downward):

    ∅_i ← ∅_{i−1} (the first from the empty prompt);   Adam, lr = 1e-2·(1 − i/100)
    repeat ≤ inner_steps times:
        x' = DDIM step of x with ε = ε(x, t, ∅_i) + w·(ε(x, t, c) − ε(x, t, ∅_i))
        loss = MSE(x', x*_{i+1})              (x* = the DDIM inversion trajectory)
        stop early once loss < 1e-5 + 2e-5·i
    x ← x' computed with the final ∅_i

These numbers are the official code's (SHI-Labs/Smooth-Diffusion nulltxtinv_wrapper.py; paper Supp.).
The null embeddings being optimised and the latent arithmetic are float32; the UNet runs in the
backend's own precision (fp16 on a GPU, say) and its output is taken back to float32. The *dual* form
(the paper's real-image interpolation, Eq. 20) inverts two images with one shared set {∅_i}, optimised
on the sum of both losses, so every interpolation frame can use it.

Only the cross-attention embedding is optimised: for SDXL's dict conditioning that is the one 3-D entry
(tokens × width); the pooled vector and size conditioning of the empty prompt stay as they are, since
they enter the UNet through the time embedding, not the attention that null-text inversion tunes.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .backend import Backend, Conditioning, cond_expand
from .ddim import ddim_step, ddim_timesteps, level, model_output_to_eps

# (sampling step, units): called after every inner iteration with units = 1 and, when a step stops early,
# once more with the iterations it skipped, so step × inner_steps units always add up (progress bars).
IterationCallback = Callable[[int, int], None]


def learning_rate(step: int) -> float:
    """Adam learning rate of sampling step i: 1e-2·(1 − i/100)."""
    return 1e-2 * (1.0 - step / 100.0)


def early_stop_threshold(step: int, base: float = 1e-5, slope: float = 2e-5) -> float:
    """Loss below which step i stops optimising: 1e-5 + 2e-5·i."""
    return base + slope * step


def _trainable(cond: Conditioning) -> Tuple[Conditioning, torch.Tensor]:
    """A copy of `cond` whose cross-attention embedding is a fresh leaf that requires grad."""
    if isinstance(cond, dict):
        key = next(k for k, v in cond.items() if v.dim() == 3)
        leaf = cond[key].detach().clone().float().requires_grad_(True)
        return {**{k: v.detach() for k, v in cond.items()}, key: leaf}, leaf
    leaf = cond.detach().clone().float().requires_grad_(True)
    return leaf, leaf


def _detached(cond: Conditioning) -> Conditioning:
    return {k: v.detach() for k, v in cond.items()} if isinstance(cond, dict) else cond.detach()


def optimise_null_embeddings(
    backend: Backend,
    trajectory: Sequence[torch.Tensor],
    cond: Conditioning,
    uncond: Conditioning,
    guidance: float = 7.5,
    inner_steps: int = 10,
    early_stop_base: float = 1e-5,
    early_stop_slope: float = 2e-5,
    on_iteration: Optional[IterationCallback] = None,
) -> List[Conditioning]:
    """Per-step null embeddings that make guided DDIM sampling retrace `trajectory`.

    trajectory: the DDIM inversion path [x_0, …, x_T] (clean first), batch B — B = 2 with one `uncond`
    is the dual null-text inversion; `cond` has batch 1 or B, `uncond` batch 1 (shared by the batch).
    Returns one batch-1 conditioning per sampling step.
    """
    steps = len(trajectory) - 1
    timesteps = ddim_timesteps(steps, len(backend.alphas_cumprod))
    x = trajectory[-1].float()
    batch = x.shape[0]
    cond_b = cond_expand(cond, batch)
    null = _detached(uncond)
    nulls: List[Conditioning] = []
    for i, t in enumerate(timesteps):
        t_next = timesteps[i + 1] if i + 1 < steps else None
        a_t, a_next = level(backend.alphas_cumprod, t), level(backend.alphas_cumprod, t_next)
        t_batch = torch.full((batch,), t, dtype=torch.long)
        target = trajectory[steps - 1 - i].float()
        with torch.no_grad():
            eps_c = model_output_to_eps(backend.unet(x, t_batch, cond_b), x, a_t, backend.parameterization)
        null, leaf = _trainable(null)
        optimiser = torch.optim.Adam([leaf], lr=learning_rate(i))
        for j in range(inner_steps):
            with torch.enable_grad():
                eps_u = model_output_to_eps(backend.unet(x, t_batch, cond_expand(null, batch)), x, a_t, backend.parameterization)
                stepped = ddim_step(x, eps_u + guidance * (eps_c - eps_u), a_t, a_next)
                # mean over each sample, summed over the batch: the dual form adds both images' losses
                loss = ((stepped - target) ** 2).flatten(1).mean(dim=1).sum()
                # grad w.r.t. the embedding only: hosts whose weights require grad (the WebUI) keep theirs clean
                (leaf.grad,) = torch.autograd.grad(loss, [leaf])
            optimiser.step()
            if on_iteration is not None:
                on_iteration(i, 1)
            if loss.item() < early_stop_threshold(i, early_stop_base, early_stop_slope):
                if on_iteration is not None and j + 1 < inner_steps:
                    on_iteration(i, inner_steps - j - 1)
                break
        null = _detached(null)
        nulls.append(null)
        with torch.no_grad():  # ε(x, t, c) is unchanged since before the loop: only the null branch is new
            eps_u = model_output_to_eps(backend.unet(x, t_batch, cond_expand(null, batch)), x, a_t, backend.parameterization)
            x = ddim_step(x, eps_u + guidance * (eps_c - eps_u), a_t, a_next)
    return nulls
