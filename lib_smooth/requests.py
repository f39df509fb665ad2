"""The request models shared by the command line, the WebUI panels and the HTTP API.

Each job's settings are one dataclass; every field carries its help text and limits in its metadata,
from which the CLI builds its options and the API its validation. `validate()` turns every bad value
into a :class:`RequestError` that names the field and the allowed range.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar

from PIL import Image, UnidentifiedImageError

from .errors import RequestError
from .invert import INVERSION_MODES

MAX_IMAGE_BYTES = 32 * 1024 * 1024


def option(default: Any, help: str, low: Optional[float] = None, high: Optional[float] = None, choices: Optional[tuple] = None, multiple_of: int = 0, **extra: Any):
    """A dataclass field with the metadata the CLI and validation read."""
    metadata = {"help": help, "low": low, "high": high, "choices": choices, "multiple_of": multiple_of, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelOptions:
    lora: Optional[str] = option(None, "Smooth-LoRA file to apply (kohya, diffusers/PEFT or official format)")
    lora_weight: float = option(1.0, "LoRA multiplier", -4.0, 4.0)


@dataclass
class SamplingOptions:
    negative_prompt: str = option("", "negative prompt (the unconditional branch of guidance)")
    steps: int = option(50, "DDIM steps", 1, 1000)
    guidance: float = option(7.5, "classifier-free guidance scale for sampling", 1.0, 30.0)
    width: int = option(512, "image width in pixels", 64, 2048, multiple_of=8)
    height: int = option(512, "image height in pixels", 64, 2048, multiple_of=8)


@dataclass
class InterpolateRequest(SamplingOptions, ModelOptions):
    prompt_a: str = option("", "prompt of the first end (and of both ends unless prompt_b is given)")
    prompt_b: str = option("", "prompt of the last end; its text conditioning is blended linearly")
    image_a: Optional[str] = option(None, "image of the first end (path or base64); inverted, else seed_a's noise is used", kind="image")
    image_b: Optional[str] = option(None, "image of the last end (path or base64); inverted, else seed_b's noise is used", kind="image")
    seed_a: int = option(0, "seed of the first end's noise when it has no image", 0, 2**32 - 1)
    seed_b: int = option(1, "seed of the last end's noise when it has no image", 0, 2**32 - 1)
    frames: int = option(24, "number of frames, ends included (official demo: 24)", 2, 240)
    inversion_guidance: float = option(1.0, "guidance while inverting images (paper: 1, the conditional branch only)", 1.0, 30.0)
    inversion: str = option("ddim", "inversion mode for image ends: ddim (fast), ddim-no-text, null-text (official demo's default, "
                            "≈ steps × null_text_steps extra UNet passes per image), dual-null-text (both ends images: one shared null set)",
                            choices=INVERSION_MODES + ("dual-null-text",))
    null_text_steps: int = option(10, "null-text inversion: Adam steps per sampling step, early stop allowed (official demo: 10)", 1, 50)
    batch_size: int = option(8, "frames sampled together", 1, 64)

    def check(self) -> None:
        if not self.prompt_a and not self.prompt_b and not (self.image_a or self.image_b):
            raise RequestError("give at least prompt_a (or an image) to interpolate")
        if self.inversion == "dual-null-text" and not (self.image_a and self.image_b):
            raise RequestError("inversion dual-null-text needs both image_a and image_b")
        if not self.image_a and not self.image_b and self.seed_a == self.seed_b and self.prompt_b in ("", self.prompt_a):
            raise RequestError("both ends are the same (same seed, same prompt): change seed_b or give prompt_b")


@dataclass
class InvertRequest(SamplingOptions, ModelOptions):
    image: Optional[str] = option(None, "image to invert (path or base64)", kind="image", required=True)
    prompt: str = option("", "source prompt describing the image")
    inversion_guidance: float = option(1.0, "guidance while inverting (paper: 1)", 1.0, 30.0)
    inversion: str = option("ddim", "inversion mode: ddim (fast), ddim-no-text, null-text (official demo's default, "
                            "≈ steps × null_text_steps extra UNet passes, much better reconstruction)", choices=INVERSION_MODES)
    null_text_steps: int = option(10, "null-text inversion: Adam steps per sampling step, early stop allowed (official demo: 10)", 1, 50)

    def check(self) -> None:
        if not self.image:
            raise RequestError("image is required")


@dataclass
class EditRequest(InvertRequest):
    target_prompt: str = option("", "prompt describing the edited image", required=True)
    switch_ratio: float = option(0.8, "share r of the last steps that use the target prompt (official demo: 0.8)", 0.0, 1.0)

    def check(self) -> None:
        super().check()
        if not self.target_prompt:
            raise RequestError("target_prompt is required for an edit")


@dataclass
class IstdRequest(SamplingOptions, ModelOptions):
    prompts: List[str] = option(["a photograph of a cat"], "prompts, one interpolation sequence per prompt and pair", nargs="+")
    pairs: int = option(1, "noise endpoint pairs per prompt", 1, 1000)
    points: int = option(11, "frames per sequence, ends included (paper: 11)", 3, 101)
    seed: int = option(0, "seed of the first noise pair; pairs use consecutive seeds", 0, 2**32 - 1)
    batch_size: int = option(11, "frames sampled together", 1, 64)
    compare_without_lora: bool = option(False, "also measure the model without the LoRA")

    def check(self) -> None:
        if not [p for p in self.prompts if p.strip()]:
            raise RequestError("give at least one non-empty prompt")


R = TypeVar("R")


def validate(request: Any) -> Any:
    """Check every field against its metadata, then the request's own cross-field rules."""
    for spec in dataclasses.fields(request):
        value, meta = getattr(request, spec.name), spec.metadata
        if meta.get("required") and value in (None, ""):
            raise RequestError(f"{spec.name} is required")
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise RequestError(f"{spec.name} must be one of {', '.join(meta['choices'])}; got {value!r}")
        if meta.get("low") is not None and not meta["low"] <= value <= meta["high"]:
            raise RequestError(f"{spec.name} must be between {meta['low']:g} and {meta['high']:g}; got {value}")
        if meta.get("multiple_of") and value % meta["multiple_of"]:
            raise RequestError(f"{spec.name} must be a multiple of {meta['multiple_of']}; got {value}")
    request.check()
    return request


def from_dict(cls: Type[R], data: Dict[str, Any]) -> R:
    """Build and validate a request from a JSON-like dict, refusing unknown fields and wrong types."""
    names = {spec.name: spec for spec in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    values = {}
    for key, value in data.items():
        values[key] = _coerce(key, names[key], value)
    return validate(cls(**values))


def _coerce(name: str, spec: dataclasses.Field, value: Any) -> Any:
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    if value is None:
        return None
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("List"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return value
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be of type {kind.replace('Optional[', '').rstrip(']')}; got {value!r}") from None


def open_image_field(name: str, value: str) -> Image.Image:
    """An image field's value as a PIL image: an existing file path, or base64 (a data URL is accepted)."""
    try:
        if len(value) < 4096 and os.path.isfile(value):
            return Image.open(value).convert("RGB")
        payload = value.split(",", 1)[1] if value.startswith("data:") else value
        raw = base64.b64decode(payload, validate=True)
        if len(raw) > MAX_IMAGE_BYTES:
            raise RequestError(f"{name} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
        return Image.open(io.BytesIO(raw)).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as error:
        if isinstance(error, RequestError):
            raise
        raise RequestError(f"{name} is neither an image file path nor a base64-encoded image ({type(error).__name__})") from None
