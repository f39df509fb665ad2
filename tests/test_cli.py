import dataclasses
import json
import subprocess
import sys

import torch
from safetensors.torch import save_file

from lib_smooth.cli import JOBS, build_parser, main


def test_every_job_option_is_documented():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, cls in JOBS.items():
        text = subparsers[name].format_help()
        for spec in dataclasses.fields(cls):
            assert "--" + spec.name.replace("_", "-") in text
            assert spec.metadata["help"].split()[0] in text
    for name in ("demo", "convert-lora", "inspect-lora", "make-tokenizer"):
        assert subparsers[name].format_help()


def test_demo_shows_plain_and_smooth_lora_side_by_side(tmp_path, capsys):
    from lib_smooth.backends.shapes_model import SMOOTH_LORA

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", "--frames", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["lora"]["file"] == SMOOTH_LORA.name and len(report["lora"]["sha256"]) == 64
    assert set(report["interpolations"]) == {"seeds", "prompts", "images"}
    for item in report["interpolations"].values():
        for variant in ("plain", "smooth"):
            assert (out / item[variant]["gif"]).is_file() and (out / item[variant]["strip"]).is_file()
            assert set(item[variant]["smoothness"]) >= {"istd", "normalized_istd", "max_step_ratio", "mean_step", "distances"}
        assert item["plain"]["sidecar"]["lora"] is None and item["smooth"]["sidecar"]["lora"]["name"] == SMOOTH_LORA.name
        assert item["plain"]["smoothness"]["distances"] != item["smooth"]["smoothness"]["distances"]  # the LoRA changes the frames
        assert (out / item["plot"]).is_file()
    assert len(list((out / "frames_seeds_plain").glob("*.png"))) == 4 and len(list((out / "frames_seeds_smooth").glob("*.png"))) == 4
    assert set(report["inversion"]) == {"plain", "smooth"} and "psnr" in report["inversion"]["smooth"]["metrics"]
    page = (out / "index.html").read_text()
    assert "shapes-sd1" in report["model"] and page.count("<figure>") == 3 * 3 + 2 and SMOOTH_LORA.name in page
    captured = capsys.readouterr()
    assert "shapes-sd1" in captured.err and "report.json" in captured.out and "Smooth-LoRA ISTD" in captured.out


def test_demo_without_a_lora_runs_the_plain_model_only(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--frames", "3", "--lora", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["lora"] is None and all(set(item) == {"plain", "plot"} for item in report["interpolations"].values())
    assert main(["demo", "--out", str(out), "--lora", str(tmp_path / "missing.safetensors")]) == 2


def test_interpolate_and_istd_commands(tmp_path, capsys):
    out = tmp_path / "interp"
    args = [
        "interpolate",
        "--prompt-a",
        "a cat",
        "--frames",
        "3",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        str(out),
        "--formats",
        "gif",
        "webp",
    ]
    assert main(args) == 0
    record = json.loads((out / "interpolate.json").read_text())
    assert record["settings"]["frames"] == 3 and (out / "interpolation.webp").is_file() and len(record["files"]["frames"]) == 3
    assert (
        main(
            [
                "istd",
                "--prompts",
                "a cat",
                "a dog",
                "--points",
                "3",
                "--steps",
                "2",
                "--width",
                "64",
                "--height",
                "64",
                "--out",
                str(tmp_path / "istd"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "normalized_istd" in printed and "mean step" in printed
    istd = json.loads((tmp_path / "istd" / "istd.json").read_text())["istd"]
    assert len(istd["per_prompt"]) == 2 and istd["resolution"] == [64, 64]


def test_interpolate_and_invert_also_without_the_lora(tmp_path, capsys):
    """--compare-without-lora writes the run without the LoRA beside the other, and prints both runs' figures."""
    from lib_smooth.backends.shapes_model import DEMO_IMAGE, SMOOTH_LORA

    common = ["--lora", str(SMOOTH_LORA), "--compare-without-lora", "--steps", "2"]
    assert main(["interpolate", "--prompt-a", "a red shape", "--frames", "3", "--out", str(tmp_path / "i"), *common]) == 0
    record = json.loads((tmp_path / "i" / "interpolate.json").read_text())
    assert record["lora"]["name"] == SMOOTH_LORA.name and record["without_lora"]["lora"] is None
    assert len(list((tmp_path / "i" / "frames_without_lora").glob("*.png"))) == 3 and (tmp_path / "i" / "interpolation_without_lora.gif").is_file()
    assert record["smoothness"]["istd"] != record["without_lora"]["smoothness"]["istd"]
    printed = capsys.readouterr().out
    assert "with LoRA: istd" in printed and "without LoRA: istd" in printed
    assert main(["invert", "--image", str(DEMO_IMAGE), "--prompt", "a red circle", "--out", str(tmp_path / "v"), *common]) == 0
    record = json.loads((tmp_path / "v" / "invert.json").read_text())
    assert (tmp_path / "v" / "reconstruction_without_lora.png").is_file() and record["without_lora"]["metrics"] != record["metrics"]
    assert "reconstruction, without LoRA" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["interpolate", "--prompt-a", "a", "--frames", "1", "--out", str(tmp_path)]) == 2
    assert "frames must be between 2 and 240" in capsys.readouterr().err
    assert main(["convert-lora", str(tmp_path / "missing.safetensors"), str(tmp_path / "out.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["invert", "--image", str(tmp_path / "nope.png"), "--out", str(tmp_path)]) == 2
    assert "image: file not found" in capsys.readouterr().err
    assert main(["interpolate", "--prompt-a", "a", "--lora", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a folder; give the LoRA file itself" in capsys.readouterr().err


def test_bad_command_lines_end_in_an_error_message_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import lib_smooth.backends

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a bad command line")

    monkeypatch.setattr(lib_smooth.backends, "open_model", no_model)
    monkeypatch.setattr("lib_smooth.export.mp4_available", lambda: False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    interpolate = ["interpolate", "--prompt-a", "a", "--out", str(tmp_path / "out")]
    cases = [
        (interpolate[:-1] + [str(blocker / "under")], "cannot write to the output folder"),
        (["invert", "--image", str(blocker), "--prompt", "a"], "is not an image PIL can read"),
        (["make-tokenizer", str(blocker / "tok")], "cannot write to the output folder"),
        (["demo", "--out", str(blocker / "demo")], "cannot write to the output folder"),
        (["demo", "--frames", "0", "--out", str(tmp_path / "demo")], "frames must be between 2 and 240"),
        (interpolate + ["--device", "banana"], "unknown --device 'banana'"),
        (interpolate + ["--device", "cuda:7"], "--device cuda:7"),
        (interpolate + ["--formats", "mp4"], "--formats mp4 needs the ffmpeg executable"),
        (interpolate + ["--steps", "1000"], "steps must be between 1 and 999"),
        (["istd", "--compare-without-lora", "--out", str(tmp_path / "istd")], "compare_without_lora needs a lora"),
        (interpolate + ["--compare-without-lora"], "compare_without_lora needs a lora"),
        (interpolate + ["--inversion", "null-text"], "inversion null-text applies to image ends"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_a_bad_frame_rate_is_refused_when_parsing(capsys):
    import pytest

    for fps in ("0", "-3", "fast"):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(["interpolate", "--prompt-a", "a", "--fps", fps])
        assert stop.value.code == 2
        assert "--fps" in capsys.readouterr().err


def test_convert_and_inspect_lora(tmp_path, capsys):
    tensors = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": torch.randn(8, 768),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": torch.randn(320, 8),
    }
    save_file(tensors, str(tmp_path / "official.safetensors"))
    assert main(["convert-lora", str(tmp_path / "official.safetensors"), str(tmp_path / "kohya.safetensors")]) == 0
    assert main(["inspect-lora", str(tmp_path / "kohya.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["format"] == "kohya" and info["family"] == "sd1" and info["ranks"] == [8] and info["alphas"] == [8.0]
    assert main(["convert-lora", str(tmp_path / "official.safetensors"), str(tmp_path / "kohya.safetensors")]) == 2
    assert "exists" in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "lib_smooth", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout and "convert-lora" in result.stdout
