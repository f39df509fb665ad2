"""The shipped kohya TOMLs start as shipped: no option pair that sd-scripts v0.10.1 or the regularizer refuses."""

from pathlib import Path

import pytest
import tomllib

from lib_smooth.regularizer import UnsupportedTrainingSetting, check_training_settings

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
TRAINING = sorted(path for path in CONFIGS.glob("*.toml") if path.name != "dataset.toml")


def flat(path: Path) -> dict:
    """A kohya config's options: sections only group them (sd-scripts flattens them the same way)."""
    values = {}
    for value in tomllib.loads(path.read_text()).values():
        values.update(value if isinstance(value, dict) else {})
    return values


def incompatible(config: dict, dataset: dict) -> list:
    """The pairs sd-scripts v0.10.1 asserts on at start-up or the regularizer refuses."""
    problems = []
    subsets = [subset for data in dataset.get("datasets", []) for subset in data.get("subsets", [])]
    if config.get("cache_latents"):
        for option in ("random_crop", "color_aug"):
            if any(subset.get(option, dataset.get("general", {}).get(option)) for subset in subsets):
                problems.append(f"cache_latents with {option}")
    smooth = {
        "method": config.get("smooth_method", "vjp"),
        "xformers": bool(config.get("xformers")),
        "mem_eff_attn": bool(config.get("mem_eff_attn")),
        "torch_compile": bool(config.get("torch_compile")),
        "sdpa_with_checkpointing": bool(config.get("sdpa") and config.get("gradient_checkpointing")),
    }
    try:
        check_training_settings(**smooth, mixed_precision=config.get("mixed_precision", "no"))
    except UnsupportedTrainingSetting as error:
        problems.append(str(error))
    return problems


def test_every_config_is_checked():
    assert {path.name for path in TRAINING} >= {"sd15_paper.toml", "sd15_single_gpu.toml", "sdxl.toml"}


@pytest.mark.parametrize("path", TRAINING, ids=lambda path: path.name)
def test_shipped_configs_have_no_incompatible_options(path):
    config = flat(path)
    dataset = tomllib.loads((CONFIGS.parents[1] / config["dataset_config"]).read_text())
    assert incompatible(config, dataset) == []


def test_the_check_finds_the_pairs_that_broke_the_readme_command():
    dataset = {"datasets": [{"subsets": [{"random_crop": True}]}]}
    assert incompatible({"cache_latents": True}, dataset) == ["cache_latents with random_crop"]
    problems = incompatible({"sdpa": True, "gradient_checkpointing": True}, {})
    assert len(problems) == 1 and "sdpa together with gradient checkpointing" in problems[0]
    assert incompatible({"sdpa": True, "gradient_checkpointing": True, "smooth_method": "jvp_fd"}, {}) == []
