import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lib_smooth.errors import CorruptLoraError, LoraArchitectureError, LoraShapeError, NotALoraError
from lib_smooth.lora_formats import load_lora, parse_lora, save_kohya, sgm_module_name

from helpers import attention_projections, random_lora


def official_file(unet, path, rank=8):
    shapes = {p: tuple(m.weight.shape) for p, m in attention_projections(unet)}
    tensors = {}
    for module_path, (down, up) in random_lora(shapes, rank).items():
        block, proj = module_path.rsplit(".attn", 1)[0], module_path.split(".")[-1] if not module_path.endswith("to_out.0") else "to_out"
        attn = "attn" + module_path.rsplit(".attn", 1)[1].split(".")[0]
        tensors[f"{block}.{attn}.processor.{proj}_lora.down.weight"] = down
        tensors[f"{block}.{attn}.processor.{proj}_lora.up.weight"] = up
    save_file(tensors, str(path))
    return tensors


def test_official_format_converts_to_kohya_with_identical_deltas(sd1, tmp_path):
    tensors = official_file(sd1.unet_model, tmp_path / "smooth_lora.safetensors")
    network = load_lora(tmp_path / "smooth_lora.safetensors", arch="sd1")
    assert network.source_format == "official" and len(network.layers) == len(tensors) // 2
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert name in network.layers and network.layers[name].alpha is None
    original = tensors["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight"]
    up = tensors["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight"]
    assert torch.equal(network.layers[name].delta(), up @ original)  # no alpha → scale 1
    save_kohya(network, tmp_path / "kohya.safetensors")
    converted = load_lora(tmp_path / "kohya.safetensors")
    assert converted.source_format == "kohya" and converted.layers.keys() == network.layers.keys()
    for key, layer in network.layers.items():
        assert converted.layers[key].alpha == layer.rank  # alpha = rank keeps the scale at 1
        assert torch.allclose(converted.layers[key].delta(), layer.delta(), atol=0, rtol=1e-6)
    with pytest.raises(FileExistsError):
        save_kohya(network, tmp_path / "kohya.safetensors")


def test_peft_format_with_text_encoder_and_alpha(sd1, tmp_path):
    te_module = next(m for p, m in sd1.text_encoders[0].named_modules() if p.endswith("layers.0.self_attn.q_proj"))
    te_path = "text_model.encoder.layers.0.self_attn.q_proj"  # the name in LoRA files, whatever transformers calls it
    un_path, un_module = attention_projections(sd1.unet_model)[0]
    g = torch.Generator().manual_seed(3)
    tensors = {
        f"unet.{un_path}.lora_A.weight": torch.randn(2, un_module.weight.shape[1], generator=g),
        f"unet.{un_path}.lora_B.weight": torch.randn(un_module.weight.shape[0], 2, generator=g),
        f"text_encoder.{te_path}.lora_A.weight": torch.randn(2, te_module.weight.shape[1], generator=g),
        f"text_encoder.{te_path}.lora_B.weight": torch.randn(te_module.weight.shape[0], 2, generator=g),
        f"text_encoder.{te_path}.alpha": torch.tensor(1.0),
    }
    save_file(tensors, str(tmp_path / "peft.safetensors"))
    network = load_lora(tmp_path / "peft.safetensors", arch="sd1")
    te_name = "lora_te_" + te_path.replace(".", "_")
    assert network.source_format == "peft" and set(network.layers) == {"lora_unet_" + un_path.replace(".", "_"), te_name}
    expected = tensors[f"text_encoder.{te_path}.lora_B.weight"] @ tensors[f"text_encoder.{te_path}.lora_A.weight"] * 0.5
    assert torch.allclose(network.layers[te_name].delta(), expected)
    save_kohya(network, tmp_path / "kohya.safetensors")
    assert torch.allclose(load_lora(tmp_path / "kohya.safetensors").layers[te_name].delta(), expected)
    before = te_module.weight.clone()
    sd1.apply_lora(network)
    try:
        assert torch.allclose(te_module.weight - before, expected, atol=1e-5)
    finally:
        sd1.remove_lora()
    assert torch.equal(te_module.weight, before)


def snapshot(backend):
    modules = [backend.unet_model, *backend.text_encoders]
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def test_apply_then_remove_restores_weights_bit_for_bit(sd1, tmp_path):
    official_file(sd1.unet_model, tmp_path / "lora.safetensors")
    network = load_lora(tmp_path / "lora.safetensors", arch="sd1")
    before = snapshot(sd1)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    cond = sd1.encode_prompts(["a cat"], 64, 64)
    plain = sd1.unet(x, t, cond)
    path, module = attention_projections(sd1.unet_model)[0]
    sd1.apply_lora(network, 0.5)
    try:
        layer = network.layers["lora_unet_" + path.replace(".", "_")]
        assert torch.allclose(module.weight - before[0][path + ".weight"], 0.5 * layer.delta(), atol=1e-6)
        assert not torch.allclose(sd1.unet(x, t, cond), plain)
        assert sd1.lora_identity.endswith(":0.5")
    finally:
        sd1.remove_lora()
    after = snapshot(sd1)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, after) for k in a)
    assert torch.equal(sd1.unet(x, t, cond), plain) and sd1.lora_identity == ""


def test_sdxl_lora_uses_sgm_names_and_applies_like_the_diffusers_names(tiny_models, tmp_path):
    xl = tiny_models("sdxl")
    shapes = {p: tuple(m.weight.shape) for p, m in attention_projections(xl.unet_model)}
    tensors = {}
    for path, (down, up) in random_lora(shapes, rank=2).items():
        tensors[f"unet.{path}.lora_A.weight"], tensors[f"unet.{path}.lora_B.weight"] = down, up
    te2_path, te2 = next((p, m) for p, m in xl.text_encoders[1].named_modules() if p.endswith("v_proj"))
    tensors[f"text_encoder_2.{te2_path}.lora_A.weight"] = torch.randn(2, te2.weight.shape[1])
    tensors[f"text_encoder_2.{te2_path}.lora_B.weight"] = torch.randn(te2.weight.shape[0], 2)
    save_file(tensors, str(tmp_path / "xl_peft.safetensors"))
    network = load_lora(tmp_path / "xl_peft.safetensors")
    assert network.arch == "sdxl"
    # two layers per level as in SDXL: down level 1, attention 1 → input block 1 + 1·3 + 1
    assert "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k" in network.layers
    assert "lora_te2_" + te2_path.replace(".", "_") in network.layers
    save_kohya(network, tmp_path / "xl_kohya.safetensors")
    before = snapshot(xl)
    xl.apply_lora(load_lora(tmp_path / "xl_kohya.safetensors"))
    merged_kohya = snapshot(xl)
    xl.remove_lora()
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, snapshot(xl)) for k in a)
    xl.apply_lora(network)
    merged_peft = snapshot(xl)
    xl.remove_lora()
    assert all(torch.equal(a[k], b[k]) for a, b in zip(merged_kohya, merged_peft) for k in a)
    assert not torch.equal(merged_kohya[0][next(iter(shapes)) + ".weight"], before[0][next(iter(shapes)) + ".weight"])


def test_sgm_names_of_full_size_sdxl_blocks():
    # kohya's documented SDXL example name, and the other block kinds
    assert sgm_module_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert sgm_module_name("down_blocks.2.attentions.1.proj_in") == "input_blocks_8_1_proj_in"
    assert sgm_module_name("up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2") == "output_blocks_2_1_transformer_blocks_9_ff_net_2"
    assert sgm_module_name("up_blocks.1.resnets.0.conv1") == "output_blocks_3_0_in_layers_2"
    assert sgm_module_name("mid_block.attentions.0.proj_out") == "middle_block_1_proj_out"
    assert sgm_module_name("mid_block.resnets.1.time_emb_proj") == "middle_block_2_emb_layers_1"
    assert sgm_module_name("down_blocks.0.downsamplers.0.conv") == "input_blocks_3_0_op"
    assert sgm_module_name("up_blocks.0.upsamplers.0.conv") == "output_blocks_2_2_conv"
    assert sgm_module_name("up_blocks.2.resnets.0.conv_shortcut") == "output_blocks_6_0_skip_connection"


def test_sdxl_lora_on_sd1_model_is_refused(sd1):
    network = parse_lora(
        {
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2),
        }
    )
    with pytest.raises(LoraArchitectureError, match="SDXL"):
        sd1.apply_lora(network)


def test_shape_mismatch_is_refused_before_any_weight_changes(sd1):
    path, module = attention_projections(sd1.unet_model)[0]
    good = "lora_unet_" + path.replace(".", "_")
    other_path = attention_projections(sd1.unet_model)[1][0]
    tensors = {
        f"{good}.lora_down.weight": torch.ones(2, module.weight.shape[1]),
        f"{good}.lora_up.weight": torch.ones(module.weight.shape[0], 2),
        "lora_unet_" + other_path.replace(".", "_") + ".lora_down.weight": torch.ones(2, 999),
        "lora_unet_" + other_path.replace(".", "_") + ".lora_up.weight": torch.ones(7, 2),
    }
    before = module.weight.clone()
    with pytest.raises(LoraShapeError, match="999"):
        sd1.apply_lora(parse_lora(tensors))
    assert torch.equal(module.weight, before)
    with pytest.raises(LoraShapeError, match="no matching layer"):
        sd1.apply_lora(parse_lora({"lora_unet_nowhere.lora_down.weight": torch.ones(1, 2), "lora_unet_nowhere.lora_up.weight": torch.ones(2, 1)}))


def test_bad_files_raise_clear_errors(tmp_path):
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(NotALoraError, match="no LoRA tensors"):
        load_lora(tmp_path / "checkpoint.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptLoraError, match="truncated or corrupt"):
        load_lora(tmp_path / "truncated.safetensors")
    (tmp_path / "text.safetensors").write_bytes(b"this is not a tensor file at all")
    with pytest.raises(CorruptLoraError):
        load_lora(tmp_path / "text.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(CorruptLoraError, match="no up matrix"):
        load_lora(tmp_path / "half.safetensors")
    with pytest.raises(FileNotFoundError):
        load_lora(tmp_path / "missing.safetensors")


def test_files_that_are_no_lora_say_what_they_are(tmp_path):
    """What users pick by mistake gets a one-line reason, never torch's advice to unpickle with weights_only=False."""
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.png")
    with pytest.raises(NotALoraError, match="picture.png is not a LoRA file: neither safetensors nor a PyTorch checkpoint"):
        load_lora(tmp_path / "picture.png")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CorruptLoraError, match=r"empty \(0 bytes\)"):
        load_lora(tmp_path / "empty.safetensors")
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "config": np.zeros(3)}, tmp_path / "with_objects.pt")
    with pytest.raises(NotALoraError, match="holds Python objects besides tensors") as refusal:
        load_lora(tmp_path / "with_objects.pt")
    assert "weights_only" not in str(refusal.value) and "\n" not in str(refusal.value)
    data = (tmp_path / "with_objects.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptLoraError, match="truncated.pt is not a readable PyTorch checkpoint"):
        load_lora(tmp_path / "truncated.pt")
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4)}, tmp_path / "fine.pt")
    assert set(load_lora(tmp_path / "fine.pt").layers) == {"lora_unet_x"}
