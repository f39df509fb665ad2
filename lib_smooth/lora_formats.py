"""LoRA files: read kohya, diffusers/PEFT and the official Smooth-LoRA format; write kohya.

Everything is read into one form, :class:`LoraNetwork`: kohya module names (``lora_unet_…``,
``lora_te_…``, ``lora_te1_…``, ``lora_te2_…``) mapped to (down, up, alpha). A layer's weight delta is

    ΔW = up @ down · scale,   scale = alpha / rank  (no alpha stored → 1)

so converting between formats only renames keys and, where a format stores no alpha, writes
alpha = rank to keep the scale at 1. Formats:

- kohya (sd-scripts ``networks.lora``): ``<name>.lora_down.weight``, ``<name>.lora_up.weight``, ``<name>.alpha``.
- diffusers/PEFT: ``unet.<module path>.lora_A.weight`` / ``lora_B.weight`` (also ``lora.down`` / ``lora.up``),
  prefixes ``unet.``, ``text_encoder.``, ``text_encoder_2.``; optional ``<module path>.alpha``.
- official Smooth-LoRA (diffusers attention processors, SHI-Labs/Smooth-Diffusion; notes/paper.md §8):
  ``<block>.attn1.processor.to_q_lora.down.weight`` etc., no alpha (scale 1).

SDXL's kohya names use the original (SGM) UNet block names (``input_blocks_4_1_…``) while SD1/SD2 use
diffusers names; :func:`sgm_module_name` maps a diffusers UNet path to its SGM name.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from .errors import CorruptLoraError, LoraArchitectureError, LoraError, NotALoraError
from .ldm_names import unet_name

KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_")
CONTEXT_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass
class LoraLayer:
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: Optional[float] = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """ΔW in float32, shaped like the target layer's weight."""
        down, up = self.down.float(), self.up.float()
        product = up.flatten(1) @ down.flatten(1)
        shape = (up.shape[0], *down.shape[1:])
        return product.reshape(shape) * self.scale


@dataclass
class LoraNetwork:
    layers: Dict[str, LoraLayer]  # kohya module name → layer
    source_format: str  # "kohya" | "peft" | "official"
    metadata: Dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    @property
    def arch(self) -> Optional[str]:
        """"sdxl", "sd1", "sd2" or None when the file does not tell."""
        if any(name.startswith(("lora_te1_", "lora_te2_")) for name in self.layers):
            return "sdxl"
        if any(re.match(r"lora_unet_(input|middle|output)_block", name) for name in self.layers):
            return "sdxl"
        for name, layer in self.layers.items():
            if name.endswith("attn2_to_k") and layer.down.shape[1] in CONTEXT_DIMS:
                return CONTEXT_DIMS[layer.down.shape[1]]
        version = self.metadata.get("ss_base_model_version", "")
        if version.startswith("sdxl"):
            return "sdxl"
        return {"sd_v1": "sd1", "sd_v2": "sd2"}.get(version.split("_v")[0] if version.endswith("_v") else version)

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


# --- names ---------------------------------------------------------------------------------------

def sgm_module_name(path: str, layers_per_block: int = 2, up_blocks_with_attention: frozenset = frozenset({0, 1})) -> str:
    """The SGM/ldm name kohya uses for SDXL (underscored) of a diffusers UNet module path (dotted).

    The block numbering comes from :func:`lib_smooth.ldm_names.unet_name`; SDXL base has two layers
    per block and attention on up levels 0 and 1. Paths it does not know keep their diffusers form.
    """
    try:
        ldm = unet_name(path + ".weight", layers_per_block, up_blocks_with_attention)
    except ValueError:
        return path.replace(".", "_")
    return ldm.removesuffix(".weight").replace(".", "_")


def kohya_name(component: str, path: str, arch: Optional[str], layers_per_block: int = 2) -> str:
    """kohya module name of a diffusers module path in component "unet", "text_encoder" or "text_encoder_2"."""
    if component == "unet":
        body = sgm_module_name(path, layers_per_block) if arch == "sdxl" else path.replace(".", "_")
        return "lora_unet_" + body
    if component == "text_encoder_2":
        return "lora_te2_" + path.replace(".", "_")
    return ("lora_te1_" if arch == "sdxl" else "lora_te_") + path.replace(".", "_")


# --- reading -------------------------------------------------------------------------------------

def _read_tensors(name: str, data: bytes, safetensors_file: bool) -> tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Tensors and metadata from a file's bytes (read once: the same bytes give the file's hash)."""
    if safetensors_file:
        from safetensors.torch import load

        try:
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # the metadata lives in the JSON header
            return load(data), dict(header.get("__metadata__") or {})
        except Exception as error:  # safetensors raises its own error types for every kind of damage
            raise CorruptLoraError(f"{name} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    try:
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CorruptLoraError(f"{name} is not a readable tensor file (truncated or corrupt?): {error}") from error
    if isinstance(tensors, dict) and isinstance(tensors.get("state_dict"), dict):
        tensors = tensors["state_dict"]
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise NotALoraError(f"{name} holds no tensor dictionary")
    return tensors, {}


_OFFICIAL = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_PEFT = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.*)\.(lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)\.weight$")
_KOHYA = re.compile(r"^(lora_(?:unet|te|te1|te2)_[^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _collect(pairs: Dict[str, Dict[str, torch.Tensor]], alphas: Dict[str, float], source: str) -> Dict[str, LoraLayer]:
    layers = {}
    for name, parts in pairs.items():
        if "down" not in parts or "up" not in parts:
            missing = "up" if "down" in parts else "down"
            raise CorruptLoraError(f"{source} LoRA layer {name} has no {missing} matrix")
        down, up = parts["down"], parts["up"]
        if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
            raise CorruptLoraError(f"{source} LoRA layer {name}: down {tuple(down.shape)} and up {tuple(up.shape)} do not multiply")
        layers[name] = LoraLayer(down, up, alphas.get(name))
    return layers


def parse_lora(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None, arch: Optional[str] = None, name: str = "LoRA") -> LoraNetwork:
    """Recognise the format of a LoRA state dict and return it under kohya names.

    `arch` ("sd1"/"sd2"/"sdxl") decides the UNet naming when renaming diffusers paths; when None it is
    guessed from the cross-attention width or a second text encoder.
    """
    metadata = dict(metadata or {})
    keys = list(tensors)
    pairs: Dict[str, Dict[str, torch.Tensor]] = {}
    alphas: Dict[str, float] = {}
    if keys and all(_KOHYA.match(k) for k in keys):
        for key in keys:
            module, param = _KOHYA.match(key).groups()
            if param == "alpha":
                alphas[module] = float(tensors[key])
            else:
                pairs.setdefault(module, {})["down" if "down" in param else "up"] = tensors[key]
        return LoraNetwork(_collect(pairs, alphas, "kohya"), "kohya", metadata)

    def guess_arch(paths_and_tensors) -> Optional[str]:
        if arch:
            return arch
        for path, parts in paths_and_tensors:
            if path.endswith("attn2.to_k") and "down" in parts:
                return CONTEXT_DIMS.get(parts["down"].shape[1])
        return None

    if keys and all(_OFFICIAL.match(k) for k in keys):
        by_path: Dict[str, Dict[str, torch.Tensor]] = {}
        for key in keys:
            block, proj, which = _OFFICIAL.match(key).groups()
            path = f"{block}.{'to_out.0' if proj == 'to_out' else proj}"
            by_path.setdefault(path, {})[which] = tensors[key]
        family = guess_arch(by_path.items())
        pairs = {kohya_name("unet", path, family): parts for path, parts in by_path.items()}
        return LoraNetwork(_collect(pairs, {}, "official Smooth-LoRA"), "official", metadata)

    peft_keys = [k for k in keys if _PEFT.match(k)]
    alpha_keys = [k for k in keys if k.endswith(".alpha")]
    if peft_keys and len(peft_keys) + len(alpha_keys) == len(keys):
        by_path = {}
        for key in peft_keys:
            component, path, param = _PEFT.match(key).groups()
            by_path.setdefault((component, path), {})["down" if param in ("lora_A", "lora.down", "lora_down") else "up"] = tensors[key]
        family = guess_arch([(p, parts) for (c, p), parts in by_path.items() if c == "unet"])
        if family is None and any(c == "text_encoder_2" for c, _ in by_path):
            family = "sdxl"
        for key in alpha_keys:
            component, _, path = key[: -len(".alpha")].partition(".")
            alphas[kohya_name(component, path, family)] = float(tensors[key])
        pairs = {kohya_name(c, p, family): parts for (c, p), parts in by_path.items()}
        return LoraNetwork(_collect(pairs, alphas, "diffusers/PEFT"), "peft", metadata)

    lora_like = [k for k in keys if re.search(r"lora|alpha", k)]
    if not lora_like:
        sample = ", ".join(keys[:3]) or "no tensors at all"
        raise NotALoraError(f"{name} holds no LoRA tensors (first keys: {sample}); is it a full checkpoint or an embedding?")
    odd = next(k for k in keys if not (_KOHYA.match(k) or _OFFICIAL.match(k) or _PEFT.match(k) or k.endswith(".alpha")))
    raise NotALoraError(f"{name} mixes or uses an unknown LoRA key format (e.g. {odd!r}); supported: kohya, diffusers/PEFT, official Smooth-LoRA")


def load_lora(path: str | Path, arch: Optional[str] = None) -> LoraNetwork:
    """Read a LoRA file (.safetensors, or .pt/.bin/.ckpt tensor dicts) in any supported format."""
    path = Path(path)
    if path.is_dir():
        raise LoraError(f"{path} is a folder; give the LoRA file itself (.safetensors, .pt, .ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    data = path.read_bytes()
    tensors, metadata = _read_tensors(path.name, data, path.suffix.lower() == ".safetensors")
    network = parse_lora(tensors, metadata, arch, name=path.name)
    network.sha256 = hashlib.sha256(data).hexdigest()
    return network


def check_arch(network: LoraNetwork, model_arch: str) -> None:
    """Refuse a LoRA made for another family: SDXL vs SD1/SD2 (SD1 vs SD2 shows as shape mismatches)."""
    lora_arch = network.arch
    if lora_arch and (lora_arch == "sdxl") != (model_arch == "sdxl"):
        raise LoraArchitectureError(f"this LoRA is for {lora_arch.upper()}, but the model is {model_arch.upper()}; pick a LoRA made for {model_arch.upper()}")


# --- writing -------------------------------------------------------------------------------------

def to_kohya_state_dict(network: LoraNetwork, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """kohya tensors with the same ΔW: alpha is written for every layer (rank where the source had none)."""
    out = {}
    for name, layer in sorted(network.layers.items()):
        cast = (lambda t: t.to(dtype)) if dtype else (lambda t: t)
        out[f"{name}.lora_down.weight"] = cast(layer.down).contiguous()
        out[f"{name}.lora_up.weight"] = cast(layer.up).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(layer.alpha if layer.alpha is not None else layer.rank))
    return out


def save_kohya(network: LoraNetwork, path: str | Path, overwrite: bool = False, dtype: Optional[torch.dtype] = None) -> Path:
    """Write `network` as a kohya safetensors file; never replaces an existing file unless asked."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite")
    ranks = sorted({layer.rank for layer in network.layers.values()})
    metadata = {k: v for k, v in network.metadata.items()}
    metadata.update({"ss_network_module": "networks.lora", "ss_network_dim": str(ranks[-1]) if ranks else "0",
                     "lib_smooth_source_format": network.source_format})
    if network.arch and "ss_base_model_version" not in metadata:
        metadata["ss_base_model_version"] = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[network.arch]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_kohya_state_dict(network, dtype), str(path), metadata=metadata)
    return path
