"""Conversions between PIL images, uint8 arrays and model tensors ((B,3,H,W) in [-1, 1])."""

from __future__ import annotations

import io
from typing import List, Union

import numpy as np
import torch
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]


def center_crop_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the largest centred box of the target aspect ratio, then resize (the official demo's input step)."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.LANCZOS)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def tensor_to_pils(images: torch.Tensor) -> List[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images, rounded to the nearest 8-bit value."""
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in array]


def to_unit_float(image: ImageLike) -> np.ndarray:
    """An image as an H×W×3 float64 array in [0, 1].

    uint8 arrays and PIL images are divided by 255; float arrays and tensors must already be in [0, 1]
    (HWC, or CHW for tensors with 3 leading channels).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().double().numpy()
        if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"float images must be in [0, 1]; got values in [{array.min():.3g}, {array.max():.3g}] (pass uint8 for 0..255)")
    return array


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
