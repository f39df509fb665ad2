"""Image metrics: reconstruction quality (MSE, PSNR, SSIM, optional LPIPS) and interpolation smoothness.

ISTD (Smooth Diffusion, Sec. 4.1 and Supp. A.3): for one interpolation sequence of frames in pixel
space with values in [0, 1], take the L2 distance between each pair of adjacent frames (summed over
all pixels and channels) and report the standard deviation of those distances (population std,
numpy's default). 0 means every step changes the image by the same amount. The value grows with
the resolution, so only compare ISTDs measured at the same size.

ISTD also falls when every step simply gets shorter, so :func:`smoothness` returns scale-free
companions alongside it (see :data:`EXPLANATIONS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .images import ImageLike, to_unit_float

EXPLANATIONS: Dict[str, str] = {
    "istd": "ISTD as the paper defines it: standard deviation of the adjacent-frame L2 distances (lower = more even steps; grows with resolution)",
    "mean_step": "mean L2 distance between adjacent frames: how much the image changes per step",
    "normalized_istd": "ISTD / mean step (coefficient of variation): unevenness independent of how far the frames move",
    "max_step_ratio": "largest step / mean step: 1 means no jump; a large value flags one abrupt change",
    "path_length": "sum of all adjacent distances: the total change along the interpolation",
    "endpoint_distance": "L2 distance between the first and the last frame: how different the two ends are",
}


def _frames_array(frames: Sequence[ImageLike]) -> np.ndarray:
    arrays = [to_unit_float(frame) for frame in frames]
    if len(arrays) < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {len(arrays)}")
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("all frames of a sequence must have the same size")
    return np.stack(arrays)


def _adjacent(stack: np.ndarray) -> np.ndarray:
    differences = (stack[1:] - stack[:-1]).reshape(len(stack) - 1, -1)
    return np.sqrt((differences**2).sum(axis=1))


def adjacent_distances(frames: Sequence[ImageLike]) -> np.ndarray:
    """‖f_{k+1} − f_k‖₂ over all pixels and channels, values in [0, 1]; N frames give N−1 distances."""
    return _adjacent(_frames_array(frames))


def istd(frames: Sequence[ImageLike]) -> float:
    """The paper's ISTD of one interpolation sequence (frames: PIL, uint8 HxWx3, or floats in [0, 1])."""
    return float(np.std(adjacent_distances(frames)))


@dataclass
class Smoothness:
    """Smoothness figures of one sequence, or their means over several (see EXPLANATIONS)."""

    istd: float
    mean_step: float
    normalized_istd: float
    max_step_ratio: float
    path_length: float
    endpoint_distance: float
    distances: List[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def smoothness_from_distances(distances: Sequence[float], endpoint_distance: float) -> Smoothness:
    """All figures from the adjacent distances; a sequence that never moves counts as perfectly even."""
    d = np.asarray(distances, dtype=np.float64)
    mean = float(d.mean())
    spread = float(d.std())
    return Smoothness(
        istd=spread,
        mean_step=mean,
        normalized_istd=spread / mean if mean > 0 else 0.0,
        max_step_ratio=float(d.max()) / mean if mean > 0 else 1.0,
        path_length=float(d.sum()),
        endpoint_distance=float(endpoint_distance),
        distances=[float(x) for x in d],
    )


def smoothness(frames: Sequence[ImageLike]) -> Smoothness:
    """ISTD and its scale-free companions for one interpolation sequence."""
    stack = _frames_array(frames)
    endpoint = float(np.sqrt(((stack[-1] - stack[0]) ** 2).sum()))
    return smoothness_from_distances(_adjacent(stack), endpoint)


def mean_smoothness(items: Sequence[Smoothness]) -> Smoothness:
    """Mean of every figure over sequences; `distances` becomes the mean distance at each step."""
    if not items:
        raise ValueError("no sequences to average")
    names = ["istd", "mean_step", "normalized_istd", "max_step_ratio", "path_length", "endpoint_distance"]
    means = {name: float(np.mean([getattr(item, name) for item in items])) for name in names}
    return Smoothness(**means, distances=[float(x) for x in np.mean([item.distances for item in items], axis=0)])


# --- reconstruction quality ----------------------------------------------------------------------


def mse(reference: ImageLike, image: ImageLike) -> float:
    """Mean squared error with both images scaled to [−1, 1], the scale of the paper's Table 2."""
    a, b = to_unit_float(reference), to_unit_float(image)
    return float(np.mean((2 * a - 2 * b) ** 2))


def psnr(reference: ImageLike, image: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB (peak = full pixel range); identical images give inf."""
    error = float(np.mean((to_unit_float(reference) - to_unit_float(image)) ** 2))
    return float("inf") if error == 0 else float(10 * np.log10(1.0 / error))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(reference: ImageLike, image: ImageLike) -> float:
    """Structural similarity (Wang et al. 2004): 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03,
    data range 1, computed per colour channel over the valid window positions and averaged."""
    a = torch.from_numpy(to_unit_float(reference)).permute(2, 0, 1)[:, None]
    b = torch.from_numpy(to_unit_float(image)).permute(2, 0, 1)[:, None]
    window = _gaussian_window()
    if a.shape[-1] < window.shape[-1] or a.shape[-2] < window.shape[-2]:
        raise ValueError("SSIM needs images of at least 11×11 pixels")
    conv = lambda x: torch.nn.functional.conv2d(x, window)  # noqa: E731 - a local shorthand
    mu_a, mu_b = conv(a), conv(b)
    var_a = conv(a * a) - mu_a**2
    var_b = conv(b * b) - mu_b**2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


_LPIPS_MODEL = None


def lpips_distance(reference: ImageLike, image: ImageLike) -> tuple[Optional[float], str]:
    """LPIPS (AlexNet) when the `lpips` package and its weights are available offline.

    Returns (value, "") or (None, reason): a missing metric is reported as unavailable, never guessed.
    """
    global _LPIPS_MODEL
    try:
        if _LPIPS_MODEL is None:
            import lpips  # optional dependency

            _LPIPS_MODEL = lpips.LPIPS(net="alex", verbose=False).eval()
        to_input = lambda x: torch.from_numpy(to_unit_float(x) * 2 - 1).permute(2, 0, 1)[None].float()  # noqa: E731
        with torch.no_grad():
            return float(_LPIPS_MODEL(to_input(reference), to_input(image))), ""
    except Exception as error:  # missing package, missing weights offline, broken torchvision
        return None, f"LPIPS unavailable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")


def reconstruction_metrics(reference: ImageLike, image: ImageLike) -> dict:
    """MSE, PSNR, SSIM and LPIPS (or why it is unavailable) of a reconstruction against its input."""
    value, note = lpips_distance(reference, image)
    metrics = {"mse": mse(reference, image), "psnr": psnr(reference, image), "ssim": ssim(reference, image), "lpips": value}
    if note:
        metrics["lpips_note"] = note
    return metrics
