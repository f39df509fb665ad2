"""Small plots drawn with PIL alone (no matplotlib in the WebUI's or a user's environment needed)."""

from __future__ import annotations

from typing import Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

TITLE = "Adjacent-frame L2 distance per step (dashed: each model's mean step)"
COLOURS = ("#d62728", "#1f77b4")


def font(size: int):
    """A scalable font where Pillow has one built in (≥ 10.1); its small bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def distance_plot(series: Sequence[Tuple[str, Sequence[float], float]], title: str = TITLE) -> Image.Image:
    """Adjacent-frame distances per step, one line per (name, distances, mean step), each mean step
    dashed; values on both axes, and title and legend in a band above the plot area (the WebUI's image
    label badge covers the top-left corner)."""
    width, height = 640, 360
    left, right, top, bottom = 70, 20, 76, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    text, small = font(15), font(12)
    values = [v for _, distances, _ in series for v in distances]
    highest = max(values) * 1.1 if values and max(values) > 0 else 1.0
    steps = len(series[0][1])
    x = lambda i: left + i * (width - left - right) / max(steps - 1, 1)  # noqa: E731
    y = lambda v: height - bottom - v / highest * (height - top - bottom)  # noqa: E731
    draw.text(((width - draw.textlength(title, font=text)) / 2, 26), title, fill="black", font=text)
    draw.line([(left, height - bottom), (width - right, height - bottom)], fill="black")
    draw.line([(left, top), (left, height - bottom)], fill="black")
    draw.text((4, top - 18), "L2 distance", fill="black", font=small)
    for fraction in (0.0, 0.5, 1.0):
        value = highest * fraction
        draw.line([(left - 4, y(value)), (left, y(value))], fill="black")
        label = f"{value:.3g}"
        draw.text((left - 8 - draw.textlength(label, font=small), y(value) - 7), label, fill="black", font=small)
    for i in range(steps):
        draw.line([(x(i), height - bottom), (x(i), height - bottom + 4)], fill="black")
        draw.text((x(i) - 4, height - bottom + 6), str(i + 1), fill="black", font=small)
    axis = "step between frames"
    draw.text(((width - draw.textlength(axis, font=small)) / 2, height - 20), axis, fill="black", font=small)
    for index, ((name, distances, mean_step), colour) in enumerate(zip(series, COLOURS)):
        points = [(x(i), y(v)) for i, v in enumerate(distances)]
        draw.line(points, fill=colour, width=2, joint="curve")
        mean = y(mean_step)
        for start in range(left, width - right, 12):
            draw.line([(start, mean), (start + 6, mean)], fill=colour)
        legend_x = width - right - 330 + index * 170
        draw.line([(legend_x, 56), (legend_x + 22, 56)], fill=colour, width=2)
        draw.text((legend_x + 28, 48), name, fill=colour, font=text)
    return image
