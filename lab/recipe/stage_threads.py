"""Step costs of the two training stages that need only the frozen encoder's latents — the VAE decoder
alone and the text encoder + UNet — on one torch thread, on two, and on one thread each side by side.
This is why lab/recipe/train_shapes_model.py runs them together.

    python -m lab.recipe.stage_threads   → lab/recipe/results/stage_threads.json

Run it with nothing else on the machine. Steps are the real training functions' (batch 16, shapes-sd1's
architecture) on random latents: a step's cost does not depend on the values.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from lab.recipe.train_shapes_model import render_dataset, train_decoder, train_denoiser

# About as long for each stage, so that side by side the UNet's steps fall while the decoder runs;
# the first steps are slower (allocator, caches) and are left out.
UNET_STEPS, DECODER_STEPS, SKIPPED = 80, 12, 4
REPEATS = 3  # this VM's step times wander by up to a third from one measurement to the next


def unet_step_s(threads: int, start=None) -> float:
    """Median seconds per text encoder + UNet step; `start`, a barrier to wait at before the first step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    latents = torch.randn(256, 4, 8, 8)
    ids = torch.randint(49408, (256, 77))
    stamps: list = []
    if start:
        start.wait()
    train_denoiser(latents, ids, ids[0], UNET_STEPS, 16, 1e-3, [], 5.0, every_step=lambda: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(stamps[SKIPPED:], stamps[SKIPPED + 1 :]))


def decoder_step_s(threads: int, start=None) -> float:
    """Mean seconds per decoder-alone step, after a few warm-up steps; `start` as for unet_step_s."""
    from diffusers import AutoencoderKL

    from lib_smooth.backends.shapes_model import VAE_CONFIG

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images, _ = render_dataset(64, seed=0)
    latents = torch.randn(64, 4, 8, 8)
    vae = AutoencoderKL(**VAE_CONFIG)
    if start:
        start.wait()
    train_decoder(vae, latents, images, SKIPPED, 16, 5e-4, [])
    began = time.perf_counter()
    train_decoder(vae, latents, images, DECODER_STEPS, 16, 5e-4, [])
    return (time.perf_counter() - began) / DECODER_STEPS


def one_thread_beside(stage: str, start, results) -> None:
    results.put((stage, {"unet": unet_step_s, "decoder": decoder_step_s}[stage](1, start)))


def side_by_side() -> dict:
    """Both stages at once, one thread each, in processes of their own that start stepping together."""
    context = torch.multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=one_thread_beside, args=(stage, start, results)) for stage in ("unet", "decoder")]
    for process in processes:
        process.start()
    measured = dict(results.get() for _ in processes)
    for process in processes:
        process.join()
    return measured


def measure_once() -> dict:
    """Seconds per step of each stage: alone on one and on two threads, and on one thread beside the other."""
    times = {
        f"{stage}_{threads}_threads_s": measure(threads)
        for stage, measure in (("unet", unet_step_s), ("decoder", decoder_step_s))
        for threads in (1, 2)
    }
    beside = side_by_side()
    return {**times, "unet_1_thread_beside_decoder_s": beside["unet"], "decoder_1_thread_beside_unet_s": beside["decoder"]}


def main() -> None:
    rounds = [measure_once() for _ in range(REPEATS)]
    step = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result = {
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}",
        "step_s": {key: round(value, 3) for key, value in step.items()},
        "step_s_each_round": [{key: round(value, 3) for key, value in r.items()} for r in rounds],
        "second_thread_speedup": {
            "unet": round(step["unet_1_threads_s"] / step["unet_2_threads_s"], 2),
            "decoder": round(step["decoder_1_threads_s"] / step["decoder_2_threads_s"], 2),
        },
        # The work side by side per second, with one after the other on two threads as 1: each stage
        # moves at (its step on two threads) / (its step beside the other) of its two-thread speed.
        "side_by_side_throughput": round(
            step["unet_2_threads_s"] / step["unet_1_thread_beside_decoder_s"] + step["decoder_2_threads_s"] / step["decoder_1_thread_beside_unet_s"],
            2,
        ),
    }
    out = Path(__file__).resolve().parent / "results" / "stage_threads.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
