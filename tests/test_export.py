import json

import pytest
from PIL import Image

from lib_smooth import __version__
from lib_smooth.backend import LoraInUse
from lib_smooth.export import mp4_available, sidecar, write_animation, write_json, write_pngs
from lib_smooth.requests import InterpolateRequest


def frames(n=4):
    return [Image.new("RGB", (16, 16), (60 * i, 0, 255 - 60 * i)) for i in range(n)]


def test_gif_and_webp_hold_every_frame(tmp_path):
    written = write_animation(frames(), tmp_path / "anim", ("gif", "webp"), fps=10)
    for fmt in ("gif", "webp"):
        with Image.open(written[fmt]) as animation:
            assert animation.n_frames == 4
            animation.seek(3)
            if fmt == "gif":
                assert animation.info["duration"] == 100
            assert animation.convert("RGB").getpixel((0, 0)) == (180, 0, 75)


def test_mp4_written_or_reported(tmp_path):
    written = write_animation(frames(), tmp_path / "anim", ("mp4",))
    if mp4_available():
        assert (tmp_path / "anim.mp4").stat().st_size > 0
    else:
        assert written["mp4"] == "skipped: ffmpeg not found on PATH"
    with pytest.raises(ValueError, match="unknown animation format"):
        write_animation(frames(), tmp_path / "anim", ("avi",))


def test_pngs_are_numbered(tmp_path):
    paths = write_pngs(frames(3), tmp_path / "f")
    assert [p.name for p in paths] == ["frame_000.png", "frame_001.png", "frame_002.png"]


def test_sidecar_holds_what_reproduces_a_run(tmp_path):
    request = InterpolateRequest(prompt_a="a cat", image_a="<base64>", seed_b=9, lora="/loras/smooth.safetensors", lora_weight=0.7)
    record = sidecar("interpolate", request, "abc123", LoraInUse("smooth.safetensors", "f" * 64, 0.7), {"image_a": "d" * 64})
    assert record["generator"] == f"lib_smooth {__version__}" and record["model_hash"] == "abc123"
    assert record["lora"] == {"name": "smooth.safetensors", "sha256": "f" * 64, "weight": 0.7}
    assert record["settings"]["image_a"] == {"sha256": "d" * 64} and record["settings"]["seed_b"] == 9
    assert "lora" not in record["settings"]
    write_json(record, tmp_path / "run.json")
    assert json.loads((tmp_path / "run.json").read_text()) == record
