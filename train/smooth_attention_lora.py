"""kohya network module: sd-scripts' `networks.lora` restricted to the attention projections.

The official Smooth-LoRA puts rank-8 LoRA on to_q, to_k, to_v and to_out.0 of both attention layers of
every transformer block and nowhere else (notes: SHI-Labs/Smooth-Diffusion, train_smooth_diffusion.py);
`networks.lora` also adapts proj_in/proj_out and the feed-forward layers. Use it with
`--network_module smooth_attention_lora` (train/ is on sys.path when our trainers run). The file it
writes is a standard kohya LoRA: the WebUI, kohya and lib_smooth load it like any other.
"""

import re

from networks import lora as kohya_lora

ATTENTION_PROJECTION = re.compile(r"_attn[12]_to_(q|k|v|out_0)$")


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    network = kohya_lora.create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=neuron_dropout, **kwargs)
    network.unet_loras = [lora for lora in network.unet_loras if ATTENTION_PROJECTION.search(lora.lora_name)]
    return network


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False, **kwargs):
    return kohya_lora.create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd, for_inference, **kwargs)
