"""Model hosts implementing :class:`lib_smooth.backend.Backend` (optional extras)."""

from __future__ import annotations

from typing import Optional

TINY_MODEL = "tiny random-weight SD1 model built on the spot (lib_smooth.backends.tiny): abstract images, it shows the pipeline, not quality"


def open_model(path: Optional[str] = None, device: str = "cpu", dtype: str = "float32", prediction: Optional[str] = None,
               config_dir: Optional[str] = None):
    """The model at `path` (diffusers folder or single file), or the tiny random SD1 model when no path is
    given; returns (backend, a description for reports)."""
    import torch

    if path:
        from .diffusers_backend import load_model

        return load_model(path, device=device, dtype=getattr(torch, dtype), prediction=prediction, config_dir=config_dir), str(path)
    from .tiny import build_tiny_backend

    return build_tiny_backend("sd1"), TINY_MODEL
