"""Train the LoRAs that ship with the embedded model: a Smooth-LoRA (λ = 1) and its plain control (λ = 0).

Both are the reproduction's rank-8 LoRA on every attention projection (lab/reproduction/lora_loop.py),
trained from the same seed on the same batches, so the regularizer is the only difference. The Smooth-LoRA
starts its moving target warm (the first batch's mean r, where the official code starts at 0). Written as
kohya files into lib_smooth/models/Lora/ and a record into lab/reproduction/results/shipped_loras.json;
the defaults are the shipped files' settings:

    python -m lab.reproduction.train_shipped_loras [--steps 3000] [--batch 16] [--checkpoints DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from lab.reproduction.lora_loop import LoraRun, settled_fraction, settling_step, train_lora
from lab.reproduction.reproduce_smoothness import training_data
from lib_smooth.backends import open_model
from lib_smooth.backends.shapes_model import LORA_DIR
from lib_smooth.lora_formats import save_kohya

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {1.0: "shapes-sd1-smooth", 0.0: "shapes-sd1-plain"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("smooth", "plain"), help="train one of the two (e.g. one per process, side by side)")
    parser.add_argument("--out", default=str(LORA_DIR), help="folder for the LoRA files (default: the package's models/Lora)")
    parser.add_argument("--checkpoints", help="folder for checkpoints every 500 steps: a run stopped there goes on from its last one (default: none)")
    args = parser.parse_args()
    backend = open_model()[0]
    data = training_data(backend, args.train_images)
    runs = {
        "smooth": LoraRun(1.0, 8, args.seed, args.steps, args.batch, warm_start=True),
        "plain": LoraRun(0.0, 8, args.seed, args.steps, args.batch),
    }
    record_path = RESULTS / "shipped_loras.json"
    for key, run in runs.items():
        if args.only and key != args.only:
            continue
        bar = tqdm(total=run.steps, desc=f"train {key}")
        checkpoint = Path(args.checkpoints) / f"{NAMES[run.weight]}.checkpoint.pt" if args.checkpoints else None
        network, log, seconds = train_lora(
            backend.unet_model, backend.alphas_cumprod, *data, run, on_step=lambda step: bar.update(step + 1 - bar.n), checkpoint=checkpoint
        )
        bar.close()
        network.metadata["ss_output_name"] = NAMES[run.weight]
        path = save_kohya(network, Path(args.out) / f"{NAMES[run.weight]}.safetensors", overwrite=True, dtype=torch.float16)
        # read again just before writing: the two runs may go side by side (--only), each adding its own entry
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        record[key] = {
            "file": path.name,
            "run": {**run.__dict__},
            "command": "python -m lab.reproduction.train_shipped_loras " + " ".join(sys.argv[1:]),
            "threads": torch.get_num_threads(),
            "training_seconds": round(seconds, 1),
            "target_a_final": log[-1].get("target_a"),
            "target_a_settled_at": settling_step(log),
            "settled_fraction": settled_fraction(log),
            "trajectory": log,
        }
        record_path.write_text(json.dumps(record, indent=1))
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
