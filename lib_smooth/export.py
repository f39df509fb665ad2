"""Writing results: animated GIF / WebP, PNG frames, MP4 (when ffmpeg is on PATH) and the JSON sidecar.

The sidecar holds everything needed to reproduce a run: package version, model hash, LoRA hash and
weight, the full request (images replaced by their sha256) and the seeds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from PIL import Image

from . import __version__

ANIMATION_FORMATS = ("gif", "webp", "mp4")


def write_gif(frames: Sequence[Image.Image], path: Path, fps: float = 16.0, loop: bool = True) -> Path:
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps), loop=0 if loop else 1, optimize=False)
    return path


def write_webp(frames: Sequence[Image.Image], path: Path, fps: float = 16.0) -> Path:
    frames[0].save(path, format="WEBP", save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps), loop=0, lossless=True)
    return path


def mp4_available() -> bool:
    return shutil.which("ffmpeg") is not None


def write_mp4(frames: Sequence[Image.Image], path: Path, fps: float = 16.0) -> Path:
    """H.264 through the ffmpeg executable (raw RGB frames on its stdin); even sizes as yuv420p needs."""
    if not mp4_available():
        raise RuntimeError("MP4 needs the ffmpeg executable on PATH (e.g. apt-get install ffmpeg); GIF and WebP work without it")
    width, height = frames[0].size
    command = [
        "ffmpeg",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "-",
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        str(path),
    ]
    data = b"".join(frame.convert("RGB").tobytes() for frame in frames)
    result = subprocess.run(command, input=data, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {result.stderr.decode(errors='replace').strip()}")
    return path


def write_pngs(frames: Sequence[Image.Image], folder: Path, prefix: str = "frame") -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(folder / f"{prefix}_{index:03d}.png")
        frame.save(paths[-1])
    return paths


def write_animation(frames: Sequence[Image.Image], stem: Path, formats: Sequence[str] = ("gif",), fps: float = 16.0) -> Dict[str, str]:
    """Write each requested format that can be written; MP4 is skipped (reported) without ffmpeg."""
    writers = {"gif": write_gif, "webp": write_webp, "mp4": write_mp4}
    written: Dict[str, str] = {}
    for fmt in formats:
        if fmt not in writers:
            raise ValueError(f"unknown animation format {fmt!r}; choose from {', '.join(ANIMATION_FORMATS)}")
        if fmt == "mp4" and not mp4_available():
            written[fmt] = "skipped: ffmpeg not found on PATH"
            continue
        written[fmt] = str(writers[fmt](frames, stem.with_suffix(f".{fmt}"), fps))
    return written


def sidecar(job: str, request: Any, model_hash: str, lora: Optional[Any], image_hashes: Dict[str, str], extra: Optional[dict] = None) -> dict:
    """Reproducibility record of a run; image fields hold the sha256 of the image's PNG bytes as used,
    `lora` is the job's :class:`lib_smooth.backend.LoraInUse` (None without one)."""
    settings = dataclasses.asdict(request)
    settings.pop("lora", None), settings.pop("lora_weight", None)
    settings.update({name: {"sha256": digest} for name, digest in image_hashes.items()})
    record = {
        "generator": f"lib_smooth {__version__}",
        "job": job,
        "model_hash": model_hash,
        "lora": lora.as_dict() if lora else None,
        "settings": settings,
    }
    record.update(extra or {})
    return record


def write_json(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path
