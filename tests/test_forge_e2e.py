"""End-to-end: the extension inside a real WebUI Forge, which it does not support yet.

Runs only when FORGE_DIR names an installed lllyasviel/stable-diffusion-webui-forge (checked: commit
dfdcbab6, 2025-06-26; FORGE_PYTHON: its Python, default $FORGE_DIR/venv/bin/python; it needs
repositories/huggingface_guess). It starts Forge offline on the CPU with its UI and API on a free loopback
port, with this repository linked into extensions/ (the link is removed afterwards), and checks what a
Forge user meets today: the extension loads without a traceback, the tab says why it cannot run, and every
route answers with that reason instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORGE = os.environ.get("FORGE_DIR")
pytestmark = pytest.mark.skipif(not FORGE, reason="FORGE_DIR is not set: point it at an installed WebUI Forge to check the extension there")


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    import socket

    root = tmp_path_factory.mktemp("forge")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = Path(FORGE) / "extensions" / f"sd-webui-smooth-diffusion-e2e-{os.getpid()}"
    link.symlink_to(REPO)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost")
    python = os.environ.get("FORGE_PYTHON", str(Path(FORGE) / "venv" / "bin" / "python"))
    log = root / "forge.log"
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
        "--server-name",
        "127.0.0.1",
        "--port",
        str(port),
        "--api",
        "--ui-settings-file",
        str(root / "config.json"),
        "--ui-config-file",
        str(root / "ui-config.json"),
    ]
    process = subprocess.Popen(command, cwd=FORGE, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(base + "/smooth-diffusion/v1/version", timeout=2)
                break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None:
                    raise RuntimeError("Forge exited:\n" + log.read_text()[-3000:])
                time.sleep(1)
        else:
            raise RuntimeError("Forge did not answer in 180 s:\n" + log.read_text()[-3000:])
        yield {"base": base, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        link.unlink()


def call(forge, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(forge["base"] + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_extension_loads_in_forge_and_says_why_it_cannot_run(forge):
    assert call(forge, "/smooth-diffusion/v1/version")[0] == 200
    for route, body in (("interpolate", {"prompt_a": "a cat", "frames": 2, "steps": 2}), ("istd", {"prompts": ["a cat"]})):
        status, answer = call(forge, f"/smooth-diffusion/v1/{route}", body)
        assert status == 400 and "does not support WebUI Forge yet" in answer["detail"], answer
    with urllib.request.urlopen(forge["base"] + "/config", timeout=60) as response:
        config = response.read().decode()
    assert "Smooth Diffusion cannot run in this WebUI." in config and "Apply Smooth-LoRA" in config  # the tab's message; the accordion built
    log = forge["log"].read_text()
    ours = [line for line in log.splitlines() if "smooth_diffusion" in line.lower() and ("Error" in line or "Traceback" in line)]
    assert ours == [], ours
