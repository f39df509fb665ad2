"""The jobs behind the CLI, the WebUI panels and the API: one request in, images + metrics + sidecar out.

Every job counts its UNet steps and reports them through `progress(done, total, latent)`, which may
raise :class:`lib_smooth.errors.Interrupted` to stop within one step. A LoRA named in the request is
applied for the job and always removed afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import torch
from PIL import Image

from .backend import Backend, LoraInUse
from .cache import InversionCache
from .evaluate import IstdReport, evaluate_istd
from .export import sidecar
from .images import png_bytes, tensor_to_pils
from .interpolate import render_frames, seed_noise
from .invert import dual_null_text_inversion, invert_image, prepare_image, reconstruct
from .metrics import reconstruction_metrics
from .requests import JOB_REQUESTS, EditRequest, InterpolateRequest, InvertRequest, IstdRequest, open_image_field, sized, validate

Progress = Callable[[int, int, Optional[torch.Tensor]], None]


class StepCounter:
    """Turns per-step callbacks of several sampling loops into one done/total count."""

    def __init__(self, total: int, progress: Optional[Progress]):
        self.total, self.done, self.progress = total, 0, progress

    def __call__(self, _index: int, _steps: int, latent: torch.Tensor) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, latent)

    def advance(self, _step: int, units: int) -> None:
        """Null-text inversion's inner iterations (units of work, early-stopped ones included)."""
        self.done += units
        if self.progress is not None:
            self.progress(self.done, self.total, None)

    def finish(self) -> None:
        """Report completion (steps skipped thanks to the inversion cache never ticked)."""
        if self.progress is not None and self.done < self.total:
            self.progress(self.total, self.total, None)


@contextlib.contextmanager
def lora_applied(backend: Backend, reference: Optional[str], weight: float) -> Iterator[Optional[LoraInUse]]:
    """The request's LoRA for the duration of a job, resolved by the host (a path or a Lora-folder name);
    None: no LoRA at all. Yields what the sidecar records."""
    if not hasattr(backend, "use_lora"):
        if reference:
            raise TypeError(f"{type(backend).__name__} cannot apply LoRAs")
        yield None
        return
    with backend.use_lora(reference, weight) as in_use:
        yield in_use


def decode(backend: Backend, latents: torch.Tensor, batch_size: int = 8) -> List[Image.Image]:
    images: List[Image.Image] = []
    for start in range(0, len(latents), batch_size):
        images.extend(tensor_to_pils(backend.decode_latents(latents[start : start + batch_size])))
    return images


def _sha(image: Image.Image) -> str:
    return hashlib.sha256(png_bytes(image)).hexdigest()


@dataclass
class InterpolationResult:
    frames: List[Image.Image]
    sidecar: dict
    without_lora: Optional["InterpolationResult"] = None  # with compare_without_lora: the same job without the LoRA


def _with_comparison(job: Callable, backend: Backend, r, cache: Optional[InversionCache], progress: Optional[Progress]):
    """`job` on request `r` and, with r.compare_without_lora, again without the LoRA (the LoRA the only
    difference); one progress count over both runs, which take equal work."""
    if not r.compare_without_lora:
        return job(backend, r, cache, progress)
    halves = [
        None if progress is None else (lambda done, total, latent, half=half: progress(done + half * total, 2 * total, latent)) for half in (0, 1)
    ]
    result = job(backend, r, cache, halves[0])
    result.without_lora = job(backend, dataclasses.replace(r, lora=None, compare_without_lora=False), cache, halves[1])
    return result


def _inversion_cost(request, images: int) -> int:
    """UNet-step units of inverting `images` images in the request's mode (null-text adds its iterations)."""
    if request.inversion == "dual-null-text":
        return request.steps * (1 + request.null_text_steps) if images else 0
    per_image = request.steps * (1 + (request.null_text_steps if request.inversion == "null-text" else 0))
    return images * per_image


def run_interpolate(
    backend: Backend, request: InterpolateRequest, cache: Optional[InversionCache] = None, progress: Optional[Progress] = None
) -> InterpolationResult:
    """Frames between two ends, each end an inverted image or a seed's noise, prompts blended."""
    return _with_comparison(_interpolate, backend, sized(validate(request), backend), cache, progress)


def _interpolate(backend: Backend, r: InterpolateRequest, cache: Optional[InversionCache], progress: Optional[Progress]) -> InterpolationResult:
    prompt_b = r.prompt_b or r.prompt_a
    ends = [(r.image_a, r.seed_a, r.prompt_a, "image_a"), (r.image_b, r.seed_b, prompt_b, "image_b")]
    batches = -(-r.frames // r.batch_size)
    counter = StepCounter(_inversion_cost(r, sum(1 for image, *_ in ends if image)) + r.steps * batches, progress)
    shape = (1, backend.latent_channels, r.height // backend.vae_scale, r.width // backend.vae_scale)
    inversion_settings = dict(
        steps=r.steps,
        guidance=r.inversion_guidance,
        negative_prompt=r.negative_prompt,
        width=r.width,
        height=r.height,
        cache=cache,
        on_step=counter,
        null_text_guidance=r.guidance,
        inner_steps=r.null_text_steps,
        on_iteration=counter.advance,
    )
    with lora_applied(backend, r.lora, r.lora_weight) as lora:
        negative = backend.encode_prompts([r.negative_prompt], r.width, r.height) if r.guidance != 1.0 else None
        pictures = {name: open_image_field(name, image) for image, _, _, name in ends if image}
        hashes = {name: _sha(prepare_image(picture, r.width, r.height)) for name, picture in pictures.items()}
        if r.inversion == "dual-null-text":
            pair = dual_null_text_inversion(backend, (pictures["image_a"], pictures["image_b"]), (r.prompt_a, prompt_b), **inversion_settings)
            x_T, unconds = [pair[0].x_T, pair[1].x_T], [pair[0].null_embeddings] * 2
        else:
            x_T, unconds = [], []
            for image, seed, prompt, name in ends:
                if image:
                    inversion = invert_image(backend, pictures[name], prompt, mode=r.inversion, **inversion_settings)
                    x_T.append(inversion.x_T)
                    unconds.append(inversion.null_embeddings)
                else:
                    x_T.append(seed_noise(seed, shape, backend.device))
                    unconds.append(None)
        if any(u is not None for u in unconds):
            # per-step null embeddings: an end without them (a seed) uses the negative prompt at every step
            per_step = [u if u is not None else [negative] * r.steps for u in unconds]
            uncond, uncond_b = per_step[0], (per_step[1] if per_step[1] is not per_step[0] else None)
        else:
            uncond, uncond_b = negative, None
        cond_a = backend.encode_prompts([r.prompt_a], r.width, r.height)
        cond_b = backend.encode_prompts([prompt_b], r.width, r.height) if prompt_b != r.prompt_a else cond_a
        latents = render_frames(
            backend, x_T[0], x_T[1], cond_a, cond_b, uncond, r.frames, r.steps, r.guidance, r.batch_size, on_step=counter, uncond_b=uncond_b
        )
        frames = decode(backend, latents, r.batch_size)
        record = sidecar("interpolate", r, backend.identity, lora, hashes)
    counter.finish()
    return InterpolationResult(frames, record)


@dataclass
class InversionResult:
    input: Image.Image
    reconstruction: Image.Image
    metrics: dict
    sidecar: dict
    edited: Optional[Image.Image] = None
    x_T: Optional[torch.Tensor] = field(default=None, repr=False)
    without_lora: Optional["InversionResult"] = None  # with compare_without_lora: the same job without the LoRA


def run_invert(
    backend: Backend, request: InvertRequest, cache: Optional[InversionCache] = None, progress: Optional[Progress] = None
) -> InversionResult:
    """Invert → reconstruct (→ edit by prompt switch for an EditRequest); metrics of the reconstruction."""
    return _with_comparison(_invert, backend, sized(validate(request), backend), cache, progress)


def _invert(backend: Backend, r: InvertRequest, cache: Optional[InversionCache], progress: Optional[Progress]) -> InversionResult:
    editing = isinstance(r, EditRequest)
    counter = StepCounter(_inversion_cost(r, 1) + r.steps * (2 if editing else 1), progress)
    picture = prepare_image(open_image_field("image", r.image), r.width, r.height)
    with lora_applied(backend, r.lora, r.lora_weight) as lora:
        inversion = invert_image(
            backend,
            picture,
            r.prompt,
            r.steps,
            r.inversion_guidance,
            r.negative_prompt,
            r.width,
            r.height,
            r.inversion,
            cache,
            on_step=counter,
            null_text_guidance=r.guidance,
            inner_steps=r.null_text_steps,
            on_iteration=counter.advance,
        )
        reconstruction = decode(backend, reconstruct(backend, inversion, r.guidance, r.negative_prompt, on_step=counter))[0]
        edited = None
        if editing:
            latent = reconstruct(backend, inversion, r.guidance, r.negative_prompt, r.target_prompt, r.switch_ratio, on_step=counter)
            edited = decode(backend, latent)[0]
        metrics = reconstruction_metrics(picture, reconstruction)
        record = sidecar("edit" if editing else "invert", r, backend.identity, lora, {"image": _sha(picture)}, {"metrics": metrics})
    counter.finish()
    return InversionResult(picture, reconstruction, metrics, record, edited, inversion.x_T)


@dataclass
class IstdResult:
    with_lora: IstdReport
    without_lora: Optional[IstdReport]
    sidecar: dict


def run_istd(backend: Backend, request: IstdRequest, progress: Optional[Progress] = None) -> IstdResult:
    """The paper's ISTD protocol on the request's prompts, with the LoRA (and optionally without)."""
    r = sized(validate(request), backend)
    prompts = [p for p in r.prompts if p.strip()]
    runs = 2 if (r.compare_without_lora and r.lora) else 1
    per_run = len(prompts) * r.pairs * -(-r.points // r.batch_size) * r.steps
    counter = StepCounter(per_run * runs, progress)
    settings = dict(
        prompts=prompts,
        pairs=r.pairs,
        seed=r.seed,
        steps=r.steps,
        guidance=r.guidance,
        width=r.width,
        height=r.height,
        points=r.points,
        negative_prompt=r.negative_prompt,
        batch_size=r.batch_size,
        on_step=counter,
    )
    baseline = None
    if runs == 2:
        with lora_applied(backend, None, 0.0):  # the host without any LoRA (the WebUI: the user's LoRAs off too)
            baseline = evaluate_istd(backend, **settings)
    with lora_applied(backend, r.lora, r.lora_weight) as lora:
        report = evaluate_istd(backend, **settings)
        extra: Dict[str, dict] = {"istd": report.as_dict()}
        if baseline is not None:
            extra["istd_without_lora"] = baseline.as_dict()
        record = sidecar("istd", r, backend.identity, lora, {}, extra)
    return IstdResult(report, baseline, record)


def run_job(name: str, backend: Backend, request, cache: Optional[InversionCache] = None, progress: Optional[Progress] = None):
    """The one runner behind the CLI, the HTTP API and the tab: the job `name` of :data:`JOB_REQUESTS`."""
    if name == "interpolate":
        return run_interpolate(backend, request, cache, progress)
    if name in ("invert", "edit"):
        return run_invert(backend, request, cache, progress)
    if name == "istd":
        return run_istd(backend, request, progress)
    raise ValueError(f"unknown job {name!r}; jobs: {', '.join(JOB_REQUESTS)}")
