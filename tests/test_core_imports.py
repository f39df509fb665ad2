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
