"""Small-scale reproduction of Smooth Diffusion's Tables 1–4 on the embedded shapes-sd1 model.

    python -m lab.reproduction.reproduce_smoothness [--work /tmp/smoothness] [--quick]

Fine-tunes LoRAs on the model's own training data (lab.shapes) with lab/reproduction/lora_loop.py:
λ = 0 (plain LoRA), 0.1, 1 (Smooth-LoRA), 10 at rank 8, and ranks 4 and 16 at λ = 1, each with
several seeds; then measures every LoRA (and the base model) the way the paper does, at our scale:

- smoothness (Table 1/3/4 "ISTD"): 11-point slerp between two noises, 100 noise pairs (10 held-out
  prompts × 10 pairs), DDIM, CFG; ISTD plus its scale-free companions (lib_smooth.metrics);
- DDIM inversion + reconstruction (Table 2): MSE / PSNR / SSIM on held-out images;
- sample quality (in place of FID / CLIP score): the shapes detector's accuracy on samples for
  held-out prompts and a Fréchet distance between detector features of samples and of real images.

`--warm-versus-cold STEPS` instead trains λ = 1 STEPS long with the target a started cold and warm
(results/warm_versus_cold.*). Finished runs are kept in --work, and a run in training saves a checkpoint there
every 500 steps, so an interrupted reproduction goes on where it stopped. Writes
lab/reproduction/results/smoothness.json and the plots in lab/reproduction/results/ (matplotlib, `pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from tqdm import tqdm

from lab import shapes
from lab.recipe.train_shapes_model import draw
from lab.reproduction.lora_loop import LoraRun, settled_fraction, settling_step, train_lora
from lib_smooth.backends import open_model
from lib_smooth.evaluate import evaluate_istd
from lib_smooth.images import pil_to_tensor, tensor_to_pils
from lib_smooth.invert import invert_image, reconstruct
from lib_smooth.jobs import lora_applied
from lib_smooth.lora_formats import save_kohya
from lib_smooth.metrics import reconstruction_metrics

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 64
HELD_OUT_SEED = 1  # data seed of the prompts and images used for measuring; training uses seed 0
FIGURES = ("istd", "mean_step", "normalized_istd", "max_step_ratio", "path_length", "endpoint_distance")


COLOURS = {
    "lambda_0": "#888",
    "lambda_0.1": "#9bc",
    "lambda_1": "#37a",
    "lambda_10": "#c63",
    "lambda_1_interval_4": "#7a5",
    "lambda_1_jvp_fd_interval_4": "#a7c",
}
CHEAP_SETTINGS = ({"interval": 4}, {"interval": 4, "method": "jvp_fd"})  # the trainers' cheaper options, at λ = 1


def grid(seeds: List[int], steps: int, batch: int, warm_start: bool = False, lr_schedule: str = "constant") -> List[LoraRun]:
    """In the order worth running them: λ 0 and 1, the cheap settings at λ 1, λ 0.1 and 10, then ranks 4 and 16."""
    run = lambda weight, seed, rank=8, **cheap: LoraRun(  # noqa: E731
        weight, rank, seed, steps, batch, warm_start=warm_start and weight > 0, lr_schedule=lr_schedule, **cheap
    )
    runs = [run(weight, seed) for weight in (0.0, 1.0) for seed in seeds]
    runs += [run(1.0, seed, **cheap) for cheap in CHEAP_SETTINGS for seed in seeds]
    runs += [run(weight, seed) for weight in (0.1, 10.0) for seed in seeds]
    return runs + [run(1.0, seed, rank) for rank in (4, 16) for seed in seeds]


def run_key(run: dict) -> str:
    """The table row of a run: "lambda_1", "lambda_1_interval_4", "lambda_1_jvp_fd_interval_4"."""
    key = f"lambda_{run['weight']:g}"
    if run.get("method", "vjp") != "vjp":
        key += f"_{run['method']}"
    if run.get("interval", 1) != 1:
        key += f"_interval_{run['interval']}"
    return key


def label(key: str) -> str:
    """A table row's key as people read it: lambda_1_jvp_fd_interval_4 → λ = 1, JVP-FD, interval 4."""
    return key.replace("lambda_", "λ = ").replace("_jvp_fd", ", JVP-FD").replace("_interval_", ", interval ").replace("rank_", "rank ")


def every_step(run: dict) -> bool:
    return run.get("interval", 1) == 1 and run.get("method", "vjp") == "vjp"


PARTIAL_CAPTIONS = 0.5  # share of training captions that leave attributes out, as the embedded model was trained


def training_data(backend, count: int, partial_captions: float = PARTIAL_CAPTIONS):
    """Latents of `count` training images (data seed 0) and the text-encoder output of each distinct
    caption; a share `partial_captions` of the images is captioned partially (each attribute left out
    with probability 0.5), as the embedded model saw them."""
    import random

    rng = random.Random(0)
    images, captions = [], []
    for image, spec in shapes.samples(count, 0, SIZE):
        images.append(pil_to_tensor(image))
        captions.append(shapes.partial_caption(spec, rng, 0.5) if rng.random() < partial_captions else spec.caption)
    pixels = torch.cat(images)
    latents = torch.cat([backend.encode_images(pixels[i : i + 256]) for i in range(0, count, 256)])
    distinct = sorted(set(captions))
    contexts = torch.cat([backend.encode_prompts(distinct[i : i + 256], SIZE, SIZE) for i in range(0, len(distinct), 256)])
    caption_of = torch.tensor([distinct.index(c) for c in captions])
    return latents, contexts, caption_of


def quality(backend, count: int, steps: int, guidance: float) -> dict:
    """Detector accuracy on samples for held-out prompts, and the Fréchet distance to real renders of them."""
    specs = [shapes.spec_for(i, HELD_OUT_SEED) for i in range(count)]
    images = draw(backend, specs, guidance, steps, first_seed=10_000)
    generated = np.stack([shapes.detect(image).features for image in images])
    real = np.stack([shapes.detect(shapes.render(spec, SIZE)).features for spec in specs])
    return {**shapes.accuracy(images, specs), "frechet": shapes.frechet_distance(generated, real)}


def inversion(backend, count: int, steps: int) -> dict:
    """DDIM inversion with the caption, then reconstruction, guidance 1 both ways; mean metrics over `count` images."""
    rows = []
    for image, spec in shapes.samples(count, HELD_OUT_SEED, SIZE, start=5000):
        inverted = invert_image(backend, image, spec.caption, steps, 1.0, width=SIZE, height=SIZE)
        reconstruction = tensor_to_pils(backend.decode_latents(reconstruct(backend, inverted, guidance=1.0)))[0]
        rows.append(reconstruction_metrics(image, reconstruction))
    return {key: float(np.mean([row[key] for row in rows])) for key in ("mse", "psnr", "ssim")}


def partial_prompts(count: int) -> List[str]:
    """Held-out prompts that each leave at least one attribute to the noise (the paper's ISTD protocol
    interpolates two noises under one prompt: on a model where the noise decides nothing it measures nothing)."""
    import random

    prompts = []
    for i in range(count):
        spec = shapes.spec_for(i, HELD_OUT_SEED)
        caption = shapes.partial_caption(spec, random.Random(HELD_OUT_SEED * 1_000_003 + i), 0.5)
        prompts.append(caption if caption != spec.caption else spec.caption_leaving_out(["shape"]))
    return prompts


def smoothness(backend, args, steps: int) -> dict:
    """ISTD and its companions under the paper's protocol: 11-point slerps for held-out partial prompts × noise pairs."""
    prompts = partial_prompts(args.prompts)
    report = evaluate_istd(backend, prompts, pairs=args.pairs, seed=1000, steps=steps, guidance=args.guidance, width=SIZE, height=SIZE, batch_size=11)
    return {k: getattr(report.mean, k) for k in FIGURES}


def evaluate(backend, args) -> dict:
    start = time.perf_counter()
    result = {
        "smoothness": smoothness(backend, args, args.steps),
        "inversion": inversion(backend, args.inversion_images, args.steps),
        "quality": quality(backend, args.samples, args.steps, args.guidance),
    }
    result["evaluation_seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_one(backend, data: Callable[[], tuple], run: LoraRun, work: Path, args) -> dict:
    """Train and measure one LoRA, or read its finished record; `data()` gives the training data."""
    record = work / f"{run.name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    bar = tqdm(total=run.steps, desc=f"train {run.name}", leave=False)
    checkpoint = work / f"{run.name}.checkpoint.pt"  # an interrupted run goes on from its last checkpoint
    network, log, seconds = train_lora(
        backend.unet_model, backend.alphas_cumprod, *data(), run, on_step=lambda step: bar.update(step + 1 - bar.n), checkpoint=checkpoint
    )
    bar.close()
    path = save_kohya(network, work / f"{run.name}.safetensors", overwrite=True)
    with lora_applied(backend, str(path), 1.0):
        result = evaluate(backend, args)
    result.update(
        run=asdict(run),
        training_seconds=round(seconds, 1),
        seconds_per_step=round(seconds / run.steps, 3),
        trajectory=log,
        target_a_settled_at=settling_step(log),
        lora_file=path.name,
    )
    record.write_text(json.dumps(result, indent=1))
    checkpoint.unlink(missing_ok=True)
    return result


def this_shard(items: list, shard: str | None) -> list:
    """Every N-th item from the K-th for --shard K/N (all of them without)."""
    if not shard:
        return items
    index, count = map(int, shard.split("/"))
    return items[index::count]


def invocation() -> str:
    """The command line that is running, for the results file."""
    return "python -m lab.reproduction.reproduce_smoothness " + shlex.join(sys.argv[1:])


def spread(values: List[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def summarise(runs: List[dict], key_of) -> Dict[str, dict]:
    """Mean and std over seeds of every measured figure, grouped by key_of(run)."""
    groups: Dict[str, List[dict]] = {}
    for result in runs:
        groups.setdefault(key_of(result["run"]), []).append(result)
    table = {}
    for key, members in sorted(groups.items(), key=lambda item: (float(item[0].split("_")[1]), item[0])):
        row = {f: spread([m["smoothness"][f] for m in members]) for f in FIGURES}
        row.update({f"inversion_{f}": spread([m["inversion"][f] for m in members]) for f in ("mse", "psnr", "ssim")})
        row.update({f"quality_{f}": spread([m["quality"][f] for m in members]) for f in ("both", "colour", "shape", "frechet")})
        finals = [m["trajectory"][-1]["target_a"] for m in members if "target_a" in m["trajectory"][-1]]
        if finals:  # plain LoRAs have no target
            row["target_a_final"] = spread(finals)
        row["seeds"] = len(members)
        table[key] = row
    return table


def versus_plain(table: Dict[str, dict]) -> Dict[str, dict]:
    """Each λ > 0 against λ = 0: the relative change of every figure's mean, and whether the seeds' ranges
    are apart (every seed of one below every seed of the other) — with 3 seeds, the most they can show."""
    plain = table["lambda_0"]
    out = {}
    for key, row in table.items():
        if key == "lambda_0":
            continue
        out[key] = {}
        for figure, values in row.items():
            if not isinstance(values, dict) or figure not in plain:
                continue
            reference = plain[figure]
            apart = (
                max(values["values"]) < min(reference["values"]) or min(values["values"]) > max(reference["values"])
                if min(len(values["values"]), len(reference["values"])) > 1
                else None
            )
            out[key][figure] = {
                "relative_change": values["mean"] / reference["mean"] - 1 if reference["mean"] else float("nan"),
                "ranges_apart": apart,
            }
    return out


def markdown_tables(summary: dict) -> str:
    """The λ and rank tables as markdown, mean ± std over seeds (written to results/smoothness.md)."""

    def cell(row: dict, figure: str, digits: int) -> str:
        return f"{row[figure]['mean']:.{digits}f} ± {row[figure]['std']:.{digits}f}"

    columns = [
        ("istd", "ISTD", 3),
        ("mean_step", "mean step", 3),
        ("normalized_istd", "normalised ISTD", 4),
        ("max_step_ratio", "max / mean step", 3),
        ("endpoint_distance", "endpoint distance", 2),
        ("inversion_mse", "inversion MSE", 4),
        ("inversion_psnr", "PSNR dB", 2),
        ("inversion_ssim", "SSIM", 3),
        ("quality_both", "detector acc.", 3),
        ("quality_frechet", "Fréchet", 4),
    ]
    base = summary["base_model"]
    base_values = {
        **base["smoothness"],
        **{f"inversion_{k}": v for k, v in base["inversion"].items()},
        **{f"quality_{k}": v for k, v in base["quality"].items() if k != "count"},
    }
    lines = []
    for title, table in (("λ (rank 8)", summary["table_lambda"]), ("rank (λ = 1)", summary["table_rank"])):
        lines += [f"| {title} | " + " | ".join(label for _, label, _ in columns) + " |", "| --- |" + " ---: |" * len(columns)]
        lines.append("| base model, no LoRA | " + " | ".join(f"{base_values[f]:.{d}f}" for f, _, d in columns) + " |")
        for key, row in table.items():
            lines.append(f"| {label(key)} | " + " | ".join(cell(row, f, d) for f, _, d in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def plots(summary: dict, runs: List[dict], name: str = "smoothness") -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    lambdas = summary["table_lambda"]
    keys = list(lambdas)
    x = np.arange(len(keys))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (figure, title) in zip(
        axes,
        [
            ("istd", "ISTD (paper's figure)"),
            ("mean_step", "mean adjacent distance"),
            ("normalized_istd", "normalised ISTD"),
            ("quality_both", "detector accuracy"),
        ],
    ):
        means = [lambdas[k][figure]["mean"] for k in keys]
        stds = [lambdas[k][figure]["std"] for k in keys]
        ax.bar(x, means, yerr=stds, capsize=4, color=[COLOURS.get(k, "#555") for k in keys])
        for i, k in enumerate(keys):
            ax.scatter([i] * len(lambdas[k][figure]["values"]), lambdas[k][figure]["values"], color="k", s=8, zorder=3)
        ax.set_xticks(x, [label(k).replace(", ", "\n") for k in keys], fontsize=8)
        ax.set_title(title)
    fig.suptitle("shapes-sd1, rank-8 LoRA: mean ± std over seeds (dots: single seeds)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_lambda.png", dpi=90)
    written.append(f"{name}_lambda.png")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    labelled = set()
    for result in runs:
        run, key = result["run"], run_key(result["run"])
        if run["rank"] == 8 and run["weight"] > 0:
            steps = [e["step"] for e in result["trajectory"] if "target_a" in e]
            ax.plot(
                steps,
                [e["target_a"] for e in result["trajectory"] if "target_a" in e],
                color=COLOURS.get(key, "#555"),
                lw=1,
                label=None if key in labelled else label(key),
            )
            labelled.add(key)
    ax.set_xlabel("training step")
    ax.set_ylabel("target a")
    ax.set_title("the regularizer's moving target a (rank 8, every seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_target_a.png", dpi=90)
    written.append(f"{name}_target_a.png")
    plt.close("all")
    return written


def warm_versus_cold(backend, data: Callable[[], tuple], steps: int, work: Path, args) -> dict:
    """λ = 1, rank 8, seed 0 trained `steps` long twice, the target a started cold (0, the official code) and
    warm (the first batch's mean r), each measured like a grid run: does the warm start end as smooth as the
    cold one, and how much of each run is spent with a away from its final value? Runs are kept in
    work/long{steps}, one per shard."""
    runs = this_shard([LoraRun(1.0, 8, 0, steps, args.batch, warm_start=warm) for warm in (False, True)], args.shard)
    folder = work / f"long{steps}"
    folder.mkdir(exist_ok=True)
    results = {("warm" if run.warm_start else "cold"): run_one(backend, data, run, folder, args) for run in tqdm(runs, desc="warm versus cold")}
    if args.shard:
        return results
    result = {"steps": steps, "batch": args.batch, "ema_decay": runs[0].ema_decay, "command": invocation()}
    for start, record in results.items():
        log = record["trajectory"]
        result[start] = {
            "smoothness": record["smoothness"],
            "inversion": record["inversion"],
            "quality": record["quality"],
            "target_a_first": log[0]["target_a"],
            "target_a_final": log[-1]["target_a"],
            "settled_fraction": {f"{int(t * 100)}%": settled_fraction(log, tolerance=t) for t in (0.02, 0.05, 0.1)},
            "settled_at": {f"{int(t * 100)}%": settling_step(log, tolerance=t) for t in (0.02, 0.05, 0.1)},
            "training_seconds": record["training_seconds"],
        }
    warm, cold = results["warm"]["smoothness"], results["cold"]["smoothness"]
    result["warm_versus_cold"] = {f: warm[f] / cold[f] - 1 for f in ("istd", "normalized_istd", "mean_step")}
    if args.quick:
        return result
    (RESULTS / "warm_versus_cold.json").write_text(json.dumps(result, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        for start, colour, style in (("warm", "#37a", "-"), ("cold", "#c63", "--")):  # cold on top: the two meet
            log = results[start]["trajectory"]
            ax.plot([e["step"] for e in log], [e["variation_mean"] for e in log], color=colour, lw=0.5, alpha=0.35)
            ax.plot([e["step"] for e in log], [e["target_a"] for e in log], color=colour, ls=style, label=f"target a, {start} start")
        ax.set_xlabel("training step (faint: the logged batches' mean r)")
        ax.set_title(f"λ = 1, rank 8, seed 0, {steps} steps: target a, cold and warm start")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "warm_versus_cold.png", dpi=90)
        plt.close(fig)
    except ImportError:
        pass
    return result


def remeasure_istd(backend, work: Path, steps: int, args) -> dict:
    """ISTD and its companions again at `steps` DDIM steps for the base model and the finished λ = 0 and
    λ = 1 rank-8 LoRAs in `work` (the grid measures at fewer steps than the paper's 50, to fit a session).
    Each measurement is kept in `work`, so this resumes and shards like the grid."""
    names = this_shard(["base"] + [LoraRun(weight, 8, seed).name for weight in (0.0, 1.0) for seed in args.seeds], args.shard)
    measured = {}
    for name in tqdm(names, desc=f"ISTD at {steps} steps"):
        record = work / f"istd{steps}_{name}.json"
        if not record.is_file():
            with lora_applied(backend, None if name == "base" else str(work / f"{name}.safetensors"), 1.0):
                record.write_text(json.dumps(smoothness(backend, args, steps)))
        measured[name] = json.loads(record.read_text())
    if args.shard:
        return measured
    table = {"base_model": measured["base"]}
    for weight in (0.0, 1.0):
        runs = [measured[LoraRun(weight, 8, seed).name] for seed in args.seeds]
        table[f"lambda_{weight:g}"] = {f: spread([run[f] for run in runs]) for f in FIGURES}
    result = {"steps": steps, "protocol": {k: getattr(args, k) for k in ("prompts", "pairs", "guidance")}, "seeds": args.seeds, **table}
    (RESULTS / f"smoothness_istd_{steps}_steps.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/smoothness-reproduction", help="LoRA files and per-run results (resumable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8, help="LoRA training batch (the official run: micro-batches of 3, accumulated to 96)")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=10, help="noise pairs per prompt (the paper's protocol: ≥ 100 in all)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the paper: 50)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--inversion-images", type=int, default=16)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--model", default=None, help="another SD1 model folder or file (default: the embedded shapes-sd1)")
    parser.add_argument(
        "--shard",
        help="K/N: only every N-th run from the K-th (start N processes with one torch thread each: "
        "faster than one process on a small model); then run once without it",
    )
    parser.add_argument(
        "--warm-versus-cold",
        type=int,
        metavar="STEPS",
        help="instead of the grid: λ = 1 trained STEPS long from a cold and from a warm target a, measured like the grid (2 shards)",
    )
    parser.add_argument(
        "--remeasure-istd",
        type=int,
        metavar="STEPS",
        help="only measure ISTD again at STEPS DDIM steps for the base model and the finished λ = 0 / 1 rank-8 LoRAs",
    )
    parser.add_argument("--runs", type=int, help="only the first RUNS runs of the grid (its order: λ 0 and 1, the cheap settings, λ 0.1 / 10, ranks)")
    parser.add_argument("--results-name", default="smoothness", help="the results' file name in lab/reproduction/results (.json, .md)")
    parser.add_argument("--warm-start", action="store_true", help="start the regularized runs' target a at the first batch's mean r")
    parser.add_argument(
        "--lr-schedule", choices=("constant", "cosine"), default="constant", help="the LoRAs' learning-rate schedule (the official run: constant)"
    )
    parser.add_argument("--finished-only", action="store_true", help="write the results from the finished runs in --work, listing the missing ones")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, few steps, few pairs (results not written)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train_steps, args.train_images, args.prompts, args.pairs, args.inversion_images, args.samples = [0], 4, 64, 2, 1, 2, 8
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    backend, description = open_model(args.model)
    data = functools.lru_cache(maxsize=1)(lambda: training_data(backend, args.train_images))  # only when a run trains
    base_record = work / "base.json"
    if not base_record.is_file() and (not args.shard or args.shard.startswith("0/")) and not args.remeasure_istd:
        base_record.write_text(json.dumps(evaluate(backend, args), indent=1))
    if args.remeasure_istd:
        result = remeasure_istd(backend, work, args.remeasure_istd, args)
        return print(json.dumps(result, indent=1)[:2000])
    if args.warm_versus_cold:
        result = warm_versus_cold(backend, data, args.warm_versus_cold, work, args)
        if args.shard:
            return print(f"shard {args.shard} done in {work / f'long{args.warm_versus_cold}'}; run again without --shard to write the results")
        return print(f"warm against cold: {result['warm_versus_cold']}; wrote {RESULTS / 'warm_versus_cold.json'}")
    todo = grid(args.seeds, args.train_steps, args.batch, args.warm_start, args.lr_schedule)[: args.runs]
    if args.shard:
        runs = [run_one(backend, data, run, work, args) for run in tqdm(this_shard(todo, args.shard), desc=f"runs, shard {args.shard}")]
        return print(f"shard {args.shard} done: {len(runs)} runs in {work}; run again without --shard to write the results")
    if args.finished_only:
        missing = [run.name for run in todo if not (work / f"{run.name}.json").is_file()]
        todo = [run for run in todo if run.name not in missing]
    runs = [run_one(backend, data, run, work, args) for run in tqdm(todo, desc="runs")]
    base = json.loads(base_record.read_text())
    summary = {
        "model": description,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, no GPU",
        "protocol": {
            k: getattr(args, k)
            for k in ("prompts", "pairs", "steps", "guidance", "inversion_images", "samples", "train_steps", "batch", "train_images", "warm_start")
        },
        "seeds": args.seeds,
        "base_model": base,
        "table_lambda": summarise([r for r in runs if r["run"]["rank"] == 8], run_key),
        "table_rank": summarise([r for r in runs if r["run"]["weight"] == 1.0 and every_step(r["run"])], lambda run: f"rank_{run['rank']}"),
    }
    summary["runs_missing"] = missing if args.finished_only else []
    summary["versus_plain_lora"] = versus_plain(summary["table_lambda"])
    summary["istd"] = {key: row["istd"]["mean"] for key, row in summary["table_lambda"].items()}
    summary["normalized_istd"] = {key: row["normalized_istd"]["mean"] for key, row in summary["table_lambda"].items()}
    summary["istd_per_seed"] = {
        run_key(r["run"]): [m["smoothness"]["istd"] for m in runs if run_key(m["run"]) == run_key(r["run"]) and m["run"]["rank"] == 8]
        for r in runs
        if r["run"]["rank"] == 8
    }
    summary["train_steps"], summary["ema_decay"] = args.train_steps, LoraRun(1.0).ema_decay
    summary["target_a_settled_at"] = {LoraRun(**r["run"]).name: r["target_a_settled_at"] for r in runs if r["run"]["weight"] > 0}
    fractions = [settled_fraction(r["trajectory"]) for r in runs if r["run"]["weight"] > 0]
    summary["settled_fraction"] = min((f for f in fractions if f is not None), default=None)  # the least settled run
    summary["runs"] = runs
    if args.quick:
        print(json.dumps({k: summary[k] for k in ("istd", "normalized_istd")}, indent=1))
        return
    summary["plots"] = plots(summary, runs, args.results_name)
    summary["command"] = invocation()
    (RESULTS / f"{args.results_name}.json").write_text(json.dumps(summary, indent=1))
    (RESULTS / f"{args.results_name}.md").write_text(markdown_tables(summary))
    print(f"wrote {RESULTS / args.results_name}.json")


if __name__ == "__main__":
    main()
