import shutil

import pytest
import torch

from lib_smooth.backends import load_model
from lib_smooth.errors import ModelFilesError
from lib_smooth.testing import save_diffusers_folder


@pytest.mark.parametrize("arch, parameterization", [("sd1", "eps"), ("sd2", "v"), ("sdxl", "eps")])
def test_folder_round_trip(tiny_models, tmp_path, arch, parameterization):
    original = tiny_models(arch)
    loaded = load_model(save_diffusers_folder(original, tmp_path / arch))
    assert (loaded.arch, loaded.parameterization, loaded.identity) == (arch, parameterization, original.identity)
    assert torch.allclose(loaded.alphas_cumprod, original.alphas_cumprod)
    cond = loaded.encode_prompts(["a photo of a cat"], 64, 64)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([321])
    expected = original.unet(x, t, original.encode_prompts(["a photo of a cat"], 64, 64))
    assert torch.allclose(loaded.unet(x, t, cond), expected, atol=1e-5)


def test_sdxl_conditioning_holds_context_pooled_vector_and_sizes(tiny_models):
    cond = tiny_models("sdxl").encode_prompts(["a cat", "a dog"], 96, 64)
    assert cond["context"].shape == (2, 77, 64)  # both encoders' hidden states side by side (32 + 32)
    assert cond["text_embeds"].shape == (2, 32)
    assert cond["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]] * 2  # (height, width) original, crop, target


def test_sd1_tokenizer_is_the_real_clip_one(sd1):
    ids = sd1.tokenizers[0]("a photo of a cat, masterpiece").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 267, 12066, 49407]
    assert len(sd1.tokenizers[0]) == 49408


def test_missing_files_are_named(tiny_models, tmp_path):
    folder = save_diffusers_folder(tiny_models("sd1"), tmp_path / "model")
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(ModelFilesError, match=r"tokenizer.*model_index.json and the unet"):
        load_model(folder)
    with pytest.raises(ModelFilesError, match="missing .*nothing-here"):
        load_model(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFilesError, match="model_index.json"):
        load_model(tmp_path / "empty")
