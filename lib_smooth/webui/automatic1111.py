"""The AUTOMATIC1111 host: lib_smooth's Backend protocol over the WebUI's loaded model (SD1.x, SD2.x incl. v-prediction, SDXL).

The UNet is called through the model's ``apply_model`` and the VAE through ``encode`` / ``decode_first_stage``
— never their inner modules — so the --medvram / --lowvram wrappers that move each model to the GPU
and the WebUI's dtype casts apply; VAE encoding is deterministic (the posterior mean);
text goes through ``get_learned_conditioning`` with the WebUI's prompt syntax (emphasis, embeddings).
Latent math stays float32; model calls run under the WebUI's autocast.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from ..backend import Conditioning, LoraInUse
from ..errors import SmoothDiffusionError


@contextlib.contextmanager
def posterior_mode() -> Iterator[None]:
    """SDXL's first stage (sgm's AutoencoderKLInferenceWrapper) returns a *sample* of the posterior from
    encode(); for the duration, its sample() gives the mode (the mean), so encode() is deterministic."""
    try:
        from sgm.modules.distributions import distributions
    except ImportError:  # no sgm: SD1/SD2 only, whose encode() returns the posterior itself
        yield
        return
    original = distributions.DiagonalGaussianDistribution.sample
    distributions.DiagonalGaussianDistribution.sample = distributions.DiagonalGaussianDistribution.mode
    try:
        yield
    finally:
        distributions.DiagonalGaussianDistribution.sample = original


class Automatic1111Backend:
    latent_channels = 4
    vae_scale = 8

    def __init__(self, sd_model=None):
        from modules import devices, sd_models, shared

        self.model = sd_model if sd_model is not None else shared.sd_model
        if self.model is None:
            raise SmoothDiffusionError("no checkpoint is loaded: pick one in the checkpoint dropdown first")
        sd_models.apply_alpha_schedule_override(self.model)
        self._devices = devices
        self.parameterization = getattr(self.model, "parameterization", "eps")
        self.alphas_cumprod = self.model.alphas_cumprod.detach().float().cpu()
        self.device = devices.device
        self.dtype = devices.dtype_unet
        self.scale_factor = float(self.model.scale_factor)
        self.is_sdxl = bool(getattr(self.model, "is_sdxl", False))
        # ldm models keep the yaml's latent image_size (64 SD1, 96 SD2-v, 8 shapes-sd1); sgm's SDXL has none
        latent_size = getattr(self.model, "image_size", None)
        self.native_size = 1024 if self.is_sdxl or not latent_size else int(latent_size) * self.vae_scale
        self.lora_label = ""

    @property
    def identity(self) -> str:
        info = getattr(self.model, "sd_checkpoint_info", None)
        return str(getattr(info, "sha256", None) or getattr(info, "title", None) or getattr(self.model, "sd_model_hash", "") or "unknown")[:10]

    @property
    def lora_identity(self) -> str:
        return self.lora_label

    @contextlib.contextmanager
    def use_lora(self, name: Optional[str], weight: float) -> Iterator[Optional[LoraInUse]]:
        """The Lora-folder LoRA `name` through the built-in Lora extension for the duration (None: no
        LoRA, the user's own ones off too); the user's network set and the weights come back after."""
        from .lora import file_sha256, lora_session

        with lora_session(self, name, weight) as loaded:
            yield LoraInUse(loaded, file_sha256(loaded), weight) if loaded else None

    def encode_prompts(self, prompts: Sequence[str], width: int, height: int) -> Conditioning:
        from modules import prompt_parser

        with torch.no_grad(), self._devices.autocast():
            cond = self.model.get_learned_conditioning(prompt_parser.SdConditioning(list(prompts), width=width, height=height))
        if isinstance(cond, dict):
            return {key: value.float() for key, value in cond.items()}
        return cond.float()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean × scale factor (the WebUI's own encode samples, which inversion must not).

        Through ``first_stage_model.encode``: under --medvram / --lowvram that is the wrapper that moves
        the VAE to the GPU, so the VAE is never called where it is not."""
        first_stage = self.model.first_stage_model
        with torch.no_grad(), self._devices.autocast(), posterior_mode():
            encoded = first_stage.encode(images.to(self.device, self._devices.dtype_vae))
            mean = encoded.mean if hasattr(encoded, "mean") and not torch.is_tensor(encoded) else encoded  # ldm: a posterior; sgm: its mode
        return mean.float() * self.scale_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._devices.autocast():
            images = self.model.decode_first_stage(latents.to(self.device, self._devices.dtype_vae))
        return images.float().clamp(-1, 1)

    def unet(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        cond = {k: v.to(self.device) for k, v in cond.items()} if isinstance(cond, dict) else cond.to(self.device)
        # The WebUI's weights require grad: build a graph only for null-text inversion's embedding.
        tensors = cond.values() if isinstance(cond, dict) else [cond]
        wants_grad = torch.is_grad_enabled() and any(c.requires_grad for c in tensors)
        with torch.set_grad_enabled(wants_grad), self._devices.autocast():
            return self.model.apply_model(x.to(self.device), t.to(self.device), cond).float()
