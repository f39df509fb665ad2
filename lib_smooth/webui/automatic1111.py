"""The AUTOMATIC1111 host: lib_smooth's Backend protocol over the WebUI's loaded model (SD1.x, SD2.x incl. v-prediction, SDXL).

The UNet is called through the model's ``apply_model`` and the VAE through ``encode`` / ``decode_first_stage``
— never their inner modules — so the --medvram / --lowvram wrappers that move each model to the GPU
and the WebUI's dtype casts apply; VAE encoding is deterministic (the posterior mean);
text goes through ``get_learned_conditioning`` with the WebUI's prompt syntax (emphasis, embeddings).
Latent math stays float32; model calls run under the WebUI's autocast.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from ..backend import Conditioning, LoraInUse
from ..errors import LoraError, SmoothDiffusionError
from . import lora as lora_folder

NetworkState = List[Tuple[str, float, float, Optional[float]]]
PATCHED_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)


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

    def _prepared(self, name: str) -> lora_folder.Prepared:
        layout = lora_folder.unet_layout(self.model.model.diffusion_model)
        return lora_folder.prepare(name, layout, self.is_sdxl)

    @contextlib.contextmanager
    def use_lora(self, name: Optional[str], weight: float) -> Iterator[Optional[LoraInUse]]:
        """The Lora-folder LoRA `name` through the built-in Lora extension for the duration (None: no
        LoRA, the user's own ones off too); the user's network set and the weights come back after.

        The extension merges LoRA weights lazily, layer by layer, at each layer's next forward; here
        every patched layer is re-merged at once, so the weights equal those before the job as soon
        as it ends, whether it succeeded, failed or was interrupted."""
        networks = lora_folder.networks_module()
        previous = _state(networks)
        try:
            loaded = None
            if name:
                prepared = self._prepared(name)
                loaded = prepared.name
                _load(networks, [(loaded, weight, weight, None)])
                _check_loaded(networks, name, prepared)
                self.lora_label = f"{loaded}:{weight:g}"
            else:
                _load(networks, [])
            _merge_now(networks, self.model)
            yield LoraInUse(loaded, lora_folder.file_sha256(loaded), weight) if loaded else None
        finally:
            _load(networks, previous)
            _merge_now(networks, self.model)
            self.lora_label = ""

    def checked_lora_name(self, name: str) -> str:
        """The name to put in a <lora:…> tag, after proving the file fits the loaded model (the WebUI's
        own loading would drop what does not fit silently). The user's network set is left as it was."""
        networks = lora_folder.networks_module()
        prepared = self._prepared(name)
        previous = _state(networks)
        try:
            _load(networks, [(prepared.name, 1.0, 1.0, None)])
            _check_loaded(networks, name, prepared)
        finally:
            _load(networks, previous)
        return prepared.name

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


def _state(networks) -> NetworkState:
    return [(n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in networks.loaded_networks]


def _load(networks, state: NetworkState) -> None:
    networks.load_networks([s[0] for s in state], [s[1] for s in state], [s[2] for s in state], [s[3] for s in state])


def _check_loaded(networks, requested: str, prepared: lora_folder.Prepared) -> None:
    """After load_networks: the layers the built-in extension matched, each with its delta's shape."""
    loaded = [n for n in networks.loaded_networks if n.name == prepared.name]
    if not loaded:
        raise LoraError(f"the Lora extension could not load {requested!r}; see the console for its message")
    matched = []
    for module in loaded[0].modules.values():
        up, down = getattr(module, "up_model", None), getattr(module, "down_model", None)
        target = getattr(module.sd_module, "weight", None)
        if isinstance(module.sd_module, (torch.nn.Linear, torch.nn.Conv2d)) and up is not None and down is not None:
            matched.append((module.network_key.split(".", 1)[0], (up.weight.shape[0], down.weight.shape[1]), tuple(target.shape)))
        else:  # other module kinds (norms, LyCORIS types): matched, shape checked by the extension itself
            matched.append((module.network_key.split(".", 1)[0], (), ()))
    lora_folder.check_fit(requested, prepared, matched)


@torch.no_grad()
def _merge_now(networks, sd_model) -> None:
    """Bring every layer the Lora extension patches to the loaded network set now, not at its next forward."""
    for module in sd_model.modules():
        if isinstance(module, PATCHED_LAYERS) and getattr(module, "network_layer_name", None) is not None:
            networks.network_apply_weights(module)
