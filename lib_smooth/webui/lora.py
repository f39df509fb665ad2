"""Smooth-LoRAs through the WebUI's built-in Lora extension, with the user's LoRA state restored after a job.

The built-in extension merges LoRA weights lazily, layer by layer, at each layer's next forward.
A job loads its LoRA with ``load_networks``; afterwards the previous network list is loaded again and
every patched layer is re-merged at once, so the weights equal those before the job immediately,
whether the job succeeded, failed or was interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import LoraError, LoraShapeError, SmoothDiffusionError
from ..lora_formats import UnetLayout, check_arch, load_lora, save_kohya, uses_diffusers_unet_names, with_layout_names

NetworkState = List[Tuple[str, float, float, Optional[float]]]


def _networks():
    try:
        import networks  # the built-in Lora extension's module, in sys.modules once it has loaded
    except ImportError as error:
        raise SmoothDiffusionError("the built-in Lora extension is disabled; enable it in Extensions to use Smooth-LoRAs") from error
    return networks


def available() -> List[str]:
    """Names the Lora extension knows (file stems), sorted."""
    return sorted(_networks().available_networks)


def refresh() -> List[str]:
    _networks().list_available_networks()
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


def webui_unet_layout(sd_model) -> UnetLayout:
    """The block layout of the loaded ldm/sgm UNet (which of its output blocks hold a SpatialTransformer)."""
    unet = sd_model.model.diffusion_model
    blocks = unet.num_res_blocks
    layers = blocks if isinstance(blocks, int) else blocks[0]
    up_attention = frozenset(
        index // (layers + 1)
        for index, block in enumerate(unet.output_blocks)
        if any(type(module).__name__ == "SpatialTransformer" for module in block)
    )
    return UnetLayout(layers, up_attention, len(unet.channel_mult))


def prepare(name: str, sd_model) -> Prepared:
    """Make `name` mean in the WebUI what it means in lib_smooth, for the loaded model.

    The built-in Lora reads only kohya names, and reads SD1/SD2 diffusers-style UNet names by SD 1.5's
    block numbering. So an official Smooth-LoRA or a PEFT file is converted once to
    `<stem>_kohya.safetensors` beside it, and a file for a UNet of another layout (e.g. shapes-sd1) to
    `<stem>_ldm.safetensors` with ldm names (never overwriting); the converted file's name is used.
    A LoRA for another model family is refused here (SDXL vs SD1/SD2).
    """
    networks = _networks()
    entry = networks.available_networks.get(name) or networks.available_network_aliases.get(name)
    if entry is None:
        networks.list_available_networks()  # a file added since start-up, as the WebUI's own <lora:> lookup does
        entry = networks.available_networks.get(name) or networks.available_network_aliases.get(name)
    if entry is None:
        raise LoraError(f"LoRA {name!r} not found in the Lora folder ({_lora_dir()}); check the name")
    path = Path(entry.filename)
    layout = webui_unet_layout(sd_model)
    key = (*_file_key(path), layout)
    if key not in _PREPARED:
        network = load_lora(path, layout=layout)
        check_arch(network, "sdxl" if getattr(sd_model, "is_sdxl", False) else "sd1")
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


def check_fit(networks, requested: str, prepared: Prepared) -> None:
    """After load_networks: every layer of the file must have landed on a model layer of its shape.
    The built-in extension skips unmatched keys with only a debug log, so this is where a LoRA made
    for another model is caught."""
    loaded = [n for n in networks.loaded_networks if n.name == prepared.name]
    if not loaded:
        raise LoraError(f"the Lora extension could not load {requested!r}; see the console for its message")
    modules = loaded[0].modules.values()
    if not modules:
        raise LoraError(f"LoRA {requested!r} matches none of this model's layers: it was made for another model")
    if len(modules) < prepared.layers:
        raise LoraError(
            f"LoRA {requested!r}: only {len(modules)} of its {prepared.layers} layers match this model's layers; it was made for another model"
        )
    for module in modules:
        target = getattr(module.sd_module, "weight", None)
        up, down = getattr(module, "up_model", None), getattr(module, "down_model", None)
        if isinstance(module.sd_module, (torch.nn.Linear, torch.nn.Conv2d)) and up is not None and down is not None:
            delta = (up.weight.shape[0], down.weight.shape[1])
            if tuple(target.shape[:2]) != delta:
                layer = module.network_key.split(".", 1)[0]
                raise LoraShapeError(
                    f"LoRA {requested!r}: layer {layer} gives a {delta} delta but the model layer is {tuple(target.shape[:2])}; "
                    "it was made for another model size"
                )


def checked_name(name: str, sd_model) -> str:
    """The name to put in a <lora:…> tag, after proving the file fits the loaded model (the WebUI's
    own loading would drop what does not fit silently). The user's network set is left as it was."""
    networks = _networks()
    prepared = prepare(name, sd_model)
    previous = _state(networks)
    try:
        _load(networks, [(prepared.name, 1.0, 1.0, None)])
        check_fit(networks, name, prepared)
    finally:
        _load(networks, previous)
    return prepared.name


def file_sha256(name: str) -> str:
    entry = _networks().available_networks.get(name)
    if entry is None:
        return ""
    key = _file_key(Path(entry.filename))
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(Path(entry.filename).read_bytes()).hexdigest()
    return _HASHES[key]


def _state(networks) -> NetworkState:
    return [(n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in networks.loaded_networks]


PATCHED_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)


@torch.no_grad()
def _merge_now(networks, sd_model) -> None:
    """Bring every layer the Lora extension patches to the loaded network set now, not at its next forward."""
    for module in sd_model.modules():
        if isinstance(module, PATCHED_LAYERS) and getattr(module, "network_layer_name", None) is not None:
            networks.network_apply_weights(module)


def _load(networks, state: NetworkState) -> None:
    networks.load_networks([s[0] for s in state], [s[1] for s in state], [s[2] for s in state], [s[3] for s in state])


@contextlib.contextmanager
def lora_session(backend, name: Optional[str], weight: float) -> Iterator[Optional[str]]:
    """Use LoRA `name` at `weight` (None: no LoRA at all) for a job; yields the loaded name."""
    from modules import shared

    networks = _networks()
    previous = _state(networks)
    try:
        loaded = None
        if name:
            prepared = prepare(name, shared.sd_model)
            loaded = prepared.name
            _load(networks, [(loaded, weight, weight, None)])
            check_fit(networks, name, prepared)
            backend.lora_label = f"{loaded}:{weight:g}"
        else:
            _load(networks, [])
        _merge_now(networks, shared.sd_model)
        yield loaded
    finally:
        _load(networks, previous)
        _merge_now(networks, shared.sd_model)
        backend.lora_label = ""
