"""The machine line every benchmark writes beside its numbers."""

from __future__ import annotations

import platform

import torch


def describe(device: str) -> str:
    """GPU name for a CUDA device, else the CPU architecture and torch's thread count; torch version."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
