"""``python -m lib_smooth demo``: every main job once, written as GIFs, PNGs, report.json and index.html."""

from __future__ import annotations

import argparse
import base64
import html
import time
from pathlib import Path

from PIL import Image, ImageDraw

from .cache import InversionCache
from .export import write_animation, write_json, write_pngs
from .images import png_bytes
from .jobs import run_interpolate, run_invert
from .metrics import EXPLANATIONS, smoothness
from .requests import InterpolateRequest, InvertRequest


def shape_image(size: int, shape: str, colour: str, background: str) -> Image.Image:
    """A centred circle or square on a plain background: a real image for inversion without downloads."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def run_demo(args: argparse.Namespace) -> dict:
    from .cli import progress_bar, load_backend

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = load_backend(args)
    built_in = not args.model
    size, common = args.size, dict(steps=args.steps, width=args.size, height=args.size, lora=args.lora, lora_weight=args.lora_weight)
    circle = shape_image(size, "circle", "red", "blue")
    square = shape_image(size, "square", "green", "yellow")
    cache = InversionCache()
    jobs = {
        "seeds": InterpolateRequest(prompt_a="a red circle on a blue background", seed_a=1, seed_b=2, frames=args.frames, **common),
        "prompts": InterpolateRequest(prompt_a="a red circle on a blue background", prompt_b="a green square on a yellow background",
                                      seed_a=3, seed_b=3, frames=args.frames, **common),
        "images": InterpolateRequest(prompt_a="a red circle on a blue background", prompt_b="a green square on a yellow background",
                                     image_a=_b64(circle), image_b=_b64(square), frames=args.frames, **common),
    }
    report: dict = {"model": "built-in tiny random-weight SD1-architecture model (abstract images: it shows the pipeline, not quality)"
                    if built_in else args.model, "model_hash": backend.identity, "interpolations": {}}
    for name, request in jobs.items():
        bar, update = progress_bar(f"interpolation ({name})")
        start = time.perf_counter()
        result = run_interpolate(backend, request, cache, update)
        bar.close()
        files = write_animation(result.frames, out / f"interpolation_{name}", ("gif",))
        write_pngs(result.frames, out / f"frames_{name}")
        report["interpolations"][name] = {"seconds": round(time.perf_counter() - start, 2), "gif": Path(files["gif"]).name,
                                          "smoothness": smoothness(result.frames).as_dict(), "sidecar": result.sidecar}
    bar, update = progress_bar("inversion + reconstruction")
    inversion = run_invert(backend, InvertRequest(image=_b64(circle), prompt="a red circle on a blue background", **common), cache, update)
    bar.close()
    inversion.input.save(out / "inversion_input.png")
    inversion.reconstruction.save(out / "inversion_reconstruction.png")
    report["inversion"] = {"metrics": inversion.metrics, "input": "inversion_input.png", "reconstruction": "inversion_reconstruction.png",
                           "sidecar": inversion.sidecar}
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


def _index_html(report: dict) -> str:
    rows = []
    for name, item in report["interpolations"].items():
        s = item["smoothness"]
        rows.append(f"<figure><img src='{item['gif']}' width=256><figcaption>{html.escape(name)}: ISTD {s['istd']:.3f}, "
                    f"normalised {s['normalized_istd']:.3f}</figcaption></figure>")
    inv = report["inversion"]
    m = inv["metrics"]
    rows.append(f"<figure><img src='{inv['input']}' width=256><img src='{inv['reconstruction']}' width=256>"
                f"<figcaption>inversion: input | reconstruction — PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}</figcaption></figure>")
    return ("<!doctype html><meta charset=utf-8><title>Smooth Diffusion demo</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{image-rendering:pixelated;margin-right:4px}</style>"
            f"<h1>Smooth Diffusion demo</h1><p>Model: {html.escape(str(report['model']))}</p>" + "".join(rows))
