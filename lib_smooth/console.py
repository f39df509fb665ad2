"""What the command line and the demo share: checks of what a user typed (before any model loads),
progress bars, and opening the model named on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .errors import RequestError


def frame_rate(text: str) -> float:
    """--fps: checked when parsing, not after every frame has been sampled."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 1 and 60, got {text}")
    return value


def check_device(name: str) -> None:
    """Refuse a device torch cannot use before the model loads."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise RequestError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RequestError(f"--device {name}: this torch has no usable CUDA GPU (torch {torch.__version__}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RequestError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RequestError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise RequestError(f"--device {name}: only cpu, cuda and mps are supported")


def prepare_output_folder(path: str) -> Path:
    """Create the output folder and prove it is writable, before any work that would be lost."""
    import tempfile

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise RequestError(f"cannot write to the output folder {path}: {error.strerror or error}") from None
    return folder


def check_formats(formats: Sequence[str]) -> None:
    from .export import mp4_available

    if "mp4" in formats and not mp4_available():
        raise RequestError("--formats mp4 needs the ffmpeg executable on PATH (e.g. apt-get install ffmpeg); gif and webp work without it")


def progress_bar(description: str):
    from tqdm import tqdm

    bar = tqdm(total=1, desc=description, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int, _latent) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


def load_backend(args: argparse.Namespace):
    from .backends import open_model

    backend, description = open_model(args.model, args.device, args.dtype, args.prediction, args.model_config)
    if not args.model:
        print(f"note: no --model given: using {description}", file=sys.stderr)
    return backend, description
