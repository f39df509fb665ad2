"""``python -m lib_smooth``: Smooth Diffusion from the command line.

Job options are generated from the request models in :mod:`lib_smooth.requests`, so the CLI, the
WebUI and the API accept the same settings with the same limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from .console import check_device, check_formats, frame_rate, load_backend, prepare_output_folder, progress_bar
from .errors import SmoothDiffusionError
from .export import ANIMATION_FORMATS, write_animation, write_json, write_pngs
from .metrics import EXPLANATIONS, smoothness
from .requests import JOB_REQUESTS, image_file_to_field, number, type_name, validate

JOBS = JOB_REQUESTS
SUMMARIES = {
    "interpolate": "frames between two ends (images are DDIM-inverted; seeds give noise), x_T slerped, prompts lerped",
    "invert": "DDIM-invert an image, reconstruct it and report MSE / PSNR / SSIM (LPIPS when available)",
    "edit": "invert an image, then reconstruct it switching to a target prompt for the last steps",
    "istd": "ISTD smoothness (and scale-free companions) of the model on prompts, as in the paper",
}


# --- option building -----------------------------------------------------------------------------


def _add_request_options(parser: argparse.ArgumentParser, cls: type) -> None:
    group = parser.add_argument_group("job settings")
    for spec in dataclasses.fields(cls):
        meta, flag = spec.metadata, "--" + spec.name.replace("_", "-")
        help_text = meta["help"]
        if meta.get("low") is not None:
            help_text += f" [{number(meta['low'])}..{number(meta['high'])}]"
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        kind = type_name(spec)
        shown = meta.get("default_text") or repr(default)
        kwargs: dict[str, Any] = {"dest": spec.name, "default": default, "help": help_text + f" (default: {shown})"}
        if kind == "bool":
            group.add_argument(flag, action="store_true", **kwargs)
            continue
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        kwargs["type"] = {"int": int, "float": float}.get(kind, str)
        if meta.get("kind") == "image":
            kwargs["metavar"] = "IMAGE"
        group.add_argument(flag, **kwargs)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help="diffusers folder or single-file .safetensors/.ckpt checkpoint (SD1.x, SD2.x, SDXL). "
        "Default: the embedded shapes-sd1 model (64 px coloured shapes, lib_smooth/models)",
    )
    group.add_argument("--prediction", choices=("eps", "v"), help="override the model's prediction type (SD2 768-v checkpoints: v)")
    group.add_argument("--model-config", help="local diffusers config folder for a single-file checkpoint (offline)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="UNet/VAE precision (default: float32)")


def _add_output_options(parser: argparse.ArgumentParser, default_out: str, animation: bool) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    if animation:
        group.add_argument(
            "--formats", nargs="+", default=["gif"], choices=ANIMATION_FORMATS, help="animation formats; mp4 needs ffmpeg on PATH (default: gif)"
        )
        group.add_argument("--fps", type=frame_rate, default=16.0, help="animation frame rate, 1 to 60 (official demo: 16)")
        group.add_argument("--cache-dir", help="keep inverted latents here so later runs skip the inversion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_smooth", description="Smooth Diffusion (CVPR 2024): smooth interpolation, inversion, editing, ISTD and Smooth-LoRA files."
    )
    parser.add_argument("--version", action="version", version=f"lib_smooth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="interpolations and an inversion on the embedded model, plain vs its Smooth-LoRA side by side (GIFs, report.json, index.html)",
        description="Runs seed-to-seed and prompt-to-prompt interpolations, an image-to-image interpolation through inversion "
        "and an inversion + reconstruction, each on the plain model and with a Smooth-LoRA side by side, then writes GIFs, "
        "strips of frames, distance plots, report.json and index.html.",
    )
    _add_model_options(demo)
    demo.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    demo.add_argument("--steps", type=int, default=25, help="DDIM steps (default: 25)")
    demo.add_argument("--frames", type=int, default=16, help="frames per interpolation (default: 16)")
    demo.add_argument(
        "--guidance", type=float, default=5.0, help="classifier-free guidance (default: 5; the built-in model draws its prompts as well at 3 to 7.5)"
    )
    demo.add_argument("--size", type=int, default=64, help="image size in pixels (default: 64, the built-in model's size)")
    demo.add_argument(
        "--lora",
        help="Smooth-LoRA file to compare the plain model with (default: the shapes-sd1 Smooth-LoRA shipped in lib_smooth/models/Lora "
        "when no --model is given; 'none': the plain model only)",
    )
    demo.add_argument("--lora-weight", type=float, default=1.0, help="LoRA multiplier (default: 1)")

    for name, cls in JOBS.items():
        job = sub.add_parser(name, help=SUMMARIES[name], description=SUMMARIES[name])
        _add_request_options(job, cls)
        _add_model_options(job)
        _add_output_options(job, f"outputs/{name}", animation=(name == "interpolate"))

    convert = sub.add_parser(
        "convert-lora", help="convert a LoRA (kohya, diffusers/PEFT or official Smooth-LoRA) to a kohya file for the WebUI and sd-scripts"
    )
    convert.add_argument("input", help="LoRA file to read")
    convert.add_argument("output", help="kohya .safetensors file to write (never overwritten unless --overwrite)")
    convert.add_argument(
        "--arch", choices=("auto", "sd1", "sd2", "sdxl"), default="auto", help="model family for UNet key names (default: guessed from the file)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    convert.add_argument("--half", action="store_true", help="store fp16 tensors")

    inspect = sub.add_parser("inspect-lora", help="show a LoRA file's format, family, layers, ranks and metadata")
    inspect.add_argument("file", help="LoRA file")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    tokenizer = sub.add_parser(
        "make-tokenizer", help="write the CLIP tokenizer files (vocab.json, merges.txt, configs) offline from the open-clip-torch wheel"
    )
    tokenizer.add_argument("folder", help="folder to write into")
    tokenizer.add_argument(
        "--pad-token", default="<|endoftext|>", help='pad token: "<|endoftext|>" (SD1, SDXL first encoder) or "!" (SD2, SDXL second encoder)'
    )
    return parser


# --- running -------------------------------------------------------------------------------------


def _request_from_args(cls: type, args: argparse.Namespace):
    """The job's request from the command line; image options are paths, read here into the request."""
    values = {}
    for spec in dataclasses.fields(cls):
        value = getattr(args, spec.name)
        if spec.metadata.get("kind") == "image" and value:
            value = image_file_to_field(spec.name, value)
        values[spec.name] = value
    return validate(cls(**values))


def run_job(name: str, args: argparse.Namespace) -> dict:
    from .cache import InversionCache
    from .jobs import run_job as run

    request = _request_from_args(JOBS[name], args)
    check_device(args.device)
    if name == "interpolate":
        check_formats(args.formats)
    out = prepare_output_folder(args.out)
    backend, _ = load_backend(args)
    bar, update = progress_bar(name)
    try:
        result = run(name, backend, request, InversionCache(folder=getattr(args, "cache_dir", None)), update)
    finally:
        bar.close()
    if name == "interpolate":
        record = _interpolation_record(result, out, "", args)
        if result.without_lora is not None:  # beside, under the same names with a _without_lora suffix
            record["without_lora"] = _interpolation_record(result.without_lora, out, "_without_lora", args)
    elif name in ("invert", "edit"):
        record = _inversion_record(result, out, "")
        if result.without_lora is not None:
            record["without_lora"] = _inversion_record(result.without_lora, out, "_without_lora")
    else:
        record = dict(result.sidecar, explanations=EXPLANATIONS)
    write_json(record, out / f"{name}.json")
    return record


def _interpolation_record(result, out: Path, suffix: str, args: argparse.Namespace) -> dict:
    """Frames and animation written; the sidecar with their files and the sequence's smoothness figures."""
    files = {
        "frames": [str(p) for p in write_pngs(result.frames, out / f"frames{suffix}")],
        "animation": write_animation(result.frames, out / f"interpolation{suffix}", args.formats, args.fps),
    }
    figures = {k: v for k, v in smoothness(result.frames).as_dict().items() if k != "distances"}
    return dict(result.sidecar, files=files, smoothness=figures)


def _inversion_record(result, out: Path, suffix: str) -> dict:
    files = {"input": out / "input.png", "reconstruction": out / f"reconstruction{suffix}.png"}
    if result.edited is not None:
        files["edited"] = out / f"edited{suffix}.png"
        result.edited.save(files["edited"])
    result.input.save(files["input"])
    result.reconstruction.save(files["reconstruction"])
    return dict(result.sidecar, files={k: str(v) for k, v in files.items()})


def _print_summary(name: str, record: dict, out: str) -> None:
    runs = [("with LoRA" if record.get("lora") else "model", record)] + (
        [("without LoRA", record["without_lora"])] if "without_lora" in record else []
    )
    if name in ("invert", "edit"):
        for label, run in runs:
            metrics = run["metrics"]
            lpips = f"{metrics['lpips']:.4f}" if metrics["lpips"] is not None else metrics.get("lpips_note", "unavailable")
            print(f"reconstruction, {label}: MSE {metrics['mse']:.4f}  PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}  LPIPS {lpips}")
    if name == "interpolate":
        for label, run in runs:
            figures = run["smoothness"]
            print(f"{label}: " + "  ".join(f"{key} {figures[key]:.4g}" for key in ("istd", "normalized_istd", "max_step_ratio", "mean_step")))
    if name == "istd":
        for label, key in (("with LoRA" if record.get("lora") else "model", "istd"), ("without LoRA", "istd_without_lora")):
            if key in record:
                mean = record[key]["mean"]
                print(f"{label}: " + "  ".join(f"{field} {mean[field]:.4g}" for field in EXPLANATIONS))
        for field, text in EXPLANATIONS.items():
            print(f"  {field}: {text}")
    print(f"wrote {out}/{name}.json")


def inspect_lora(path: str, as_json: bool) -> None:
    from .lora_formats import load_lora

    network = load_lora(path)
    ranks = sorted({layer.rank for layer in network.layers.values()})
    components = {}
    for name in network.layers:
        prefix = name.split("_")[1]
        components[prefix] = components.get(prefix, 0) + 1
    info = {
        "file": path,
        "format": network.source_format,
        "family": network.arch or "unknown (SD1/SD2 naming)",
        "layers": len(network.layers),
        "layers_by_component": components,
        "ranks": ranks,
        "alphas": sorted({layer.alpha for layer in network.layers.values()}, key=lambda a: (a is None, a or 0)),
        "sha256": network.sha256,
        "metadata": {k: v for k, v in network.metadata.items() if len(v) < 200},
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        print(f"{key}: {value}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args)
        elif args.command in JOBS:
            _print_summary(args.command, run_job(args.command, args), args.out)
        elif args.command == "convert-lora":
            import torch

            from .lora_formats import load_lora, save_kohya

            network = load_lora(args.input, arch=None if args.arch == "auto" else args.arch)
            save_kohya(network, args.output, overwrite=args.overwrite, dtype=torch.float16 if args.half else None)
            print(f"wrote {args.output}: {len(network.layers)} layers from a {network.source_format} file, weight deltas unchanged")
        elif args.command == "inspect-lora":
            inspect_lora(args.file, args.json)
        elif args.command == "make-tokenizer":
            from .backends.clip_tokenizer import write_clip_tokenizer

            print(f"wrote the CLIP tokenizer to {write_clip_tokenizer(prepare_output_folder(args.folder), args.pad_token)}")
    except (SmoothDiffusionError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the user named cannot be written or read (read-only folder, a file where a folder is expected)
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
