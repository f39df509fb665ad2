"""End-to-end: train through the real kohya sd-scripts with the Smooth Diffusion regularizer.

Runs only when SD_SCRIPTS_DIR names a v0.10.x checkout; SD_SCRIPTS_PYTHON names the Python that has
sd-scripts' requirements (default: this one). The base model is a random-weight full-size SD 1.5
(sd-scripts only loads the real architecture), built here once, or taken from SMOOTH_TEST_SD15_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
SD_SCRIPTS = os.environ.get("SD_SCRIPTS_DIR")
PYTHON = os.environ.get("SD_SCRIPTS_PYTHON", sys.executable)
pytestmark = pytest.mark.skipif(
    not SD_SCRIPTS,
    reason="SD_SCRIPTS_DIR is not set: point it at a kohya-ss/sd-scripts v0.10.x checkout (and SD_SCRIPTS_PYTHON at its Python) to train for real",
)
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="2")


def build_random_sd15(folder: Path) -> Path:
    """A full-size SD 1.5 diffusers folder with random weights (seed 0) and the real CLIP tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).save_pretrained(folder / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512).save_pretrained(folder / "vae")
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1, "skip_prk_steps": True}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False}))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer

    root = tmp_path_factory.mktemp("sd_scripts")
    write_clip_tokenizer(root / "tokenizer" / "openai_clip-vit-large-patch14")
    images = root / "images"
    images.mkdir()
    for index, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"), ("circle", "green"), ("square", "yellow")]):
        image = Image.new("RGB", (64, 64), "white")
        (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)((16, 16, 48, 48), fill=colour)
        image.save(images / f"{index}.png")
        (images / f"{index}.txt").write_text(f"a {colour} {shape}")
    for name, batch in (("dataset.toml", 1), ("dataset_b2.toml", 2)):
        (root / name).write_text(f'[general]\ncaption_extension = ".txt"\nenable_bucket = false\n\n[[datasets]]\nresolution = 64\n'
                                 f'batch_size = {batch}\n\n  [[datasets.subsets]]\n  image_dir = "{images}"\n  num_repeats = 1\n')
    model = Path(os.environ["SMOOTH_TEST_SD15_DIR"]) if os.environ.get("SMOOTH_TEST_SD15_DIR") else build_random_sd15(root / "sd15")
    return {"root": root, "model": model}


def train(workspace, name, *extra, steps=3, dataset="dataset.toml", script="smooth_train_network.py"):
    out = workspace["root"] / name
    command = [
        PYTHON, str(REPO / "train" / script), "--sd_scripts_dir", SD_SCRIPTS,
        "--pretrained_model_name_or_path", str(workspace["model"]), "--tokenizer_cache_dir", str(workspace["root"] / "tokenizer"),
        "--dataset_config", str(workspace["root"] / dataset), "--resolution", "64", "--max_train_steps", str(steps),
        "--mixed_precision", "no", "--optimizer_type", "AdamW", "--learning_rate", "1e-3", "--seed", "42",
        "--output_dir", str(out), "--output_name", name, "--save_model_as", "safetensors", *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=900)
    result.seconds = time.perf_counter() - started
    result.out = out
    return result


def state(path: Path) -> dict:
    return torch.load(path / "custom_checkpoint_0.pkl", weights_only=False)


@pytest.fixture(scope="module")
def smooth_run(workspace):
    config = workspace["root"] / "smooth.toml"
    config.write_text('[network]\nnetwork_module = "networks.lora"\nnetwork_dim = 4\nnetwork_alpha = 4\n\n'
                      '[smooth]\nsmooth_lambda = 1.0\nsmooth_ema_decay = 0.01\nsmooth_interval = 1\nsmooth_method = "vjp"\n')
    result = train(workspace, "smooth", "--config_file", str(config), "--save_state", "--log_with", "tensorboard",
                   "--logging_dir", str(workspace["root"] / "logs"))
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_lora_has_smooth_metadata(smooth_run):
    with safe_open(str(smooth_run.out / "smooth.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["ss_smooth_lambda"] == "1.0" and metadata["ss_smooth_method"] == "vjp" and metadata["ss_smooth_ema_decay"] == "0.01"
    assert metadata["ss_network_dim"] == "4" and any(k.startswith("lora_unet_") for k in keys)


def test_state_holds_the_moving_target(smooth_run):
    saved = state(smooth_run.out / "smooth-state")
    assert saved["updates"] == 3 and saved["calls"] == 3 and saved["target_a"] > 0


def test_step_logs_carry_the_regularizer(smooth_run, workspace):
    probe = ("import glob, sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
             "tags = set()\nfor path in glob.glob(sys.argv[1] + '/**/events.*', recursive=True):\n"
             "    acc = EventAccumulator(path); acc.Reload(); tags |= set(acc.Tags()['scalars'])\nprint(sorted(tags))\n")
    result = subprocess.run([PYTHON, "-c", probe, str(workspace["root"] / "logs")], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    for tag in ("reg/variation_mean", "reg/target_a", "reg/penalty", "loss/current"):
        assert tag in result.stdout


def test_resume_restores_the_regularizer_state(smooth_run, workspace):
    before = state(smooth_run.out / "smooth-state")
    result = train(workspace, "smooth", "--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "4",
                   "--resume", str(smooth_run.out / "smooth-state"), "--save_state", steps=4)
    assert result.returncode == 0, result.stderr[-4000:]
    after = state(result.out / "smooth-state")
    # sd-scripts' --resume restores weights and optimizer but (without --skip_until_initial_step) runs
    # max_train_steps again: 4 more regularized steps on top of the 3 restored ones, not a fresh 4
    assert after["updates"] == before["updates"] + 4 and after["calls"] == before["calls"] + 4
    assert after["target_a"] >= before["target_a"] * 0.99  # a ← 0.99·a + 0.01·r continued from the saved a


def test_penalty_changes_what_is_learned(smooth_run, workspace):
    plain = train(workspace, "plain", "--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "4", "--smooth_lambda", "0")
    assert plain.returncode == 0, plain.stderr[-4000:]
    with safe_open(str(plain.out / "plain.safetensors"), "pt") as a, safe_open(str(smooth_run.out / "smooth.safetensors"), "pt") as b:
        differences = [float((a.get_tensor(k) - b.get_tensor(k)).abs().max()) for k in a.keys() if k.endswith("lora_up.weight")]
    assert max(differences) > 0  # same seed and data: only the regularizer differs


def test_produced_lora_loads_through_lib_smooth(smooth_run, workspace):
    from lib_smooth.backends.diffusers_backend import load_model
    from lib_smooth.lora_formats import load_lora

    network = load_lora(smooth_run.out / "smooth.safetensors")
    assert network.source_format == "kohya" and network.arch == "sd1"
    backend = load_model(workspace["model"])
    before = {k: v.clone() for k, v in backend.unet_model.state_dict().items()}
    backend.apply_lora(network, 1.0)
    changed = sum(not torch.equal(v, backend.unet_model.state_dict()[k]) for k, v in before.items())
    backend.remove_lora()
    assert changed > 0 and all(torch.equal(v, backend.unet_model.state_dict()[k]) for k, v in before.items())


def test_attention_only_network_and_jvp_with_batch_shrink(workspace):
    result = train(workspace, "fd", "--network_module", "smooth_attention_lora", "--network_dim", "4", "--network_alpha", "4",
                   "--network_train_unet_only", "--smooth_method", "jvp_fd", "--smooth_batch_shrink", "2", steps=2, dataset="dataset_b2.toml")
    assert result.returncode == 0, result.stderr[-4000:]
    with safe_open(str(result.out / "fd.safetensors"), "pt") as handle:
        modules = {k.split(".")[0] for k in handle.keys()}
        assert handle.metadata()["ss_smooth_method"] == "jvp_fd"
    assert len(modules) == 32 * 4  # q, k, v, out of both attentions of all 16 transformer blocks, as the official LoRA
    assert all(m.startswith("lora_unet_") and "_attn" in m for m in modules)


@pytest.mark.parametrize("flag, message", [(["--xformers"], "xformers"), (["--smooth_interval", "0"], "smooth_interval")])
def test_bad_settings_are_refused_before_loading(workspace, flag, message):
    result = train(workspace, "refused", "--network_module", "networks.lora", *flag, steps=1)
    assert result.returncode != 0 and message in result.stderr + result.stdout
    assert "Loading" not in result.stdout + result.stderr or result.seconds < 30
