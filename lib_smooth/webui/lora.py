"""Smooth-LoRAs through the WebUI's built-in Lora extension, with the user's LoRA state restored after a job.

The built-in extension merges LoRA weights lazily, layer by layer, at each layer's next forward.
A job loads its LoRA with ``load_networks``; afterwards the previous network list is loaded again and
every patched layer is re-merged at once, so the weights equal those before the job immediately,
whether the job succeeded, failed or was interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import SmoothDiffusionError
from ..lora_formats import load_lora, save_kohya

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


_FORMATS: Dict[Tuple[str, int], str] = {}  # (path, mtime) → format: reading a LoRA once per file version
_HASHES: Dict[Tuple[str, int], str] = {}


def _file_key(path: Path) -> Tuple[str, int]:
    return str(path), path.stat().st_mtime_ns


def kohya_name_for(name: str) -> str:
    """The name to load: a non-kohya file (official Smooth-LoRA, PEFT) is converted once to
    `<stem>_kohya.safetensors` beside it (never overwriting) and that file's name is returned."""
    networks = _networks()
    entry = networks.available_networks.get(name) or networks.available_network_aliases.get(name)
    if entry is None:
        raise SmoothDiffusionError(f"LoRA {name!r} not found in the Lora folder; refresh the list or check the name")
    path = Path(entry.filename)
    key = _file_key(path)
    if key not in _FORMATS:
        _FORMATS[key] = load_lora(path).source_format
    if _FORMATS[key] == "kohya":
        return name
    converted = path.with_name(f"{path.stem}_kohya.safetensors")
    if not converted.exists():
        save_kohya(load_lora(path), converted)
        networks.list_available_networks()
    return converted.stem


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
            loaded = kohya_name_for(name)
            _load(networks, [(loaded, weight, weight, None)])
            if not networks.loaded_networks:
                raise SmoothDiffusionError(f"the Lora extension could not load {name!r}; see the console for its message")
            backend.lora_label = f"{loaded}:{weight:g}"
        else:
            _load(networks, [])
        _merge_now(networks, shared.sd_model)
        yield loaded
    finally:
        _load(networks, previous)
        _merge_now(networks, shared.sd_model)
        backend.lora_label = ""
