"""``python -m lib_smooth demo``: every main job without and with a Smooth-LoRA, side by side.

Each interpolation (two seeds under one prompt, two prompts, two images through inversion) and an
inversion run once on the plain model and once with the Smooth-LoRA — by default the one shipped for
the embedded model — from the same seeds, prompts and images, so the LoRA is the only difference. Written:
GIFs, strips of frames, an adjacent-distance plot per interpolation, report.json and index.html; the
terminal says per job how much smoother (or not) the LoRA made it, as measured.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import time
from pathlib import Path
from typing import Dict, List, Optional

from PIL import Image

from .backends.shapes_model import CIRCLE_CAPTION, DEMO_IMAGE, PARTIAL_CAPTION, SMOOTH_LORA, SQUARE_CAPTION
from .cache import InversionCache
from .console import check_device, load_backend, prepare_output_folder, progress_bar
from .errors import RequestError
from .export import write_animation, write_json, write_pngs
from .images import png_bytes
from .jobs import run_interpolate, run_invert
from .metrics import EXPLANATIONS, smoothness
from .plots import distance_plot
from .requests import InterpolateRequest, InvertRequest, validate

FIGURES = ("istd", "normalized_istd", "max_step_ratio")


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def demo_lora(args: argparse.Namespace) -> Optional[str]:
    """The LoRA to compare with: --lora, else the shipped Smooth-LoRA on the embedded model; "none": none."""
    if args.lora:
        return None if args.lora.lower() == "none" else args.lora
    return None if args.model else str(SMOOTH_LORA)


def strip(frames: List[Image.Image], most: int = 8) -> Image.Image:
    """Up to `most` evenly spaced frames side by side, first and last included."""
    picks = [frames[round(i * (len(frames) - 1) / (most - 1))] for i in range(most)] if len(frames) > most else frames
    width, height = picks[0].size
    canvas = Image.new("RGB", (width * len(picks), height), "white")
    for index, frame in enumerate(picks):
        canvas.paste(frame, (index * width, 0))
    return canvas


def run_demo(args: argparse.Namespace) -> dict:
    lora = demo_lora(args)
    if lora and not Path(lora).is_file():
        raise RequestError(f"--lora: file not found: {lora}")
    variants: Dict[str, Optional[str]] = {"plain": None, "smooth": lora} if lora else {"plain": None}
    common = dict(steps=args.steps, guidance=args.guidance, width=args.size, height=args.size, lora_weight=args.lora_weight)
    jobs = {
        "seeds": InterpolateRequest(prompt_a=PARTIAL_CAPTION, seed_a=1, seed_b=2, frames=args.frames, **common),
        "prompts": InterpolateRequest(prompt_a=CIRCLE_CAPTION, prompt_b=SQUARE_CAPTION, seed_a=3, seed_b=3, frames=args.frames, **common),
    }
    for request in jobs.values():  # bad settings are refused before the model loads
        validate(request)
    check_device(args.device)
    out = prepare_output_folder(args.out)
    backend, description = load_backend(args)
    cache = InversionCache()
    report: dict = {"model": description, "model_hash": backend.identity, "interpolations": {}, "inversion": {}}
    report["lora"] = {"file": Path(lora).name, "weight": args.lora_weight} if lora else None
    results = {}
    for name, request in jobs.items():
        results[name] = _interpolation(backend, name, request, variants, cache, out, report)
    if lora:
        report["lora"]["sha256"] = results["seeds"]["smooth"].sidecar["lora"]["sha256"]
    # Between two generated images, through inversion: the plain model's red circle and green square of
    # seed 3 (the prompt interpolation's ends), the same two images for both variants.
    images = InterpolateRequest(
        prompt_a=CIRCLE_CAPTION,
        prompt_b=SQUARE_CAPTION,
        image_a=_b64(results["prompts"]["plain"].frames[0]),
        image_b=_b64(results["prompts"]["plain"].frames[-1]),
        frames=args.frames,
        **common,
    )
    _interpolation(backend, "images", images, variants, cache, out, report)
    # A rendered training-style image (not a generated one): inversion of a real input, as in the paper's Table 2.
    with Image.open(DEMO_IMAGE) as picture:
        source = picture.convert("RGB")
    inverted_input = None
    for variant, path in variants.items():
        bar, update = progress_bar(f"inversion + reconstruction ({variant})")
        inversion = run_invert(backend, InvertRequest(image=source, prompt=CIRCLE_CAPTION, lora=path, **common), cache, update)
        bar.close()
        if inverted_input is None:  # the same prepared input for both variants
            inverted_input = inversion.input
            inverted_input.save(out / "inversion_input.png")
        inversion.reconstruction.save(out / f"inversion_reconstruction_{variant}.png")
        report["inversion"][variant] = {
            "metrics": inversion.metrics,
            "input": "inversion_input.png",
            "reconstruction": f"inversion_reconstruction_{variant}.png",
            "sidecar": inversion.sidecar,
        }
    report["explanations"] = EXPLANATIONS
    write_json(report, out / "report.json")
    (out / "index.html").write_text(_index_html(report))
    _print_summary(report, out)
    return report


def _interpolation(backend, name: str, request: InterpolateRequest, variants: Dict[str, Optional[str]], cache, out: Path, report: dict):
    entries, results = {}, {}
    for variant, path in variants.items():
        bar, update = progress_bar(f"interpolation ({name}, {variant})")
        start = time.perf_counter()
        result = run_interpolate(backend, dataclasses.replace(request, lora=path), cache, update)
        bar.close()
        stem = f"interpolation_{name}_{variant}"
        files = write_animation(result.frames, out / stem, ("gif",))
        write_pngs(result.frames, out / f"frames_{name}_{variant}")
        strip(result.frames).save(out / f"strip_{name}_{variant}.png")
        entries[variant] = {
            "seconds": round(time.perf_counter() - start, 2),
            "gif": Path(files["gif"]).name,
            "strip": f"strip_{name}_{variant}.png",
            "smoothness": smoothness(result.frames).as_dict(),
            "sidecar": result.sidecar,
        }
        results[variant] = result
    series = [(variant, entry["smoothness"]["distances"], entry["smoothness"]["mean_step"]) for variant, entry in entries.items()]
    distance_plot(series, f"{name}: adjacent-frame L2 distance per step (dashed: mean step)").save(out / f"distances_{name}.png")
    report["interpolations"][name] = dict(entries, plot=f"distances_{name}.png")
    return results


def change(plain: float, smooth: float) -> str:
    """How the Smooth-LoRA moved a figure, in words a reader can act on."""
    if plain == 0:
        return "no change" if smooth == 0 else "up from 0"
    percent = 100 * (smooth - plain) / plain
    return f"{'lower' if percent < 0 else 'higher'} by {abs(percent):.0f} %"


def _print_summary(report: dict, out: Path) -> None:
    print(f"model: {report['model']}")
    if report["lora"]:
        print(f"Smooth-LoRA: {report['lora']['file']} at weight {report['lora']['weight']:g} (lower ISTD = smoother)")
    for name, item in report["interpolations"].items():
        plain = item["plain"]["smoothness"]
        line = f"interpolation {name:8s}: plain ISTD {plain['istd']:.3f} normalised {plain['normalized_istd']:.3f}"
        if "smooth" in item:
            smooth = item["smooth"]["smoothness"]
            line += (
                f"  | Smooth-LoRA ISTD {smooth['istd']:.3f} ({change(plain['istd'], smooth['istd'])}), "
                f"normalised {smooth['normalized_istd']:.3f} ({change(plain['normalized_istd'], smooth['normalized_istd'])}), "
                f"max step / mean {plain['max_step_ratio']:.2f} → {smooth['max_step_ratio']:.2f}"
            )
        print(line)
    for variant, inversion in report["inversion"].items():
        m = inversion["metrics"]
        print(f"inversion ({variant}): PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  MSE {m['mse']:.4f}")
    print(f"wrote {out / 'report.json'} and {out / 'index.html'}")


def _figures(entry: dict) -> str:
    s = entry["smoothness"]
    return ", ".join(f"{key} {s[key]:.3f}" for key in FIGURES)


def _index_html(report: dict) -> str:
    names = {"plain": "plain model", "smooth": f"with {report['lora']['file']}" if report["lora"] else ""}
    rows = []
    for name, item in report["interpolations"].items():
        cells = "".join(
            f"<figure><img src='{item[v]['gif']}' width=192><br><img class=strip src='{item[v]['strip']}' height=48>"
            f"<figcaption><b>{html.escape(names[v])}</b>: {_figures(item[v])}</figcaption></figure>"
            for v in ("plain", "smooth")
            if v in item
        )
        rows.append(f"<h2>{html.escape(name)}</h2><div class=row>{cells}<figure><img src='{item['plot']}' width=480></figure></div>")
    cells = "".join(
        f"<figure><img src='{inv['input']}' width=128><img src='{inv['reconstruction']}' width=128>"
        f"<figcaption><b>{html.escape(names[v])}</b>: input | reconstruction — PSNR {inv['metrics']['psnr']:.2f} dB, "
        f"SSIM {inv['metrics']['ssim']:.3f}</figcaption></figure>"
        for v, inv in report["inversion"].items()
    )
    rows.append(f"<h2>inversion</h2><div class=row>{cells}</div>")
    notes = "".join(f"<li><b>{key}</b>: {html.escape(EXPLANATIONS[key])}</li>" for key in FIGURES)
    return (
        "<!doctype html><meta charset=utf-8><title>Smooth Diffusion demo</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{image-rendering:pixelated;margin-right:4px}"
        ".row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}figure{margin:0}</style>"
        f"<h1>Smooth Diffusion demo: plain vs Smooth-LoRA</h1><p>Model: {html.escape(str(report['model']))}</p>" + "".join(rows) + f"<ul>{notes}</ul>"
    )
