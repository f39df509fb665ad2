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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar, Union

from PIL import Image, UnidentifiedImageError

from .errors import RequestError
from .invert import INVERSION_MODES

MAX_IMAGE_BYTES = 32 * 1024 * 1024
# Refused before decoding: inputs are resized to at most 2048 px anyway, and a 144 Mpx PNG decodes to ≈ 430 MB.
MAX_IMAGE_PIXELS = 40_000_000


def option(
    default: Any,
    help: str,
    low: Optional[float] = None,
    high: Optional[float] = None,
    choices: Optional[tuple] = None,
    multiple_of: Optional[int] = None,
    **extra: Any,
):
    """A dataclass field with the metadata the CLI and validation read (None: no such limit)."""
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
    steps: int = option(50, "DDIM steps", 1, 999)
    guidance: float = option(7.5, "classifier-free guidance scale for sampling", 1.0, 30.0)
    width: Optional[int] = option(None, "image width in pixels", 64, 2048, multiple_of=8, default_text="the model's native size")
    height: Optional[int] = option(None, "image height in pixels", 64, 2048, multiple_of=8, default_text="the model's native size")


def check_comparison(request) -> None:
    """A job run also without the LoRA needs a LoRA to compare with."""
    if request.compare_without_lora and not request.lora:
        raise RequestError("compare_without_lora needs a lora to compare with")


@dataclass
class InterpolateRequest(SamplingOptions, ModelOptions):
    prompt_a: str = option("", "prompt of the first end (and of both ends unless prompt_b is given)")
    prompt_b: str = option("", "prompt of the last end; its text conditioning is blended linearly")
    image_a: Optional[str] = option(
        None, "image of the first end (base64 PNG/JPEG or data URL; the CLI takes a path); inverted, else seed_a's noise is used", kind="image"
    )
    image_b: Optional[str] = option(
        None, "image of the last end (base64 PNG/JPEG or data URL; the CLI takes a path); inverted, else seed_b's noise is used", kind="image"
    )
    seed_a: int = option(0, "seed of the first end's noise when it has no image", 0, 2**32 - 1)
    seed_b: int = option(1, "seed of the last end's noise when it has no image", 0, 2**32 - 1)
    frames: int = option(24, "number of frames, ends included (official demo: 24)", 2, 240)
    inversion_guidance: float = option(1.0, "guidance while inverting images (paper: 1, the conditional branch only)", 1.0, 30.0)
    inversion: str = option(
        "ddim",
        "inversion mode for image ends: ddim (fast), ddim-no-text, null-text (official demo's default, "
        "≈ steps × null_text_steps extra UNet passes per image), dual-null-text (both ends images: one shared null set)",
        choices=INVERSION_MODES + ("dual-null-text",),
    )
    null_text_steps: int = option(10, "null-text inversion: Adam steps per sampling step, early stop allowed (official demo: 10)", 1, 50)
    batch_size: int = option(8, "frames sampled together", 1, 64)
    compare_without_lora: bool = option(False, "also interpolate between the same ends without the LoRA")

    def check(self) -> None:
        check_comparison(self)
        if not self.prompt_a and not self.prompt_b and not (self.image_a or self.image_b):
            raise RequestError("give at least prompt_a (or an image) to interpolate")
        if self.inversion == "dual-null-text" and not (self.image_a and self.image_b):
            raise RequestError("inversion dual-null-text needs both image_a and image_b")
        if not self.image_a and not self.image_b and self.seed_a == self.seed_b and self.prompt_b in ("", self.prompt_a):
            raise RequestError("both ends are the same (same seed, same prompt): change seed_b or give prompt_b")
        if self.inversion != "ddim" and not (self.image_a or self.image_b):
            raise RequestError(f"inversion {self.inversion} applies to image ends, and neither image_a nor image_b is given")


@dataclass
class InvertRequest(SamplingOptions, ModelOptions):
    image: Optional[str] = option(None, "image to invert (base64 PNG/JPEG or data URL; the CLI takes a path)", kind="image", required=True)
    prompt: str = option("", "source prompt describing the image")
    inversion_guidance: float = option(1.0, "guidance while inverting (paper: 1)", 1.0, 30.0)
    inversion: str = option(
        "ddim",
        "inversion mode: ddim (fast), ddim-no-text, null-text (official demo's default, "
        "≈ steps × null_text_steps extra UNet passes, much better reconstruction)",
        choices=INVERSION_MODES,
    )
    null_text_steps: int = option(10, "null-text inversion: Adam steps per sampling step, early stop allowed (official demo: 10)", 1, 50)
    compare_without_lora: bool = option(False, "also invert (and edit) the same image without the LoRA")

    def check(self) -> None:
        check_comparison(self)
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
        check_comparison(self)
        if not [p for p in self.prompts if p.strip()]:
            raise RequestError("give at least one non-empty prompt")


@dataclass
class AccordionRequest(ModelOptions):
    """txt2img / img2img's Smooth Diffusion accordion (also the API's alwayson_scripts args, in this order:
    enabled, lora, lora_weight)."""

    enabled: bool = option(False, "apply the Smooth-LoRA to this generation")

    ARGS = ("enabled", "lora", "lora_weight")


@dataclass
class SmoothInversionRequest:
    """img2img's "Smooth inversion" script (the API's script_args, in this order: source_prompt,
    switch_ratio, inversion)."""

    source_prompt: str = option("", "prompt describing the init image (empty: the img2img prompt, i.e. reconstruct)")
    switch_ratio: float = option(0.8, "share r of the last steps that use the img2img prompt (official demo: 0.8)", 0.0, 1.0)
    inversion: str = option("ddim", "inversion mode (the whole schedule is inverted: Denoising strength is not used)", choices=INVERSION_MODES)

    ARGS = ("source_prompt", "switch_ratio", "inversion")


R = TypeVar("R")

#: every job by name, with its request model: the CLI's commands, the API's routes and the tab's panels
JOB_REQUESTS: Dict[str, type] = {"interpolate": InterpolateRequest, "invert": InvertRequest, "edit": EditRequest, "istd": IstdRequest}


def field_meta(cls: type, name: str) -> Dict[str, Any]:
    """One field's metadata (help, limits, choices): what the UI builds its controls from."""
    return dict(next(spec.metadata for spec in dataclasses.fields(cls) if spec.name == name))


def number(value: float) -> str:
    """A limit as people write it: 4294967295, not 4.29497e+09; 0.5 stays 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def type_name(spec: dataclasses.Field) -> str:
    """The field's type as written in the dataclass, without Optional: "int", "List[str]"."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    return kind[len("Optional[") : -1] if kind.startswith("Optional[") else kind


def native_size(backend: Any) -> int:
    """The side the model was trained at (64 shapes-sd1, 512 SD1, 768 SD2-v, 1024 SDXL); 512 if it does not say."""
    return int(getattr(backend, "native_size", 512) or 512)


def sized(request: R, backend: Any) -> R:
    """The request with an unset width/height filled in with the model's native size."""
    side = native_size(backend)
    return dataclasses.replace(request, width=request.width or side, height=request.height or side)


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
            raise RequestError(f"{spec.name} must be between {number(meta['low'])} and {number(meta['high'])}; got {value}")
        if meta.get("multiple_of") and value % meta["multiple_of"]:
            raise RequestError(f"{spec.name} must be a multiple of {meta['multiple_of']}; got {value}")
    if hasattr(request, "check"):  # the request's own cross-field rules, where it has any
        request.check()
    return request


def from_args(cls: Type[R], args: Sequence[Any]) -> R:
    """A script's positional arguments (the UI's component values, the API's args lists) as its request."""
    if len(args) > len(cls.ARGS):
        raise RequestError(f"{cls.__name__} takes at most {len(cls.ARGS)} arguments ({', '.join(cls.ARGS)}); got {len(args)}")
    return from_dict(cls, dict(zip(cls.ARGS, args)))


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
    """JSON values as the field's type; numbers must be JSON numbers ("3" is a string, not an int)."""
    kind = type_name(spec)
    if value is None:
        declared = spec.type if isinstance(spec.type, str) else str(spec.type)
        if declared.startswith("Optional["):
            return None
        raise RequestError(f"{name} must be of type {kind}; got null")
    try:
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
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
        raise RequestError(f"{name} must be of type {kind}; got {value!r}") from None


def open_image_field(name: str, value: Union[str, Image.Image]) -> Image.Image:
    """An image field's value as an RGB PIL image: base64 PNG/JPEG (a data URL is accepted) or, from
    Python, a PIL image. Never a path: a request must not make the server read its own files (the CLI
    reads the user's files itself, see :func:`image_file_to_field`)."""
    if isinstance(value, Image.Image):
        return _checked_pixels(name, value).convert("RGB")
    refusal = f"{name} must be a base64-encoded PNG/JPEG image or a data URL (data:image/png;base64,...)"
    if not isinstance(value, str):
        raise RequestError(refusal)
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(refusal) from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise RequestError(f"{name} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        return _checked_pixels(name, Image.open(io.BytesIO(raw))).convert("RGB")
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError(f"{name} has far more than {MAX_IMAGE_PIXELS // 10**6} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(refusal) from None


def _checked_pixels(name: str, image: Image.Image) -> Image.Image:
    """Refuse an image above MAX_IMAGE_PIXELS from its header, before its pixels are decoded."""
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise RequestError(
            f"{name} is {image.width}×{image.height} px; images up to {MAX_IMAGE_PIXELS // 10**6} megapixels are accepted "
            "(they are resized to the job's size anyway)"
        )
    return image


def image_file_to_field(name: str, path: str) -> str:
    """The CLI's form: read an image file the user named and return it as a data URL for the request."""
    file = Path(path)
    if not file.exists():
        raise RequestError(f"{name}: file not found: {path}")
    if not file.is_file():
        raise RequestError(f"{name}: {path} is a folder, not an image file")
    try:
        with Image.open(file) as image:
            _checked_pixels(name, image)
            fmt = image.format
    except Image.DecompressionBombError:
        raise RequestError(f"{name}: {path} has far more than {MAX_IMAGE_PIXELS // 10**6} megapixels") from None
    except UnidentifiedImageError:
        raise RequestError(f"{name}: {path} is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except OSError as error:
        raise RequestError(f"{name}: cannot read {path}: {error.strerror or error}") from None
    data = file.read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestError(f"{name}: {path} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    return f"data:image/{(fmt or 'png').lower()};base64," + base64.b64encode(data).decode()
