"""lib_smooth's Backend protocol over the WebUI's loaded model (SD1.x, SD2.x incl. v-prediction, SDXL).

The UNet is called through the model's ``apply_model`` — not the bare diffusion model — so medvram /
lowvram hooks and the WebUI's dtype casts apply; VAE encoding is deterministic (the posterior mean);
text goes through ``get_learned_conditioning`` with the WebUI's prompt syntax (emphasis, embeddings).
Latent math stays float32; model calls run under the WebUI's autocast.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..backend import Conditioning
from ..errors import SmoothDiffusionError


class UnsupportedHost(SmoothDiffusionError):
    """The running WebUI (e.g. Forge) does not expose what the extension needs."""


def is_forge() -> bool:
    try:
        import modules_forge  # noqa: F401 - only Forge ships it

        return True
    except ImportError:
        return False


class WebUIBackend:
    latent_channels = 4
    vae_scale = 8

    def __init__(self, sd_model=None):
        from modules import devices, sd_models, shared

        if is_forge():
            raise UnsupportedHost("Smooth Diffusion does not support WebUI Forge yet: its model objects differ from AUTOMATIC1111's")
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
        self.lora_label = ""

    @property
    def identity(self) -> str:
        info = getattr(self.model, "sd_checkpoint_info", None)
        return str(getattr(info, "sha256", None) or getattr(info, "title", None) or getattr(self.model, "sd_model_hash", "") or "unknown")[:10]

    @property
    def lora_identity(self) -> str:
        return self.lora_label

    def encode_prompts(self, prompts: Sequence[str], width: int, height: int) -> Conditioning:
        from modules import prompt_parser

        with torch.no_grad(), self._devices.autocast():
            cond = self.model.get_learned_conditioning(prompt_parser.SdConditioning(list(prompts), width=width, height=height))
        if isinstance(cond, dict):
            return {key: value.float() for key, value in cond.items()}
        return cond.float()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean × scale factor (the WebUI's own encode samples, which inversion must not)."""
        first_stage = self.model.first_stage_model
        with torch.no_grad(), self._devices.autocast():
            x = images.to(self.device, self._devices.dtype_vae)
            moments = first_stage.encoder(x)
            if getattr(first_stage, "quant_conv", None) is not None:
                moments = first_stage.quant_conv(moments)
            mean = moments.float().chunk(2, dim=1)[0]
        return mean * self.scale_factor

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
