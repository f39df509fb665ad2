import subprocess
import sys

CORE = [
    "lib_smooth." + m
    for m in (
        "backend",
        "ddim",
        "interpolate",
        "invert",
        "metrics",
        "images",
        "cache",
        "evaluate",
        "jobs",
        "requests",
        "export",
        "lora_formats",
        "lora_apply",
        "ldm_names",
        "cli",
        "demo",
        "errors",
    )
]


def test_core_imports_no_diffusers_transformers_or_gradio():
    code = (
        "import sys; "
        + "; ".join(f"import {m}" for m in CORE)
        + "; print(sorted(m for m in ('diffusers', 'transformers', 'gradio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_package_needs_nothing_from_the_lab():
    """lab/ (data set, recipe, reproduction) and bench/ are not installed: no product module may import them."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "lib_smooth"
    importing = re.compile(r"^\s*(from|import)\s+(lab|bench)\b", re.M)
    assert [str(path) for path in package.rglob("*.py") if importing.search(path.read_text())] == []


def test_the_demo_input_is_the_embedded_models_own_training_image():
    """The shipped demo image and captions are what lab.shapes renders and writes for that shape."""
    import numpy as np
    from PIL import Image

    from lab.shapes import ShapeSpec, render
    from lib_smooth.backends.shapes_model import CIRCLE_CAPTION, DEMO_IMAGE, PARTIAL_CAPTION, SQUARE_CAPTION

    circle = ShapeSpec("circle", "red", "blue", "large", "in the centre")
    assert CIRCLE_CAPTION == circle.caption and SQUARE_CAPTION == ShapeSpec("square", "green", "yellow", "large", "in the centre").caption
    assert PARTIAL_CAPTION == circle.caption_leaving_out(["shape", "background", "size", "position"])
    with Image.open(DEMO_IMAGE) as shipped:
        assert np.array_equal(np.asarray(shipped.convert("RGB")), np.asarray(render(circle, 64)))
