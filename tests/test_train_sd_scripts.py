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
    """A full-size random SD 1.5 diffusers folder, built by sd-scripts' own Python (tests/sd15_builder.py):
    a text encoder saved by another transformers major version is silently re-initialised when loaded."""
    from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer

    result = subprocess.run(
        [PYTHON, "-m", "sd15_builder", str(folder)], capture_output=True, text=True, env=dict(ENV, PYTHONPATH=str(REPO / "tests")), timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    write_clip_tokenizer(folder / "tokenizer")
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
        (root / name).write_text(
            f'[general]\ncaption_extension = ".txt"\nenable_bucket = false\n\n[[datasets]]\nresolution = 64\n'
            f'batch_size = {batch}\n\n  [[datasets.subsets]]\n  image_dir = "{images}"\n  num_repeats = 1\n'
        )
    model = Path(os.environ["SMOOTH_TEST_SD15_DIR"]) if os.environ.get("SMOOTH_TEST_SD15_DIR") else build_random_sd15(root / "sd15")
    return {"root": root, "model": model}


def train(workspace, name, *extra, steps=3, dataset="dataset.toml", script="smooth_train_network.py"):
    out = workspace["root"] / name
    command = [
        PYTHON,
        str(REPO / "train" / script),
        "--sd_scripts_dir",
        SD_SCRIPTS,
        "--pretrained_model_name_or_path",
        str(workspace["model"]),
        "--tokenizer_cache_dir",
        str(workspace["root"] / "tokenizer"),
        "--dataset_config",
        str(workspace["root"] / dataset),
        "--resolution",
        "64",
        "--max_train_steps",
        str(steps),
        "--mixed_precision",
        "no",
        "--optimizer_type",
        "AdamW",
        "--learning_rate",
        "1e-3",
        "--seed",
        "42",
        "--output_dir",
        str(out),
        "--output_name",
        name,
        "--save_model_as",
        "safetensors",
        *extra,
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
    config.write_text(
        '[network]\nnetwork_module = "networks.lora"\nnetwork_dim = 4\nnetwork_alpha = 4\n\n'
        '[smooth]\nsmooth_lambda = 1.0\nsmooth_ema_decay = 0.01\nsmooth_interval = 1\nsmooth_method = "vjp"\n'
    )
    result = train(
        workspace,
        "smooth",
        "--config_file",
        str(config),
        "--save_state",
        "--log_with",
        "tensorboard",
        "--logging_dir",
        str(workspace["root"] / "logs"),
    )
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
    probe = (
        "import glob, sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "tags = set()\nfor path in glob.glob(sys.argv[1] + '/**/events.*', recursive=True):\n"
        "    acc = EventAccumulator(path); acc.Reload(); tags |= set(acc.Tags()['scalars'])\nprint(sorted(tags))\n"
    )
    result = subprocess.run([PYTHON, "-c", probe, str(workspace["root"] / "logs")], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    for tag in ("reg/variation_mean", "reg/target_a", "reg/penalty", "loss/current"):
        assert tag in result.stdout


def test_resume_restores_the_regularizer_state(smooth_run, workspace):
    before = state(smooth_run.out / "smooth-state")
    # decay 1e-6 on the resumed run: a restored target stays where it was; a fresh one would be ≈ 4e-6·r
    result = train(
        workspace,
        "smooth",
        "--network_module",
        "networks.lora",
        "--network_dim",
        "4",
        "--network_alpha",
        "4",
        "--resume",
        str(smooth_run.out / "smooth-state"),
        "--save_state",
        "--smooth_ema_decay",
        "1e-6",
        steps=4,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    after = state(result.out / "smooth-state")
    # sd-scripts' --resume restores weights and optimizer but (without --skip_until_initial_step) runs
    # max_train_steps again: 4 more regularized steps on top of the 3 restored ones, not a fresh 4
    assert after["updates"] == before["updates"] + 4 and after["calls"] == before["calls"] + 4
    assert after["target_a"] == pytest.approx(before["target_a"], rel=1e-4)


def test_penalty_changes_what_is_learned(smooth_run, workspace):
    """λ = 1e-8 runs the regularizer (same random directions, same batches) with a negligible penalty:
    what differs from the λ = 1 run is the penalty's gradient alone, not extra random draws."""
    faint = train(
        workspace,
        "faint",
        "--network_module",
        "networks.lora",
        "--network_dim",
        "4",
        "--network_alpha",
        "4",
        "--smooth_lambda",
        "1e-8",
        "--smooth_ema_decay",
        "0.01",
        "--smooth_method",
        "vjp",
    )
    assert faint.returncode == 0, faint.stderr[-4000:]
    with safe_open(str(faint.out / "faint.safetensors"), "pt") as a, safe_open(str(smooth_run.out / "smooth.safetensors"), "pt") as b:
        differences = [float((a.get_tensor(k) - b.get_tensor(k)).abs().max()) for k in a.keys() if k.endswith("lora_up.weight")]
    assert max(differences) > 1e-6


def test_produced_lora_loads_through_lib_smooth(smooth_run, workspace):
    from lib_smooth.backends import load_model
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
    result = train(
        workspace,
        "fd",
        "--network_module",
        "smooth_attention_lora",
        "--network_dim",
        "4",
        "--network_alpha",
        "4",
        "--network_train_unet_only",
        "--smooth_method",
        "jvp_fd",
        "--smooth_batch_shrink",
        "2",
        steps=2,
        dataset="dataset_b2.toml",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with safe_open(str(result.out / "fd.safetensors"), "pt") as handle:
        modules = {k.split(".")[0] for k in handle.keys()}
        assert handle.metadata()["ss_smooth_method"] == "jvp_fd"
    assert len(modules) == 32 * 4  # q, k, v, out of both attentions of all 16 transformer blocks, as the official LoRA
    assert all(m.startswith("lora_unet_") and "_attn" in m for m in modules)


@pytest.mark.parametrize("flag, message", [(["--xformers"], "xformers"), (["--smooth_interval", "0"], "smooth_interval")])
def test_bad_settings_are_refused_before_loading(workspace, flag, message):
    # a model path that does not exist: had the model been loaded first, that would be the error
    result = train(dict(workspace, model=workspace["root"] / "no-such-model"), "refused", "--network_module", "networks.lora", *flag, steps=1)
    assert result.returncode != 0 and message in result.stderr + result.stdout
    assert "no-such-model" not in result.stderr + result.stdout


def shipped_dataset(workspace, name: str, batch: int) -> Path:
    """train/configs/dataset.toml with only the test's images, 64 px and `batch` per step: its own settings
    (random crop, no flip, no caption dropout) stay as shipped."""
    import tomllib

    shipped = tomllib.loads((REPO / "train" / "configs" / "dataset.toml").read_text())
    subset = dict(shipped["datasets"][0]["subsets"][0], image_dir=str(workspace["root"] / "images"))
    lines = ["[general]"] + [f"{k} = {json.dumps(v)}" for k, v in shipped["general"].items()]
    lines += ["[[datasets]]", "resolution = 64", f"batch_size = {batch}", "  [[datasets.subsets]]"]
    lines += [f"  {k} = {json.dumps(v)}" for k, v in subset.items()]
    path = workspace["root"] / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("config", ["sd15_paper.toml", "sd15_single_gpu.toml"])
def test_shipped_configs_train_a_step_as_shipped(workspace, config):
    """Each shipped SD 1.x TOML as it is (bf16, its network, checkpointing and regularizer settings), with
    only the model, the images (dataset.toml's own settings kept, random crop included), one step and no
    gradient accumulation (the paper's 8 micro-steps would only repeat the same step)."""
    dataset = shipped_dataset(workspace, f"shipped-{config}", batch=1)
    out = workspace["root"] / f"out-{config}"
    command = [
        PYTHON,
        str(REPO / "train" / "smooth_train_network.py"),
        "--sd_scripts_dir",
        SD_SCRIPTS,
        "--config_file",
        str(REPO / "train" / "configs" / config),
        "--pretrained_model_name_or_path",
        str(workspace["model"]),
        "--tokenizer_cache_dir",
        str(workspace["root"] / "tokenizer"),
        "--dataset_config",
        str(dataset),
        "--resolution",
        "64",
        "--max_train_steps",
        "1",
        "--gradient_accumulation_steps",
        "1",
        "--output_dir",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=1200, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert list(out.glob("*.safetensors")), result.stdout[-2000:]


@pytest.mark.skipif(
    not os.environ.get("SMOOTH_TEST_SDXL"),
    reason="set SMOOTH_TEST_SDXL=1 to also train a full-size random SDXL through sd-scripts (≈ 20 GB of RAM, several minutes)",
)
def test_sdxl_trainer_with_checkpointing_and_batch_shrink(workspace):
    """The SDXL trainer for real, with train/configs/sdxl.toml as shipped (bf16, gradient checkpointing
    switched to non-reentrant, cached text-encoder outputs, its network): a full-size random SDXL base
    (fp16 single file), two steps at 64 px, and batch shrink, whose subset forward needs SDXL's per-sample
    size conditioning (per_sample_batch_keys) cut to the subset."""
    from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer

    root = workspace["root"]
    checkpoint = root / "sdxl-random.safetensors"
    if not checkpoint.exists():
        # built in a child process so its ≈ 7 GB are free again before sd-scripts loads the model
        build = (
            "import sys\nfrom pathlib import Path\nfrom lib_smooth.testing import build_full_size_backend\n"
            "from lib_smooth.backends.ldm_layout import save_single_file\n"
            "save_single_file(build_full_size_backend('sdxl', tokenizer_dir=Path(sys.argv[2])), Path(sys.argv[1]))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", build, str(checkpoint), str(root / "sdxl-tok")],
            capture_output=True,
            text=True,
            env=dict(ENV, PYTHONPATH=str(REPO)),
            timeout=1800,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    tokenizers = root / "sdxl-tokenizers"
    write_clip_tokenizer(tokenizers / "openai_clip-vit-large-patch14")
    write_clip_tokenizer(tokenizers / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k", pad_token="!")
    out = root / "sdxl"
    command = [
        PYTHON,
        str(REPO / "train" / "smooth_sdxl_train_network.py"),
        "--sd_scripts_dir",
        SD_SCRIPTS,
        "--config_file",
        str(REPO / "train" / "configs" / "sdxl.toml"),
        "--pretrained_model_name_or_path",
        str(checkpoint),
        "--tokenizer_cache_dir",
        str(tokenizers),
        "--dataset_config",
        str(shipped_dataset(workspace, "sdxl-dataset.toml", batch=2)),
        "--resolution",
        "64",
        "--max_train_steps",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--smooth_batch_shrink",
        "2",
        "--output_dir",
        str(out),
        "--output_name",
        "sdxl",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=3600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    with safe_open(str(out / "sdxl.safetensors"), "pt") as handle:
        metadata, modules = handle.metadata(), {key.split(".")[0] for key in handle.keys()}
    assert metadata["ss_smooth_batch_shrink"] == "2" and metadata["ss_smooth_lambda"] == "1.0"
    assert any(name.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_")) for name in modules)  # SGM names, as kohya writes SDXL
    from lib_smooth.lora_formats import load_lora

    assert load_lora(out / "sdxl.safetensors").arch == "sdxl"
