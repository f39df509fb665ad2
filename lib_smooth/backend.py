"""The model-host protocol every math module talks to, and batch helpers for conditionings.

A conditioning is either a tensor (SD1/SD2: token embeddings, batch first) or a dict of tensors,
each batch first (SDXL: cross-attention context plus the pooled/size vector). The math never looks
inside a conditioning; it only concatenates, repeats, selects and blends it with the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Protocol, Sequence, Union, runtime_checkable

import torch

Conditioning = Union[torch.Tensor, Dict[str, torch.Tensor]]


@dataclass(frozen=True)
class LoraInUse:
    """The LoRA a job ran with, as its sidecar records it: `name` is the file's name (CLI, Python) or the
    Lora-folder name (WebUI) — each host resolves its own kind of reference in its ``use_lora``."""

    name: str
    sha256: str
    weight: float

    def as_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "weight": self.weight}


@runtime_checkable
class Backend(Protocol):
    """What a model host provides (diffusers, the WebUI, a test double).

    Attributes:
        parameterization: "eps" or "v" — what the UNet predicts.
        alphas_cumprod: float32 tensor of the training schedule's ᾱ_t, one entry per DDPM timestep.
        device, dtype: where and in which precision the UNet runs (latent math stays float32). The
            model's outputs (UNet, encoders) are on `device`; the core draws seed noise on the CPU and
            moves it there, so sampling runs on the model's device.
        latent_channels: channels of the VAE latent (4 for SD).
        vae_scale: pixel size of one latent cell (8 for SD).
        native_size: optional, the image side the model was trained at (512 SD1, 768 SD2-v, 1024 SDXL);
            jobs use it when a request leaves width/height unset (512 when a backend does not say).
        identity: a short string naming the model weights (hash), used in cache keys and sidecars.
        lora_identity: a string naming the LoRA set and weights currently applied ("" for none).

    A host that can apply LoRAs also has ``use_lora(reference, weight)``: a context manager that applies
    the LoRA `reference` names (a file path for the diffusers host, a Lora-folder name in the WebUI) for
    its duration — or, with None, makes sure no LoRA is applied — yielding a :class:`LoraInUse` or None.
    """

    parameterization: str
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    latent_channels: int
    vae_scale: int

    @property
    def identity(self) -> str: ...

    @property
    def lora_identity(self) -> str: ...

    def encode_prompts(self, prompts: Sequence[str], width: int, height: int) -> Conditioning:
        """Text conditioning for a batch of prompts (width/height feed SDXL's size vector)."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [-1,1] → latents: the VAE posterior's mode times the scale factor."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images (B,3,H,W) in [-1,1]."""

    def unet(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One UNet evaluation: x_t (B,C,h,w), DDPM timesteps (B,), conditioning → model output.

        Must be differentiable w.r.t. the conditioning when called with grad enabled (null-text
        inversion optimises the unconditional embedding through it).
        """


def cond_batch_size(cond: Conditioning) -> int:
    if isinstance(cond, dict):
        return next(iter(cond.values())).shape[0]
    return cond.shape[0]


def _sequences(cond: Conditioning) -> Dict[str, torch.Tensor]:
    """The token sequences of a conditioning: its (batch, tokens, width) tensors."""
    tensors = cond if isinstance(cond, dict) else {"": cond}
    return {key: value for key, value in tensors.items() if value.dim() == 3}


def cond_tokens(cond: Conditioning) -> int:
    """Token count of the cross-attention context: 77·k for a WebUI prompt of k chunks."""
    return max((value.shape[1] for value in _sequences(cond).values()), default=0)


def cond_pad_tokens(cond: Conditioning, tokens: int) -> Conditioning:
    """Lengthen the token sequence to `tokens` by repeating its last vector — the WebUI's rule when it
    batches prompts of different chunk counts. Pooled and size vectors are left alone."""

    def pad(value: torch.Tensor) -> torch.Tensor:
        missing = tokens - value.shape[1]
        if value.dim() != 3 or missing <= 0:
            return value
        return torch.cat([value, value[:, -1:].expand(-1, missing, -1)], dim=1)

    if isinstance(cond, dict):
        return {key: pad(value) for key, value in cond.items()}
    return pad(cond)


def _same_tokens(conds: Sequence[Conditioning]) -> List[Conditioning]:
    tokens = max(cond_tokens(c) for c in conds)
    return [cond_pad_tokens(c, tokens) for c in conds]


def cond_cat(conds: Sequence[Conditioning]) -> Conditioning:
    """Concatenate conditionings along the batch dimension (longer prompts pad the others' tokens)."""
    conds = _same_tokens(conds)
    if isinstance(conds[0], dict):
        return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}
    return torch.cat(list(conds))


def cond_expand(cond: Conditioning, batch: int) -> Conditioning:
    """Repeat a batch-1 conditioning to `batch` entries; a conditioning of that size passes through."""
    size = cond_batch_size(cond)
    if size == batch:
        return cond
    if size != 1:
        raise ValueError(f"cannot expand a conditioning of batch {size} to {batch}")
    if isinstance(cond, dict):
        return {key: value.expand(batch, *value.shape[1:]) for key, value in cond.items()}
    return cond.expand(batch, *cond.shape[1:])


def cond_lerp(a: Conditioning, b: Conditioning, weights: torch.Tensor) -> Conditioning:
    """Per-sample linear blend (1-w)·a + w·b of two batch-1 conditionings, one w per output entry;
    prompts of different lengths are blended token by token after padding the shorter one."""
    a, b = _same_tokens([a, b])

    def blend(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = weights.to(x.device, torch.float32).view(-1, *([1] * (x.dim() - 1)))
        return ((1 - w) * x.float() + w * y.float()).to(x.dtype)

    if isinstance(a, dict):
        return {key: blend(a[key], b[key]) for key in a}
    return blend(a, b)
