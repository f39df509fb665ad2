"""End-to-end: the extension inside a real AUTOMATIC1111 WebUI v1.10.1, driven over HTTP.

Runs only when WEBUI_DIR names an installed WebUI (WEBUI_PYTHON: its Python, default
$WEBUI_DIR/venv/bin/python). The test builds a tiny SD1 checkpoint with its .yaml, links this
repository into extensions/, starts the WebUI API-only on a free loopback port with its own Lora
folder, and afterwards removes what it put there — only that: files the user had are left alone.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    call,
    check_routes_without_lora,
    check_tab_comparisons,
    drawn,
    free_port,
    image,
    interpolation_comparison_layout,
    interrupted,
    pasted_txt2img,
    png_info,
    stop,
)

REPO = Path(__file__).resolve().parents[1]
WEBUI = os.environ.get("WEBUI_DIR")
pytestmark = pytest.mark.skipif(
    not WEBUI,
    reason="WEBUI_DIR is not set: point it at an installed AUTOMATIC1111 WebUI v1.10.1 "
    "(README, Tests: WEBUI_DIR / WEBUI_PYTHON) to test the extension for real",
)


def tiny_lora(backend, path: Path) -> None:
    """A strong random LoRA on the tiny model's attention projections, under the ldm names the WebUI maps."""
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya, sgm_module_name

    g = torch.Generator().manual_seed(0)
    layers = {}
    for name, module in backend.unet_model.named_modules():
        if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", name):
            out_features, in_features = module.weight.shape
            ldm = sgm_module_name(name, layers_per_block=1, up_blocks_with_attention=frozenset({1}))
            layers["lora_unet_" + ldm] = LoraLayer(torch.randn(4, in_features, generator=g) * 0.5, torch.randn(out_features, 4, generator=g) * 0.5)
    save_kohya(LoraNetwork(layers, "kohya"), path)


def foreign_loras(backend, folder: Path) -> None:
    """The tiny LoRA under diffusers-style names (what the WebUI reads by SD 1.5's numbering), and two
    LoRAs made for other models: SD 1.5-sized layers under this model's names, and an SDXL one."""
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, diffusers_unet_path, load_lora, save_kohya, sgm_module_name

    ldm = load_lora(folder / "smooth-e2e.safetensors")
    by_ldm = {
        "lora_unet_" + sgm_module_name(name, 1, frozenset({1})): "lora_unet_" + name.replace(".", "_")
        for name, _ in backend.unet_model.named_modules()
        if name
    }
    save_kohya(LoraNetwork({by_ldm[name]: layer for name, layer in ldm.layers.items()}, "kohya"), folder / "diffusers-names.safetensors")
    assert all(diffusers_unet_path(name) for name in load_lora(folder / "diffusers-names.safetensors").layers)
    big = {name: LoraLayer(torch.ones(4, 768), torch.ones(320, 4)) for name in ldm.layers if name.endswith(("attn2_to_k", "attn2_to_v"))}
    save_kohya(LoraNetwork(big, "kohya"), folder / "sd15-sized.safetensors")
    save_kohya(
        LoraNetwork({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj": LoraLayer(torch.ones(4, 1280), torch.ones(1280, 4))}, "kohya"),
        folder / "for-sdxl.safetensors",
    )


def write_hf_cache(home: Path) -> None:
    """The Hugging Face cache entry the WebUI asks for CLIP ViT-L/14 (SD1 text config, SDXL's first
    encoder): tokenizer files and a text config, offline (notes: webui-offline.md §3)."""
    from lib_smooth.backends.clip_tokenizer import write_clip_tokenizer

    entry = home / "hub" / "models--openai--clip-vit-large-patch14"
    snapshot = write_clip_tokenizer(entry / "snapshots" / "offline")
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text("offline")
    (home / "hub" / "version.txt").write_text("1")
    text = dict(
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
        projection_dim=768,
    )
    (snapshot / "config.json").write_text(
        json.dumps({"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 768, "text_config": text})
    )


def launch(root: Path, checkpoint: Path, *extra: str, ui: bool = False):
    """Start the WebUI API-only (or with its UI and API) on a free port; returns (process, base URL, log file) once our routes answer."""
    port = free_port()
    env = dict(
        os.environ,
        HF_HOME=str(root / "hf"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",  # the log is read while the WebUI runs
    )
    python = os.environ.get("WEBUI_PYTHON", str(Path(WEBUI) / "venv" / "bin" / "python"))
    log_path = root / f"webui-{port}.log"
    process = subprocess.Popen(
        [
            python,
            "launch.py",
            "--skip-prepare-environment",
            "--skip-install",
            "--skip-torch-cuda-test",
            "--skip-python-version-check",
            "--skip-version-check",
            "--use-cpu",
            "all",
            "--no-half",
            "--precision",
            "full",
            "--disable-nan-check",
            "--no-download-sd-model",
            "--ckpt",
            str(checkpoint),
            "--lora-dir",
            str(root / "loras"),
            "--server-name",
            "127.0.0.1",
            "--port",
            str(port),
            "--api" if ui else "--nowebui",
            # settings and UI state files of the test's own: the user's are neither read (saved slider bounds would
            # hide ours) nor written
            "--ui-settings-file",
            str(root / "config.json"),
            "--ui-config-file",
            str(root / "ui-config.json"),
            *extra,
        ],
        cwd=WEBUI,
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/smooth-diffusion/v1/version", timeout=2)
            return process, base, log_path
        except urllib.error.HTTPError as error:
            if error.code == 401:
                return process, base, log_path  # our route answers, refusing without credentials (--api-auth)
            time.sleep(1)  # 404: the app is up but the extension's routes are not registered yet
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the WebUI exited:\n" + log_path.read_text()[-3000:])
            time.sleep(1)
    process.kill()
    raise RuntimeError("the WebUI did not answer in 180 s:\n" + log_path.read_text()[-3000:])


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A tiny checkpoint, a Lora folder with one LoRA, and this repository linked into extensions/."""
    from lib_smooth.backends.ldm_layout import save_single_file
    from lib_smooth.testing import build_tiny_backend

    root = tmp_path_factory.mktemp("webui")
    write_hf_cache(root / "hf")
    backend = build_tiny_backend("sd1", seed=0)
    # a name of this run's own, so no file of the user's can be overwritten or removed
    checkpoint = save_single_file(
        backend, Path(WEBUI) / "models" / "Stable-diffusion" / f"smooth-e2e-tiny-{os.getpid()}.safetensors", tokenizer_and_config_dir=root / "text"
    )
    (root / "loras").mkdir()
    tiny_lora(backend, root / "loras" / "smooth-e2e.safetensors")
    foreign_loras(backend, root / "loras")
    link = Path(WEBUI) / "extensions" / f"sd-webui-smooth-diffusion-e2e-{os.getpid()}"
    link.symlink_to(REPO)
    try:
        yield root, checkpoint
    finally:
        link.unlink()
        for suffix in (".safetensors", ".yaml"):
            checkpoint.with_suffix(suffix).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def webui(installed):
    process, base, log = launch(*installed)
    try:
        yield {"base": base, "log": log}
    finally:
        stop(process)


def txt2img(webui) -> np.ndarray:
    status, body = call(
        webui,
        "/sdapi/v1/txt2img",
        {"prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "cfg_scale": 7, "seed": 1},
    )
    assert status == 200, body
    return image(body["images"][0])


def test_version_and_loras(webui):
    assert call(webui, "/smooth-diffusion/v1/version")[1]["version"]
    assert "smooth-e2e" in call(webui, "/smooth-diffusion/v1/loras")[1]["loras"]


def test_size_defaults_to_the_loaded_models_native_size(webui):
    status, body = call(webui, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a red circle", "frames": 2, "steps": 2})
    assert status == 200, body
    assert image(body["frames"][0]).shape == (64, 64, 3)  # the tiny checkpoint's yaml: 8 latent cells, not 512 px
    assert (body["sidecar"]["settings"]["width"], body["sidecar"]["settings"]["height"]) == (64, 64)


def test_interpolation_between_seeds(webui):
    status, body = call(
        webui,
        "/smooth-diffusion/v1/interpolate",
        {"prompt_a": "a red circle", "seed_a": 1, "seed_b": 2, "frames": 5, "steps": 6, "width": 64, "height": 64},
    )
    assert status == 200, body
    frames = [image(f) for f in body["frames"]]
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3)
    assert not np.array_equal(frames[0], frames[-1])
    assert body["sidecar"]["settings"]["frames"] == 5 and body["sidecar"]["model_hash"]


def test_inversion_edit_and_null_text(webui):
    status, body = call(webui, "/smooth-diffusion/v1/invert", {"image": drawn(), "prompt": "an orange circle", "steps": 6, "width": 64, "height": 64})
    assert status == 200, body
    assert image(body["reconstruction"]).shape == (64, 64, 3) and body["metrics"]["psnr"] > 0 and 0 <= body["metrics"]["ssim"] <= 1
    status, body = call(
        webui,
        "/smooth-diffusion/v1/edit",
        {
            "image": drawn(),
            "prompt": "an orange circle",
            "target_prompt": "a green square",
            "steps": 6,
            "width": 64,
            "height": 64,
            "inversion": "null-text",
            "null_text_steps": 2,
        },
    )
    assert status == 200, body
    assert image(body["edited"]).shape == (64, 64, 3) and body["sidecar"]["settings"]["inversion"] == "null-text"


def test_lora_changes_results_and_weights_come_back(webui):
    before = txt2img(webui)
    request = {"prompt_a": "a red circle", "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 4, "width": 64, "height": 64}
    plain = call(webui, "/smooth-diffusion/v1/interpolate", request)[1]
    status, smooth = call(webui, "/smooth-diffusion/v1/interpolate", dict(request, lora="smooth-e2e", lora_weight=1.0))
    assert status == 200, smooth
    assert smooth["sidecar"]["lora"]["name"] == "smooth-e2e" and len(smooth["sidecar"]["lora"]["sha256"]) == 64
    assert any(not np.array_equal(image(a), image(b)) for a, b in zip(plain["frames"], smooth["frames"]))
    assert np.array_equal(txt2img(webui), before)  # same seed, same pixels: the model's weights are as before


def test_istd_with_and_without_lora(webui):
    status, body = call(
        webui,
        "/smooth-diffusion/v1/istd",
        {"prompts": ["a cat", "a dog"], "points": 4, "steps": 3, "width": 64, "height": 64, "lora": "smooth-e2e", "compare_without_lora": True},
    )
    assert status == 200, body
    assert len(body["istd"]["per_prompt"]) == 2 and body["istd"]["resolution"] == [64, 64]
    assert body["istd"]["mean"]["distances"] != body["istd_without_lora"]["mean"]["distances"]
    assert set(body["explanations"]) >= {"istd", "normalized_istd", "mean_step"}


def test_routes_also_run_without_the_lora(webui):
    check_routes_without_lora(webui, "smooth-e2e", {"width": 64, "height": 64})


def test_bad_requests_get_clear_4xx_and_the_server_stays_up(webui):
    status, body = call(webui, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a", "frames": 1})
    assert status == 422 and "frames must be between 2 and 240" in body["detail"]
    status, body = call(webui, "/smooth-diffusion/v1/invert", {"image": "not an image", "prompt": "x"})
    assert status == 422 and "base64" in body["detail"]
    status, body = call(webui, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a", "lora": "no-such-lora"})
    assert status == 400 and "not found" in body["detail"]
    for request, message in (
        ({"prompt_a": "a", "frames": "3"}, "frames must be of type int; got '3'"),
        ({"prompt_a": "a", "steps": 1000}, "steps must be between 1 and 999"),
        ({"prompt_a": "a", "seed_a": -1}, "between 0 and 4294967295"),
    ):
        status, body = call(webui, "/smooth-diffusion/v1/interpolate", request)
        assert status == 422 and message in body["detail"], body
    status, body = call(webui, "/smooth-diffusion/v1/istd", {"prompts": "a cat"})
    assert status == 422 and "List[str]" in body["detail"]
    fields = call(webui, "/smooth-diffusion/v1/fields")[1]
    assert fields["interpolate"]["seed_a"]["low"] == 0 and fields["istd"]["seed"]["low"] == 0  # limits of 0 are listed too
    assert call(webui, "/smooth-diffusion/v1/version")[0] == 200


def test_an_image_far_too_large_is_refused_before_decoding(webui):
    bomb = io.BytesIO()
    Image.new("1", (16000, 16000)).save(bomb, format="PNG")  # 256 Mpx of one colour: a few hundred kB as PNG
    status, body = call(webui, "/smooth-diffusion/v1/invert", {"image": base64.b64encode(bomb.getvalue()).decode(), "prompt": "x"})
    assert status == 422 and "megapixels" in body["detail"], body
    assert call(webui, "/smooth-diffusion/v1/version")[0] == 200


def test_accordion_applies_the_lora_through_alwayson_scripts(webui):
    before = txt2img(webui)
    payload = {
        "prompt": "a photo of a cat",
        "width": 64,
        "height": 64,
        "steps": 4,
        "sampler_name": "Euler",
        "cfg_scale": 7,
        "seed": 1,
        "alwayson_scripts": {"smooth diffusion": {"args": [True, "smooth-e2e", 1.0]}},
    }
    status, body = call(webui, "/sdapi/v1/txt2img", payload)
    assert status == 200, body
    assert 'Smooth-LoRA: "smooth-e2e:1"' in json.loads(body["info"])["infotexts"][0]  # the WebUI quotes values with colons
    assert not np.array_equal(image(body["images"][0]), before)
    assert np.array_equal(txt2img(webui), before)  # without the accordion the LoRA is gone again


def test_a_pasted_infotext_restores_the_accordion_and_draws_the_same_image(webui):
    """A result's infotext read back by the WebUI's own parser (PNG Info, the paste buttons) sets the
    accordion to the same LoRA and weight, and generating again gives the same image: the prompt pasted
    with its <lora:…> tag and the accordion switched on apply the LoRA once, not twice."""
    from lib_smooth.webui.generation import accordion_from_infotext

    base = {"prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "cfg_scale": 7, "seed": 3}
    status, first = call(webui, "/sdapi/v1/txt2img", dict(base, alwayson_scripts={"smooth diffusion": {"args": [True, "smooth-e2e", 0.5]}}))
    assert status == 200, first
    parameters = png_info(webui, json.loads(first["info"])["infotexts"][0])
    restored = accordion_from_infotext(parameters)
    assert restored == ("smooth-e2e", 0.5), parameters
    status, second = call(webui, "/sdapi/v1/txt2img", pasted_txt2img(parameters, [True, *restored]))
    assert status == 200, second
    assert np.array_equal(image(second["images"][0]), image(first["images"][0]))
    status, plain = call(webui, "/sdapi/v1/txt2img", base)
    assert not np.array_equal(image(plain["images"][0]), image(first["images"][0]))  # the LoRA did act
    assert accordion_from_infotext(png_info(webui, json.loads(plain["info"])["infotexts"][0])) is None  # pasting a plain result turns it off


def test_img2img_smooth_inversion_script(webui):
    payload = {
        "init_images": [drawn()],
        "prompt": "a green square",
        "width": 64,
        "height": 64,
        "steps": 6,
        "cfg_scale": 5,
        "seed": 1,
        "denoising_strength": 1.0,
        "script_name": "smooth inversion",
        "script_args": ["an orange circle", 0.8, "ddim"],
    }
    status, body = call(webui, "/sdapi/v1/img2img", payload)
    assert status == 200, body
    assert image(body["images"][0]).shape == (64, 64, 3)
    infotext = json.loads(body["info"])["infotexts"][0]
    assert "Smooth inversion: ddim (whole schedule; denoising strength not used)" in infotext, infotext
    assert "Smooth source prompt: an orange circle" in infotext and "Denoising strength" not in infotext


@pytest.mark.parametrize(
    "script_args, reason",
    [
        (["a circle", 0.8, "magic"], "inversion must be one of ddim"),
        (["a circle", "most", "ddim"], "switch_ratio must be of type float"),
        (["a circle", 1.5, "ddim"], "switch_ratio must be between 0 and 1"),
    ],
)
def test_img2img_smooth_inversion_refuses_bad_script_args(webui, script_args, reason):
    payload = {
        "init_images": [drawn()],
        "prompt": "a green square",
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 1,
        "script_name": "smooth inversion",
        "script_args": script_args,
    }
    logged_before = webui["log"].read_text()
    status, body = call(webui, "/sdapi/v1/img2img", payload)
    assert status == 422 and reason in body["detail"], body
    # answered as an HTTP error: the WebUI prints a traceback ("API error: …") for any other exception
    assert "API error" not in webui["log"].read_text()[len(logged_before) :]


def test_img2img_smooth_inversion_interrupted_answers_409(webui):
    payload = {
        "init_images": [drawn()],
        "prompt": "a green square",
        "width": 128,
        "height": 128,
        "steps": 400,
        "seed": 1,
        "script_name": "smooth inversion",
        "script_args": ["an orange circle", 0.8, "ddim"],
    }
    (status, body), _, _ = interrupted(webui, "/sdapi/v1/img2img", payload, after_steps=3)
    assert status == 409 and "interrupted" in body["detail"], body
    assert call(webui, "/smooth-diffusion/v1/version")[0] == 200


def test_routes_honour_api_auth(installed, webui):
    process, base, _ = launch(*installed, "--api-auth", "smooth:secret")
    try:
        request = urllib.request.Request(base + "/smooth-diffusion/v1/version")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        request.add_header("Authorization", "Basic " + base64.b64encode(b"smooth:secret").decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        stop(process)


@pytest.mark.skipif(
    not os.environ.get("SMOOTH_E2E_FULL_SIZE"),
    reason="set SMOOTH_E2E_FULL_SIZE=1 to also check full-size SD2 768-v and SDXL models (GBs of disk, SDXL ≈ 15 GB RAM)",
)
@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_full_size_sd2_v_and_sdxl(installed, tmp_path, arch):
    from lib_smooth.backends.ldm_layout import save_single_file
    from lib_smooth.testing import build_full_size_backend

    root, _ = installed
    checkpoint = Path(WEBUI) / "models" / "Stable-diffusion" / f"smooth-e2e-{arch}-{os.getpid()}.safetensors"
    save_single_file(build_full_size_backend(arch, tokenizer_dir=tmp_path / "tok"), checkpoint)
    try:
        process, base, _ = launch(root, checkpoint)
        webui = {"base": base}
        try:
            status, body = call(
                webui,
                "/smooth-diffusion/v1/interpolate",
                {"prompt_a": "a red circle", "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 3, "width": 64, "height": 64},
            )
            assert status == 200, body
            assert len(body["frames"]) == 3
            status, body = call(
                webui,
                "/smooth-diffusion/v1/invert",
                {"image": drawn(), "prompt": "a circle", "steps": 3, "width": 64, "height": 64, "inversion": "null-text", "null_text_steps": 2},
            )
            assert status == 200, body
            status, body = call(webui, "/smooth-diffusion/v1/istd", {"prompts": ["a cat"], "points": 3, "steps": 2, "width": 64, "height": 64})
            assert status == 200, body
            # prompts over 75 tokens: the SD2 (OpenCLIP) and SDXL (two encoders, pooled vector) conditionings
            status, body = call(
                webui,
                "/smooth-diffusion/v1/interpolate",
                {"prompt_a": LONG_PROMPT, "prompt_b": "a cat", "negative_prompt": LONG_PROMPT, "frames": 3, "steps": 2, "width": 64, "height": 64},
            )
            assert status == 200, body
        finally:
            stop(process)
    finally:
        for suffix in (".safetensors", ".yaml"):
            checkpoint.with_suffix(suffix).unlink(missing_ok=True)


def test_embedded_shapes_model_loads_and_draws_what_lib_smooth_draws(installed):
    """The committed shapes-sd1 single file, copied into models/Stable-diffusion as the README says, loads
    in the WebUI, and the WebUI's own DDIM sampler draws the image lib_smooth draws for the same prompt
    and seed (same noise, same timestep grid, same guidance): one model, two hosts."""
    import shutil

    from lab import shapes
    from lib_smooth.backends import open_model
    from lib_smooth.backends.shapes_model import CHECKPOINT, WEBUI_TEXT_ENCODER_DIR
    from lib_smooth.ddim import guided_eps, sample
    from lib_smooth.images import tensor_to_pils
    from lib_smooth.interpolate import seed_noise

    root, _ = installed
    target = Path(WEBUI) / "models" / "Stable-diffusion"
    clip = target / Path(WEBUI_TEXT_ENCODER_DIR).name
    # copy only what is not there yet, and remove only what was copied: a user's installed copy stays
    copied = [shutil.copy(source, target) for source in (CHECKPOINT, CHECKPOINT.with_suffix(".yaml")) if not (target / source.name).exists()]
    copied_clip = not clip.exists()
    if copied_clip:
        shutil.copytree(CHECKPOINT.parent / clip.name, clip)
    spec = shapes.ShapeSpec("circle", "red", "blue", "large", "in the centre")
    backend = open_model()[0]
    cond, uncond = backend.encode_prompts([spec.caption], 64, 64), backend.encode_prompts([""], 64, 64)
    expected = tensor_to_pils(
        backend.decode_latents(sample(guided_eps(backend, cond, uncond, 5.0), seed_noise(3, (1, 4, 8, 8)), backend.alphas_cumprod, 25))
    )[0]
    try:
        process, base, _ = launch(root, target / CHECKPOINT.name)
        webui = {"base": base}
        try:
            status, body = call(
                webui,
                "/sdapi/v1/txt2img",
                {"prompt": spec.caption, "width": 64, "height": 64, "steps": 25, "sampler_name": "DDIM", "cfg_scale": 5, "seed": 3},
            )
            assert status == 200, body
            drawn_by_webui = image(body["images"][0]).astype(np.float64)
            assert np.abs(drawn_by_webui - np.asarray(expected, dtype=np.float64)).mean() < 2.0  # of 255
            status, body = call(
                webui,
                "/smooth-diffusion/v1/interpolate",
                {"prompt_a": spec.caption, "seed_a": 3, "seed_b": 4, "frames": 3, "steps": 25, "guidance": 5, "width": 64, "height": 64},
            )
            assert status == 200, body
            assert np.abs(image(body["frames"][0]).astype(np.float64) - drawn_by_webui).mean() < 2.0
            # a prompt over 75 tokens (no commas, so the WebUI's comma backtracking does not move the split):
            # both hosts encode it in two 77-token windows and draw the same picture
            long = " ".join([spec.caption] * 8)
            cond = backend.encode_prompts([long], 64, 64)
            assert cond.shape[1] == 154
            latent = sample(guided_eps(backend, cond, uncond, 5.0), seed_noise(3, (1, 4, 8, 8)), backend.alphas_cumprod, 25)
            expected_long = np.asarray(tensor_to_pils(backend.decode_latents(latent))[0], dtype=np.float64)
            status, body = call(
                webui,
                "/sdapi/v1/txt2img",
                {"prompt": long, "width": 64, "height": 64, "steps": 25, "sampler_name": "DDIM", "cfg_scale": 5, "seed": 3},
            )
            assert status == 200, body
            assert np.abs(image(body["images"][0]).astype(np.float64) - expected_long).mean() < 2.0
            # the Smooth-LoRA shipped for it, copied into the Lora folder as README says: the WebUI's frames
            # are lib_smooth's frames
            from lib_smooth.backends.shapes_model import SMOOTH_LORA
            from lib_smooth.jobs import run_interpolate
            from lib_smooth.requests import InterpolateRequest

            shutil.copy(SMOOTH_LORA, root / "loras" / SMOOTH_LORA.name)
            request = {"prompt_a": spec.caption, "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 10, "guidance": 5.0}
            status, body = call(webui, "/smooth-diffusion/v1/interpolate", dict(request, lora=SMOOTH_LORA.stem))
            assert status == 200, body
            by_lib = run_interpolate(backend, InterpolateRequest(**request, lora=str(SMOOTH_LORA))).frames
            plain = run_interpolate(backend, InterpolateRequest(**request)).frames
            for webui_frame, lib_frame, plain_frame in zip(body["frames"], by_lib, plain):
                webui_frame = image(webui_frame).astype(np.float64)
                assert np.abs(webui_frame - np.asarray(lib_frame, dtype=np.float64)).mean() < 2.0
                assert np.abs(np.asarray(lib_frame, dtype=np.float64) - np.asarray(plain_frame, dtype=np.float64)).max() > 0
        finally:
            stop(process)
    finally:
        for path in copied:
            Path(path).unlink(missing_ok=True)
        if copied_clip:
            shutil.rmtree(clip, ignore_errors=True)


def test_interrupt_stops_a_job_within_a_step(webui):
    job = {"prompt_a": "a red circle", "seed_a": 1, "seed_b": 2, "frames": 64, "steps": 200, "width": 128, "height": 128, "batch_size": 1}
    (status, body), seconds, _ = interrupted(webui, "/smooth-diffusion/v1/interpolate", job, after_steps=3)
    assert status == 409 and "interrupted" in body["detail"]
    assert seconds < 10  # 64 frames × 200 steps would take minutes
    assert call(webui, "/smooth-diffusion/v1/version")[0] == 200


LONG_PROMPT = ", ".join(["a large red circle in the centre on a blue background"] * 9)  # ≈ 110 tokens: two 77-token chunks


def test_prompts_over_75_tokens_work_in_every_route(webui):
    size = {"steps": 3, "width": 64, "height": 64}
    for route, body in (
        ("interpolate", {"prompt_a": LONG_PROMPT, "prompt_b": "a green square", "negative_prompt": LONG_PROMPT, "frames": 3, **size}),
        ("interpolate", {"prompt_a": "a green square", "seed_a": 1, "seed_b": 2, "frames": 3, "negative_prompt": LONG_PROMPT, **size}),
        ("invert", {"image": drawn(), "prompt": LONG_PROMPT, **size}),
        (
            "edit",
            {"image": drawn(), "prompt": "an orange circle", "target_prompt": LONG_PROMPT, "inversion": "null-text", "null_text_steps": 1, **size},
        ),
        ("istd", {"prompts": [LONG_PROMPT, "a cat"], "points": 3, **size}),
    ):
        status, answer = call(webui, f"/smooth-diffusion/v1/{route}", body)
        assert status == 200, (route, answer)
    payload = {
        "init_images": [drawn()],
        "prompt": LONG_PROMPT,
        "negative_prompt": "blurry",
        "width": 64,
        "height": 64,
        "steps": 4,
        "cfg_scale": 5,
        "seed": 1,
        "denoising_strength": 1.0,
        "script_name": "smooth inversion",
        "script_args": [LONG_PROMPT, 0.8, "ddim"],
    }
    status, answer = call(webui, "/sdapi/v1/img2img", payload)
    assert status == 200, answer


def test_image_fields_never_read_files_on_the_server(webui, tmp_path):
    path = tmp_path / "on-the-server.png"
    Image.new("RGB", (64, 64), "red").save(path)
    answers = [call(webui, "/smooth-diffusion/v1/invert", {"image": str(name), "prompt": "x"}) for name in (path, tmp_path / "missing.png")]
    assert [status for status, _ in answers] == [422, 422]
    assert answers[0][1]["detail"] == answers[1][1]["detail"] and "base64" in answers[0][1]["detail"]


@pytest.mark.parametrize("lora, reason", [("sd15-sized", "made for another model"), ("for-sdxl", "is for SDXL")])
def test_a_lora_for_another_model_is_refused(webui, lora, reason):
    status, body = call(
        webui, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a red circle", "frames": 3, "steps": 2, "width": 64, "height": 64, "lora": lora}
    )
    assert status == 400 and reason in body["detail"], body


def test_one_lora_file_gives_the_same_frames_in_the_webui_and_in_lib_smooth(webui, installed):
    """The tiny UNet has one layer per level: under diffusers-style names the WebUI alone would put the
    LoRA on other layers (SD 1.5's numbering); both files must draw what lib_smooth draws."""
    from lib_smooth.jobs import run_interpolate
    from lib_smooth.requests import InterpolateRequest
    from lib_smooth.testing import build_tiny_backend

    root, _ = installed
    backend = build_tiny_backend("sd1", seed=0)
    request = {"prompt_a": "a red circle", "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 6, "guidance": 5.0, "width": 64, "height": 64}
    plain = [image(f).astype(np.float64) for f in call(webui, "/smooth-diffusion/v1/interpolate", request)[1]["frames"]]
    for name in ("smooth-e2e", "diffusers-names"):
        status, body = call(webui, "/smooth-diffusion/v1/interpolate", dict(request, lora=name))
        assert status == 200, body
        by_webui = [image(f).astype(np.float64) for f in body["frames"]]
        by_lib = run_interpolate(backend, InterpolateRequest(**request, lora=str(root / "loras" / f"{name}.safetensors"))).frames
        for webui_frame, lib_frame, plain_frame in zip(by_webui, by_lib, plain):
            assert np.abs(webui_frame - np.asarray(lib_frame, dtype=np.float64)).mean() < 2.0, name  # of 255
            assert np.abs(webui_frame - plain_frame).mean() > 5.0, name  # and the LoRA does change them


def test_accordion_refuses_what_it_cannot_apply_and_never_applies_twice(webui):
    base = {"prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "cfg_scale": 7, "seed": 1}
    for args, reason in (
        ([True, "no-such-lora", 1.0], "not found"),
        ([True, "smooth-e2e", "heavy"], "lora_weight must be of type float"),
        ([True, "sd15-sized", 1.0], "made for another model"),
    ):
        status, body = call(webui, "/sdapi/v1/txt2img", dict(base, alwayson_scripts={"smooth diffusion": {"args": args}}))
        assert status != 200 and reason in json.dumps(body), (args, body)
    once = call(webui, "/sdapi/v1/txt2img", dict(base, alwayson_scripts={"smooth diffusion": {"args": [True, "smooth-e2e", 1.0]}}))[1]
    pasted = dict(base, prompt=base["prompt"] + " <lora:smooth-e2e:1>", alwayson_scripts={"smooth diffusion": {"args": [True, "smooth-e2e", 1.0]}})
    status, body = call(webui, "/sdapi/v1/txt2img", pasted)
    assert status == 200, body
    assert np.array_equal(image(body["images"][0]), image(once["images"][0]))


def test_inversion_under_medvram_goes_through_the_low_vram_wrappers(installed, webui):
    """--medvram wraps first_stage_model.encode to move the VAE where it is needed; inverting through it
    gives exactly the numbers of a plain launch (on CPU the code path is what can be checked)."""
    body = {"image": drawn(), "prompt": "an orange circle", "steps": 4, "width": 64, "height": 64}
    status, plain = call(webui, "/smooth-diffusion/v1/invert", body)
    assert status == 200, plain
    process, base, _ = launch(*installed, "--medvram")
    try:
        status, medvram = call({"base": base}, "/smooth-diffusion/v1/invert", body)
    finally:
        stop(process)
    assert status == 200, medvram
    assert medvram["metrics"]["mse"] == pytest.approx(plain["metrics"]["mse"], rel=1e-6)
    assert np.array_equal(image(medvram["reconstruction"]), image(plain["reconstruction"]))


@pytest.fixture(scope="module")
def webui_ui(installed):
    """The WebUI with its UI, saving the tab's results into the test's own folder; yields its base URL,
    its gradio /config and that folder."""
    root, checkpoint = installed
    results = root / "ui-outputs"
    (root / "config.json").write_text(json.dumps({"smooth_diffusion_outdir": str(results)}))
    process, base, _ = launch(root, checkpoint, ui=True)
    try:
        with urllib.request.urlopen(base + "/config", timeout=60) as response:
            config = json.loads(response.read())
        yield {"base": base, "config": config, "results": results}
    finally:
        stop(process)
        (root / "config.json").unlink(missing_ok=True)


def test_the_tab_builds_with_the_request_models_limits_and_an_interrupt_per_panel(webui_ui):
    """The full UI (gradio 3.41): every slider of the tab takes its bounds from the request model the API
    and the CLI validate with, each panel has its Interrupt button, and the run without the LoRA appears,
    when asked for, right under the LoRA run's frames."""
    import dataclasses

    from lib_smooth.requests import EditRequest, InterpolateRequest, IstdRequest

    config = webui_ui["config"]
    components = [c.get("props", {}) for c in config["components"]]
    by_label = {}
    for props in components:
        if props.get("elem_id", "") and str(props.get("elem_id")).startswith("smooth_diffusion"):
            by_label.setdefault(props.get("label"), []).append(props)
    labels = {props.get("label") for props in components}
    for cls, name, label in (
        (InterpolateRequest, "frames", "Frames"),
        (InterpolateRequest, "steps", "DDIM steps"),
        (IstdRequest, "points", "Points per sequence (paper: 11)"),
        (IstdRequest, "pairs", "Noise pairs per prompt"),
        (EditRequest, "switch_ratio", "Switch threshold r (target prompt for the last r of the steps)"),
        (InterpolateRequest, "guidance", "Guidance"),
        (InterpolateRequest, "lora_weight", "LoRA weight"),
    ):
        meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
        sliders = [p for p in components if p.get("label") == label and "minimum" in p]
        assert sliders, label
        for props in sliders:
            assert (props["minimum"], props["maximum"]) == (meta["low"], meta["high"]), (label, props)
    ids = {props.get("elem_id") for props in components}
    assert {"smooth_diffusion_interpolate_interrupt", "smooth_diffusion_invert_interrupt", "smooth_diffusion_istd_interrupt"} <= ids
    assert any(str(i).endswith("_refresh") and "smooth" in str(i) for i in ids)  # the accordion's LoRA list can be rescanned
    assert "Width (0: model's native size)" in labels
    assert interpolation_comparison_layout(config) == {"follows_frames": True, "hidden_at_start": True, "toggled_by_checkbox": True}


def test_the_tabs_comparison_runs_the_same_job_without_the_lora(webui_ui):
    """'Also without the LoRA' in the Interpolation and Inversion panels, pressed as in the browser: both
    runs are shown with a figures row each (the LoRA makes them differ), and both are saved."""
    check_tab_comparisons(webui_ui, "smooth-e2e")


def test_a_lora_added_after_start_up_is_found_without_a_refresh(webui, installed):
    import shutil

    root, _ = installed
    late = root / "loras" / f"added-late-{os.getpid()}.safetensors"
    shutil.copy(root / "loras" / "smooth-e2e.safetensors", late)
    try:
        status, body = call(webui, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a red circle", "frames": 2, "steps": 2, "lora": late.stem})
        assert status == 200, body
        assert body["sidecar"]["lora"]["name"] == late.stem
    finally:
        late.unlink()
