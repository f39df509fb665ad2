"""DDIM inversion of real images, reconstruction, and prompt-switch editing (Smooth Diffusion Sec. 4.3).

Inversion follows the paper: the clean latent is walked up the DDIM chain with the conditional
prediction only (guidance 1) by default; "ddim-no-text" inverts with the empty prompt instead.
Reconstruction samples back from x_T with classifier-free guidance (default 7.5).

Editing switches prompts during reconstruction (Eq. 15): the source prompt for the first, noisiest
(1 − r) share of the steps, the target prompt for the last r (default r = 0.8, as the official demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from PIL import Image

from .backend import Backend, Conditioning
from .cache import InversionCache, cache_key
from .ddim import guided_eps, invert, sample
from .images import center_crop_resize, pil_to_tensor, png_bytes

INVERSION_MODES = ("ddim", "ddim-no-text")


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
) -> Inversion:
    """Invert `image` (centre-cropped and resized to width×height) to its x_T; cached when `cache` is given."""
    if mode not in INVERSION_MODES:
        raise ValueError(f"inversion mode must be one of {INVERSION_MODES}, got {mode!r}")
    image = prepare_image(image, width, height)
    key = cache_key(
        image=png_bytes(image), model=backend.identity, lora=backend.lora_identity, prompt=prompt, negative=negative_prompt,
        steps=steps, guidance=guidance, mode=mode, size=[width, height], trajectory=return_trajectory,
    )
    if cache is not None and (hit := cache.get(key)) is not None:
        return Inversion.from_dict(hit)
    x_0 = backend.encode_images(pil_to_tensor(image))
    cond = backend.encode_prompts(["" if mode == "ddim-no-text" else prompt], width, height)
    uncond = backend.encode_prompts([negative_prompt], width, height) if guidance != 1.0 else None
    eps_fn = guided_eps(backend, cond, uncond, guidance)
    result = invert(eps_fn, x_0, backend.alphas_cumprod, steps, callback=on_step, return_trajectory=return_trajectory)
    x_T, trajectory = result if return_trajectory else (result, None)
    inversion = Inversion(x_T, x_0, prompt, steps, guidance, mode, width, height, trajectory)
    if cache is not None:
        cache.put(key, inversion.to_dict())
    return inversion


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
    """Sample back from x_T → latent x_0. With `target_prompt` this is the prompt-switch edit."""
    w, h = inversion.width, inversion.height
    source = backend.encode_prompts([inversion.prompt], w, h)
    cond = source
    if target_prompt is not None:
        cond = prompt_switch_conds(source, backend.encode_prompts([target_prompt], w, h), inversion.steps, switch_ratio)
    uncond = backend.encode_prompts([negative_prompt], w, h) if guidance != 1.0 else None
    eps_fn = guided_eps(backend, cond, uncond, guidance)
    return sample(eps_fn, inversion.x_T, backend.alphas_cumprod, inversion.steps, callback=on_step)
