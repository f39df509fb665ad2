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

SDXL's kohya names use the original (SGM/ldm) UNet block names (``input_blocks_4_1_…``) while SD1/SD2 use
diffusers names — which the WebUI and kohya read by SD 1.5's block numbering, so for a UNet of another
layout (e.g. shapes-sd1: one layer per level) files carry ldm names too (:class:`UnetLayout`).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
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
        """ "sdxl", "sd1", "sd2" or None when the file does not tell."""
        if any(name.startswith(("lora_te1_", "lora_te2_")) for name in self.layers):
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


@dataclass(frozen=True)
class UnetLayout:
    """What the original (ldm) block numbering of a UNet depends on."""

    layers_per_block: int
    up_attention: frozenset  # diffusers up-block indices (0 = lowest resolution) with cross-attention
    levels: int

    @property
    def hosts_read_diffusers_names(self) -> bool:
        """The WebUI's Lora and kohya read SD1/SD2 names like ``lora_unet_down_blocks_1_attentions_0``
        by SD 1.5's numbering (two layers per level, no attention on the first up level); on any other
        layout those names land on the wrong layers or on none, so files for it use ldm names."""
        return self.layers_per_block == 2 and self.up_attention == frozenset(range(1, self.levels))


SD_LAYOUT = UnetLayout(2, frozenset({1, 2, 3}), 4)  # SD 1.x / 2.x
SDXL_LAYOUT = UnetLayout(2, frozenset({0, 1}), 3)


def sgm_module_name(path: str, layers_per_block: int = 2, up_blocks_with_attention: frozenset = frozenset({0, 1})) -> str:
    """The SGM/ldm name (underscored) of a diffusers UNet module path (dotted), as kohya writes SDXL names.

    The block numbering comes from :func:`lib_smooth.ldm_names.unet_name`; SDXL base has two layers
    per block and attention on up levels 0 and 1. Paths it does not know keep their diffusers form.
    """
    try:
        ldm = unet_name(path + ".weight", layers_per_block, up_blocks_with_attention)
    except ValueError:
        return path.replace(".", "_")
    return ldm.removesuffix(".weight").replace(".", "_")


def default_layout(arch: Optional[str]) -> UnetLayout:
    return SDXL_LAYOUT if arch == "sdxl" else SD_LAYOUT


def kohya_name(component: str, path: str, arch: Optional[str], layout: Optional[UnetLayout] = None) -> str:
    """kohya module name of a diffusers module path in component "unet", "text_encoder" or "text_encoder_2".

    UNet names are diffusers-style for SD1/SD2 on the standard layout (what kohya writes) and ldm-style
    for SDXL and for every layout the hosts would misread (see :class:`UnetLayout`).
    """
    if component == "unet":
        layout = layout or default_layout(arch)
        if arch == "sdxl" or not layout.hosts_read_diffusers_names:
            return "lora_unet_" + sgm_module_name(path, layout.layers_per_block, layout.up_attention)
        return "lora_unet_" + path.replace(".", "_")
    if component == "text_encoder_2":
        return "lora_te2_" + path.replace(".", "_")
    return ("lora_te1_" if arch == "sdxl" else "lora_te_") + path.replace(".", "_")


_DIFFUSERS_UNET_NAME = re.compile(
    r"lora_unet_(down_blocks|up_blocks)_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_(.+)"
    r"|lora_unet_mid_block_(resnets|attentions)_(\d+)_(.+)"
)
_DIFFUSERS_UNET_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "conv_norm_out",
    "time_embedding_linear_1": "time_embedding.linear_1",
    "time_embedding_linear_2": "time_embedding.linear_2",
}


def diffusers_unet_path(name: str) -> Optional[str]:
    """The dotted diffusers path of a diffusers-style kohya UNet name (None for other names).

    Only the block structure needs dots (unet_name parses it); the rest of the name passes through
    with its underscores, as ldm names keep them.
    """
    top = name.removeprefix("lora_unet_")
    if top in _DIFFUSERS_UNET_TOP:
        return _DIFFUSERS_UNET_TOP[top]
    m = _DIFFUSERS_UNET_NAME.fullmatch(name)
    if m is None:
        return None
    if m[1]:
        return f"{m[1]}.{m[2]}.{m[3]}.{m[4]}.{m[5]}"
    return f"mid_block.{m[6]}.{m[7]}.{m[8]}"


def with_layout_names(network: LoraNetwork, layout: UnetLayout) -> LoraNetwork:
    """The same network with diffusers-style UNet names written the way hosts read them on `layout`:
    unchanged on the standard layout, ldm names otherwise."""
    if layout.hosts_read_diffusers_names:
        return network
    layers = {}
    for name, layer in network.layers.items():
        path = diffusers_unet_path(name)
        layers["lora_unet_" + sgm_module_name(path, layout.layers_per_block, layout.up_attention) if path else name] = layer
    return LoraNetwork(layers, network.source_format, dict(network.metadata), network.sha256)


def uses_diffusers_unet_names(network: LoraNetwork) -> bool:
    return any(diffusers_unet_path(name) for name in network.layers)


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
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (a pickle before torch 1.6)
        raise NotALoraError(f"{name} is not a LoRA file: neither safetensors nor a PyTorch checkpoint")
    try:
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise CorruptLoraError(f"{name} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from error
        # torch's own message suggests weights_only=False; a LoRA needs only tensors, so that is never worth the risk
        raise NotALoraError(
            f"{name} holds Python objects besides tensors, which are not loaded because unpickling them can run code; "
            "a LoRA is only tensors: use a .safetensors copy of it"
        ) from None
    except Exception as error:
        raise CorruptLoraError(f"{name} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from error
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


def parse_lora(
    tensors: Dict[str, torch.Tensor],
    metadata: Optional[Dict[str, str]] = None,
    arch: Optional[str] = None,
    name: str = "LoRA",
    layout: Optional[UnetLayout] = None,
) -> LoraNetwork:
    """Recognise the format of a LoRA state dict and return it under kohya names.

    `arch` ("sd1"/"sd2"/"sdxl") decides the UNet naming when renaming diffusers paths; when None it is
    guessed from the cross-attention width or a second text encoder. `layout` is the target model's
    UNet layout when known (a non-standard one gets ldm names, see :func:`kohya_name`).
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
        pairs = {kohya_name("unet", path, family, layout): parts for path, parts in by_path.items()}
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
            alphas[kohya_name(component, path, family, layout)] = float(tensors[key])
        pairs = {kohya_name(c, p, family, layout): parts for (c, p), parts in by_path.items()}
        return LoraNetwork(_collect(pairs, alphas, "diffusers/PEFT"), "peft", metadata)

    lora_like = [k for k in keys if re.search(r"lora|alpha", k)]
    if not lora_like:
        sample = ", ".join(keys[:3]) or "no tensors at all"
        raise NotALoraError(f"{name} holds no LoRA tensors (first keys: {sample}); is it a full checkpoint or an embedding?")
    odd = next(k for k in keys if not (_KOHYA.match(k) or _OFFICIAL.match(k) or _PEFT.match(k) or k.endswith(".alpha")))
    raise NotALoraError(f"{name} mixes or uses an unknown LoRA key format (e.g. {odd!r}); supported: kohya, diffusers/PEFT, official Smooth-LoRA")


def load_lora(path: str | Path, arch: Optional[str] = None, layout: Optional[UnetLayout] = None) -> LoraNetwork:
    """Read a LoRA file (.safetensors, or .pt/.bin/.ckpt tensor dicts) in any supported format."""
    path = Path(path)
    if path.is_dir():
        raise LoraError(f"{path} is a folder; give the LoRA file itself (.safetensors, .pt, .ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise CorruptLoraError(f"{path.name} is empty (0 bytes): an interrupted download or copy?")
    tensors, metadata = _read_tensors(path.name, data, path.suffix.lower() == ".safetensors")
    network = parse_lora(tensors, metadata, arch, name=path.name, layout=layout)
    network.sha256 = hashlib.sha256(data).hexdigest()
    return network


def check_arch(network: LoraNetwork, model_arch: str) -> None:
    """Refuse a LoRA made for another family: SDXL vs SD1/SD2 (SD1 vs SD2 shows as shape mismatches)."""
    lora_arch = network.arch
    if lora_arch and (lora_arch == "sdxl") != (model_arch == "sdxl"):
        raise LoraArchitectureError(
            f"this LoRA is for {lora_arch.upper()}, but the model is {model_arch.upper()}; pick a LoRA made for {model_arch.upper()}"
        )


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
    metadata.update(
        {"ss_network_module": "networks.lora", "ss_network_dim": str(ranks[-1]) if ranks else "0", "lib_smooth_source_format": network.source_format}
    )
    if network.arch and "ss_base_model_version" not in metadata:
        metadata["ss_base_model_version"] = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[network.arch]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_kohya_state_dict(network, dtype), str(path), metadata=metadata)
    return path
