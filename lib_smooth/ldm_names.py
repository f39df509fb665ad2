"""Names of Stable Diffusion's UNet blocks in the original ldm/sgm layout, from diffusers names.

One map serves every place that needs it: single-file checkpoints (``backends.ldm_layout``) and
kohya LoRA names, which use the ldm block names for SDXL (``lora_formats.sgm_module_name``).
"""

from __future__ import annotations

import re

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "conv_in.": "input_blocks.0.0.",
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _resnet(rest: str) -> str:
    layer, _, param = rest.partition(".")
    if layer not in _RESNET:
        raise ValueError(f"UNet resnet layer {layer!r} has no ldm name")
    return f"{_RESNET[layer]}.{param}"


def unet_name(key: str, layers: int, up_attention: frozenset[int]) -> str:
    """ldm UNetModel name of a diffusers UNet2DConditionModel tensor (without ``model.diffusion_model.``).

    ldm numbers its blocks flat: input_blocks[0] is conv_in, then per level `layers` (resnet, attention)
    pairs and a downsampler; output_blocks hold `layers + 1` pairs per level, the upsampler appended to
    the last one (after the attention, if the level has one).
    """
    for old, new in _UNET_TOP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * (layers + 1)}.0.{rest.replace('conv.', 'op.', 1)}"
        index = 1 + level * (layers + 1) + j
        return f"input_blocks.{index}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            return f"output_blocks.{level * (layers + 1) + layers}.{2 if level in up_attention else 1}.{rest}"
        index = level * (layers + 1) + j
        return f"output_blocks.{index}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    raise ValueError(f"UNet tensor {key!r} has no ldm name")
