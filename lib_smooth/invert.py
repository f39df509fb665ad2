"""DDIM inversion of real images, reconstruction, and prompt-switch editing (Smooth Diffusion Sec. 4.3).

Inversion follows the paper: the clean latent is walked up the DDIM chain with the conditional
prediction only (guidance 1) by default; "ddim-no-text" inverts with the empty prompt instead;
"null-text" adds null-text inversion (:mod:`lib_smooth.nulltext`), the official demo's default, whose
per-step null embeddings then replace the negative prompt when reconstructing or editing.
Reconstruction samples back from x_T with classifier-free guidance (default 7.5).

Editing switches prompts during reconstruction (Eq. 15): the source prompt for the first, noisiest
(1 − r) share of the steps, the target prompt for the last r (default r = 0.8, as the official demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from PIL import Image

from .backend import Backend, Conditioning, cond_cat
from .cache import InversionCache, cache_key
from .ddim import guided_eps, invert, sample
from .images import center_crop_resize, pil_to_tensor, png_bytes
from .nulltext import IterationCallback, optimise_null_embeddings

INVERSION_MODES = ("ddim", "ddim-no-text", "null-text")


@dataclass
class Inversion:
    """An inverted image: x_T plus what reconstructing or editing it needs."""

    x_T: torch.Tensor  # (1, C, h, w)
    x_0: torch.Tensor  # the VAE latent of the input
    prompt: str
    steps: int
    guidance: float
    mode: str
    width: int
    height: int
    trajectory: Optional[List[torch.Tensor]] = None  # [x_0, …, x_T] when requested
    null_embeddings: Optional[List[Conditioning]] = None  # one per sampling step (null-text modes)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> "Inversion":
        return cls(**data)


def prepare_image(image: Image.Image, width: int, height: int) -> Image.Image:
    return center_crop_resize(image, width, height)


def invert_image(
    backend: Backend,
    image: Image.Image,
    prompt: str,
    steps: int = 50,
    guidance: float = 1.0,
    negative_prompt: str = "",
    width: int = 512,
    height: int = 512,
    mode: str = "ddim",
    cache: Optional[InversionCache] = None,
    return_trajectory: bool = False,
    on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
    null_text_guidance: float = 7.5,
    inner_steps: int = 10,
    on_iteration: Optional[IterationCallback] = None,
) -> Inversion:
    """Invert `image` (centre-cropped and resized to width×height) to its x_T; cached when `cache` is given.

    `guidance` applies to the DDIM pass; in "null-text" mode the null embeddings are then optimised
    for reconstruction at `null_text_guidance` with up to `inner_steps` Adam steps per sampling step.
    """
    if mode not in INVERSION_MODES:
        raise ValueError(f"inversion mode must be one of {INVERSION_MODES}, got {mode!r}")
    image = prepare_image(image, width, height)
    settings = dict(
        prompt=prompt, negative=negative_prompt, steps=steps, guidance=guidance, mode=mode, size=[width, height], trajectory=return_trajectory
    )
    if mode == "null-text":
        settings.update(null_text_guidance=null_text_guidance, inner_steps=inner_steps)
    key = cache_key(image=png_bytes(image), model=backend.identity, lora=backend.lora_identity, **settings)
    if cache is not None and (hit := cache.get(key)) is not None:
        return Inversion.from_dict(hit)
    x_0 = backend.encode_images(pil_to_tensor(image))
    cond = backend.encode_prompts([prompt], width, height)
    inversion_cond = backend.encode_prompts([""], width, height) if mode == "ddim-no-text" else cond
    uncond = backend.encode_prompts([negative_prompt], width, height) if guidance != 1.0 else None
    eps_fn = guided_eps(backend, inversion_cond, uncond, guidance)
    keep = return_trajectory or mode == "null-text"
    result = invert(eps_fn, x_0, backend.alphas_cumprod, steps, callback=on_step, return_trajectory=keep)
    x_T, trajectory = result if keep else (result, None)
    nulls = None
    if mode == "null-text":
        nulls = optimise_null_embeddings(
            backend,
            trajectory,
            cond,
            backend.encode_prompts([negative_prompt], width, height),
            null_text_guidance,
            inner_steps,
            on_iteration=on_iteration,
        )
    inversion = Inversion(x_T, x_0, prompt, steps, guidance, mode, width, height, trajectory if return_trajectory else None, nulls)
    if cache is not None:
        cache.put(key, inversion.to_dict())
    return inversion


def dual_null_text_inversion(
    backend: Backend,
    images: tuple[Image.Image, Image.Image],
    prompts: tuple[str, str],
    steps: int = 50,
    guidance: float = 1.0,
    negative_prompt: str = "",
    width: int = 512,
    height: int = 512,
    cache: Optional[InversionCache] = None,
    on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
    null_text_guidance: float = 7.5,
    inner_steps: int = 10,
    on_iteration: Optional[IterationCallback] = None,
) -> tuple[Inversion, Inversion]:
    """Invert two images with one shared set of per-step null embeddings (the paper's Eq. 20).

    Both DDIM passes run as one batch; the null embeddings are optimised on the sum of both losses and
    stored in both results, so every interpolation frame between them can use the same set.
    """
    prepared = [prepare_image(image, width, height) for image in images]
    key = cache_key(
        images=b"".join(png_bytes(image) for image in prepared),
        model=backend.identity,
        lora=backend.lora_identity,
        prompts=list(prompts),
        negative=negative_prompt,
        steps=steps,
        guidance=guidance,
        mode="dual-null-text",
        size=[width, height],
        null_text_guidance=null_text_guidance,
        inner_steps=inner_steps,
    )
    if cache is not None and (hit := cache.get(key)) is not None:
        return Inversion.from_dict(hit["a"]), Inversion.from_dict(hit["b"])
    x_0 = backend.encode_images(torch.cat([pil_to_tensor(image) for image in prepared]))
    cond = cond_cat([backend.encode_prompts([p], width, height) for p in prompts])
    uncond = backend.encode_prompts([negative_prompt], width, height)
    eps_fn = guided_eps(backend, cond, uncond if guidance != 1.0 else None, guidance)
    x_T, trajectory = invert(eps_fn, x_0, backend.alphas_cumprod, steps, callback=on_step, return_trajectory=True)
    nulls = optimise_null_embeddings(backend, trajectory, cond, uncond, null_text_guidance, inner_steps, on_iteration=on_iteration)
    pair = tuple(
        Inversion(x_T[k : k + 1], x_0[k : k + 1], prompts[k], steps, guidance, "dual-null-text", width, height, None, nulls) for k in range(2)
    )
    if cache is not None:
        cache.put(key, {"a": pair[0].to_dict(), "b": pair[1].to_dict()})
    return pair


def switch_index(steps: int, ratio: float) -> int:
    """First step index that uses the target prompt: round((1 − r)·steps); r = 1 edits from the start."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the switch ratio r must be in [0, 1], got {ratio}")
    return round((1.0 - ratio) * steps)


def prompt_switch_conds(source: Conditioning, target: Conditioning, steps: int, ratio: float) -> List[Conditioning]:
    """One conditioning per sampling step: the source before the switch index, the target from it on."""
    first_target = switch_index(steps, ratio)
    return [source if index < first_target else target for index in range(steps)]


def reconstruct(
    backend: Backend,
    inversion: Inversion,
    guidance: float = 7.5,
    negative_prompt: str = "",
    target_prompt: Optional[str] = None,
    switch_ratio: float = 0.8,
    on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Sample back from x_T → latent x_0. With `target_prompt` this is the prompt-switch edit.

    A null-text inversion's per-step null embeddings take the negative prompt's place (editing keeps them).
    """
    w, h = inversion.width, inversion.height
    source = backend.encode_prompts([inversion.prompt], w, h)
    cond = source
    if target_prompt is not None:
        cond = prompt_switch_conds(source, backend.encode_prompts([target_prompt], w, h), inversion.steps, switch_ratio)
    uncond = inversion.null_embeddings or (backend.encode_prompts([negative_prompt], w, h) if guidance != 1.0 else None)
    eps_fn = guided_eps(backend, cond, uncond, guidance)
    return sample(eps_fn, inversion.x_T, backend.alphas_cumprod, inversion.steps, callback=on_step)
