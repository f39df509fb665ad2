"""A :class:`lib_smooth.backend.Backend` over diffusers components (SD1.x, SD2.x, SDXL), loaded from disk only.

Install with ``pip install .[diffusers]``. Nothing here contacts a model hub: every load passes
``local_files_only=True`` and missing files are reported by name before diffusers is asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import torch

from ..backend import Conditioning, LoraInUse
from ..errors import ModelFilesError
from ..lora_apply import AppliedLora, apply_lora, module_lookup
from ..lora_formats import LoraNetwork, load_lora

ARCHS = ("sd1", "sd2", "sdxl")


def state_dict_hash(*modules: torch.nn.Module) -> str:
    """sha256 (first 10 hex digits) over every parameter and buffer, for models built in memory."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:10]


WINDOW = 75  # prompt tokens per 77-token window (BOS and EOS take the other two)


class DiffusersBackend:
    """SD1/SD2 (one CLIP encoder) or SDXL (two encoders, pooled vector and size conditioning)."""

    latent_channels = 4

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoders: Sequence[torch.nn.Module],
        tokenizers: Sequence,
        alphas_cumprod: torch.Tensor,
        parameterization: str,
        arch: str,
        identity: Optional[str] = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")
        self.device, self.dtype = torch.device(device), dtype
        with quiet_loading():
            self.unet_model = unet.to(self.device, dtype).eval().requires_grad_(False)
            self.vae = vae.to(self.device, dtype).eval().requires_grad_(False)
            self.text_encoders = [te.to(self.device, dtype).eval().requires_grad_(False) for te in text_encoders]
        self.tokenizers = list(tokenizers)
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.parameterization, self.arch = parameterization, arch
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        sample_size = unet.config.sample_size
        # the side it was trained at: the default of every job's width and height
        self.native_size = int(sample_size if isinstance(sample_size, int) else sample_size[0]) * self.vae_scale
        self.scaling_factor = float(vae.config.scaling_factor)
        self._identity = identity or state_dict_hash(self.unet_model, self.vae, *self.text_encoders)
        self._applied: Optional[AppliedLora] = None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def lora_identity(self) -> str:
        return self._applied.identity if self._applied else ""

    # --- text ---------------------------------------------------------------------------------
    def _token_windows(self, tokenizer, prompts: Sequence[str]) -> List[torch.Tensor]:
        """The prompts' tokens in windows of 75 between BOS and EOS, padded to 77 — how the WebUI encodes
        a prompt over 75 tokens (without its comma backtracking) — as one (B, 77) id tensor per window;
        a prompt with fewer windows than the longest gets empty ones. Up to 75 tokens this is exactly
        the usual single 77-token encoding."""
        ids = [tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids for prompt in prompts]
        windows = max(1, *(-(-len(tokens) // WINDOW) for tokens in ids))
        length, pad = tokenizer.model_max_length, tokenizer.pad_token_id
        batches = []
        for k in range(windows):
            rows = [[tokenizer.bos_token_id, *tokens[k * WINDOW : (k + 1) * WINDOW], tokenizer.eos_token_id] for tokens in ids]
            batches.append(torch.tensor([row + [pad] * (length - len(row)) for row in rows], device=self.device))
        return batches

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], width: int, height: int) -> Conditioning:
        """Token embeddings of every 77-token window side by side (77·k tokens for a prompt of k windows)."""
        if self.arch != "sdxl":
            encoder = self.text_encoders[0]
            return torch.cat([encoder(window)[0] for window in self._token_windows(self.tokenizers[0], prompts)], dim=1).float()
        # SDXL: penultimate hidden states of both encoders side by side; the pooled projection of the
        # second encoder (first window, as the WebUI) plus (original size, crop top-left, target size)
        # feed the added embedding.
        hidden, pooled = [], None
        for encoder, tokenizer in zip(self.text_encoders, self.tokenizers):
            outputs = [encoder(window, output_hidden_states=True) for window in self._token_windows(tokenizer, prompts)]
            hidden.append(torch.cat([out.hidden_states[-2] for out in outputs], dim=1))
            pooled = outputs[0][0]
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=self.device)
        return {
            "context": torch.cat(hidden, dim=-1).float(),
            "text_embeds": pooled.float(),
            "time_ids": time_ids.expand(len(prompts), 6),
        }

    # --- VAE ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return posterior.mode().float() * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents / self.scaling_factor).to(self.device, self.dtype)).sample.float().clamp(-1, 1)

    # --- UNet ---------------------------------------------------------------------------------
    # No no_grad here: null-text inversion differentiates through the UNet w.r.t. the conditioning.
    # The weights never require grad, so ordinary sampling builds no graph.
    def unet(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        t = t.to(self.device)
        if isinstance(cond, dict):
            added = {"text_embeds": cond["text_embeds"].to(self.device, self.dtype), "time_ids": cond["time_ids"].to(self.device, self.dtype)}
            out = self.unet_model(x, t, encoder_hidden_states=cond["context"].to(self.device, self.dtype), added_cond_kwargs=added)
        else:
            out = self.unet_model(x, t, encoder_hidden_states=cond.to(self.device, self.dtype))
        return out.sample.float()

    # --- LoRA ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use_lora(self, reference: Optional[str], weight: float) -> Iterator[Optional[LoraInUse]]:
        """The LoRA file at path `reference` merged for the duration (the weights come back bit for bit)."""
        if not reference:
            yield None
            return
        network = load_lora(reference)
        self.apply_lora(network, weight)
        try:
            yield LoraInUse(Path(reference).name, network.sha256, weight)
        finally:
            self.remove_lora()

    def apply_lora(self, network: LoraNetwork, multiplier: float = 1.0) -> None:
        """Merge a LoRA into the weights (replacing any applied one); `remove_lora` restores them exactly."""
        self.remove_lora()
        modules = module_lookup(self.arch, self.unet_model, self.text_encoders)
        self._applied = apply_lora(network, modules, multiplier, self.arch)

    def remove_lora(self) -> None:
        if self._applied is not None:
            self._applied.restore()
            self._applied = None


# --- loading from disk -----------------------------------------------------------------------


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        raise ModelFilesError(f"missing {path}: {how}")
    return path


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t of the DDPM schedule SD uses ("scaled_linear": betas linear in sqrt space)."""
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = float(scheduler_config.get("beta_start", 0.00085)), float(scheduler_config.get("beta_end", 0.012))
    kind = scheduler_config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ModelFilesError(f"unsupported beta_schedule {kind!r} in the scheduler config (expected scaled_linear or linear)")
    return torch.cumprod(1 - betas, dim=0).float()


def load_diffusers_folder(
    folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, prediction: Optional[str] = None
) -> DiffusersBackend:
    """Load a local diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder[_2]/, tokenizer[_2]/, scheduler/)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    hint = (
        "a diffusers folder needs model_index.json and the unet, vae, text_encoder, tokenizer and scheduler subfolders "
        "(save one with pipeline.save_pretrained)"
    )
    index = json.loads(_require(folder / "model_index.json", hint).read_text())
    sdxl = "text_encoder_2" in index
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] + (["text_encoder_2", "tokenizer_2"] if sdxl else []):
        _require(folder / sub, hint)
    for tok in ["tokenizer"] + (["tokenizer_2"] if sdxl else []):
        if not (folder / tok / "tokenizer.json").is_file():
            for name in ("vocab.json", "merges.txt"):
                _require(
                    folder / tok / name,
                    "write the CLIP tokenizer files with `python -m lib_smooth make-tokenizer DIR` (offline, from the open-clip-torch wheel)",
                )
    scheduler = json.loads(_require(folder / "scheduler" / "scheduler_config.json", hint).read_text())
    kwargs = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **kwargs)
    vae = AutoencoderKL.from_pretrained(folder / "vae", **kwargs)
    encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder", **kwargs)]
    tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer", **kwargs)]
    if sdxl:
        encoders.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **kwargs))
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2", **kwargs))
    parameterization = prediction or ("v" if scheduler.get("prediction_type") == "v_prediction" else "eps")
    arch = "sdxl" if sdxl else ("sd2" if unet.config.cross_attention_dim == 1024 or parameterization == "v" else "sd1")
    return DiffusersBackend(unet, vae, encoders, tokenizers, _alphas_cumprod(scheduler), parameterization, arch, device=device, dtype=dtype)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-load noise: transformers' "Loading weights" bar and diffusers' "should be kept in float32: []"
    warning (raised by .to() even when no module needs fp32) say nothing a user can act on. Errors still show."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bar = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bar:
            transformers_logging.enable_progress_bar()
