"""The Lora folder, as both hosts' built-in Lora extensions see it: names, hashes, and files made readable.

Both AUTOMATIC1111's and Forge's built-in extension are a module named ``networks`` with the same
folder index (``available_networks``, ``list_available_networks``); how each loads a network and merges
its weights differs, and lives in the host's adapter (``automatic1111.py``, ``forge.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..errors import LoraError, LoraShapeError, SmoothDiffusionError
from ..lora_formats import UnetLayout, check_arch, load_lora, save_kohya, uses_diffusers_unet_names, with_layout_names


def networks_module():
    try:
        import networks  # the built-in Lora extension's module, in sys.modules once it has loaded
    except ImportError as error:
        raise SmoothDiffusionError("the built-in Lora extension is disabled; enable it in Extensions to use Smooth-LoRAs") from error
    return networks


def available() -> List[str]:
    """Names the Lora extension knows (file stems), sorted."""
    return sorted(networks_module().available_networks)


def refresh() -> List[str]:
    networks_module().list_available_networks()
    return available()


@dataclass(frozen=True)
class Prepared:
    """A Lora-folder name ready for the built-in extension: the name to load and what the file holds."""

    name: str
    layers: int


_PREPARED: Dict[tuple, Prepared] = {}  # (path, mtime, layout) → Prepared: each file version is read once
_HASHES: Dict[Tuple[str, int], str] = {}


def _file_key(path: Path) -> Tuple[str, int]:
    return str(path), path.stat().st_mtime_ns


def unet_layout(unet) -> UnetLayout:
    """The block layout of an ldm-style UNet module — AUTOMATIC1111's ldm/sgm one or Forge's
    IntegratedUNet2DConditionModel: which of its output blocks hold a SpatialTransformer."""
    blocks = unet.num_res_blocks
    layers = blocks if isinstance(blocks, int) else blocks[0]
    up_attention = frozenset(
        index // (layers + 1)
        for index, block in enumerate(unet.output_blocks)
        if any(type(module).__name__ == "SpatialTransformer" for module in block)
    )
    return UnetLayout(layers, up_attention, len(unet.channel_mult))


def prepare(name: str, layout: UnetLayout, is_sdxl: bool) -> Prepared:
    """Make `name` mean in the WebUI what it means in lib_smooth, for a model of `layout`.

    The built-in Lora reads kohya names, and reads SD1/SD2 diffusers-style UNet names by SD 1.5's
    block numbering. So an official Smooth-LoRA or a PEFT file is converted once to
    `<stem>_kohya.safetensors` beside it, and a file for a UNet of another layout (e.g. shapes-sd1) to
    `<stem>_ldm.safetensors` with ldm names (never overwriting); the converted file's name is used.
    A LoRA for another model family is refused here (SDXL vs SD1/SD2).
    """
    networks = networks_module()
    entry = networks.available_networks.get(name) or networks.available_network_aliases.get(name)
    if entry is None:
        networks.list_available_networks()  # a file added since start-up, as the WebUI's own <lora:> lookup does
        entry = networks.available_networks.get(name) or networks.available_network_aliases.get(name)
    if entry is None:
        raise LoraError(f"LoRA {name!r} not found in the Lora folder ({_lora_dir()}); check the name")
    path = Path(entry.filename)
    key = (*_file_key(path), layout)
    if key not in _PREPARED:
        network = load_lora(path, layout=layout)
        check_arch(network, "sdxl" if is_sdxl else "sd1")
        if network.source_format == "kohya" and (layout.hosts_read_diffusers_names or not uses_diffusers_unet_names(network)):
            _PREPARED[key] = Prepared(entry.name if hasattr(entry, "name") else name, len(network.layers))
        else:
            converted = path.with_name(f"{path.stem}{'_kohya' if layout.hosts_read_diffusers_names else '_ldm'}.safetensors")
            if not converted.exists():
                save_kohya(with_layout_names(network, layout), converted)
                networks.list_available_networks()
            _PREPARED[key] = Prepared(converted.stem, len(network.layers))
    return _PREPARED[key]


def _lora_dir() -> str:
    from modules import shared

    return str(getattr(getattr(shared, "cmd_opts", None), "lora_dir", "models/Lora"))


def file_sha256(name: str) -> str:
    entry = networks_module().available_networks.get(name)
    if entry is None:
        return ""
    key = _file_key(Path(entry.filename))
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(Path(entry.filename).read_bytes()).hexdigest()
    return _HASHES[key]


def check_fit(requested: str, prepared: Prepared, matched: Sequence[Tuple[str, tuple, tuple]]) -> None:
    """Every layer of the file must have landed on a model layer of its shape. `matched` holds, for each
    layer the host's Lora extension matched, (its name, the LoRA's delta shape, the model weight's
    shape) — both hosts' extensions skip keys that match nothing with a log line at most, so this is
    where a LoRA made for another model is caught."""
    if not matched:
        raise LoraError(f"LoRA {requested!r} matches none of this model's layers: it was made for another model")
    if len(matched) < prepared.layers:
        raise LoraError(
            f"LoRA {requested!r}: only {len(matched)} of its {prepared.layers} layers match this model's layers; it was made for another model"
        )
    for layer, delta, target in matched:
        if tuple(target[:2]) != tuple(delta):
            raise LoraShapeError(
                f"LoRA {requested!r}: layer {layer} gives a {tuple(delta)} delta but the model layer is {tuple(target[:2])}; "
                "it was made for another model size"
            )
