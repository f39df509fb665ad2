"""``python -m lib_smooth demo``: every main job once, written as GIFs, PNGs, report.json and index.html."""

from __future__ import annotations

import argparse
import base64
import html
import time
from pathlib import Path

from PIL import Image

from .backends.shapes_model import CIRCLE_CAPTION, DEMO_IMAGE, SQUARE_CAPTION
from .cache import InversionCache
from .console import check_device, load_backend, prepare_output_folder, progress_bar
from .export import write_animation, write_json, write_pngs
from .images import png_bytes
from .jobs import run_interpolate, run_invert
from .metrics import EXPLANATIONS, smoothness
from .requests import InterpolateRequest, InvertRequest, validate


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def run_demo(args: argparse.Namespace) -> dict:
    common = dict(steps=args.steps, guidance=args.guidance, width=args.size, height=args.size, lora=args.lora, lora_weight=args.lora_weight)
    circle, square = CIRCLE_CAPTION, SQUARE_CAPTION
    jobs = {
        "seeds": InterpolateRequest(prompt_a=circle, seed_a=1, seed_b=2, frames=args.frames, **common),
        "prompts": InterpolateRequest(prompt_a=circle, prompt_b=square, seed_a=3, seed_b=3, frames=args.frames, **common),
    }
    for request in jobs.values():  # bad settings are refused before the model loads
        validate(request)
    check_device(args.device)
    out = prepare_output_folder(args.out)
    backend, description = load_backend(args)
    cache = InversionCache()
    report: dict = {"model": description, "model_hash": backend.identity, "interpolations": {}}
    results = {}
    for name, request in jobs.items():
        results[name] = _interpolation(backend, name, request, cache, out, report)
    # Between two generated images, through inversion: the red circle of seed 1 and the green square of seed 3.
    generated = InterpolateRequest(
        prompt_a=circle,
        prompt_b=square,
        image_a=_b64(results["seeds"].frames[0]),
        image_b=_b64(results["prompts"].frames[-1]),
        frames=args.frames,
        **common,
    )
    _interpolation(backend, "images", generated, cache, out, report)
    bar, update = progress_bar("inversion + reconstruction")
    # A rendered training-style image (not a generated one): inversion of a real input, as in the paper's Table 2.
    with Image.open(DEMO_IMAGE) as picture:
        inversion = run_invert(backend, InvertRequest(image=picture.convert("RGB"), prompt=circle, **common), cache, update)
    bar.close()
    inversion.input.save(out / "inversion_input.png")
    inversion.reconstruction.save(out / "inversion_reconstruction.png")
    report["inversion"] = {
        "metrics": inversion.metrics,
        "input": "inversion_input.png",
        "reconstruction": "inversion_reconstruction.png",
        "sidecar": inversion.sidecar,
    }
    report["explanations"] = EXPLANATIONS
    write_json(report, out / "report.json")
    (out / "index.html").write_text(_index_html(report))
    metrics = inversion.metrics
    print(f"model: {report['model']}")
    for name, item in report["interpolations"].items():
        s = item["smoothness"]
        print(f"interpolation {name:8s}: {out / item['gif']}  ISTD {s['istd']:.3f}  normalised {s['normalized_istd']:.3f}  ({item['seconds']} s)")
    print(f"inversion: PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f}  MSE {metrics['mse']:.4f}")
    print(f"wrote {out / 'report.json'} and {out / 'index.html'}")
    return report


def _interpolation(backend, name: str, request: InterpolateRequest, cache: InversionCache, out: Path, report: dict):
    bar, update = progress_bar(f"interpolation ({name})")
    start = time.perf_counter()
    result = run_interpolate(backend, request, cache, update)
    bar.close()
    files = write_animation(result.frames, out / f"interpolation_{name}", ("gif",))
    write_pngs(result.frames, out / f"frames_{name}")
    report["interpolations"][name] = {
        "seconds": round(time.perf_counter() - start, 2),
        "gif": Path(files["gif"]).name,
        "smoothness": smoothness(result.frames).as_dict(),
        "sidecar": result.sidecar,
    }
    return result


def _index_html(report: dict) -> str:
    rows = []
    for name, item in report["interpolations"].items():
        s = item["smoothness"]
        rows.append(
            f"<figure><img src='{item['gif']}' width=256><figcaption>{html.escape(name)}: ISTD {s['istd']:.3f}, "
            f"normalised {s['normalized_istd']:.3f}</figcaption></figure>"
        )
    inv = report["inversion"]
    m = inv["metrics"]
    rows.append(
        f"<figure><img src='{inv['input']}' width=256><img src='{inv['reconstruction']}' width=256>"
        f"<figcaption>inversion: input | reconstruction — PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}</figcaption></figure>"
    )
    return (
        "<!doctype html><meta charset=utf-8><title>Smooth Diffusion demo</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{image-rendering:pixelated;margin-right:4px}</style>"
        f"<h1>Smooth Diffusion demo</h1><p>Model: {html.escape(str(report['model']))}</p>" + "".join(rows)
    )
