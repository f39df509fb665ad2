"""The Smooth-LoRA shipped for the embedded model, and its plain control."""

import torch

from lib_smooth.backends.shapes_model import PLAIN_LORA, SMOOTH_LORA
from lib_smooth.lora_apply import unet_layout
from lib_smooth.lora_formats import load_lora


def test_the_shipped_loras_say_what_trained_them():
    smooth, plain = load_lora(SMOOTH_LORA), load_lora(PLAIN_LORA)
    assert smooth.source_format == "kohya" and smooth.arch == "sd1"
    assert smooth.metadata["ss_smooth_lambda"] == "1.0" and smooth.metadata["ss_smooth_warm_start"] == "True"
    assert smooth.metadata["ss_smooth_method"] == "vjp" and smooth.metadata["ss_network_dim"] == "8"
    assert plain.metadata["ss_smooth_lambda"] == "0.0"
    assert set(smooth.layers) == set(plain.layers)  # the same layers, trained alike but for the regularizer
    for key in ("ss_seed", "ss_max_train_steps", "ss_learning_rate", "ss_total_batch_size"):
        assert smooth.metadata[key] == plain.metadata[key]


def test_the_smooth_lora_fits_the_embedded_model_under_names_the_webui_reads(shapes_model):
    network = load_lora(SMOOTH_LORA)
    assert not unet_layout(shapes_model.unet_model).hosts_read_diffusers_names
    assert all(name.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")) for name in network.layers)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    cond = shapes_model.encode_prompts(["a large red circle in the centre on a blue background"], 64, 64)
    before = shapes_model.unet(x, t, cond)
    with shapes_model.use_lora(str(SMOOTH_LORA), 1.0) as in_use:  # every layer must find its module, or this raises
        assert in_use.name == SMOOTH_LORA.name
        with_lora = shapes_model.unet(x, t, cond)
    assert (with_lora - before).abs().max() > 1e-3 and torch.equal(shapes_model.unet(x, t, cond), before)
