"""Time and peak memory of one Smooth-LoRA training step, per regularizer setting, relative to a plain LoRA step.

Model: the embedded shapes-sd1 UNet (or --model) with lab/reproduction/lora_loop.py's LoRA — rank 8 on the
attention projections, the official placement; a batch of noisy latents at uniform timesteps; AdamW. Each variant
runs in its own process for its peak RSS (above the model-only baseline); the step times come from one process
running the variants round-robin over several rounds (a slow spell of the machine hits all alike), each round's
ratio against that round's plain step, reported as median and range (interval 4: mean over whole 4-step
cycles, i.e. the amortised cost).

    python -m bench.train_step_cost                  # CPU, writes bench/results/train_step_cost.json
    python -m bench.train_step_cost --device cuda    # on a GPU, writes train_step_cost_cuda.json
    python -m bench.train_step_cost --device cuda --model SD15_FOLDER --batch 4 --latent-size 64 --output FILE
    python -m bench.train_step_cost --model SD15_FOLDER --batch 1 --latent-size 32 --variants ... --output FILE  # CPU, full size
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.machine import describe
from lab.reproduction.lora_loop import add_lora, lora_parameters
from lib_smooth.backends import open_model
from lib_smooth.backends.shapes_model import DESCRIPTION
from lib_smooth.regularizer import StepwiseVariationRegularizer, double_backward_attention, predict_x0

VARIANTS = {
    "plain LoRA": None,
    "VJP every step": dict(method="vjp"),
    "VJP, interval 4": dict(method="vjp", interval=4),
    "VJP, batch shrink 2": dict(method="vjp", batch_shrink=2),
    "JVP (finite difference)": dict(method="jvp_fd"),
    "VJP, interval 4, shrink 2": dict(method="vjp", interval=4, batch_shrink=2),
    "JVP, interval 4": dict(method="jvp_fd", interval=4),
}


class Setup:
    """The model with its LoRA, an optimizer and a fixed stream of batches: what every variant trains."""

    def __init__(self, model: str | None, device: str, batch: int, size: int, rank: int):
        backend, _ = open_model(model)
        self.device, self.batch, self.size = device, batch, size
        self.unet = backend.unet_model.to(device).train().requires_grad_(False)
        self.weights_mib = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else 0.0
        self.optimizer = torch.optim.AdamW(lora_parameters(add_lora(self.unet, rank)), lr=1e-4)
        self.alphas = backend.alphas_cumprod.to(device)
        self.cond = backend.encode_prompts(["a red circle on a blue background"] * batch, size * 8, size * 8).to(device)
        self.generator = torch.Generator(device="cpu").manual_seed(0)

    def step(self, reg: StepwiseVariationRegularizer | None) -> float:
        """One training step with regularizer `reg` (None: plain LoRA); its seconds."""
        g, device, batch, size = self.generator, self.device, self.batch, self.size
        latents = torch.randn(batch, 4, size, size, generator=g).to(device)
        noise = torch.randn(batch, 4, size, size, generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        a = self.alphas[t].view(-1, 1, 1, 1)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        double_backward = reg is not None and reg.due and reg.method == "vjp"
        # as the trainer does: the math attention kernel only where a double backward needs it
        attention = double_backward_attention if double_backward else contextlib.nullcontext
        noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).requires_grad_(double_backward)
        with attention():
            pred = self.unet(noisy, t, encoder_hidden_states=self.cond).sample
        loss = ((pred - noise) ** 2).mean()
        if reg is not None:

            def x0_fn(x, idx):
                with attention():
                    return predict_x0(self.unet(x, t[idx], encoder_hidden_states=self.cond[idx]).sample, x, self.alphas[t[idx]], "eps")

            penalty, _ = reg(predict_x0(pred, noisy, self.alphas[t], "eps"), noisy, self.alphas[t], x0_fn=x0_fn)
            loss = loss + penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def regularizer(name: str) -> StepwiseVariationRegularizer | None:
    options = VARIANTS[name]
    return StepwiseVariationRegularizer(**options) if options else None


def per_step(name: str, times: list) -> float:
    """The median step, or for interval variants the mean over whole cycles (the amortised cost)."""
    options = VARIANTS[name]
    return statistics.mean(times) if options and options.get("interval", 1) > 1 else statistics.median(times)


def run_variant(name: str, model: str | None, device: str, batch: int, size: int, rank: int, steps: int) -> dict:
    """One variant alone in this process: its peak memory (RSS or CUDA allocation); the times come from
    :func:`round_robin`."""
    setup = Setup(model, device, batch, size, rank)
    reg = regularizer(name)
    for _ in range(steps):
        setup.step(reg)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 - setup.weights_mib
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"variant": name, "peak_mib": peak}


def memory_ratio(peak_mib: float, plain_mib: float, baseline_mib: float | None) -> float | None:
    """A variant's memory over the plain LoRA's, or None where the plain step's peak RSS hides under the
    model-only process's (a large model's loading peak is a high-water mark the plain step never passes)."""
    if baseline_mib is not None and plain_mib < 0.05 * baseline_mib:
        return None
    return peak_mib / plain_mib


def round_robin(model: str | None, device: str, batch: int, size: int, rank: int, rounds: int, steps: int, names: list) -> dict:
    """Step times with the variants interleaved in one process: every round runs each variant `steps`
    steps (whole interval cycles) in turn, so a slow spell of the machine hits all of them alike; each
    round's ratio is against the plain LoRA of the same round."""
    setup = Setup(model, device, batch, size, rank)
    regs = {name: regularizer(name) for name in names}
    for name, reg in regs.items():  # warm-up: one whole cycle each
        for _ in range(4):
            setup.step(reg)
    seconds = {name: [] for name in names}
    for _ in range(rounds):
        for name, reg in regs.items():
            seconds[name].append(per_step(name, [setup.step(reg) for _ in range(steps)]))
    plain = seconds["plain LoRA"]
    table = {}
    for name, values in seconds.items():
        ratios = [value / base for value, base in zip(values, plain)]
        table[name] = {
            "seconds_per_step_median": statistics.median(values),
            "time_ratio_median": statistics.median(ratios),
            "time_ratio_range": [min(ratios), max(ratios)],
            "time_ratios": ratios,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="diffusers folder or single file (default: the embedded shapes-sd1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latent-size", type=int, default=8, help="latent height/width (pixels / 8)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=28, help="steps of each memory run, the first 4 being warm-up")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds for the step times")
    parser.add_argument("--round-steps", type=int, default=8, help="steps per variant and round (a multiple of 4: whole interval cycles)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="a subset, for a large model (the plain LoRA is always measured)",
    )
    parser.add_argument("--output", help="result file (default: bench/results/train_step_cost[_cuda].json)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        open_model(args.model)[0].unet_model.to(args.device)
        print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.model, args.device, args.batch, args.latent_size, args.rank, args.steps)))
        return
    common = [
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--latent-size",
        str(args.latent_size),
        "--rank",
        str(args.rank),
        "--steps",
        str(args.steps),
    ]
    common += ["--model", args.model] if args.model else []
    # memory: each variant in a process of its own, so its peak is its own (run as modules of the repository root)
    child = [sys.executable, "-m", "bench.train_step_cost"]
    root = Path(__file__).resolve().parents[1]
    baseline = json.loads(
        subprocess.run([*child, "--baseline", *common], stdout=subprocess.PIPE, text=True, check=True, cwd=root).stdout.splitlines()[-1]
    )
    names = ["plain LoRA"] + [name for name in args.variants if name != "plain LoRA"]
    rows = []
    for name in names:
        out = subprocess.run([*child, "--variant", name, *common], stdout=subprocess.PIPE, text=True, check=True, cwd=root)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
    # time: all variants interleaved round-robin in this process
    timing = round_robin(args.model, args.device, args.batch, args.latent_size, args.rank, args.rounds, args.round_steps, names)
    plain = rows[0]
    for row in rows:
        row.update(timing[row["variant"]])
        row["seconds_per_step"] = row.pop("seconds_per_step_median")
        row["time_ratio"] = row["time_ratio_median"]
        if args.device != "cuda":
            row["peak_mib"] -= baseline["peak_mib"]
    for row in rows:
        row["memory_ratio"] = memory_ratio(row["peak_mib"], plain["peak_mib"], baseline["peak_mib"] if args.device != "cuda" else None)
    result = {
        "model": args.model or DESCRIPTION,
        "device": args.device,
        "machine": describe(args.device),
        "batch": args.batch,
        "latent_size": args.latent_size,
        "rank": args.rank,
        "timing": f"round-robin in one process: {args.rounds} rounds × {args.round_steps} steps per variant, after a 4-step warm-up each; "
        "ratio = the variant's step / the plain LoRA's step of the same round (median and range over rounds)",
        "command": "python -m bench.train_step_cost " + shlex.join(sys.argv[1:]),
        "memory": "peak CUDA allocation above the UNet's weights" if args.device == "cuda" else "peak RSS above the model-only baseline",
        "baseline_mib": None if args.device == "cuda" else baseline["peak_mib"],
        "rows": rows,
    }
    folder = Path(__file__).parent / "results"
    path = (
        Path(args.output)
        if args.output
        else folder / ("train_step_cost.json" if args.device == "cpu" else f"train_step_cost_{args.device.split(':')[0]}.json")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"{'variant':28s} {'s/step':>8s} {'× plain':>8s} {'range':>13s} {'MiB':>8s} {'× plain':>8s}")
    for row in rows:
        low, high = row["time_ratio_range"]
        print(
            f"{row['variant']:28s} {row['seconds_per_step']:8.4f} {row['time_ratio']:8.2f} {low:6.2f}–{high:<6.2f} "
            f"{row['peak_mib']:8.1f} {'—' if row['memory_ratio'] is None else format(row['memory_ratio'], '.2f'):>8s}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
