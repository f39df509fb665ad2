"""Small helpers several test modules share (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin

from lib_smooth.images import png_bytes


def b64(image: Image.Image) -> str:
    """An image as the base64 PNG an image field takes."""
    return base64.b64encode(png_bytes(image)).decode()


def attention_projections(unet):
    """(path, module) of every attention q/k/v/out projection — where the official Smooth-LoRA sits."""
    return [(p, m) for p, m in unet.named_modules() if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", p)]


def random_lora(shapes, rank=4, seed=0):
    """{path: (down, up)} random factors for modules of the given (out, in) shapes."""
    g = torch.Generator().manual_seed(seed)
    return {path: (torch.randn(rank, i, generator=g) * 0.1, torch.randn(o, rank, generator=g) * 0.1) for path, (o, i) in shapes.items()}


class CountingBackend:
    """Wraps a backend and counts UNet evaluations (calls and samples)."""

    def __init__(self, inner):
        self.inner, self.calls, self.samples = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def unet(self, x, t, cond):
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner.unet(x, t, cond)


# --- a real WebUI or Forge over HTTP (the end-to-end suites) ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def call(server: dict, path: str, body=None, method=None, headers=None) -> tuple:
    """(status, JSON answer) of one request to server["base"]; a 4xx/5xx answer is returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server["base"] + path,
        data=data,
        method=method or ("POST" if data else "GET"),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def image(value: str) -> np.ndarray:
    """A base64 PNG from an answer as float pixels (so differences do not wrap around as uint8 would)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(value))).convert("RGB")).astype(np.float64)


def drawn() -> str:
    """A 64 px orange circle on navy, as the base64 PNG an image field takes."""
    picture = Image.new("RGB", (64, 64), "navy")
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill="orange")
    return b64(picture)


def interrupted(server: dict, path: str, body: dict, after_steps: int = 2) -> tuple:
    """Start a long job, press Interrupt once it shows `after_steps` steps of progress; returns its answer,
    the seconds it ran on after the Interrupt, and the progress state seen just before (live preview included)."""
    outcome = {}
    # the last job's progress stays until a new one begins, which it marks with a timestamp of whole seconds
    previous_job = call(server, "/sdapi/v1/progress")[1]["state"]["job_timestamp"]
    time.sleep(1.1)
    worker = threading.Thread(target=lambda: outcome.setdefault("result", call(server, path, body)))
    worker.start()
    deadline = time.time() + 180
    while time.time() < deadline:
        state = call(server, "/sdapi/v1/progress")[1]["state"]
        if state["job_timestamp"] != previous_job and state["sampling_step"] >= after_steps:
            break
        time.sleep(0.2)
    progress = call(server, "/sdapi/v1/progress?skip_current_image=false")[1]
    started = time.time()
    assert call(server, "/sdapi/v1/interrupt", {}, method="POST")[0] == 200
    worker.join(timeout=120)
    return outcome["result"], time.time() - started, progress


def png_info(server, infotext: str) -> dict:
    """The host's own reading of an infotext — the parser behind PNG Info and the paste buttons —
    through /sdapi/v1/png-info, on a PNG that carries it as a user's saved image does."""
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=chunks)
    status, body = call(server, "/sdapi/v1/png-info", {"image": base64.b64encode(buffer.getvalue()).decode()})
    assert status == 200, body
    return body["parameters"]


def pasted_txt2img(parameters: dict, accordion: list) -> dict:
    """A txt2img request from pasted parameters, as the paste button fills the txt2img tab."""
    return {
        "prompt": parameters["Prompt"],
        "negative_prompt": parameters.get("Negative prompt", ""),
        "width": int(parameters["Size-1"]),
        "height": int(parameters["Size-2"]),
        "steps": int(parameters["Steps"]),
        "sampler_name": parameters["Sampler"],
        "cfg_scale": float(parameters["CFG scale"]),
        "seed": int(parameters["Seed"]),
        "alwayson_scripts": {"smooth diffusion": {"args": accordion}},
    }


def event_triggers(dependency: dict):
    """(component id, event) pairs that fire a gradio /config dependency (3.x: targets and one trigger; 4.x: pairs)."""
    for target in dependency.get("targets", []):
        yield (target[0], target[1]) if isinstance(target, list) else (target, dependency.get("trigger"))


def interpolation_comparison_layout(config: dict) -> dict:
    """From a gradio /config (3.x or 4.x): where the Interpolation panel puts the run without the LoRA.

    follows_frames: its gallery is the next component after the LoRA run's gallery in the same column;
    hidden_at_start: it is hidden until asked for; toggled_by_checkbox: the "Also without the LoRA"
    checkbox's change event updates both galleries (showing the one, naming the other)."""
    by_elem = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    frames, plain, compare = by_elem["smooth_diffusion_gallery"], by_elem["smooth_diffusion_gallery_plain"], by_elem["smooth_diffusion_compare"]

    def sibling_lists(node):
        children = node.get("children") or []
        yield [child["id"] for child in children]
        for child in children:
            yield from sibling_lists(child)

    follows = any(ids[i + 1] == plain for ids in sibling_lists(config["layout"]) for i in range(len(ids) - 1) if ids[i] == frames)
    props = next(c["props"] for c in config["components"] if c["id"] == plain)

    toggled = any((compare, "change") in set(event_triggers(d)) and {frames, plain} <= set(d.get("outputs", [])) for d in config["dependencies"])
    return {"follows_frames": follows, "hidden_at_start": props.get("visible") is False, "toggled_by_checkbox": toggled}


def run_tab_job(server: dict, button: str, overrides: dict) -> dict:
    """Press a tab's button as the browser does, through gradio's /run/predict: every input at its default
    but those in `overrides` (by elem_id or label); returns the outputs by elem_id or label."""
    components = {c["id"]: c.get("props", {}) for c in server["config"]["components"]}
    button_id = next(i for i, props in components.items() if props.get("elem_id") == button)
    index, dependency = next(
        (d.get("id", i), d)  # 4.x numbers its functions, 3.x by position
        for i, d in enumerate(server["config"]["dependencies"])
        if (button_id, "click") in set(event_triggers(d)) and d.get("backend_fn")
    )
    name = lambda props: props.get("elem_id") if props.get("elem_id") in overrides else props.get("label")  # noqa: E731
    data = [overrides.get(name(components[i]), components[i].get("value")) for i in dependency["inputs"]]
    status, body = call(server, "/run/predict", {"fn_index": index, "data": data, "session_hash": "e2e"})
    assert status == 200, body
    outputs = [components[i].get("elem_id") or components[i].get("label") for i in dependency["outputs"]]
    return dict(zip(outputs, body["data"]))


def tab_image(server: dict, png_base64: str):
    """An image for a tab's image input as the browser sends it: a data URL under gradio 3, a file uploaded
    to /upload first and named by its path under gradio 4."""
    if str(server["config"].get("version", "")).startswith("3"):
        return "data:image/png;base64," + png_base64
    boundary = "smooth-e2e-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="image.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + base64.b64decode(png_base64)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server["base"] + "/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        path = json.loads(response.read())[0]
    return {"path": path, "orig_name": "image.png", "meta": {"_type": "gradio.FileData"}}


def table_rows(html_text: str) -> dict:
    """The tab's figures table: {row name: [cells]}."""
    return {cells[0]: cells[1:] for row in re.findall(r"<tr>(.*?)</tr>", html_text) if (cells := re.findall(r"<td>(.*?)</td>", row))}


def check_tab_comparisons(server: dict, lora: str) -> None:
    """The panels' runs without the LoRA, pressed through the UI's own endpoint ('Also without the LoRA'
    in Interpolation and Inversion, always in Smoothness): each run shown with a figures row of its own
    (the LoRA makes them differ) and saved in a folder of its own; `server` has the UI's config and the
    folder the tab saves into."""
    common = {
        "smooth_diffusion_task": "task(e2e-compare)",
        "Smooth-LoRA": lora,
        "DDIM steps": 3,
        "Width (0: model's native size)": 64,
        "Height (0: model's native size)": 64,
    }
    out = run_tab_job(
        server,
        "smooth_diffusion_interpolate",
        dict(common, **{"Prompt A": "a photo of a cat", "Frames": 4, "smooth_diffusion_compare": True}),
    )
    rows = table_rows(out["smooth_diffusion_interpolate_log"])
    assert set(rows) == {"with LoRA", "without LoRA"} and rows["with LoRA"] != rows["without LoRA"], out
    assert len(out["smooth_diffusion_gallery"]) == len(out["smooth_diffusion_gallery_plain"]) == 4
    alone = run_tab_job(server, "smooth_diffusion_interpolate", dict(common, **{"Prompt A": "a photo of a cat", "Frames": 4}))
    assert set(table_rows(alone["smooth_diffusion_interpolate_log"])) == {"with LoRA"} and not alone["smooth_diffusion_gallery_plain"]

    image_field = tab_image(server, drawn())
    out = run_tab_job(
        server,
        "smooth_diffusion_invert",
        dict(
            common,
            **{"smooth_diffusion_image": image_field, "Source prompt (describes the image)": "a circle", "smooth_diffusion_invert_compare": True},
        ),
    )
    rows = table_rows(out["smooth_diffusion_invert_log"])
    assert set(rows) == {"with LoRA", "without LoRA"} and rows["with LoRA"] != rows["without LoRA"], out
    assert len(out["smooth_diffusion_inversion_gallery"]) == 3  # input, reconstruction with and without the LoRA
    # the Smoothness panel measures without the LoRA whenever one is chosen
    out = run_tab_job(
        server,
        "smooth_diffusion_istd",
        dict(common, **{"Prompts, one per line": "a cat", "Noise pairs per prompt": 1, "Points per sequence (paper: 11)": 3}),
    )
    rows = table_rows(out["smooth_diffusion_istd_log"])
    assert set(rows) == {"with LoRA", "without LoRA"} and rows["with LoRA"] != rows["without LoRA"], out
    saved = sorted(re.sub(r"^\d{6}-|-\d+$", "", p.name) for p in server["results"].glob("*/*"))  # HHMMSS-job[-n]
    assert saved == ["interpolate", "interpolate", "interpolate-without-lora", "invert", "invert-without-lora", "istd"], saved


def check_routes_without_lora(server: dict, lora: str, size: dict) -> None:
    """The interpolate and invert routes with compare_without_lora: the second run is the route's own answer
    without the LoRA (same pixels), the first differs from it; without a LoRA the option is refused."""
    ends = {"prompt_a": "a photo of a cat", "seed_a": 1, "seed_b": 2, "frames": 3, "steps": 2, **size}
    status, both = call(server, "/smooth-diffusion/v1/interpolate", dict(ends, lora=lora, compare_without_lora=True))
    assert status == 200, both
    status, plain = call(server, "/smooth-diffusion/v1/interpolate", ends)
    assert status == 200, plain
    assert [image(f).tolist() for f in both["frames_without_lora"]] == [image(f).tolist() for f in plain["frames"]]
    assert image(both["frames"][1]).tolist() != image(plain["frames"][1]).tolist()
    assert both["sidecar_without_lora"]["lora"] is None and both["sidecar"]["lora"]["name"].startswith(lora)
    request = {"image": drawn(), "prompt": "a circle", "steps": 2, **size}
    status, both = call(server, "/smooth-diffusion/v1/invert", dict(request, lora=lora, compare_without_lora=True))
    assert status == 200, both
    status, plain = call(server, "/smooth-diffusion/v1/invert", request)
    assert status == 200, plain
    assert image(both["reconstruction_without_lora"]).tolist() == image(plain["reconstruction"]).tolist()
    assert both["metrics_without_lora"] == plain["metrics"] and both["metrics"] != plain["metrics"]
    status, body = call(server, "/smooth-diffusion/v1/interpolate", dict(ends, compare_without_lora=True))
    assert status == 422 and "compare_without_lora needs a lora" in json.dumps(body), body
