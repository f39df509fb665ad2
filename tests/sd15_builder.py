"""``python -m sd15_builder FOLDER``: the weights and configs of a full-size SD 1.5 diffusers folder with
random weights (seed 0), for the sd-scripts tests; the tokenizer is written beside them by the caller.
Run by sd-scripts' Python so that its diffusers and transformers write what they will read (no
pytest or lib_smooth import here: that Python has neither)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def build(folder: Path) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    # sample_size: sd-scripts' own UNet refuses a config without it (64 latent cells = 512 px)
    UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=512,
    ).save_pretrained(folder / "vae")
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "PNDMScheduler",
                "num_train_timesteps": 1000,
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "prediction_type": "epsilon",
                "steps_offset": 1,
                "skip_prk_steps": True,
            }
        )
    )
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "PNDMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        )
    )
    return folder


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
