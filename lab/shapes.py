"""A procedural captioned image set of coloured shapes, and a detector that reads colour and shape back.

This is the data a small Stable-Diffusion-architecture model can learn on a CPU, so that Smooth
Diffusion can be shown and measured without downloading weights: images such as "a small red circle on
a blue background", deterministic from (seed, index). The detector measures whether generated images
match their prompts, and its features feed a Fréchet distance between image sets (sample quality).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (240, 140, 30),
    "purple": (140, 60, 180),
}
# Shape extent as a fraction of the image side. Not smaller: an 8× VAE keeps a 64 px image in 8×8
# latents, and a star 18 px across (0.28, the size until 2026-11-26) came back from it as a blob.
SIZES = {"small": 0.4, "large": 0.58}
STAR_INNER_RADIUS = 0.45  # of the outer radius
SQUARE_HALF_SIDE = 0.9  # of the radius
POSITIONS = {
    "in the centre": (0.5, 0.5),
    "on the left": (0.3, 0.5),
    "on the right": (0.7, 0.5),
    "at the top": (0.5, 0.3),
    "at the bottom": (0.5, 0.7),
}


ATTRIBUTES = ("shape", "colour", "background", "size", "position")


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    background: str
    size: str
    position: str

    @property
    def caption(self) -> str:
        return self.caption_leaving_out(())

    def caption_leaving_out(self, left_out: Collection[str]) -> str:
        """The caption without the attributes in `left_out`, which the picture still has: "a red shape",
        "a large circle on a blue background", "a shape". The noise decides what it does not say."""
        words = ["a"]
        words += [self.size] if "size" not in left_out else []
        words += [self.colour] if "colour" not in left_out else []
        words += ["shape" if "shape" in left_out else self.shape]
        words += [self.position] if "position" not in left_out else []
        words += [f"on a {self.background} background"] if "background" not in left_out else []
        return " ".join(words)


def partial_caption(spec: ShapeSpec, rng: random.Random, drop_probability: float) -> str:
    """The caption with each attribute left out independently with `drop_probability`."""
    return spec.caption_leaving_out([name for name in ATTRIBUTES if rng.random() < drop_probability])


def spec_for(index: int, seed: int = 0) -> ShapeSpec:
    """The attributes of image `index`: a deterministic draw, foreground and background colours differ."""
    rng = random.Random(seed * 1_000_003 + index)
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    return ShapeSpec(rng.choice(SHAPES), colour, background, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)))


def _polygon(shape: str, cx: float, cy: float, radius: float) -> List[Tuple[float, float]]:
    if shape == "triangle":
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    points = []  # five-pointed star
    for k in range(10):
        r = radius if k % 2 == 0 else STAR_INNER_RADIUS * radius
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "square":
        half = radius * SQUARE_HALF_SIDE
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius), fill=fill)


# Area of each shape as _draw draws it, per squared radius; a star is ten triangles with sides 1 and the
# inner radius, at π/5 between them.
UNIT_AREA = {
    "circle": math.pi,
    "square": (2 * SQUARE_HALF_SIDE) ** 2,
    "triangle": 3 * math.sqrt(3) / 4,
    "star": 5 * STAR_INNER_RADIUS * math.sin(math.pi / 5),
}
SUPERSAMPLING = 4


def render(spec: ShapeSpec, size: int = 64) -> Image.Image:
    """Draw at 4× and downsample, for anti-aliased edges like a photographed shape."""
    side = size * SUPERSAMPLING
    image = Image.new("RGB", (side, side), COLOURS[spec.background])
    fx, fy = POSITIONS[spec.position]
    _draw(ImageDraw.Draw(image), spec.shape, fx * side, fy * side, SIZES[spec.size] * side / 2, COLOURS[spec.colour])
    return image.resize((size, size), Image.LANCZOS)


def samples(count: int, seed: int = 0, size: int = 64, start: int = 0) -> Iterator[Tuple[Image.Image, ShapeSpec]]:
    for index in range(start, start + count):
        spec = spec_for(index, seed)
        yield render(spec, size), spec


def write_dataset(folder: str | Path, count: int, seed: int = 0, size: int = 64) -> Path:
    """PNG images with same-stem .txt captions: the layout kohya sd-scripts reads as a dataset."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (image, spec) in enumerate(samples(count, seed, size)):
        image.save(folder / f"{index:06d}.png")
        (folder / f"{index:06d}.txt").write_text(spec.caption)
    return folder


# --- detector ---------------------------------------------------------------------------------------


@dataclass
class Detection:
    colour: str
    background: str
    shape: str
    features: np.ndarray  # what the Fréchet distance compares
    size: str = "none"
    position: str = "none"

    def attribute(self, name: str) -> str:
        return getattr(self, name)


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: float(((np.array(COLOURS[name]) - rgb) ** 2).sum()))


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of 2-D points (Andrew's monotone chain, then the shoelace formula)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def half(sequence):
        chain: list = []
        for p in sequence:
            while (
                len(chain) >= 2 and (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1]) - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0]) <= 0
            ):
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.array(half(pts) + half(reversed(pts)), dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _template(shape: str, cx: float, cy: float, area: float, side: int) -> np.ndarray:
    """Coverage (0–1 per pixel) of `shape` drawn as render draws it, centred at pixel (cx, cy), with `area` pixels."""
    scale = SUPERSAMPLING
    image = Image.new("L", (side * scale, side * scale), 0)
    radius = math.sqrt(area / UNIT_AREA[shape]) * scale
    _draw(ImageDraw.Draw(image), shape, (cx + 0.5) * scale, (cy + 0.5) * scale, radius, 255)
    return np.asarray(image.resize((side, side), Image.BOX), dtype=np.float64) / 255


def detect(image: Image.Image) -> Detection:
    """Background = the median border colour; foreground = pixels far from it. The shape is the one that,
    drawn with the foreground's area around its centroid (every shape's centroid is its centre), overlaps
    the foreground most (intersection over union): a rounded or wavy-sided square is still nearer a square
    than a circle, where thresholds on single measures misread it (bench/RESULTS.md)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2))
    mask = distance > 60
    if mask.sum() < 4:
        return Detection("none", _nearest_colour(background_rgb), "none", np.concatenate([background_rgb / 255, background_rgb / 255, np.zeros(4)]))
    ys, xs = np.nonzero(mask)
    side = pixels.shape[0]
    overlap = {}
    for shape in SHAPES:
        template = _template(shape, xs.mean(), ys.mean(), mask.sum(), side)
        overlap[shape] = np.minimum(template, mask).sum() / np.maximum(template, mask).sum()
    foreground_rgb = np.median(pixels[mask], axis=0)
    # Features for the Fréchet distance: colours, how much of its bounding box the shape fills,
    # solidity (area / convex-hull area), size and position.
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    solidity = mask.sum() / max(_hull_area(corners), 1.0)
    features = np.concatenate(
        [foreground_rgb / 255, background_rgb / 255, [fill, solidity, math.sqrt(mask.sum()) / side, (xs.mean() + ys.mean()) / (2 * side)]]
    )
    shape = max(overlap, key=overlap.get)
    extent = 2 * math.sqrt(mask.sum() / UNIT_AREA[shape]) / side  # the drawn radius, as a fraction of the side
    size = min(SIZES, key=lambda name: abs(SIZES[name] - extent))
    position = min(POSITIONS, key=lambda name: (POSITIONS[name][0] - xs.mean() / side) ** 2 + (POSITIONS[name][1] - ys.mean() / side) ** 2)
    return Detection(_nearest_colour(foreground_rgb), _nearest_colour(background_rgb), shape, features, size, position)


def diversity(images: Sequence[Image.Image], left_out: Collection[str]) -> Dict[str, dict]:
    """For the attributes a prompt left out, how the detector reads them across `images` (one per seed):
    the count of each value, the entropy in bits (log2 of the number of values when even) and the share of
    the most common value. A model whose noise decides what the prompt leaves open spreads them."""
    found = [detect(image) for image in images]
    report = {}
    for name in left_out:
        values = [d.attribute(name) for d in found]
        counts = {value: values.count(value) for value in sorted(set(values))}
        shares = np.array(list(counts.values()), dtype=np.float64) / len(values)
        report[name] = {"counts": counts, "entropy_bits": float(-(shares * np.log2(shares)).sum()) + 0.0, "top_share": float(shares.max())}
    return report


def accuracy(images: Sequence[Image.Image], specs: Sequence[ShapeSpec]) -> dict:
    """Share of images whose detected colour, shape, and both, match the prompt's."""
    found = [detect(image) for image in images]
    colour = np.mean([d.colour == s.colour for d, s in zip(found, specs)])
    shape = np.mean([d.shape == s.shape for d, s in zip(found, specs)])
    both = np.mean([d.colour == s.colour and d.shape == s.shape for d, s in zip(found, specs)])
    return {"colour": float(colour), "shape": float(shape), "both": float(both), "count": len(found)}


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a^½ Σ_b Σ_a^½)^½), the FID formula on detector features."""
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)

    def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_a = sqrt_psd(cov_a)
    cross = sqrt_psd(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cross))
