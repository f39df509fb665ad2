"""The embedded small Stable-Diffusion-1 model trained on :mod:`lab.shapes` ("shapes-sd1").

Real SD1 architecture at small widths: an 8× VAE with 4 latent channels (64 px images → 8×8 latents),
a UNet2DConditionModel with cross-attention at both of its levels, and a CLIP text encoder with the
real 49,408-token tokenizer. ``lab/recipe/train_shapes_model.py`` trains it from these configs; the weights
ship in fp16 as a diffusers folder (``lib_smooth/models/shapes-sd1``) and as a WebUI single file
(``lib_smooth/models/Stable-diffusion``). GroupNorm has 32 groups everywhere because the original (ldm) code
the WebUI runs hard-codes 32. Widths are 64, not 32: with one channel per group the last norm before
an output layer removes each channel's mean over the image, so a flat colour cannot pass through
(a 32-wide VAE stalled at an L1 error of 0.44 where the 64-wide one reached 0.22 in 200 steps).
"""

from __future__ import annotations

from pathlib import Path

from .clip_tokenizer import VOCAB_SIZE

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DIFFUSERS_DIR = MODELS_DIR / "shapes-sd1"
# Laid out like the WebUI's own models/Stable-diffusion folder: copy its contents there.
CHECKPOINT = MODELS_DIR / "Stable-diffusion" / "shapes-sd1.safetensors"
# The WebUI builds the text encoder from the yaml's `version` folder (config and tokenizer, no weights);
# a relative path resolves against the WebUI's working directory, its root.
WEBUI_TEXT_ENCODER_DIR = "models/Stable-diffusion/shapes-sd1-clip"
DESCRIPTION = (
    "shapes-sd1: the embedded small SD1-architecture model trained on procedurally drawn coloured shapes "
    "(64 px, captions like 'a large red circle in the centre on a blue background', and partial ones like "
    "'a red shape' that leave the rest to the noise)"
)
IMAGE_SIZE = 64
# Two captions of its vocabulary (lab/shapes.py writes them all) and one of its training images, rendered
# by lab.shapes.render: what the demo interpolates between and inverts.
CIRCLE_CAPTION = "a large red circle in the centre on a blue background"
SQUARE_CAPTION = "a large green square in the centre on a yellow background"
# A partial caption: shape, size, position and background are left to the noise, as a real SD prompt
# leaves pose and layout; what the demo's seed-to-seed interpolation runs under.
PARTIAL_CAPTION = "a red shape"
DEMO_IMAGE = MODELS_DIR / "demo" / "red-circle.png"
# The LoRAs trained for it (lab/reproduction/train_shipped_loras.py): a Smooth-LoRA and its plain control,
# as kohya files; copy them into the WebUI's models/Lora.
LORA_DIR = MODELS_DIR / "Lora"
SMOOTH_LORA = LORA_DIR / "shapes-sd1-smooth.safetensors"
PLAIN_LORA = LORA_DIR / "shapes-sd1-plain.safetensors"

TEXT_ENCODER_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=48,
    intermediate_size=192,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=48,
    attention_head_dim=8,
    norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(64, 64, 64, 64),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=IMAGE_SIZE,
)
