"""Small helpers several test modules share (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import base64
import re

import torch
from PIL import Image

from lib_smooth.images import png_bytes


def b64(image: Image.Image) -> str:
    """An image as the base64 PNG an image field takes."""
    return base64.b64encode(png_bytes(image)).decode()


def attention_projections(unet):
    """(path, module) of every attention q/k/v/out projection — where the official Smooth-LoRA sits."""
    return [(p, m) for p, m in unet.named_modules() if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", p)]


def random_lora(shapes, rank=4, seed=0):
    """{path: (down, up)} random factors for modules of the given (out, in) shapes."""
    g = torch.Generator().manual_seed(seed)
    return {path: (torch.randn(rank, i, generator=g) * 0.1, torch.randn(o, rank, generator=g) * 0.1) for path, (o, i) in shapes.items()}


class CountingBackend:
    """Wraps a backend and counts UNet evaluations (calls and samples)."""

    def __init__(self, inner):
        self.inner, self.calls, self.samples = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def unet(self, x, t, cond):
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner.unet(x, t, cond)
