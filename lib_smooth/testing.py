"""For testing only: random-weight models with the real SD1.x / SD2.x / SDXL architectures, built on the
spot — tiny ones for the tests, full-size ones for end-to-end checks in hosts that only load real sizes
(the WebUI's SD2/SDXL text encoders, sd-scripts). Nothing the product runs imports this module.

Widths are small but the structure is the real one: UNet2DConditionModel with cross-attention transformer blocks
(SDXL: text-time added embedding), an 8× downsampling VAE with 4 latent channels and CLIP text
encoders with the real 49,408-token tokenizer. Weights come from a fixed seed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .backends.clip_tokenizer import VOCAB_SIZE, write_clip_tokenizer
from .backends.diffusers_backend import DiffusersBackend, _alphas_cumprod

OUTPUT_SCALE = 0.1
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _text_encoder_config(hidden: int, projection: int = 0) -> dict:
    config = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    if projection:
        config["projection_dim"] = projection
    return config


def _unet_config(arch: str, context_dim: int, pooled_dim: int) -> dict:
    config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=context_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    if arch == "sd2":
        config.update(attention_head_dim=(2, 4), use_linear_projection=True)
    if arch == "sdxl":
        config.update(
            # two layers per block as in SDXL, so kohya's SGM block numbers are those of the real model
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            attention_head_dim=(2, 4),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + pooled_dim,
        )
    return config


VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=64,
)


def build_tiny_components(arch: str = "sd1", seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Random-weight diffusers components of a tiny `arch` model ("sd1", "sd2" with v-prediction, "sdxl")."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer_dir = Path(tokenizer_dir or tempfile.mkdtemp(prefix="lib_smooth_tokenizer_"))
    if not (tokenizer_dir / "vocab.json").is_file():
        write_clip_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    if arch == "sdxl":
        encoders = [
            CLIPTextModel(CLIPTextConfig(**_text_encoder_config(32))),
            CLIPTextModelWithProjection(CLIPTextConfig(**_text_encoder_config(32, projection=32))),
        ]
        context_dim, pooled_dim = 64, 32
    else:
        encoders = [CLIPTextModel(CLIPTextConfig(**_text_encoder_config(32)))]
        context_dim, pooled_dim = 32, 0
    with torch.no_grad():
        for encoder in encoders:
            # A fresh LayerNorm (weight 1, bias 0) makes every token's features average exactly 0; the
            # WebUI's default emphasis rescales by that average and turns the empty prompt into NaN.
            # A trained CLIP's final norm has a bias, so give it one.
            text_model = getattr(encoder, "text_model", encoder)  # transformers 5 dropped the wrapper
            text_model.final_layer_norm.bias.normal_(0.0, 0.5)
    unet = UNet2DConditionModel(**_unet_config(arch, context_dim, pooled_dim))
    with torch.no_grad():
        # A raw random init makes the prediction swing wildly with x_t, and DDIM inversion, which
        # assumes ε(x_{t-1}) ≈ ε(x_t), then diverges; a trained denoiser varies gently. Scaling the
        # output layer gives the random model that gentleness.
        unet.conv_out.weight.mul_(OUTPUT_SCALE)
        unet.conv_out.bias.mul_(OUTPUT_SCALE)
    vae = AutoencoderKL(**VAE_CONFIG)
    with torch.no_grad():
        # Like SD's 0.18215, the scale factor makes latents of typical images unit-variance; a random
        # encoder's raw latents are far smaller, which would shrink everything the tests measure.
        images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        vae.register_to_config(scaling_factor=float(1.0 / vae.encode(images).latent_dist.mode().std()))
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoders": encoders,
        "tokenizers": [tokenizer] * len(encoders),
        "parameterization": "v" if arch == "sd2" else "eps",
        "arch": arch,
    }


def build_tiny_backend(arch: str = "sd1", seed: int = 0, tokenizer_dir: str | Path | None = None) -> DiffusersBackend:
    parts = build_tiny_components(arch, seed, tokenizer_dir)
    return DiffusersBackend(
        parts["unet"],
        parts["vae"],
        parts["text_encoders"],
        parts["tokenizers"],
        _alphas_cumprod(SCHEDULER),
        parts["parameterization"],
        parts["arch"],
    )


def save_diffusers_folder(backend: DiffusersBackend, folder: str | Path) -> Path:
    """Write `backend` as a diffusers pipeline folder that `load_diffusers_folder` (and diffusers) can read."""
    folder = Path(folder)
    sdxl = backend.arch == "sdxl"
    backend.unet_model.save_pretrained(folder / "unet")
    backend.vae.save_pretrained(folder / "vae")
    names = ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"]
    for name, encoder, tokenizer in zip(names, backend.text_encoders, backend.tokenizers):
        encoder.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name.replace("text_encoder", "tokenizer"))
        # vocab.json + merges.txt as well, so older transformers (the WebUI's 4.30) read the folder too.
        write_clip_tokenizer(folder / name.replace("text_encoder", "tokenizer"), pad_token=tokenizer.pad_token)
    scheduler = dict(
        SCHEDULER,
        _class_name="DDIMScheduler",
        prediction_type="v_prediction" if backend.parameterization == "v" else "epsilon",
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
    )
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    pipeline = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    index = {
        "_class_name": pipeline,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    for name in names:
        index[name] = ["transformers", "CLIPTextModelWithProjection" if name == "text_encoder_2" else "CLIPTextModel"]
        index[name.replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def build_full_size_backend(
    arch: str, seed: int = 0, dtype: torch.dtype = torch.float16, tokenizer_dir: str | Path | None = None
) -> DiffusersBackend:
    """A random-weight model at the published SD 1.5 / SD 2.x 768-v / SDXL-base sizes (several GB).

    Only for hosts that accept nothing smaller (the WebUI's SD2/SDXL text encoders have fixed sizes).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from .backends.ldm_layout import unet_config, vae_config
    from .backends.single_file import _PAD_TOKENS, _SCALE_FACTOR, _SD_VAE, _STANDARD_TEXT, _STANDARD_UNET

    tokenizer_dir = Path(tokenizer_dir or tempfile.mkdtemp(prefix="lib_smooth_tokenizer_"))
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target precision: SDXL in fp32 alone is 10 GB
    try:
        unet = UNet2DConditionModel(**unet_config(_STANDARD_UNET[arch], 256))
        with torch.no_grad():
            unet.conv_out.weight.mul_(OUTPUT_SCALE)
            unet.conv_out.bias.mul_(OUTPUT_SCALE)
        vae = AutoencoderKL(**vae_config(dict(_SD_VAE, resolution=_STANDARD_UNET[arch]["image_size"] * 8), _SCALE_FACTOR[arch]))
        classes = [CLIPTextModel, CLIPTextModelWithProjection] if arch == "sdxl" else [CLIPTextModel]
        encoders = [cls(CLIPTextConfig(**config)) for cls, config in zip(classes, _STANDARD_TEXT[arch])]
    finally:
        torch.set_default_dtype(previous)
    tokenizers = [
        CLIPTokenizer.from_pretrained(write_clip_tokenizer(tokenizer_dir / str(i), pad_token=pad), local_files_only=True)
        for i, pad in enumerate(_PAD_TOKENS[arch])
    ]
    return DiffusersBackend(
        unet,
        vae,
        encoders,
        tokenizers,
        _alphas_cumprod(SCHEDULER),
        "v" if arch == "sd2" else "eps",
        arch,
        identity=f"random-{arch}-{seed}",
        dtype=dtype,
    )
