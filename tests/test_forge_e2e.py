"""End-to-end: the extension inside a real WebUI Forge, driven over HTTP.

Runs only when FORGE_DIR names an installed lllyasviel/stable-diffusion-webui-forge (checked: commit
dfdcbab6, 2025-06-26, gradio 4.40, pydantic 2; FORGE_PYTHON: its Python, default
$FORGE_DIR/venv/bin/python; Forge needs repositories/huggingface_guess). Forge recognises a checkpoint
by its layer widths, so the test builds a random-weight SD 1.5 of the published size (2.1 GB, own name,
in models/Stable-diffusion), a Lora folder of its own, links this repository into extensions/, and
starts Forge offline on the CPU (--always-cpu) on a free loopback port. Every job's pixels are compared
with lib_smooth's on the same weights. Afterwards only what the test made is removed.
FORGE_E2E_FULL_SIZE=1 adds full-size SD 2.x 768-v and SDXL checkpoints (SDXL: 7 GB of disk, ≈ 17 GB of RAM).
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
FORGE = os.environ.get("FORGE_DIR")
pytestmark = pytest.mark.skipif(not FORGE, reason="FORGE_DIR is not set: point it at an installed WebUI Forge to test the extension there")
LONG_PROMPT = ", ".join(["a large red circle in the centre on a blue background"] * 9)  # ≈ 110 tokens: two 77-token chunks
SIZE = {"width": 64, "height": 64}


def attention_lora(backend, path: Path, scale: float = 0.2) -> None:
    """A random LoRA on every attention projection, under the kohya names both hosts read for SD 1.5."""
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya

    g = torch.Generator().manual_seed(0)
    layers = {}
    for name, module in backend.unet_model.named_modules():
        if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", name):
            out_features, in_features = module.weight.shape
            down, up = torch.randn(4, in_features, generator=g) * scale, torch.randn(out_features, 4, generator=g) * scale
            layers["lora_unet_" + name.replace(".", "_")] = LoraLayer(down, up)
    save_kohya(LoraNetwork(layers, "kohya"), path)


def foreign_loras(folder: Path) -> None:
    """LoRAs made for other models: an SDXL one, an SD 2-sized one, one whose layers SD 1.5 lacks."""
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya

    def write(name, layers):
        save_kohya(LoraNetwork(layers, "kohya"), folder / f"{name}.safetensors")

    write("for-sdxl", {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj": LoraLayer(torch.ones(4, 1280), torch.ones(1280, 4))})
    write("sd2-sized", {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": LoraLayer(torch.ones(4, 1024), torch.ones(320, 4))})
    write("elsewhere", {"lora_unet_input_blocks_40_1_proj_in": LoraLayer(torch.ones(4, 320), torch.ones(320, 4))})


def launch(root: Path, checkpoint: Path, *extra: str, ui: bool = False):
    """Start Forge API-only (or with its UI) on a free port; returns (process, base URL) once our routes answer."""
    port = free_port()
    env = dict(
        os.environ,
        HF_HOME=str(root / "hf"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",  # the log is read while Forge runs
    )
    python = os.environ.get("FORGE_PYTHON", str(Path(FORGE) / "venv" / "bin" / "python"))
    log = root / f"forge-{port}.log"
    command = [
        python,
        "launch.py",
        "--skip-prepare-environment",
        "--skip-install",
        "--skip-python-version-check",
        "--skip-torch-cuda-test",
        "--skip-version-check",
        "--always-cpu",
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
        "--ui-settings-file",
        str(root / "config.json"),
        "--ui-config-file",
        str(root / "ui-config.json"),
        *extra,
    ]
    process = subprocess.Popen(command, cwd=FORGE, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/smooth-diffusion/v1/version", timeout=2)
            return process, base, log
        except urllib.error.HTTPError as error:
            if error.code == 401:
                return process, base, log  # our route answers, refusing without credentials (--api-auth)
            time.sleep(1)
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("Forge exited:\n" + log.read_text()[-3000:])
            time.sleep(1)
    process.kill()
    raise RuntimeError("Forge did not answer in 240 s:\n" + log.read_text()[-3000:])


def remove_checkpoint(checkpoint: Path) -> None:
    """The test's own checkpoint and what Forge may have made of it (a failed load renames it .corrupted)."""
    for path in (checkpoint, checkpoint.with_suffix(".yaml"), checkpoint.with_name(checkpoint.name + ".corrupted")):
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A random full-size SD 1.5 (and the same weights in lib_smooth, fp32), a Lora folder, the extension linked."""
    from lib_smooth.backends.diffusers_backend import DiffusersBackend
    from lib_smooth.backends.ldm_layout import save_single_file
    from lib_smooth.testing import build_full_size_backend

    root = tmp_path_factory.mktemp("forge")
    built = build_full_size_backend("sd1", tokenizer_dir=root / "tokenizer")
    checkpoint = Path(FORGE) / "models" / "Stable-diffusion" / f"smooth-e2e-sd15-{os.getpid()}.safetensors"
    link = Path(FORGE) / "extensions" / f"sd-webui-smooth-diffusion-e2e-{os.getpid()}"
    try:
        save_single_file(built, checkpoint)
        (root / "loras").mkdir()
        attention_lora(built, root / "loras" / "smooth-e2e.safetensors")
        foreign_loras(root / "loras")
        link.symlink_to(REPO)
        # the same weights at full precision, as Forge holds them on the CPU
        state = {"root": root, "checkpoint": checkpoint}
        state["backend"] = DiffusersBackend(
            built.unet_model,
            built.vae,
            built.text_encoders,
            built.tokenizers,
            built.alphas_cumprod,
            "eps",
            "sd1",
            identity="random-sd1",
            dtype=torch.float32,
        )
        yield state
    finally:
        if link.is_symlink():
            link.unlink()
        remove_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def forge(installed):
    process, base, log = launch(installed["root"], installed["checkpoint"])
    try:
        yield {"base": base, "log": log}
    finally:
        stop(process)


def assert_same_pixels(by_forge: np.ndarray, by_lib) -> None:
    """Forge and lib_smooth on the same fp32 weights: equal up to rounding (a few pixels one level off)."""
    difference = np.abs(by_forge - np.asarray(by_lib, dtype=np.float64))
    assert difference.mean() < 0.05 and difference.max() <= 2, (difference.mean(), difference.max())


def txt2img(forge, **extra) -> np.ndarray:
    payload = {"prompt": "a photo of a cat", "steps": 3, "sampler_name": "Euler", "cfg_scale": 7, "seed": 1, **SIZE, **extra}
    status, body = call(forge, "/sdapi/v1/txt2img", payload)
    assert status == 200, body
    return image(body["images"][0])


def test_routes_answer_and_the_size_defaults_to_the_models_native_one(forge):
    status, body = call(forge, "/smooth-diffusion/v1/version")
    assert status == 200 and body["jobs"] == ["edit", "interpolate", "invert", "istd"]
    assert "smooth-e2e" in call(forge, "/smooth-diffusion/v1/loras")[1]["loras"]
    status, body = call(forge, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a cat", "frames": 2, "steps": 1})
    assert status == 200, body
    assert image(body["frames"][0]).shape == (512, 512, 3) and body["sidecar"]["settings"]["width"] == 512  # SD 1.5's native size


def test_frames_are_lib_smooths_with_and_without_the_lora_and_the_weights_come_back(forge, installed):
    from lib_smooth.jobs import run_interpolate
    from lib_smooth.requests import InterpolateRequest

    before = txt2img(forge)
    request = {"prompt_a": "a red circle", "prompt_b": "a blue square", "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 3, **SIZE}
    frames = {}
    for lora in (None, "smooth-e2e"):
        status, body = call(forge, "/smooth-diffusion/v1/interpolate", dict(request, lora=lora))
        assert status == 200, body
        assert (body["sidecar"]["lora"] or {}).get("name") == lora
        path = str(installed["root"] / "loras" / f"{lora}.safetensors") if lora else None
        by_lib = run_interpolate(installed["backend"], InterpolateRequest(**request, lora=path)).frames
        frames[lora] = [image(f) for f in body["frames"]]
        for by_forge, lib_frame in zip(frames[lora], by_lib):
            assert_same_pixels(by_forge, lib_frame)
    assert np.abs(frames[None][1] - frames["smooth-e2e"][1]).mean() > 1.0  # the LoRA changes the frames
    assert np.array_equal(txt2img(forge), before)  # same seed, same pixels: the weights are those from before


def test_inversion_null_text_and_edit_are_lib_smooths(forge, installed):
    from lib_smooth.jobs import run_invert, run_job
    from lib_smooth.requests import EditRequest, InvertRequest

    backend = installed["backend"]
    for inversion in ("ddim", "null-text"):
        request = {"image": drawn(), "prompt": "an orange circle", "steps": 4, "inversion": inversion, "null_text_steps": 2, **SIZE}
        status, body = call(forge, "/smooth-diffusion/v1/invert", request)
        assert status == 200, body
        by_lib = run_invert(backend, InvertRequest(**request))
        assert_same_pixels(image(body["reconstruction"]), by_lib.reconstruction)  # null-text: gradients through Forge's UNet
        assert body["metrics"]["mse"] == pytest.approx(by_lib.metrics["mse"], rel=1e-4)
    request = {"image": drawn(), "prompt": "an orange circle", "target_prompt": "a green square", "steps": 4, **SIZE}
    status, body = call(forge, "/smooth-diffusion/v1/edit", request)
    assert status == 200, body
    assert_same_pixels(image(body["edited"]), run_job("edit", backend, EditRequest(**request)).edited)


def test_istd_with_and_without_the_lora(forge):
    request = {"prompts": ["a cat", "a dog"], "points": 3, "steps": 2, "lora": "smooth-e2e", "compare_without_lora": True, **SIZE}
    status, body = call(forge, "/smooth-diffusion/v1/istd", request)
    assert status == 200, body
    assert len(body["istd"]["per_prompt"]) == 2 and body["istd"]["mean"]["distances"] != body["istd_without_lora"]["mean"]["distances"]


def test_routes_also_run_without_the_lora(forge):
    check_routes_without_lora(forge, "smooth-e2e", SIZE)


def test_bad_requests_get_clear_4xx_and_no_server_file_is_read(forge, tmp_path):
    for route, request, status, message in (
        ("interpolate", {"prompt_a": "a", "frames": 1}, 422, "frames must be between 2 and 240"),
        ("interpolate", {"prompt_a": "a", "steps": 1000}, 422, "steps must be between 1 and 999"),
        ("interpolate", {"prompt_a": "a", "lora": "no-such-lora"}, 400, "not found"),
        ("invert", {"image": "not an image", "prompt": "x"}, 422, "base64"),
        ("istd", {"prompts": "a cat"}, 422, "List[str]"),
    ):
        answer = call(forge, f"/smooth-diffusion/v1/{route}", request)
        assert answer[0] == status and message in answer[1]["detail"], answer
    path = tmp_path / "on-the-server.png"
    Image.new("RGB", (64, 64), "red").save(path)
    answers = [call(forge, "/smooth-diffusion/v1/invert", {"image": str(name), "prompt": "x"}) for name in (path, tmp_path / "missing.png")]
    assert [status for status, _ in answers] == [422, 422] and answers[0][1]["detail"] == answers[1][1]["detail"]
    bomb = io.BytesIO()
    Image.new("1", (16000, 16000)).save(bomb, format="PNG")
    status, body = call(forge, "/smooth-diffusion/v1/invert", {"image": base64.b64encode(bomb.getvalue()).decode(), "prompt": "x"})
    assert status == 422 and "megapixels" in body["detail"]


@pytest.mark.parametrize(
    "lora, reason", [("for-sdxl", "is for SDXL"), ("sd2-sized", "made for another model size"), ("elsewhere", "matches none of this model's layers")]
)
def test_a_lora_for_another_model_is_refused_and_nothing_stays_applied(forge, lora, reason):
    before = txt2img(forge)
    status, body = call(forge, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a red circle", "frames": 2, "steps": 1, "lora": lora, **SIZE})
    assert status == 400 and reason in body["detail"], body
    assert np.array_equal(txt2img(forge), before)


def test_accordion_applies_the_lora_once_and_it_is_gone_afterwards(forge):
    before = txt2img(forge)
    accordion = {"smooth diffusion": {"args": [True, "smooth-e2e", 1.0]}}
    status, body = call(
        forge,
        "/sdapi/v1/txt2img",
        {"prompt": "a photo of a cat", "steps": 3, "sampler_name": "Euler", "cfg_scale": 7, "seed": 1, **SIZE, "alwayson_scripts": accordion},
    )
    assert status == 200, body
    assert 'Smooth-LoRA: "smooth-e2e:1"' in json.loads(body["info"])["infotexts"][0]
    with_lora = image(body["images"][0])
    assert np.abs(with_lora - before).mean() > 1.0
    assert np.array_equal(txt2img(forge, prompt="a photo of a cat <lora:smooth-e2e:1>", alwayson_scripts=accordion), with_lora)  # pasted: not twice
    assert np.array_equal(txt2img(forge), before)
    for args, reason in (
        ([True, "no-such-lora", 1.0], "not found"),
        ([True, "smooth-e2e", "heavy"], "lora_weight must be of type float"),
        ([True, "sd2-sized", 1.0], "made for another model size"),
    ):
        status, body = call(
            forge, "/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 2, **SIZE, "alwayson_scripts": {"smooth diffusion": {"args": args}}}
        )
        assert status != 200 and reason in json.dumps(body), (args, body)


def test_a_pasted_infotext_restores_the_accordion_and_draws_the_same_image(forge):
    """A result's infotext read back by Forge's own parser sets the accordion to the same LoRA and
    weight, and generating again from the pasted parameters gives the same image (the LoRA once)."""
    from lib_smooth.webui.generation import accordion_from_infotext

    base = {"prompt": "a photo of a cat", "steps": 3, "sampler_name": "Euler", "cfg_scale": 7, "seed": 3, **SIZE}
    status, first = call(forge, "/sdapi/v1/txt2img", dict(base, alwayson_scripts={"smooth diffusion": {"args": [True, "smooth-e2e", 0.5]}}))
    assert status == 200, first
    parameters = png_info(forge, json.loads(first["info"])["infotexts"][0])
    restored = accordion_from_infotext(parameters)
    assert restored == ("smooth-e2e", 0.5), parameters
    status, second = call(forge, "/sdapi/v1/txt2img", pasted_txt2img(parameters, [True, *restored]))
    assert status == 200, second
    assert np.array_equal(image(second["images"][0]), image(first["images"][0]))
    status, plain = call(forge, "/sdapi/v1/txt2img", base)
    assert not np.array_equal(image(plain["images"][0]), image(first["images"][0]))
    assert accordion_from_infotext(png_info(forge, json.loads(plain["info"])["infotexts"][0])) is None


def img2img(script_args, **extra) -> dict:
    payload = {"init_images": [drawn()], "prompt": "a green square", "steps": 4, "cfg_scale": 5, "seed": 1, "denoising_strength": 1.0, **SIZE}
    return dict(payload, script_name="smooth inversion", script_args=script_args, **extra)


def test_img2img_smooth_inversion_script(forge):
    status, body = call(forge, "/sdapi/v1/img2img", img2img(["an orange circle", 0.8, "ddim"]))
    assert status == 200, body
    infotext = json.loads(body["info"])["infotexts"][0]
    assert "Smooth inversion: ddim (whole schedule; denoising strength not used)" in infotext and "Denoising strength" not in infotext
    status, body = call(forge, "/sdapi/v1/img2img", img2img(["an orange circle", 0.8, "null-text"]))
    assert status == 200, body
    for script_args, reason in ((["a", 0.8, "magic"], "inversion must be one of ddim"), (["a", 1.5, "ddim"], "switch_ratio must be between 0 and 1")):
        status, body = call(forge, "/sdapi/v1/img2img", img2img(script_args))
        assert status == 422 and reason in body["detail"], body


def test_progress_live_preview_and_interrupt_of_a_job_and_of_the_img2img_script(forge):
    job = {"prompt_a": "a red circle", "frames": 64, "steps": 200, "batch_size": 1, **SIZE}
    (status, body), seconds, progress = interrupted(forge, "/smooth-diffusion/v1/interpolate", job, after_steps=12)
    assert status == 409 and "interrupted" in body["detail"] and seconds < 20, (status, body, seconds)
    assert progress["state"]["sampling_steps"] == 64 * 200 and 0 < progress["progress"] < 0.1, progress
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))  # Forge previews every 10 steps
    assert preview.size[0] >= 8 and preview.getextrema() != ((0, 0),) * 3
    (status, body), _, _ = interrupted(forge, "/sdapi/v1/img2img", img2img(["an orange circle", 0.8, "ddim"], steps=400))
    assert status == 409 and "interrupted" in body["detail"], body
    assert call(forge, "/smooth-diffusion/v1/version")[0] == 200


def test_prompts_over_75_tokens_work_in_every_route(forge):
    small = {"steps": 2, **SIZE}
    for route, body in (
        ("interpolate", {"prompt_a": LONG_PROMPT, "prompt_b": "a green square", "negative_prompt": LONG_PROMPT, "frames": 2, **small}),
        ("invert", {"image": drawn(), "prompt": LONG_PROMPT, **small}),
        ("edit", {"image": drawn(), "prompt": "an orange circle", "target_prompt": LONG_PROMPT, **small}),
        ("istd", {"prompts": [LONG_PROMPT], "points": 3, **small}),
    ):
        status, answer = call(forge, f"/smooth-diffusion/v1/{route}", body)
        assert status == 200, (route, answer)
    status, answer = call(forge, "/sdapi/v1/img2img", img2img([LONG_PROMPT, 0.8, "ddim"], prompt=LONG_PROMPT, steps=2))
    assert status == 200, answer


def test_a_lora_added_after_start_up_is_found(forge, installed):
    import shutil

    late = installed["root"] / "loras" / f"added-late-{os.getpid()}.safetensors"
    shutil.copy(installed["root"] / "loras" / "smooth-e2e.safetensors", late)
    try:
        status, body = call(forge, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a cat", "frames": 2, "steps": 1, "lora": late.stem, **SIZE})
        assert status == 200 and body["sidecar"]["lora"]["name"] == late.stem, body
    finally:
        late.unlink()


def errors_of_ours(log: Path) -> list:
    """Lines of Forge's log reporting an error in the extension, refused generations included: they are
    answered as HTTP errors, which Forge does not report."""
    lines = log.read_text().splitlines()
    return [
        line
        for line in lines
        if "GenerationRefused" in line or (("Error" in line or "Traceback" in line) and ("smooth_diffusion" in line.lower() or "lib_smooth" in line))
    ]


def test_no_error_of_ours_in_forges_log(forge):
    assert errors_of_ours(forge["log"]) == []


def test_routes_honour_api_auth(installed, forge):
    process, base, _ = launch(installed["root"], installed["checkpoint"], "--api-auth", "smooth:secret")
    try:
        assert call({"base": base}, "/smooth-diffusion/v1/version")[0] == 401
        token = base64.b64encode(b"smooth:secret").decode()
        assert call({"base": base}, "/smooth-diffusion/v1/version", headers={"Authorization": f"Basic {token}"})[0] == 200
    finally:
        stop(process)


@pytest.fixture(scope="module")
def forge_ui(installed):
    """Forge with its UI, saving the tab's results into the test's own folder; yields its base URL, its
    gradio /config, that folder and the log."""
    root = installed["root"]
    results = root / "ui-outputs"
    (root / "config.json").write_text(json.dumps({"smooth_diffusion_outdir": str(results)}))
    process, base, log = launch(root, installed["checkpoint"], ui=True)
    try:
        with urllib.request.urlopen(base + "/config", timeout=60) as response:
            config = json.loads(response.read())
        yield {"base": base, "config": config, "results": results, "log": log}
    finally:
        stop(process)
        (root / "config.json").unlink(missing_ok=True)


def test_the_tabs_comparison_runs_the_same_job_without_the_lora(forge_ui):
    """'Also without the LoRA' in the Interpolation and Inversion panels under gradio 4.40, pressed as in
    the browser: both runs shown with a figures row each, both saved."""
    check_tab_comparisons(forge_ui, "smooth-e2e")
    assert errors_of_ours(forge_ui["log"]) == []


def test_the_tab_and_the_accordion_build_under_forges_gradio(forge_ui):
    """The full UI (Forge's gradio 4.40): the tab's three panels with their Interrupt buttons, sliders bounded
    by the request models the API validates with, the run without the LoRA right under the LoRA run's frames
    when asked for, and the accordion."""
    import dataclasses

    from lib_smooth.requests import InterpolateRequest, IstdRequest

    config = forge_ui["config"]
    components = [c.get("props", {}) for c in config["components"]]
    ids = {props.get("elem_id") for props in components}
    assert {"smooth_diffusion_interpolate_interrupt", "smooth_diffusion_invert_interrupt", "smooth_diffusion_istd_interrupt"} <= ids
    labels = {props.get("label") for props in components}
    assert "Apply Smooth-LoRA" in labels and "Width (0: model's native size)" in labels
    for cls, name, label in ((InterpolateRequest, "frames", "Frames"), (IstdRequest, "points", "Points per sequence (paper: 11)")):
        meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
        sliders = [p for p in components if p.get("label") == label and "minimum" in p]
        assert sliders and all((p["minimum"], p["maximum"]) == (meta["low"], meta["high"]) for p in sliders), label
    assert "cannot run in this WebUI" not in json.dumps(config)
    assert interpolation_comparison_layout(config) == {"follows_frames": True, "hidden_at_start": True, "toggled_by_checkbox": True}
    assert errors_of_ours(forge_ui["log"]) == []


@pytest.mark.skipif(
    not os.environ.get("FORGE_E2E_FULL_SIZE"),
    reason="set FORGE_E2E_FULL_SIZE=1 to also check full-size SD 2.x 768-v and SDXL in Forge (SDXL: 7 GB of disk, ≈ 17 GB RAM)",
)
@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_full_size_sd2_v_and_sdxl(tmp_path, arch):
    """A random full-size SD 2.x 768-v (v-prediction: its frames are lib_smooth's) or SDXL: every job; a LoRA
    for it under diffusers names (SDXL's converted to its block names for Forge's Lora) changes the frames;
    an SD 1.5 LoRA is refused. Uses none of the SD 1.5 fixtures."""
    from lib_smooth.backends.diffusers_backend import DiffusersBackend
    from lib_smooth.backends.ldm_layout import save_single_file
    from lib_smooth.jobs import run_interpolate
    from lib_smooth.lora_formats import LoraLayer, LoraNetwork, save_kohya
    from lib_smooth.requests import InterpolateRequest
    from lib_smooth.testing import build_full_size_backend

    (tmp_path / "loras").mkdir()
    save_kohya(
        LoraNetwork(
            {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": LoraLayer(torch.ones(4, 768), torch.ones(320, 4))}, "kohya"
        ),
        tmp_path / "loras" / "for-sd15.safetensors",
    )
    checkpoint = Path(FORGE) / "models" / "Stable-diffusion" / f"smooth-e2e-{arch}-{os.getpid()}.safetensors"
    link = Path(FORGE) / "extensions" / f"sd-webui-smooth-diffusion-e2e-{arch}-{os.getpid()}"
    plain = {"prompt_a": "a cat", "seed_a": 1, "seed_b": 2, "frames": 2, "steps": 2, **SIZE}
    try:
        built = build_full_size_backend(arch, tokenizer_dir=tmp_path / "tok")
        save_single_file(built, checkpoint)
        attention_lora(built, tmp_path / "loras" / f"{arch}-smooth.safetensors", scale=0.05)
        by_lib = None
        if arch == "sd2":  # small enough to draw in lib_smooth too, at full precision as Forge holds it
            parts = (built.unet_model, built.vae, built.text_encoders, built.tokenizers, built.alphas_cumprod, "v", "sd2")
            by_lib = run_interpolate(DiffusersBackend(*parts, identity="random-sd2", dtype=torch.float32), InterpolateRequest(**plain)).frames
        del built  # Forge holds the model in fp32 on the CPU: make room
        link.symlink_to(REPO)
        process, base, log = launch(tmp_path, checkpoint)
        server = {"base": base}
        try:
            answers = []
            for route, body in (
                ("interpolate", plain),
                ("interpolate", dict(plain, lora=f"{arch}-smooth")),
                ("interpolate", {"prompt_a": LONG_PROMPT, "prompt_b": "a cat", "negative_prompt": "blurry", "frames": 2, "steps": 2}),
                ("invert", {"image": drawn(), "prompt": "a circle", "steps": 2, "inversion": "null-text", "null_text_steps": 1}),
                ("istd", {"prompts": ["a cat"], "points": 3, "steps": 1}),
            ):
                status, answer = call(server, f"/smooth-diffusion/v1/{route}", dict(body, **SIZE))
                assert status == 200, (route, answer)
                answers.append(answer)
            if by_lib is not None:
                for by_forge, lib_frame in zip(answers[0]["frames"], by_lib):
                    assert_same_pixels(image(by_forge), lib_frame)
            converted = (tmp_path / "loras" / f"{arch}-smooth_ldm.safetensors").is_file()
            assert converted == (arch == "sdxl")  # SDXL's own block names for Forge's Lora; SD 2 reads SD 1.5's
            assert np.abs(image(answers[0]["frames"][1]) - image(answers[1]["frames"][1])).mean() > 0.5
            status, answer = call(
                server, "/smooth-diffusion/v1/interpolate", {"prompt_a": "a cat", "frames": 2, "steps": 1, "lora": "for-sd15", **SIZE}
            )
            assert status == 400, answer
            assert errors_of_ours(log) == []
        finally:
            stop(process)
    finally:
        if link.is_symlink():
            link.unlink()
        remove_checkpoint(checkpoint)
