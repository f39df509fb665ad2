"""Single-file checkpoints: tiny models survive save_single_file → load_model exactly, and bad files fail clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from lib_smooth.backends import (
    load_model,  # noqa: E402
    single_file,  # noqa: E402
)
from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer  # noqa: E402
from lib_smooth.backends.ldm_layout import component_names, save_single_file, to_ldm  # noqa: E402
from lib_smooth.errors import ModelFilesError  # noqa: E402
from lib_smooth.testing import build_tiny_backend, save_diffusers_folder  # noqa: E402

ARCHS = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(autouse=True)
def tokenizer_cache(tmp_path_factory, monkeypatch) -> None:
    """Checkpoints without a yaml get their tokenizer from the user cache: keep it inside the test's temp dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def saved(tokenizer_dir, tmp_path_factory) -> dict:
    """Per arch: the tiny backend and its single file (with yaml and text-encoder folders)."""
    out = {}
    for arch in ARCHS:
        backend = build_tiny_backend(arch, seed=1, tokenizer_dir=tokenizer_dir)
        folder = tmp_path_factory.mktemp(arch)
        out[arch] = backend, save_single_file(backend, folder / "model.safetensors", folder / "text_encoders")
    return out


def assert_same_outputs(original, loaded) -> None:
    prompts = ["a photo of a cat", ""]
    cond, cond_loaded = original.encode_prompts(prompts, 64, 64), loaded.encode_prompts(prompts, 64, 64)
    if isinstance(cond, dict):
        assert cond.keys() == cond_loaded.keys()
        for key in cond:
            assert torch.allclose(cond[key], cond_loaded[key], atol=1e-6), key
    else:
        assert torch.allclose(cond, cond_loaded, atol=1e-6)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([999, 10])
    assert torch.allclose(original.unet(latents, t, cond), loaded.unet(latents, t, cond), atol=1e-6)
    assert torch.allclose(original.decode_latents(latents), loaded.decode_latents(latents), atol=1e-6)
    images = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    assert torch.allclose(original.encode_images(images), loaded.encode_images(images), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_exact(saved, arch):
    original, path = saved[arch]
    loaded = load_model(path)
    assert (loaded.arch, loaded.parameterization) == (arch, original.parameterization)
    assert torch.equal(loaded.alphas_cumprod, original.alphas_cumprod)
    assert loaded.identity == original.identity  # same weights, same identity, whatever the file format
    assert_same_outputs(original, loaded)


def test_file_uses_the_webui_layout(saved):
    sd1, sd2, sdxl = (load_file(str(saved[arch][1])) for arch in ARCHS)
    assert sd1["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in sd1
    assert "model.diffusion_model.output_blocks.2.1.proj_in.weight" in sd1
    # SD2 reads OpenCLIP's penultimate layer: the file has one block more than the 2-layer encoder.
    assert sd2["cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight"].shape == (96, 32)
    assert "model.diffusion_model.label_emb.0.0.weight" in sdxl
    assert "conditioner.embedders.1.model.text_projection" in sdxl
    assert "parameterization: v" in saved["sd2"][1].with_suffix(".yaml").read_text()
    assert "network_config" in saved["sdxl"][1].with_suffix(".yaml").read_text()
    for arch in ARCHS:  # sgm's UNetModel defaults are the opposite; the WebUI refuses SDXL without them
        unet = yaml.safe_load(saved[arch][1].with_suffix(".yaml").read_text())["model"]["params"]
        unet = (unet.get("network_config") or unet["unet_config"])["params"]
        assert unet["use_spatial_transformer"] is True and unet["legacy"] is False, arch


def test_prediction_argument_wins_over_yaml(saved):
    assert load_model(saved["sd1"][1], prediction="v").parameterization == "v"


def test_ckpt_and_config_dir(saved, tmp_path):
    original, path = saved["sd1"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(path)), "global_step": 1}, ckpt)
    shutil.copy(path.with_suffix(".yaml"), ckpt.with_suffix(".yaml"))
    assert_same_outputs(original, load_model(ckpt))

    bare = shutil.copy(path, tmp_path / "bare.safetensors")  # no yaml beside it: architecture from config_dir
    loaded = load_model(bare, config_dir=save_diffusers_folder(original, tmp_path / "diffusers"))
    assert loaded.identity == original.identity


def test_text_encoder_named_relative_to_the_webui_root(saved, tmp_path):
    """A yaml may name its text-encoder folder relative to the WebUI's root (where the WebUI resolves it):
    the file still loads from <root>/models/Stable-diffusion, wherever the working directory is."""
    original, _ = saved["sd1"]
    folder = tmp_path / "webui" / "models" / "Stable-diffusion"
    path = save_single_file(original, folder / "m.safetensors", folder / "m-clip", named_as="models/Stable-diffusion/m-clip")
    assert "version: models/Stable-diffusion/m-clip/text_encoder" in path.with_suffix(".yaml").read_text()
    assert_same_outputs(original, load_model(path))


def test_missing_file(tmp_path):
    with pytest.raises(ModelFilesError, match="missing .*nothing.safetensors"):
        single_file.load_single_file(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelFilesError, match="nothing.ckpt"):
        load_model(tmp_path / "nothing.ckpt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"weight": torch.randn(4, 4)}, str(path))
    with pytest.raises(ModelFilesError, match=r"random.safetensors is not a Stable Diffusion checkpoint.*model\.diffusion_model"):
        load_model(path)


def test_truncated_and_garbage_files(saved, tmp_path):
    data = saved["sd1"][1].read_bytes()
    for name, content in [("cut.safetensors", data[: len(data) // 2]), ("text.safetensors", b"hello"), ("cut.ckpt", b"PK\x03\x04" + b"\0" * 64)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFilesError, match=rf"{name} could not be read .*truncated or damaged"):
            load_model(tmp_path / name)


def test_missing_architecture_is_explained(saved, tmp_path):
    bare = shutil.copy(saved["sd1"][1], tmp_path / "tiny.safetensors")  # tiny sizes, no yaml: published SD1.5 does not fit
    with pytest.raises(ModelFilesError, match=r"does not fit the published sd1 architecture.*tiny\.yaml.*config_dir"):
        load_model(bare)
    yaml_text = saved["sd1"][1].with_suffix(".yaml").read_text()
    (tmp_path / "tiny.yaml").write_text(yaml_text.replace(str(saved["sd1"][1].parent.resolve()), "/nonexistent"))
    with pytest.raises(ModelFilesError, match=r"missing /nonexistent/text_encoders/text_encoder/config.json"):
        load_model(bare)


REAL_CHECKPOINT_SHAPES = {  # tensor names and shapes of the released SD1.5, SD2.1 and SDXL-base files
    "sd1": {
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    },
    "sd2": {
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
    },
    "sdxl": {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
    },
}


@pytest.mark.parametrize("arch", ARCHS)
def test_published_architectures_match_released_files(arch, tmp_path_factory):
    architecture = single_file._published(arch, tmp_path_factory.getbasetemp() / "model.yaml")
    shapes = {}
    for module, names in component_names(arch, *single_file._empty_models(architecture, arch)):
        for key, tensor in module.state_dict().items():
            if key in names:
                shape = tuple(to_ldm(tensor, names[key]).shape)
                shapes[names[key].key] = shape if names[key].part is None else (3 * shape[0], *shape[1:])
    for key, shape in REAL_CHECKPOINT_SHAPES[arch].items():
        assert shapes.get(key) == shape, key
