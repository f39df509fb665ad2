"""Model hosts implementing :class:`lib_smooth.backend.Backend` (optional extras).

`load_model` dispatches between the two readers — a diffusers folder (``diffusers_backend``) and a
single-file checkpoint (``single_file``, which builds on ``ldm_layout``) — so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def load_model(path, device: str = "cpu", dtype=None, prediction: Optional[str] = None, config_dir=None):
    """Load a diffusers folder or a single-file SD1.x / SD2.x / SDXL checkpoint (.safetensors / .ckpt)."""
    import torch

    from ..errors import ModelFilesError
    from .diffusers_backend import load_diffusers_folder, quiet_loading

    path, dtype = Path(path), dtype or torch.float32
    with quiet_loading():
        if path.is_dir():
            return load_diffusers_folder(path, device, dtype, prediction)
        if path.is_file():
            from .single_file import load_single_file

            return load_single_file(path, device=device, dtype=dtype, prediction=prediction, config_dir=config_dir)
    raise ModelFilesError(f"missing {path}: give a diffusers folder or a .safetensors/.ckpt checkpoint file")


def open_model(
    path: Optional[str] = None, device: str = "cpu", dtype: str = "float32", prediction: Optional[str] = None, config_dir: Optional[str] = None
):
    """The model at `path` (diffusers folder or single file), or the embedded shapes-sd1 model when no
    path is given; returns (backend, a description for reports)."""
    import torch

    if path:
        return load_model(path, device=device, dtype=getattr(torch, dtype), prediction=prediction, config_dir=config_dir), str(path)
    from .shapes_model import DESCRIPTION, DIFFUSERS_DIR

    return load_model(DIFFUSERS_DIR, device=device, dtype=getattr(torch, dtype)), DESCRIPTION
