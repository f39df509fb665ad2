"""The WebUI Forge host: lib_smooth's Backend protocol over Forge's model objects (SD1.x, SD2.x, SDXL).

Forge keeps the loaded checkpoint as ``shared.sd_model.forge_objects``: a UnetPatcher whose KModel
holds the UNet and the noise schedule (``predictor``), a CLIP and a VAE, each behind a ModelPatcher
that ``memory_management.load_model_gpu`` moves to the device. The UNet is called on DDPM timesteps
directly (the KModel's k-diffusion wrapper would only rescale x and σ back); text goes through the
model's ``get_learned_conditioning`` (Forge's emphasis, embeddings, clip skip); VAE encoding keeps the
posterior's mode through Forge's own "VAE regulation" hook, so inversion is deterministic.

Null-text inversion needs gradients through the UNet (to its null embedding), which Forge never
builds for: its weights are inference tensors, which autograd cannot save, and its blocks update
activations in place after an operation saved them. So before the first such call the UNet's inference
tensors are swapped, one at a time, for ordinary copies of equal value (the same weights), and while
the graph is built every tensor it saves, weights aside, is saved as a copy the in-place updates
cannot reach.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from ..backend import Conditioning, LoraInUse
from ..errors import LoraError, SmoothDiffusionError
from . import lora as lora_folder

VAE_REGULATION = "model_vae_regulation"  # the ModelPatcher option Forge's VAE.encode passes the posterior to


class ForgeBackend:
    latent_channels = 4
    vae_scale = 8

    def __init__(self, sd_model=None):
        from backend import memory_management
        from modules import sd_models

        if sd_model is None or getattr(sd_model, "forge_objects", None) is None:
            sd_model, _ = sd_models.forge_model_reload()  # Forge loads the checkpoint at its first use
        if sd_model is None or getattr(sd_model, "forge_objects", None) is None:
            raise SmoothDiffusionError("no checkpoint is loaded: pick one in the checkpoint dropdown first")
        if not (sd_model.is_sd1 or sd_model.is_sd2 or sd_model.is_sdxl):
            raise SmoothDiffusionError(
                f"Smooth Diffusion needs a Stable Diffusion 1.x, 2.x or XL checkpoint; {type(sd_model).__name__} is another kind of model"
            )
        self.model = sd_model
        self._memory = memory_management
        predictor = sd_model.forge_objects.unet.model.predictor
        self.parameterization = "v" if predictor.prediction_type == "v_prediction" else "eps"
        self.alphas_cumprod = (1.0 / (1.0 + predictor.sigmas.detach().float().cpu() ** 2)).clone()  # σ² = (1 − ᾱ) / ᾱ
        self.device = memory_management.get_torch_device()
        self.dtype = sd_model.forge_objects.unet.model.computation_dtype
        self.is_sdxl = bool(sd_model.is_sdxl)
        self.native_size = 1024 if self.is_sdxl else 768 if self.parameterization == "v" else 512
        self.lora_label = ""

    @property
    def identity(self) -> str:
        info = getattr(self.model, "sd_checkpoint_info", None)
        return str(getattr(info, "sha256", None) or getattr(self.model, "sd_model_hash", "") or "unknown")[:10]

    @property
    def lora_identity(self) -> str:
        return self.lora_label

    # --- LoRA -------------------------------------------------------------------------------------

    def _prepared(self, name: str) -> lora_folder.Prepared:
        layout = lora_folder.unet_layout(self.model.forge_objects.unet.model.diffusion_model)
        return lora_folder.prepare(name, layout, self.is_sdxl)

    def _saved_state(self):
        networks = lora_folder.networks_module()
        model = self.model
        return (
            model.forge_objects.shallow_copy(),
            model.forge_objects_after_applying_lora.shallow_copy(),
            model.current_lora_hash,
            list(networks.loaded_networks),
        )

    def _restore(self, state) -> None:
        model = self.model
        model.forge_objects, model.forge_objects_after_applying_lora, model.current_lora_hash, loaded = state
        lora_folder.networks_module().loaded_networks[:] = loaded

    def _load(self, names: Sequence[str], weight: float) -> None:
        """Forge's own LoRA loading: patched clones of the UNet and CLIP patchers become the model's."""
        lora_folder.networks_module().load_networks(list(names), [weight] * len(names), [weight] * len(names), [None] * len(names))
        self.model.forge_objects = self.model.forge_objects_after_applying_lora.shallow_copy()  # as processing does

    def _merge_now(self) -> None:
        """Loading a patcher merges its LoRA patches into the weights (or restores the originals)."""
        objects = self.model.forge_objects
        self._memory.load_model_gpu(objects.unet)
        self._memory.load_model_gpu(objects.clip.patcher)

    def _check_loaded(self, requested: str, prepared: lora_folder.Prepared) -> None:
        entry = lora_folder.networks_module().available_networks.get(prepared.name)
        if entry is None:
            raise LoraError(f"the Lora extension could not load {requested!r}; see the console for its message")
        objects = self.model.forge_objects
        matched = []
        for patcher, module in ((objects.unet, objects.unet.model), (objects.clip.patcher, objects.clip.patcher.model)):
            for (filename, *_), patches in patcher.lora_patches.items():
                if filename != entry.filename:
                    continue
                for key, entries in patches.items():
                    kind, tensors = entries[0][1]
                    target = module.get_parameter(key)
                    delta = (tensors[0].shape[0], tensors[1].shape[1]) if kind == "lora" and target.dim() >= 2 else ()
                    matched.append((key, delta, tuple(target.shape) if delta else ()))
        lora_folder.check_fit(requested, prepared, matched)

    @contextlib.contextmanager
    def use_lora(self, name: Optional[str], weight: float) -> Iterator[Optional[LoraInUse]]:
        """The Lora-folder LoRA `name` through Forge's Lora extension for the duration (None: no LoRA, the
        user's own ones off too); afterwards the model's patchers, the extension's state and the merged
        weights are those from before the job, whether it succeeded, failed or was interrupted."""
        state = self._saved_state()
        try:
            loaded = None
            if name:
                prepared = self._prepared(name)
                loaded = prepared.name
                self._load([loaded], weight)
                self._check_loaded(name, prepared)
                self.lora_label = f"{loaded}:{weight:g}"
            else:
                self._load([], 1.0)
            self._merge_now()
            yield LoraInUse(loaded, lora_folder.file_sha256(loaded), weight) if loaded else None
        finally:
            self._restore(state)
            self._merge_now()
            self.lora_label = ""

    def checked_lora_name(self, name: str) -> str:
        """The name to put in a <lora:…> tag, after proving the file fits the loaded model (Forge skips
        a LoRA that does not fit with a console line only). Nothing is merged; the state comes back."""
        prepared = self._prepared(name)
        state = self._saved_state()
        try:
            self._load([prepared.name], 1.0)
            self._check_loaded(name, prepared)
        finally:
            self._restore(state)
        return prepared.name

    # --- the model --------------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str], width: int, height: int) -> Conditioning:
        from modules import prompt_parser

        cond = self.model.get_learned_conditioning(prompt_parser.SdConditioning(list(prompts), width=width, height=height))
        # Forge encodes under inference_mode; a copy outside it is an ordinary tensor
        if isinstance(cond, dict):
            return {key: value.float().clone() for key, value in cond.items()}
        return cond.float().clone()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior's mode × scale factor, through Forge's VAE (its memory management included)."""
        vae = self.model.forge_objects.vae
        options = vae.patcher.model_options
        previous = options.get(VAE_REGULATION)
        options[VAE_REGULATION] = lambda posterior: posterior.mode()
        try:
            with torch.inference_mode():
                sample = vae.encode(images.movedim(1, -1) * 0.5 + 0.5)  # Forge's VAE takes NHWC in [0, 1]
                latents = vae.first_stage_model.process_in(sample)
        finally:
            if previous is None:
                options.pop(VAE_REGULATION, None)
            else:
                options[VAE_REGULATION] = previous
        return latents.float().clone().to(self.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.model.decode_first_stage(latents.to(self.device))
        return images.float().clamp(-1, 1)

    def unet(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        tensors = cond.values() if isinstance(cond, dict) else [cond]
        wants_grad = torch.is_grad_enabled() and any(c.requires_grad for c in tensors)  # null-text inversion's embedding
        patcher = self.model.forge_objects.unet
        self._memory.load_model_gpu(patcher)  # on the device, with the LoRA patches merged
        kmodel = patcher.model
        dtype = kmodel.computation_dtype
        if isinstance(cond, dict):  # SDXL: cross-attention context plus the pooled/size vector
            context, extra = cond["crossattn"], {"y": cond["vector"].to(self.device, dtype)}
        else:
            context, extra = cond, {}
        if wants_grad:
            ordinary_tensors(kmodel.diffusion_model)
        saving = torch.autograd.graph.saved_tensors_hooks(saved_copy, lambda saved: saved) if wants_grad else contextlib.nullcontext()
        with torch.set_grad_enabled(wants_grad), saving:
            out = kmodel.diffusion_model(
                x.to(self.device, dtype), t.to(self.device).float(), context=context.to(self.device, dtype), transformer_options={}, **extra
            )
        return out.float()


def ordinary_tensors(module: torch.nn.Module) -> None:
    """Swap every inference tensor among `module`'s parameters and buffers for an ordinary copy (same
    values, no gradient), so autograd can save them; one tensor is copied at a time."""
    for layer in module.modules():
        for name, parameter in layer._parameters.items():
            if parameter is not None and parameter.is_inference():
                layer._parameters[name] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
        for name, buffer in layer._buffers.items():
            if buffer is not None and buffer.is_inference():
                layer._buffers[name] = buffer.clone()


def saved_copy(tensor: torch.Tensor) -> torch.Tensor:
    """What autograd keeps of a tensor it saves for the backward pass: a copy (weights: themselves)."""
    return tensor if isinstance(tensor, torch.nn.Parameter) else tensor.clone()
