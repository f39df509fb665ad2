"""Load single-file SD1.x / SD2.x / SDXL checkpoints (.safetensors, .ckpt) into a DiffusersBackend, offline.

A checkpoint holds weights only; the architecture comes from, first match wins:

1. ``config_dir``: a local diffusers-format folder of the same architecture (unet/, vae/,
   text_encoder[_2]/ configs, tokenizer[_2]/; scheduler/ optional);
2. a same-stem ``.yaml`` beside the checkpoint (the WebUI convention, and what
   ``ldm_layout.save_single_file`` writes; this is how non-standard sizes such as the tiny models load);
3. the published SD1.5 / SD2.x / SDXL-base numbers, for the family the tensor names reveal, with the
   CLIP tokenizer written offline into a cache folder.

The weights are mapped with ``ldm_layout.component_names`` onto models built without memory for
their parameters (the checkpoint's tensors are used in place). Nothing contacts a model hub.
Every problem a user can cause is a :class:`ModelFilesError` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Optional

import torch

from ..errors import ModelFilesError
from .clip_tokenizer import EOS, write_clip_tokenizer
from .diffusers_backend import DiffusersBackend, _alphas_cumprod, _require
from .ldm_layout import UNET_PREFIX, component_names, from_ldm, unet_config, vae_config

_STORED_PREFIXES = (UNET_PREFIX, "first_stage_model.", "cond_stage_model.", "conditioner.embedders.", "alphas_cumprod")
_CONFIG_DIR = "config_dir=<a local diffusers folder of the same architecture>"

# Published architectures, in the yaml's terms (ldm UNetModel params, AutoencoderKL ddconfig).
_SD_VAE = dict(z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
_STANDARD_UNET = {
    "sd1": dict(
        image_size=64,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=8,
        transformer_depth=1,
        context_dim=768,
    ),
    "sd2": dict(
        image_size=64,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_head_channels=64,
        use_linear_in_transformer=True,
        transformer_depth=1,
        context_dim=1024,
    ),
    "sdxl": dict(
        image_size=128,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 4],
        num_head_channels=64,
        use_linear_in_transformer=True,
        transformer_depth=[1, 2, 10],
        context_dim=2048,
        adm_in_channels=2816,
    ),
}
_SCALE_FACTOR = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
_CLIP_IDS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
_CLIP_L = dict(
    _CLIP_IDS, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768
)
# SD2 reads OpenCLIP ViT-H's penultimate layer: diffusers keeps 23 of its 24 blocks.
_OPEN_CLIP_H = dict(
    _CLIP_IDS, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu", projection_dim=512
)
_OPEN_CLIP_G = dict(
    _CLIP_IDS, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu", projection_dim=1280
)
_STANDARD_TEXT = {"sd1": [_CLIP_L], "sd2": [_OPEN_CLIP_H], "sdxl": [_CLIP_L, _OPEN_CLIP_G]}
_PAD_TOKENS = {"sd1": [EOS], "sd2": ["!"], "sdxl": [EOS, "!"]}  # OpenCLIP pads with "!" (token 0)
_SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass
class _Architecture:
    """What the checkpoint's weights need around them: diffusers configs, tokenizers, schedule."""

    unet: dict
    vae: dict
    text: list  # transformers CLIPTextConfig per text encoder
    tokenizers: list[Path]
    schedule: dict  # diffusers scheduler-config keys, used when the checkpoint has no float ᾱ buffer
    parameterization: Optional[str]
    source: str  # where the numbers came from, and how to give the right ones: for error messages
    fix: str


# --- reading the file ---------------------------------------------------------------------------


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model tensors of a .safetensors / .ckpt file (EMA copies and optimizer state skipped), and all its keys."""
    if not path.is_file():
        raise ModelFilesError(f"missing {path}: give the path of an SD1.x / SD2.x / SDXL .safetensors or .ckpt checkpoint")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ModelFilesError(f"{path}: unsupported checkpoint type {suffix!r}; give a .safetensors or .ckpt file (or a diffusers folder)")
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                keys = list(file.keys())
                return {key: file.get_tensor(key) for key in keys if key.startswith(_STORED_PREFIXES)}, keys
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip readers each raise their own types
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # torch colours its weights-only message
        reason = text.splitlines()[0] if text else type(error).__name__
        pickled = "" if suffix == ".safetensors" else "; an old .ckpt that pickles more than tensors must first be converted to .safetensors"
        raise ModelFilesError(
            f"{path} could not be read as a {suffix} checkpoint ({reason}): the file is truncated or damaged "
            f"(download it again) or is not a checkpoint{pickled}"
        ) from error
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path} holds a {type(data).__name__}, not a state dict of tensors: it is not a model checkpoint")
    keys = [str(key) for key in data]
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor) and str(key).startswith(_STORED_PREFIXES)}, keys


def _rename_old_clip_keys(tensors: dict[str, torch.Tensor]) -> None:
    """Checkpoints saved with old transformers lack CLIPTextModel's ``text_model.`` level (the WebUI renames them too)."""
    for part in ("embeddings.", "encoder.", "final_layer_norm."):
        old = f"cond_stage_model.transformer.{part}"
        for key in [k for k in tensors if k.startswith(old)]:
            tensors["cond_stage_model.transformer.text_model." + key.removeprefix("cond_stage_model.transformer.")] = tensors.pop(key)


def detect_family(keys: Collection[str], path: Path) -> str:
    """ "sd1", "sd2" or "sdxl" from the tensor names: the text encoder layout tells the families apart."""
    if UNET_PREFIX + "input_blocks.0.0.weight" not in keys:
        if any("lora_" in key for key in keys):
            hint = " It looks like a LoRA: load it as a LoRA on a model instead."
        elif any(key.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.")) for key in keys):
            hint = " It looks like one component of a diffusers model: give the whole diffusers folder instead."
        else:
            hint = ""
        raise ModelFilesError(
            f"{path} is not a Stable Diffusion checkpoint: it has no {UNET_PREFIX}* UNet tensors "
            f"({len(keys)} tensors, e.g. {sorted(keys)[:3]}).{hint} Give an SD1.x / SD2.x / SDXL single-file checkpoint."
        )
    if any(key.startswith("conditioner.embedders.1.model.") for key in keys):
        return "sdxl"
    if any(key.startswith("conditioner.embedders.") for key in keys):
        raise ModelFilesError(f"{path} looks like an SDXL refiner (one OpenCLIP encoder): only SD1.x, SD2.x and SDXL base checkpoints are supported")
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        return "sd2"
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return "sd1"
    raise ModelFilesError(
        f"{path} holds a UNet but no text encoder (cond_stage_model.* or conditioner.embedders.*): it is a partial "
        f"export; give the full checkpoint with its text encoder and VAE"
    )


# --- where the architecture comes from ----------------------------------------------------------


def _tokenizer_folder(folder: Path) -> Path:
    if not (folder / "tokenizer.json").is_file():
        for name in ("vocab.json", "merges.txt"):
            _require(folder / name, "write the CLIP tokenizer files with `python -m lib_smooth make-tokenizer DIR` (offline)")
    return folder


def _cached_tokenizer(pad_token: str) -> Path:
    """The real CLIP tokenizer files, written once (offline) into the user cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lib_smooth" / "tokenizers"
    folder = cache / ("clip" if pad_token == EOS else "open_clip")
    if not (folder / "special_tokens_map.json").is_file():  # written last
        write_clip_tokenizer(folder, pad_token=pad_token)
    return folder


def _text_config(folder: Path):
    from transformers import CLIPTextConfig

    _require(folder / "config.json", "a text encoder folder needs the transformers CLIP config.json next to its tokenizer files")
    return CLIPTextConfig.from_pretrained(folder, local_files_only=True)


def _from_diffusers_folder(folder: Path, family: str) -> _Architecture:
    hint = "config_dir must be a diffusers folder of the same architecture (unet/, vae/, text_encoder/, tokenizer/ with their config files)"
    if not folder.is_dir():
        raise ModelFilesError(f"missing {folder}: {hint}")
    unet = json.loads(_require(folder / "unet" / "config.json", hint).read_text())
    vae = json.loads(_require(folder / "vae" / "config.json", hint).read_text())
    suffixes = ["", "_2"][: len(_STANDARD_TEXT[family])]
    text = [_text_config(folder / f"text_encoder{s}") for s in suffixes]
    tokenizers = [_tokenizer_folder(_require(folder / f"tokenizer{s}", hint)) for s in suffixes]
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    prediction = {"v_prediction": "v", "epsilon": "eps"}.get(scheduler.get("prediction_type"))
    return _Architecture(unet, vae, text, tokenizers, {**_SD_SCHEDULE, **scheduler}, prediction, f"config_dir {folder}", f"pass the {_CONFIG_DIR}")


def _text_encoder_from_version(version: Optional[str], yaml_path: Path, family: str, index: int) -> tuple[Any, Path]:
    """A yaml ``version`` that is a local folder gives the encoder's config and tokenizer; a hub name the published ones."""
    from transformers import CLIPTextConfig

    if version:
        given = Path(version).expanduser()
        # A relative version resolves against the yaml's folder or one above it (the WebUI resolves it
        # against its root, two levels above models/Stable-diffusion), else the working directory.
        for folder in [given] if given.is_absolute() else [*(parent / given for parent in yaml_path.resolve().parents), given]:
            if (folder / "config.json").is_file():
                return _text_config(folder), _tokenizer_folder(folder)
        if given.is_absolute() or version.startswith(("./", "../", "~")):
            raise ModelFilesError(
                f"missing {given}/config.json, the text encoder folder named by {yaml_path}: restore it (save_single_file "
                f"writes it when given tokenizer_and_config_dir), point `version` at another copy, or pass config_dir"
            )
    return CLIPTextConfig(**_STANDARD_TEXT[family][index]), _cached_tokenizer(_PAD_TOKENS[family][index])


def _from_yaml(path: Path, family: str) -> _Architecture:
    """The architecture from a WebUI-style yaml: ldm LatentDiffusion (SD1/SD2) or sgm DiffusionEngine (SDXL)."""
    import yaml

    fix = (
        f"correct or remove {path} (models with non-standard text encoders also need the text encoder folders "
        f"it names; save_single_file writes them when given tokenizer_and_config_dir), or pass {_CONFIG_DIR}"
    )
    try:
        model = yaml.safe_load(path.read_text())["model"]["params"]
        sgm = "network_config" in model
        if sgm != (family == "sdxl"):
            raise ModelFilesError(f"{path} describes an {'SDXL' if sgm else 'SD1/SD2'} model but the checkpoint is {family}: {fix}")
        if sgm:
            unet_params = model["network_config"]["params"]
            embedders = model["conditioner_config"]["params"]["emb_models"]
            versions = [e.get("params", {}).get("version") for e in embedders if e.get("input_key") == "txt"]
            size_dims = [e["params"]["outdim"] for e in embedders if str(e.get("target", "")).endswith("ConcatTimestepEmbedderND")]
            denoiser = model.get("denoiser_config", {}).get("params", {})
            v_scaling = str(denoiser.get("scaling_config", {}).get("target", "")).endswith("VScaling")
            parameterization = "v" if v_scaling else "eps"
            steps = denoiser.get("discretization_config", {}).get("params", {})
            schedule = dict(
                _SD_SCHEDULE,
                num_train_timesteps=steps.get("num_timesteps", 1000),
                beta_start=steps.get("linear_start", 0.00085),
                beta_end=steps.get("linear_end", 0.012),
            )
        else:
            unet_params = model["unet_config"]["params"]
            if unet_params.get("num_classes") is not None:
                raise ModelFilesError(
                    f"{path} describes a class-conditioned (e.g. unCLIP) UNet, which is not supported: "
                    "give an SD1.x / SD2.x / SDXL text-to-image checkpoint"
                )
            versions = [model["cond_stage_config"].get("params", {}).get("version")]
            size_dims = []
            parameterization = model.get("parameterization", "eps")
            # ldm's "linear" schedule is linear in sqrt(beta): diffusers calls it "scaled_linear".
            kind = {"linear": "scaled_linear", "sqrt_linear": "linear"}.get(model.get("beta_schedule", "linear"), model.get("beta_schedule"))
            schedule = dict(
                num_train_timesteps=model.get("timesteps", 1000),
                beta_start=model.get("linear_start", 0.00085),
                beta_end=model.get("linear_end", 0.012),
                beta_schedule=kind,
            )
        unet = unet_config(unet_params, size_dims[0] if size_dims else None)
        vae = vae_config(model["first_stage_config"]["params"]["ddconfig"], model.get("scale_factor", _SCALE_FACTOR[family]))
    except ModelFilesError:
        raise
    except (OSError, yaml.YAMLError) as error:
        raise ModelFilesError(f"{path} is not a readable yaml file ({error}): {fix}") from error
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ModelFilesError(f"{path} is not a Stable Diffusion model config (missing or malformed entry: {error}): {fix}") from error
    if len(versions) != len(_STANDARD_TEXT[family]):
        raise ModelFilesError(f"{path} names {len(versions)} text encoder(s), a {family} model has {len(_STANDARD_TEXT[family])}: {fix}")
    text, tokenizers = zip(*(_text_encoder_from_version(v, path, family, i) for i, v in enumerate(versions)))
    return _Architecture(unet, vae, list(text), list(tokenizers), schedule, parameterization, str(path), fix)


def _published(family: str, yaml_path: Path) -> _Architecture:
    """SD1.5 / SD2.x / SDXL-base as released (SD2 768-v is the same network: only prediction='v' differs)."""
    from transformers import CLIPTextConfig

    unet = _STANDARD_UNET[family]
    return _Architecture(
        unet_config(unet, 256),
        vae_config(dict(_SD_VAE, resolution=unet["image_size"] * 8), _SCALE_FACTOR[family]),
        [CLIPTextConfig(**config) for config in _STANDARD_TEXT[family]],
        [_cached_tokenizer(pad) for pad in _PAD_TOKENS[family]],
        _SD_SCHEDULE,
        None,
        f"the published {family} architecture",
        f"for another architecture put the model's .yaml beside it as {yaml_path}, or pass {_CONFIG_DIR}",
    )


# --- building -----------------------------------------------------------------------------------


def _empty_models(architecture: _Architecture, family: str) -> tuple[torch.nn.Module, torch.nn.Module, list[torch.nn.Module]]:
    """The diffusers / transformers models with parameters on the meta device (no memory, no random init)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    try:
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(architecture.unet)
            vae = AutoencoderKL.from_config(architecture.vae)
            # SDXL's pooled prompt vector comes from the second encoder's projection.
            classes = [CLIPTextModel, CLIPTextModelWithProjection] if family == "sdxl" else [CLIPTextModel]
            encoders = [cls(config) for cls, config in zip(classes, architecture.text)]
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ModelFilesError(f"{architecture.source} does not describe a buildable {family} model ({error}): {architecture.fix}") from error
    return unet, vae, encoders


def _fill(models: tuple, tensors: dict[str, torch.Tensor], family: str, path: Path, architecture: _Architecture) -> None:
    """Put the checkpoint's tensors into the empty models, after checking every name and shape."""
    unet, vae, encoders = models
    try:
        parts = component_names(family, unet, vae, encoders)
    except ValueError as error:
        raise ModelFilesError(f"{architecture.source} describes a model the ldm layout cannot hold ({error}): {architecture.fix}") from error
    problems, loaded = [], []
    for label, (module, names) in zip(("UNet", "VAE", "text encoder", "second text encoder"), parts):
        if not any(name.key in tensors for name in names.values()):
            prefix = next(iter(names.values())).key.split(".")[0]
            raise ModelFilesError(f"{path} holds no {label} weights ({prefix}.*): it is a partial export; give the full checkpoint")
        expected, found = module.state_dict(), {}
        for key, name in names.items():
            if name.key not in tensors:
                problems.append(f"{name.key} is missing")
                continue
            tensor = from_ldm(tensors[name.key], name)
            if tensor.shape != expected[key].shape:
                problems.append(f"{name.key} has shape {tuple(tensor.shape)}, the architecture needs {tuple(expected[key].shape)}")
                continue
            found[key] = tensor
        loaded.append((module, found))
    if problems:
        raise ModelFilesError(f"{path} does not fit {architecture.source} ({len(problems)} tensor(s): {'; '.join(problems[:3])}): {architecture.fix}")
    for module, found in loaded:
        module.load_state_dict(found, strict=False, assign=True)


def load_single_file(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    prediction: Optional[str] = None,
    config_dir: Optional[str | Path] = None,
) -> DiffusersBackend:
    """Load an SD1.x / SD2.x / SDXL single-file checkpoint, offline.

    prediction: "eps" or "v"; default the yaml's ``parameterization`` (or config_dir's scheduler), else
    "eps". SD2 768-v checkpoints carry no marker of v-prediction: without their v2-inference-v.yaml
    beside them, pass prediction="v".
    config_dir: a local diffusers folder whose configs and tokenizers describe this checkpoint's
    architecture; needed for non-standard architectures that have no yaml beside them.
    Raises ModelFilesError (naming the file and the fix) for a missing, unreadable or unrecognised file
    and for an architecture that does not match the weights.
    """
    from transformers import CLIPTokenizer

    path = Path(path)
    tensors, keys = read_checkpoint(path)
    family = detect_family(keys, path)
    _rename_old_clip_keys(tensors)
    yaml_path = path.with_suffix(".yaml")
    if config_dir is not None:
        architecture = _from_diffusers_folder(Path(config_dir), family)
    elif yaml_path.is_file():
        architecture = _from_yaml(yaml_path, family)
    else:
        architecture = _published(family, yaml_path)
    models = _empty_models(architecture, family)
    _fill(models, tensors, family, path, architecture)
    unet, vae, encoders = models
    tokenizers = [CLIPTokenizer.from_pretrained(folder, local_files_only=True) for folder in architecture.tokenizers]
    stored = tensors.get("alphas_cumprod")
    full_precision = stored is not None and stored.dtype in (torch.float32, torch.float64)
    alphas_cumprod = stored if full_precision else _alphas_cumprod(architecture.schedule)
    parameterization = prediction or architecture.parameterization or "eps"
    return DiffusersBackend(unet, vae, encoders, tokenizers, alphas_cumprod, parameterization, family, device=device, dtype=dtype)
