"""Merge a LoRA into torch modules at a multiplier and take it out again bit for bit.

Applying adds multiplier·ΔW to each target weight in place after keeping a copy of the original;
restoring copies the originals back, so the weights after removal equal those before exactly (no
subtraction and its rounding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Sequence

import torch

from .errors import LoraShapeError
from .lora_formats import LoraNetwork, UnetLayout, check_arch, kohya_name, sgm_module_name


@dataclass
class AppliedLora:
    originals: Dict[torch.nn.Module, torch.Tensor]
    identity: str

    @torch.no_grad()
    def restore(self) -> None:
        for module, weight in self.originals.items():
            module.weight.copy_(weight)
        self.originals.clear()


def unet_layout(unet: torch.nn.Module) -> UnetLayout:
    """The block layout of a diffusers UNet2DConditionModel (from its config and its modules)."""
    config = getattr(unet, "config", None)
    layers = config.layers_per_block if config is not None else 2
    layers = layers if isinstance(layers, int) else layers[0]
    up_attention = frozenset(int(m.group(1)) for name, _ in unet.named_modules() if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", name)))
    levels = len(config.block_out_channels) if config is not None else 4
    return UnetLayout(layers, up_attention, levels)


def module_lookup(arch: str, unet: torch.nn.Module, text_encoders: Sequence[torch.nn.Module]) -> Dict[str, torch.nn.Module]:
    """kohya module name → Linear/Conv2d for a diffusers UNet and transformers CLIP text encoders.

    The UNet is listed under both its diffusers names and its ldm names (numbered by this UNet's own
    layout), so files in either style load on every architecture.
    """
    targets = (torch.nn.Linear, torch.nn.Conv2d)
    lookup: Dict[str, torch.nn.Module] = {}
    layout = unet_layout(unet)
    for path, module in unet.named_modules():
        if isinstance(module, targets):
            lookup["lora_unet_" + path.replace(".", "_")] = module
            lookup["lora_unet_" + sgm_module_name(path, layout.layers_per_block, layout.up_attention)] = module
    components = ["text_encoder", "text_encoder_2"]
    for component, encoder in zip(components, text_encoders):
        for path, module in encoder.named_modules():
            if isinstance(module, targets):
                # LoRA files name CLIP layers "text_model.…" (transformers 4); transformers 5's
                # CLIPTextModel dropped that wrapper, so restore it.
                path = path if path.startswith("text_model.") or path == "text_projection" else "text_model." + path
                lookup[kohya_name(component, path, arch)] = module
                if arch != "sdxl" or component == "text_encoder":
                    # SD1 LoRAs written by diffusers' kohya converter use lora_te1_ for the only encoder.
                    lookup["lora_te1_" + path.replace(".", "_")] = module
    return lookup


@torch.no_grad()
def apply_lora(network: LoraNetwork, modules: Dict[str, torch.nn.Module], multiplier: float, arch: str) -> AppliedLora:
    """Add multiplier·ΔW to every targeted module; raises before touching anything if a layer does not fit."""
    check_arch(network, arch)
    missing = [name for name in network.layers if name not in modules]
    if missing:
        raise LoraShapeError(
            f"{len(missing)} of {len(network.layers)} LoRA layers have no matching layer in this {arch.upper()} model "
            f"(e.g. {missing[0]}); the LoRA was made for another architecture"
        )
    for name, layer in network.layers.items():
        weight = modules[name].weight
        expected = (layer.up.shape[0], *layer.down.shape[1:])
        if tuple(weight.shape) != expected:
            raise LoraShapeError(
                f"LoRA layer {name} gives a {tuple(expected)} delta but the model layer is {tuple(weight.shape)}; "
                "the LoRA was made for another model size"
            )
    applied = AppliedLora({}, f"{network.short_hash or 'in-memory'}:{multiplier:g}")
    for name, layer in network.layers.items():
        module = modules[name]
        if module not in applied.originals:
            applied.originals[module] = module.weight.detach().clone()
        module.weight.add_((layer.delta() * multiplier).to(module.weight.device, module.weight.dtype))
    return applied
