"""txt2img/img2img integration: a Smooth-LoRA on ordinary generations, and img2img "Smooth inversion".

The accordion adds the chosen LoRA as a `<lora:name:weight>` tag after the WebUI has expanded the
prompts and before it parses extra networks, so the built-in Lora extension loads it exactly as if it
had been typed, and writes `Smooth-LoRA: name:weight` into the infotext (pasting it restores the
accordion). "Smooth inversion" replaces img2img's sampling: the init image is DDIM-inverted with the
source prompt and sampled back with the img2img prompt for the last r of the steps.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Tuple

from .ui import NONE

INFOTEXT_KEY = "Smooth-LoRA"


def add_lora_to_prompts(p, *args) -> None:
    """The accordion (args: its AccordionRequest fields in order): add `<lora:name:weight>` to every
    prompt — unless the prompt already carries the tag (an infotext pasted back holds it), so the LoRA is
    never applied twice. Any problem refuses the generation with its reason instead of giving an image
    without the LoRA."""
    from ..errors import SmoothDiffusionError
    from ..requests import AccordionRequest, from_args
    from .host import open_backend

    try:
        request = from_args(AccordionRequest, [None if value == NONE else value for value in args])
        if not request.enabled or not request.lora:
            return
        name = open_backend(p.sd_model).checked_lora_name(request.lora)
    except SmoothDiffusionError as error:
        refuse(p, error)
        return
    tag = f"<lora:{name}:{request.lora_weight:g}>"
    has_tag = re.compile(rf"<lora:{re.escape(name)}:", re.IGNORECASE)
    p.all_prompts = [prompt if has_tag.search(prompt) else f"{prompt} {tag}" for prompt in p.all_prompts]
    if getattr(p, "all_hr_prompts", None):
        p.all_hr_prompts = [prompt if has_tag.search(prompt) else f"{prompt} {tag}" for prompt in p.all_hr_prompts]
    p.extra_generation_params[INFOTEXT_KEY] = f"{request.lora}:{request.lora_weight:g}"


def _http_error() -> type:
    """fastapi's HTTPException inside the WebUIs, whose API answers it without printing a traceback
    (any other exception is reported as an "API error" with one); Exception where fastapi is absent."""
    try:
        from fastapi.exceptions import HTTPException
    except ImportError:
        return Exception
    return HTTPException


class GenerationRefused(_http_error()):
    """A txt2img/img2img generation stopped with a reason. The WebUI's API answers an exception with
    its `status_code` and `detail` attributes, and its UI shows the message."""

    def __init__(self, status_code: int, detail: str):
        Exception.__init__(self, f"Smooth Diffusion: {detail}")
        self.status_code, self.detail, self.headers = status_code, detail, None

    def __str__(self) -> str:
        return str(self.args[0])


def refused(error: Exception) -> GenerationRefused:
    from ..errors import Interrupted, RequestError

    status = 422 if isinstance(error, RequestError) else 409 if isinstance(error, Interrupted) else 400
    return GenerationRefused(status, str(error))


def refuse(p, error: Exception) -> None:
    """Stop the generation with `error` through the WebUI's own error path. Exceptions from a script's
    process() are only logged by the WebUI, so the sampling call, whose exceptions reach the UI and the
    API, raises it instead."""

    def sample(*_args, **_kwargs):
        raise refused(error)

    p.sample = sample


def parse_infotext(value: str) -> Tuple[str, float]:
    """ "name:weight" → (name, weight); a name may itself contain colons."""
    name, _, weight = value.rpartition(":")
    try:
        return (name, float(weight)) if name else (value, 1.0)
    except ValueError:
        return value, 1.0


def accordion_from_infotext(parameters: dict) -> Optional[Tuple[str, float]]:
    """What a pasted infotext sets in the accordion, from the WebUI's parsed parameters: (LoRA, weight),
    or None when the generation had no Smooth-LoRA (the accordion is then switched off)."""
    return parse_infotext(str(parameters[INFOTEXT_KEY])) if INFOTEXT_KEY in parameters else None


def smooth_inversion_sampler(p, request) -> Callable:
    """A replacement for `p.sample` that starts from the DDIM inversion of the init image.

    It inverts the whole schedule, so img2img's Denoising strength plays no part: the infotext says
    so instead of recording a strength that was not used."""
    import torch
    from modules import devices

    from ..errors import SmoothDiffusionError
    from ..invert import invert_image, reconstruct
    from .api import webui_progress
    from .host import open_backend

    def sample(conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        backend, progress = open_backend(p.sd_model), webui_progress("smooth inversion")
        target = prompts[0]  # the img2img prompt with extra-network tags already removed
        source, switch_ratio, mode = request.source_prompt.strip() or target, request.switch_ratio, request.inversion
        try:
            # Forge samples under inference_mode, where null-text inversion's gradients cannot exist
            with torch.inference_mode(False):
                inversion = invert_image(
                    backend,
                    p.init_images[0],
                    source,
                    steps=p.steps,
                    negative_prompt=p.negative_prompt,
                    width=p.width,
                    height=p.height,
                    mode=mode,
                    null_text_guidance=p.cfg_scale,
                    on_step=lambda i, n, x: progress(i + 1, 2 * n, x),
                )
                latent = reconstruct(
                    backend,
                    inversion,
                    p.cfg_scale,
                    p.negative_prompt,
                    target if source != target else None,
                    switch_ratio,
                    on_step=lambda i, n, x: progress(n + i + 1, 2 * n, x),
                )
        except SmoothDiffusionError as error:
            raise refused(error) from None
        finally:
            progress.close()
        p.extra_generation_params.pop("Denoising strength", None)
        p.extra_generation_params.update(
            {
                "Smooth inversion": f"{mode} (whole schedule; denoising strength not used)",
                "Smooth source prompt": source,
                "Smooth switch": switch_ratio,
            }
        )
        return latent.repeat(len(prompts), 1, 1, 1).to(devices.device)

    return sample
