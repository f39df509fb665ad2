"""Stable Diffusion's original single-file layout: the tensor names and yaml of the CompVis/Stability repos.

The AUTOMATIC1111 WebUI, ComfyUI and the model sites exchange SD models as one ``.safetensors`` file
whose tensor names come from the ldm (SD1/SD2) and sgm (SDXL) code, plus an optional same-stem
``.yaml`` giving the architecture numbers. This module knows that layout in both directions:

* :func:`component_names` gives, for each diffusers model, the ldm name of every tensor in its state
  dict; writing (:func:`diffusers_to_ldm_state_dict`) and reading (``single_file.load_single_file``)
  share this one map, so a saved file always loads back.
* :func:`unet_params` / :func:`unet_config` and :func:`vae_ddconfig` / :func:`vae_config` convert the
  architecture numbers between a diffusers config and the yaml's ``unet_config`` / ``ddconfig``.

Only the tensor names and the yaml follow the ldm code; nothing from it is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..ldm_names import unet_name
from .clip_tokenizer import write_clip_tokenizer
from .diffusers_backend import DiffusersBackend

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_ARCH = {"sd2": "ViT-H-14", "sdxl": "ViT-bigG-14"}
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class LdmName:
    """Where one diffusers tensor lives in an ldm checkpoint, and how it is stored there."""

    key: str
    part: Optional[int] = None  # third of a fused q/k/v tensor (OpenCLIP's attn.in_proj_*)
    conv: bool = False  # a Linear weight stored as a 1×1 conv kernel (VAE mid-block attention)
    transpose: bool = False  # stored transposed (OpenCLIP's text_projection is applied as x @ P)


def to_ldm(tensor: torch.Tensor, name: LdmName) -> torch.Tensor:
    """One diffusers tensor as the ldm layout stores it (q/k/v thirds are concatenated by the caller)."""
    if name.conv:
        return tensor[:, :, None, None]
    return tensor.T if name.transpose else tensor


def from_ldm(tensor: torch.Tensor, name: LdmName) -> torch.Tensor:
    """The diffusers tensor `name` refers to, cut out of / reshaped from the ldm tensor."""
    if name.part is not None:
        tensor = tensor.chunk(3)[name.part]
    if name.conv and tensor.ndim == 4:
        tensor = tensor.flatten(1)
    if name.transpose:
        tensor = tensor.T
    return tensor.contiguous()


# --- tensor names, one function per component --------------------------------------------------

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_name(key: str, levels: int) -> LdmName:
    """ldm AutoencoderKL name of a diffusers AutoencoderKL tensor; the decoder's levels count backwards."""
    rest = ""
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key):
        layer = _VAE_ATTENTION[m[2]]
        return LdmName(f"{VAE_PREFIX}{m[1]}.mid.attn_1.{layer}.{m[3]}", conv=layer != "norm" and m[3] == "weight")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        name, rest = f"{m[1]}.mid.block_{int(m[2]) + 1}", m[3]
    elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        name, rest = f"encoder.down.{m[1]}.block.{m[2]}", m[3]
    elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        name, rest = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}", m[3]
    elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(conv\.\w+)", key):
        name = f"encoder.down.{m[1]}.downsample.{m[2]}"
    elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(conv\.\w+)", key):
        name = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
        name = f"{m[1]}.norm_out.{m[2]}"
    elif re.fullmatch(r"((encoder|decoder)\.conv_(in|out)|quant_conv|post_quant_conv)\.\w+", key):
        name = key
    else:
        raise ValueError(f"VAE tensor {key!r} has no ldm name")
    if rest:
        layer, _, param = rest.partition(".")
        if layer not in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"):
            raise ValueError(f"VAE resnet layer {layer!r} has no ldm name")
        name += f".{'nin_shortcut' if layer == 'conv_shortcut' else layer}.{param}"
    return LdmName(VAE_PREFIX + name)


def clip_name(key: str, prefix: str) -> LdmName:
    """HF CLIPTextModel layout (SD1, SDXL's first encoder): the names are the transformers ones.

    transformers 5 drops the ``text_model.`` level from CLIPTextModel's state dict; the checkpoints keep it.
    """
    return LdmName(prefix + "text_model." + key.removeprefix("text_model."))


_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_name(key: str, prefix: str) -> LdmName:
    """OpenCLIP layout (SD2, SDXL's second encoder): fused q/k/v, transposed projection."""
    key = key.removeprefix("text_model.")
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight", "embeddings.position_embedding.weight": "positional_embedding"}
    if key in fixed:
        return LdmName(prefix + fixed[key])
    if key == "text_projection.weight":
        return LdmName(prefix + "text_projection", transpose=True)
    if m := re.fullmatch(r"final_layer_norm\.(\w+)", key):
        return LdmName(f"{prefix}ln_final.{m[1]}")
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
        return LdmName(f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", part="qkv".index(m[2]))
    if (m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)) and m[2] in _OPEN_CLIP_LAYER:
        return LdmName(f"{prefix}transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER[m[2]]}.{m[3]}")
    raise ValueError(f"text encoder tensor {key!r} has no OpenCLIP name")


TEXT_LAYOUTS: dict[str, tuple[tuple[str, Callable[[str, str], LdmName]], ...]] = {
    "sd1": (("cond_stage_model.transformer.", clip_name),),
    "sd2": (("cond_stage_model.model.", open_clip_name),),
    "sdxl": (("conditioner.embedders.0.transformer.", clip_name), ("conditioner.embedders.1.model.", open_clip_name)),
}


def component_names(
    arch: str, unet: torch.nn.Module, vae: torch.nn.Module, text_encoders: Sequence[torch.nn.Module]
) -> list[tuple[torch.nn.Module, dict[str, LdmName]]]:
    """Each model with the ldm name of every tensor of its state dict that a checkpoint stores.

    CLIP's ``position_ids`` (a state-dict buffer in older transformers) is left out: it is always arange.
    """
    if len(text_encoders) != len(TEXT_LAYOUTS[arch]):
        raise ValueError(f"{arch} has {len(TEXT_LAYOUTS[arch])} text encoder(s), got {len(text_encoders)}")
    layers = unet.config.layers_per_block
    up_attention = frozenset(i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind)
    levels = len(vae.config.block_out_channels)
    namers: list[tuple[torch.nn.Module, Callable[[str], LdmName]]] = [
        (unet, lambda key: LdmName(UNET_PREFIX + unet_name(key, layers, up_attention))),
        (vae, lambda key: vae_name(key, levels)),
    ]
    for encoder, (prefix, namer) in zip(text_encoders, TEXT_LAYOUTS[arch]):
        namers.append((encoder, lambda key, prefix=prefix, namer=namer: namer(key, prefix)))
    return [(module, {key: name(key) for key in module.state_dict() if not key.endswith("position_ids")}) for module, name in namers]


def diffusers_to_ldm_state_dict(backend: DiffusersBackend) -> dict[str, torch.Tensor]:
    """All weights of `backend` under their ldm names, ready for ``safetensors.torch.save_file``.

    ``alphas_cumprod`` is stored too (as the ldm LatentDiffusion buffer), so a non-default noise
    schedule survives the round trip.
    """
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for module, names in component_names(backend.arch, backend.unet_model, backend.vae, backend.text_encoders):
        for key, tensor in module.state_dict().items():
            if key not in names:
                continue
            name, tensor = names[key], tensor.detach().cpu()
            if name.part is None:
                out[name.key] = to_ldm(tensor, name).contiguous()
            else:
                fused.setdefault(name.key, [None] * 3)[name.part] = tensor
    out.update({key: torch.cat(parts) for key, parts in fused.items()})
    if backend.arch == "sd2":
        out.update(_unused_last_block(out, backend.text_encoders[0].config.num_hidden_layers))
    out["alphas_cumprod"] = backend.alphas_cumprod.float().clone()
    return out


def _unused_last_block(ldm: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """SD2 reads OpenCLIP's penultimate layer, so its checkpoints hold one residual block more than the
    diffusers encoder (which stops there). The WebUI's encoder expects that block; zero weights make
    it the identity, and the penultimate-layer readout never runs it anyway."""
    prefix = "cond_stage_model.model.transformer.resblocks."
    last = f"{prefix}{layers - 1}."
    return {f"{prefix}{layers}.{key[len(last) :]}": torch.zeros_like(value) for key, value in ldm.items() if key.startswith(last)}


# --- architecture numbers: diffusers config <-> yaml -------------------------------------------


def _heads(config: Mapping, channels: list[int], attention: list[bool]) -> dict:
    """ldm gives either a fixed head count or a fixed head width; diffusers a head count per level."""
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    if isinstance(heads, int):
        return {"num_heads": heads}
    widths = {c // h for c, h, a in zip(channels, heads, attention) if a} | {channels[-1] // heads[-1]}
    if len(widths) == 1:
        return {"num_head_channels": widths.pop()}
    if len(set(heads)) == 1:
        return {"num_heads": heads[0]}
    raise ValueError(f"attention heads {list(heads)} over channels {channels} fit neither num_heads nor num_head_channels")


def unet_params(config: Mapping, sgm: bool = False) -> dict:
    """The yaml's UNetModel params for a diffusers UNet2DConditionModel config (sgm: the SDXL flavour)."""
    channels = list(config["block_out_channels"])
    base, layers = channels[0], config["layers_per_block"]
    if any(c % base for c in channels) or not isinstance(layers, int):
        raise ValueError(f"block_out_channels {channels} / layers_per_block {layers} do not fit the ldm UNetModel")
    attention = [kind.startswith("CrossAttn") for kind in config["down_block_types"]]
    depth = config.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):  # ldm (SD1/SD2) takes one depth for all levels, sgm a list
        depth = depth[0] if len(set(depth)) == 1 and not sgm else list(depth)
    params = dict(
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        model_channels=base,
        attention_resolutions=[2**i for i, a in enumerate(attention) if a],
        num_res_blocks=layers,
        channel_mult=[c // base for c in channels],
        **_heads(config, channels, attention),
        transformer_depth=depth,
        context_dim=config["cross_attention_dim"],
        use_checkpoint=True,
    )
    if config.get("use_linear_projection"):
        params["use_linear_in_transformer"] = True
    params.update(use_spatial_transformer=True, legacy=False)  # sgm's defaults differ (False, True): always say so
    if sgm:
        if config.get("addition_embed_type") == "text_time":
            params.update(num_classes="sequential", adm_in_channels=config["projection_class_embeddings_input_dim"])
        return params
    return dict(image_size=config["sample_size"], **params)


def unet_config(params: Mapping, time_embed_dim: Optional[int] = None) -> dict:
    """The diffusers UNet2DConditionModel config for the yaml's UNetModel params.

    time_embed_dim: SDXL's size-conditioning embedding width (the ConcatTimestepEmbedderND ``outdim``).
    """
    channels = [params["model_channels"] * m for m in params["channel_mult"]]
    attention = [2**i in params["attention_resolutions"] for i in range(len(channels))]
    head_width = params.get("num_head_channels", -1)
    config = dict(
        sample_size=params.get("image_size", 64),
        in_channels=params["in_channels"],
        out_channels=params["out_channels"],
        layers_per_block=params["num_res_blocks"],
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        attention_head_dim=[c // head_width for c in channels] if head_width > 0 else params["num_heads"],
        transformer_layers_per_block=params.get("transformer_depth", 1),
        cross_attention_dim=params["context_dim"],
        use_linear_projection=bool(params.get("use_linear_in_transformer", False)),
    )
    if params.get("adm_in_channels"):
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim or 256,
            projection_class_embeddings_input_dim=params["adm_in_channels"],
        )
    return config


def vae_ddconfig(config: Mapping) -> dict:
    """The yaml's ``ddconfig`` for a diffusers AutoencoderKL config."""
    channels = list(config["block_out_channels"])
    if any(c % channels[0] for c in channels):
        raise ValueError(f"VAE block_out_channels {channels} do not fit the ldm AutoencoderKL")
    return dict(
        double_z=True,
        z_channels=config["latent_channels"],
        resolution=config["sample_size"],
        in_channels=config["in_channels"],
        out_ch=config["out_channels"],
        ch=channels[0],
        ch_mult=[c // channels[0] for c in channels],
        num_res_blocks=config["layers_per_block"],
        attn_resolutions=[],
        dropout=0.0,
    )


def vae_config(ddconfig: Mapping, scale_factor: float) -> dict:
    """The diffusers AutoencoderKL config for the yaml's ``ddconfig`` and the model's ``scale_factor``."""
    channels = [ddconfig["ch"] * m for m in ddconfig["ch_mult"]]
    return dict(
        in_channels=ddconfig["in_channels"],
        out_channels=ddconfig["out_ch"],
        latent_channels=ddconfig["z_channels"],
        block_out_channels=channels,
        layers_per_block=ddconfig["num_res_blocks"],
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        sample_size=ddconfig.get("resolution", 256),
        scaling_factor=float(scale_factor),
    )


def schedule_params(alphas_cumprod: torch.Tensor) -> dict:
    """linear_start / linear_end / timesteps of the ldm schedule (betas linear in sqrt space) that gives ᾱ."""
    alphas = alphas_cumprod.double()
    betas = 1 - alphas / torch.cat([alphas.new_ones(1), alphas[:-1]])
    # ᾱ is float32, so the recovered betas are good to ~4 digits; the exact ᾱ is stored in the checkpoint.
    return {"linear_start": float(f"{betas[0]:.4g}"), "linear_end": float(f"{betas[-1]:.4g}"), "timesteps": len(alphas)}


# --- yaml ---------------------------------------------------------------------------------------


def _ldm_yaml(backend: DiffusersBackend, versions: list[Optional[Path]]) -> dict:
    """SD1 / SD2: ldm LatentDiffusion, as in the WebUI's configs/v1-inference.yaml and v2-inference-v.yaml."""
    if backend.arch == "sd1":
        text = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
        if versions[0]:
            text["params"] = {"version": str(versions[0])}
    else:
        text = {
            "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"arch": OPEN_CLIP_ARCH["sd2"], "version": str(versions[0] or "laion2b_s32b_b79k"), "freeze": True, "layer": "penultimate"},
        }
    params = {
        **schedule_params(backend.alphas_cumprod),
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": backend.unet_model.config.sample_size,
        "channels": backend.latent_channels,
        "cond_stage_trainable": False,
        "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema",
        "scale_factor": backend.scaling_factor,
        "use_ema": False,
    }
    if backend.parameterization == "v":
        params["parameterization"] = "v"
    params.update(
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params(backend.unet_model.config)},
        first_stage_config={
            "target": "ldm.models.autoencoder.AutoencoderKL",
            "params": {
                "embed_dim": backend.vae.config.latent_channels,
                "monitor": "val/rec_loss",
                "ddconfig": vae_ddconfig(backend.vae.config),
                "lossconfig": {"target": "torch.nn.Identity"},
            },
        },
        cond_stage_config=text,
    )
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}


def _sgm_yaml(backend: DiffusersBackend, versions: list[Optional[Path]]) -> dict:
    """SDXL: sgm DiffusionEngine, as in Stability's sd_xl_base.yaml."""
    unet = backend.unet_model.config
    modules = "sgm.modules.diffusionmodules."
    scaling = "VScaling" if backend.parameterization == "v" else "EpsScaling"
    schedule = schedule_params(backend.alphas_cumprod)
    clip_params = {"layer": "hidden", "layer_idx": backend.text_encoders[0].config.num_hidden_layers - 1}
    embedders = [
        {
            "is_trainable": False,
            "input_key": "txt",
            "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
            "params": ({"version": str(versions[0])} if versions[0] else {}) | clip_params,
        },
        {
            "is_trainable": False,
            "input_key": "txt",
            "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
            "params": {
                "arch": OPEN_CLIP_ARCH["sdxl"],
                "version": str(versions[1] or "laion2b_s39b_b160k"),
                "freeze": True,
                "layer": "penultimate",
                "always_return_pooled": True,
                "legacy": False,
            },
        },
    ] + [
        {
            "is_trainable": False,
            "input_key": key,
            "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
            "params": {"outdim": unet.addition_time_embed_dim},
        }
        for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
    ]
    params = {
        "scale_factor": backend.scaling_factor,
        "disable_first_stage_autocast": True,
        "denoiser_config": {
            "target": f"{modules}denoiser.DiscreteDenoiser",
            "params": {
                "num_idx": schedule["timesteps"],
                "weighting_config": {"target": f"{modules}denoiser_weighting.EpsWeighting"},
                "scaling_config": {"target": f"{modules}denoiser_scaling.{scaling}"},
                "discretization_config": {
                    "target": f"{modules}discretizer.LegacyDDPMDiscretization",
                    "params": {
                        "linear_start": schedule["linear_start"],
                        "linear_end": schedule["linear_end"],
                        "num_timesteps": schedule["timesteps"],
                    },
                },
            },
        },
        "network_config": {"target": f"{modules}openaimodel.UNetModel", "params": unet_params(unet, sgm=True)},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": embedders}},
        "first_stage_config": {
            "target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
            "params": {
                "embed_dim": backend.vae.config.latent_channels,
                "monitor": "val/rec_loss",
                "ddconfig": {"attn_type": "vanilla", **vae_ddconfig(backend.vae.config)},
                "lossconfig": {"target": "torch.nn.Identity"},
            },
        },
    }
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": params}}


def ldm_config_yaml(backend: DiffusersBackend, text_encoder_dir: str | Path | None = None, named_as: Optional[str] = None) -> str:
    """The same-stem ``.yaml`` the WebUI reads to build this architecture (sizes of the actual model).

    text_encoder_dir: a folder holding, per text encoder, a ``text_encoder[_2]`` subfolder with the
    transformers CLIP config and tokenizer (see :func:`write_text_encoder_folders`); the yaml names it
    as the encoder's ``version`` so non-standard (e.g. tiny) encoders can be rebuilt. Without it the
    standard releases are named (openai/clip-vit-large-patch14, laion2b OpenCLIP). `named_as` replaces
    the folder's absolute path in the yaml, e.g. with a path relative to the WebUI's root.
    """
    import yaml

    root = Path(named_as) if named_as else Path(text_encoder_dir).resolve() if text_encoder_dir else None
    versions = [root / name if root else None for name in TEXT_ENCODER_FOLDERS]
    config = _sgm_yaml(backend, versions) if backend.arch == "sdxl" else _ldm_yaml(backend, versions)
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def write_text_encoder_folders(backend: DiffusersBackend, folder: str | Path) -> list[Path]:
    """Write each text encoder's transformers config and CLIP tokenizer into `folder`/text_encoder[_2].

    Config and tokenizer files only (no weights, those live in the checkpoint): enough for the WebUI,
    which builds its CLIP encoder from ``version`` without loading weights, and for load_single_file.
    """
    written = []
    for name, encoder, tokenizer in zip(TEXT_ENCODER_FOLDERS, backend.text_encoders, backend.tokenizers):
        target = Path(folder) / name
        encoder.config.save_pretrained(target)
        tokenizer.save_pretrained(target)
        write_clip_tokenizer(target, pad_token=tokenizer.pad_token)  # vocab.json/merges.txt for old transformers too
        written.append(target)
    return written


def save_single_file(
    backend: DiffusersBackend, path: str | Path, tokenizer_and_config_dir: str | Path | None = None, named_as: Optional[str] = None
) -> Path:
    """Write `backend` as a WebUI-style single-file checkpoint: `path` (.safetensors) and the same-stem .yaml.

    tokenizer_and_config_dir: where to write the text encoders' config + tokenizer folders that the yaml
    names. Needed for text encoders that are not the standard size (e.g. the tiny models): without it the
    yaml names the standard releases and the file loads back only with ``config_dir``. `named_as`: how
    the yaml names that folder (default: its absolute path; see :func:`ldm_config_yaml`).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a single-file checkpoint is written as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer_and_config_dir is not None:
        write_text_encoder_folders(backend, tokenizer_and_config_dir)
    save_file(diffusers_to_ldm_state_dict(backend), str(path), metadata={"format": "pt"})
    path.with_suffix(".yaml").write_text(ldm_config_yaml(backend, tokenizer_and_config_dir, named_as))
    return path
