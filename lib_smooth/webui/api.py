"""HTTP routes under /smooth-diffusion/v1/ on the WebUI's FastAPI app.

Bodies are JSON objects with the fields of lib_smooth's request models (the CLI's options), validated
with their limits; `lora` names a file of the Lora folder (stem) and images are base64 PNG/JPEG.
GPU work holds the WebUI's queue lock and shows in its progress API; `POST /sdapi/v1/interrupt`
stops a job within one sampling step. Routes honour --api-auth.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any, Callable, Dict

from .. import __version__
from ..cache import InversionCache
from ..errors import Interrupted, RequestError, SmoothDiffusionError
from ..images import png_bytes
from ..metrics import EXPLANATIONS
from ..requests import JOB_REQUESTS, InterpolateRequest, field_meta, from_dict

PREFIX = "/smooth-diffusion/v1"
JOBS = JOB_REQUESTS
_CACHE = InversionCache(max_entries=16)


def b64png(image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


class WebUIProgress:
    """A lib_smooth progress callback driving the WebUI: shared.state (progress bar, ETA, live preview),
    a console bar, and Interrupt / Skip, which stop the job within one sampling step."""

    def __init__(self, job: str):
        self.job = job
        self.bar = None

    def __call__(self, done: int, total: int, latent) -> None:
        from modules import sd_samplers_common, shared
        from tqdm import tqdm

        state = shared.state
        if state.interrupted or state.skipped or getattr(state, "stopping_generation", False):
            raise Interrupted(f"{self.job} interrupted")
        state.job_count = 1
        state.sampling_steps = total
        state.sampling_step = done
        state.textinfo = f"Smooth Diffusion {self.job}: {done}/{total}"
        if latent is not None:
            sd_samplers_common.store_latent(latent[:1].to(shared.device))
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"Smooth Diffusion {self.job}", file=shared.progress_print_out)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def webui_progress(job: str) -> WebUIProgress:
    return WebUIProgress(job)


def execute(name: str, request) -> dict:
    """Run one validated job on the loaded checkpoint with the request's LoRA (a Lora-folder name),
    restoring the user's LoRA state after; images come back as PIL images. The caller holds the lock."""
    progress = webui_progress(name)
    try:
        return _execute(name, request, progress)
    finally:
        progress.close()


def _execute(name: str, request, progress: Callable) -> dict:
    from ..jobs import run_job as run
    from .host import open_backend

    result = run(name, open_backend(), request, _CACHE, progress)  # the backend resolves `lora` as a Lora-folder name
    if name == "interpolate":
        response = {"frames": result.frames, "sidecar": result.sidecar}
        if result.without_lora is not None:
            response.update(frames_without_lora=result.without_lora.frames, sidecar_without_lora=result.without_lora.sidecar)
        return response
    if name in ("invert", "edit"):
        response = {"input": result.input, "reconstruction": result.reconstruction, "metrics": result.metrics, "sidecar": result.sidecar}
        if result.edited is not None:
            response["edited"] = result.edited
        plain = result.without_lora
        if plain is not None:
            response.update(reconstruction_without_lora=plain.reconstruction, metrics_without_lora=plain.metrics, sidecar_without_lora=plain.sidecar)
            if plain.edited is not None:
                response["edited_without_lora"] = plain.edited
        return response
    response = {"istd": result.with_lora.as_dict(), "sidecar": result.sidecar, "explanations": EXPLANATIONS}
    if result.without_lora is not None:
        response["istd_without_lora"] = result.without_lora.as_dict()
    return response


def run_job(name: str, body: Dict[str, Any]) -> dict:
    """The HTTP form: validate the JSON body, hold the queue lock, return images as base64 PNG."""
    from modules import shared
    from modules.call_queue import queue_lock

    request = from_dict(JOBS[name], body)
    with queue_lock:
        shared.state.begin(job=f"smooth-diffusion-{name}")
        try:
            response = execute(name, request)
        finally:
            shared.state.end()
    for key in ("input", "reconstruction", "edited", "reconstruction_without_lora", "edited_without_lora"):
        if key in response:
            response[key] = b64png(response[key])
    for key in ("frames", "frames_without_lora"):
        if key in response:
            response[key] = [b64png(frame) for frame in response[key]]
    return response


def _auth_dependency():
    """HTTP basic auth with the WebUI's --api-auth credentials, when set."""
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic
    from modules import shared

    credentials = getattr(shared.cmd_opts, "api_auth", None)
    if not credentials:
        return []
    allowed = dict(item.split(":", 1) for item in credentials.strip('"').replace("\n", "").split(","))
    basic = HTTPBasic()

    def check(given=Depends(basic)) -> None:  # no annotation: this module postpones them, FastAPI would look it up by name
        import secrets

        expected = allowed.get(given.username)
        if expected is None or not secrets.compare_digest(given.password, expected):
            raise HTTPException(status_code=401, detail="incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]


def register(app) -> None:
    """Add the routes to the WebUI's FastAPI app (called from on_app_started)."""
    from fastapi import Body, HTTPException

    from .lora import available, refresh

    dependencies = _auth_dependency()

    def job_route(name: str):
        def route(body: Dict[str, Any] = Body(..., description=f"fields of lib_smooth.requests.{JOBS[name].__name__}")):
            try:
                return run_job(name, body)
            except RequestError as error:
                raise HTTPException(status_code=422, detail=str(error)) from None
            except Interrupted as error:
                raise HTTPException(status_code=409, detail=str(error)) from None
            except SmoothDiffusionError as error:
                raise HTTPException(status_code=400, detail=str(error)) from None

        route.__name__ = f"smooth_diffusion_{name}"
        return route

    for name in JOBS:
        app.add_api_route(f"{PREFIX}/{name}", job_route(name), methods=["POST"], dependencies=dependencies)

    def version():
        return {"version": __version__, "jobs": sorted(JOBS), "inversion_modes": list(field_meta(InterpolateRequest, "inversion")["choices"])}

    def loras(refresh_list: bool = False):
        return {"loras": refresh() if refresh_list else available()}

    def fields():
        return {
            name: {spec.name: {k: v for k, v in spec.metadata.items() if v is not None} for spec in dataclasses.fields(cls)}
            for name, cls in JOBS.items()
        }

    app.add_api_route(f"{PREFIX}/version", version, methods=["GET"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/loras", loras, methods=["GET"], dependencies=dependencies)
    app.add_api_route(f"{PREFIX}/fields", fields, methods=["GET"], dependencies=dependencies)
