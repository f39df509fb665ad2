import base64

import pytest

from lib_smooth.errors import RequestError
from lib_smooth.images import png_bytes
from lib_smooth.requests import EditRequest, InterpolateRequest, IstdRequest, from_dict, open_image_field, validate
from PIL import Image


def test_defaults_follow_the_official_demo():
    r = InterpolateRequest(prompt_a="a cat")
    assert (r.frames, r.steps, r.guidance, r.inversion_guidance, r.batch_size) == (24, 50, 7.5, 1.0, 8)
    assert EditRequest(image="x", target_prompt="y").switch_ratio == 0.8
    assert IstdRequest().points == 11


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt_a": "a", "frames": 1}, "frames must be between 2 and 240"),
        ({"prompt_a": "a", "steps": 0}, "steps must be between 1 and 1000"),
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
    with pytest.raises(RequestError, match="prompts must be of type List"):
        from_dict(IstdRequest, {"prompts": "a cat"})
    assert from_dict(IstdRequest, {"prompts": ["a cat"], "pairs": 3}).pairs == 3


def test_image_fields_accept_paths_base64_and_data_urls(tmp_path):
    image = Image.new("RGB", (8, 6), "red")
    path = tmp_path / "red.png"
    image.save(path)
    encoded = base64.b64encode(png_bytes(image)).decode()
    for value in (str(path), encoded, "data:image/png;base64," + encoded):
        assert open_image_field("image", value).size == (8, 6)
    with pytest.raises(RequestError, match="neither an image file path nor a base64"):
        open_image_field("image", "not an image!")
    with pytest.raises(RequestError, match="neither"):
        open_image_field("image", base64.b64encode(b"plain text").decode())
