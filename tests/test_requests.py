import base64

import pytest
from PIL import Image

from lib_smooth.errors import RequestError
from lib_smooth.images import png_bytes
from lib_smooth.requests import EditRequest, InterpolateRequest, IstdRequest, from_dict, image_file_to_field, open_image_field, validate


def test_defaults_follow_the_official_demo():
    r = InterpolateRequest(prompt_a="a cat")
    assert (r.frames, r.steps, r.guidance, r.inversion_guidance, r.batch_size) == (24, 50, 7.5, 1.0, 8)
    assert EditRequest(image="x", target_prompt="y").switch_ratio == 0.8
    assert IstdRequest().points == 11


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt_a": "a", "frames": 1}, "frames must be between 2 and 240"),
        ({"prompt_a": "a", "steps": 0}, "steps must be between 1 and 999"),
        ({"prompt_a": "a", "steps": 1000}, "steps must be between 1 and 999"),
        ({"prompt_a": "a", "seed_a": -1}, "seed_a must be between 0 and 4294967295; got -1"),
        ({"prompt_a": "a", "frames": "3"}, "frames must be of type int; got '3'"),
        ({"prompt_a": "a", "guidance": "7.5"}, "guidance must be of type float"),
        ({"prompt_a": "a", "inversion": "null-text"}, "inversion null-text applies to image ends"),
        ({"prompt_a": "a", "width": 100}, "width must be a multiple of 8"),
        ({"prompt_a": "a", "height": 4096}, "height must be between 64 and 2048"),
        ({"prompt_a": "a", "inversion": "magic"}, "inversion must be one of ddim, ddim-no-text"),
        ({"prompt_a": "a", "frames": "many"}, "frames must be of type int"),
        ({"prompt_a": "a", "frames": 2.5}, "frames must be of type int"),
        ({"prompt_a": "a", "colour": "red"}, "unknown field(s) colour"),
        ({}, "give at least prompt_a"),
        ({"prompt_a": "a", "seed_a": 3, "seed_b": 3}, "both ends are the same"),
    ],
)
def test_bad_interpolation_requests(fields, message):
    with pytest.raises(RequestError) as error:
        from_dict(InterpolateRequest, fields)
    assert message in str(error.value)


def test_edit_and_istd_rules():
    with pytest.raises(RequestError, match="image is required"):
        validate(EditRequest(target_prompt="x"))
    with pytest.raises(RequestError, match="target_prompt is required"):
        validate(EditRequest(image="abc"))
    with pytest.raises(RequestError, match="switch_ratio must be between 0 and 1"):
        validate(EditRequest(image="abc", target_prompt="t", switch_ratio=1.2))
    with pytest.raises(RequestError, match="non-empty prompt"):
        validate(IstdRequest(prompts=["  "]))
    with pytest.raises(RequestError, match=r"prompts must be of type List\[str\]; got 'a cat'"):
        from_dict(IstdRequest, {"prompts": "a cat"})
    with pytest.raises(RequestError, match="compare_without_lora needs a lora"):
        from_dict(IstdRequest, {"compare_without_lora": True})
    assert from_dict(IstdRequest, {"prompts": ["a cat"], "pairs": 3}).pairs == 3


def test_image_fields_take_base64_data_urls_and_pil_images_never_paths(tmp_path):
    image = Image.new("RGB", (8, 6), "red")
    path = tmp_path / "red.png"
    image.save(path)
    encoded = base64.b64encode(png_bytes(image)).decode()
    for value in (encoded, "data:image/png;base64," + encoded, image):
        assert open_image_field("image", value).size == (8, 6)
    refusal = "image must be a base64-encoded PNG/JPEG image or a data URL (data:image/png;base64,...)"
    # an existing server file and a missing one get the same answer: nothing tells the caller which exists
    for value in (str(path), str(tmp_path / "missing.png"), "not an image!", base64.b64encode(b"plain text").decode()):
        with pytest.raises(RequestError) as error:
            open_image_field("image", value)
        assert str(error.value) == refusal


def test_images_above_the_pixel_limit_are_refused_before_decoding(monkeypatch):
    big = Image.new("L", (8000, 6000))  # 48 Mpx, above the 40 Mpx limit; PNG of one colour is small
    encoded = base64.b64encode(png_bytes(big)).decode()
    decoded = []
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: decoded.append(self))
    with pytest.raises(RequestError, match="8000×6000 px; images up to 40 megapixels"):
        open_image_field("image", encoded)
    assert decoded == []


def test_cli_image_paths(tmp_path):
    image = Image.new("RGB", (8, 6), "blue")
    image.save(tmp_path / "blue.jpg")
    field = image_file_to_field("image", str(tmp_path / "blue.jpg"))
    assert field.startswith("data:image/jpeg;base64,") and open_image_field("image", field).size == (8, 6)
    (tmp_path / "text.png").write_text("not an image")
    for path, message in (
        (tmp_path / "none.png", "image: file not found"),
        (tmp_path, "is a folder, not an image file"),
        (tmp_path / "text.png", "is not an image PIL can read"),
    ):
        with pytest.raises(RequestError, match=message):
            image_file_to_field("image", str(path))


def test_an_unset_size_is_the_models_native_size(sd1):
    from lib_smooth.jobs import run_interpolate

    assert InterpolateRequest(prompt_a="a").width is None and sd1.native_size == 64  # tiny UNet: 8 latent cells × 8
    result = run_interpolate(sd1, InterpolateRequest(prompt_a="a cat", frames=2, steps=1))
    assert result.frames[0].size == (64, 64) and (result.sidecar["settings"]["width"], result.sidecar["settings"]["height"]) == (64, 64)
    wide = run_interpolate(sd1, InterpolateRequest(prompt_a="a cat", frames=2, steps=1, width=128))
    assert wide.frames[0].size == (128, 64)


def test_native_size_of_the_standard_families():
    import types

    from lib_smooth.requests import native_size

    assert native_size(types.SimpleNamespace()) == 512  # a backend that does not say
    assert native_size(types.SimpleNamespace(native_size=1024)) == 1024
