"""Model hosts implementing :class:`lib_smooth.backend.Backend` (optional extras)."""

from __future__ import annotations

from typing import Optional


def open_model(path: Optional[str] = None, device: str = "cpu", dtype: str = "float32", prediction: Optional[str] = None,
               config_dir: Optional[str] = None):
    """The model at `path` (diffusers folder or single file), or the embedded shapes-sd1 model when no
    path is given; returns (backend, a description for reports)."""
    import torch

    from .diffusers_backend import load_model

    if path:
        return load_model(path, device=device, dtype=getattr(torch, dtype), prediction=prediction, config_dir=config_dir), str(path)
    from .shapes_model import DESCRIPTION, DIFFUSERS_DIR

    return load_model(DIFFUSERS_DIR, device=device, dtype=getattr(torch, dtype)), DESCRIPTION
