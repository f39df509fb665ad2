import numpy as np
import pytest

from lab.shapes import (
    ATTRIBUTES,
    COLOURS,
    SHAPES,
    ShapeSpec,
    accuracy,
    detect,
    diversity,
    frechet_distance,
    partial_caption,
    render,
    samples,
    spec_for,
    write_dataset,
)


def test_specs_are_deterministic_and_captioned():
    assert spec_for(5, seed=3) == spec_for(5, seed=3) and spec_for(5, seed=3) != spec_for(5, seed=4)
    spec = spec_for(0)
    assert spec.colour != spec.background and spec.shape in SHAPES
    assert spec.caption == f"a {spec.size} {spec.colour} {spec.shape} {spec.position} on a {spec.background} background"
    assert np.array_equal(np.asarray(render(spec)), np.asarray(render(spec)))


def test_dataset_layout_is_kohya_readable(tmp_path):
    folder = write_dataset(tmp_path / "data", 5, seed=1, size=32)
    assert sorted(p.name for p in folder.iterdir())[:2] == ["000000.png", "000000.txt"]
    assert (folder / "000004.txt").read_text() == spec_for(4, seed=1).caption


def test_detector_reads_back_every_attribute_at_64_px():
    images, specs = zip(*samples(400, seed=7, size=64))
    result = accuracy(images, specs)
    assert result["both"] >= 0.99 and result["count"] == 400
    assert all(detect(image).background == spec.background for image, spec in zip(images[:50], specs[:50]))


def test_partial_captions_leave_attributes_out():
    import random

    spec = ShapeSpec("star", "red", "blue", "large", "on the left")
    assert spec.caption_leaving_out(["shape", "size", "position", "background"]) == "a red shape"
    assert spec.caption_leaving_out(["colour", "position"]) == "a large star on a blue background"
    assert spec.caption_leaving_out(ATTRIBUTES) == "a shape"
    assert partial_caption(spec, random.Random(0), 0.0) == spec.caption and partial_caption(spec, random.Random(0), 1.0) == "a shape"


def test_detector_reads_size_and_position_and_diversity_counts_them():
    images, specs = zip(*samples(200, seed=3, size=64))
    found = [detect(image) for image in images]
    assert all(d.size == s.size and d.position == s.position for d, s in zip(found, specs))
    two_circles_two_squares = [render(ShapeSpec(shape, "red", "blue", "large", "in the centre")) for shape in ("circle", "square") * 2]
    report = diversity(two_circles_two_squares, ["shape", "colour"])
    assert report["shape"] == {"counts": {"circle": 2, "square": 2}, "entropy_bits": 1.0, "top_share": 0.5}
    assert report["colour"] == {"counts": {"red": 4}, "entropy_bits": 0.0, "top_share": 1.0}


def test_detector_reads_blurred_shapes():
    """Gaussian blur of 2 px rounds every corner of a small shape; the best-overlapping shape survives it
    (97.5 %; the thresholds on bounding-box fill and solidity used before read 82.5 %)."""
    from PIL import ImageFilter

    images, specs = zip(*samples(200, seed=7, size=64))
    assert accuracy([image.filter(ImageFilter.GaussianBlur(2)) for image in images], specs)["shape"] >= 0.9


def _drawn(points_or_box, kind: str):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), COLOURS["blue"])
    draw = ImageDraw.Draw(image)
    if kind == "polygon":
        draw.polygon(points_or_box, fill=COLOURS["red"])
    elif kind == "rounded":
        draw.rounded_rectangle(points_or_box, radius=5, fill=COLOURS["red"])
    else:
        draw.ellipse(points_or_box, fill=COLOURS["red"])
    return detect(image).shape


def test_detector_reads_shapes_as_a_decoder_distorts_them():
    """What generated samples look like: squares with rounded corners or sides bowed in (the old detector,
    thresholds on bounding-box fill, read both as circles), triangles with bowed sides, slightly oval circles."""
    import math

    def bowed(corners, depth):  # each side's midpoint pulled towards the centre by `depth` pixels
        cx, cy = np.mean(corners, axis=0)
        points = []
        for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            norm = math.hypot(cx - mx, cy - my)
            points += [(x0, y0), (mx + depth * (cx - mx) / norm, my + depth * (cy - my) / norm)]
        return points

    assert _drawn((16, 16, 46, 46), "rounded") == "square"
    assert _drawn(bowed([(16, 16), (46, 16), (46, 46), (16, 46)], 3), "polygon") == "square"
    assert _drawn(bowed([(32, 12), (50, 44), (14, 44)], 3), "polygon") == "triangle"
    assert _drawn((16, 18, 48, 46), "ellipse") == "circle"


def test_template_areas_match_the_drawn_shapes():
    """The detector scales each shape to the foreground's area through UNIT_AREA: count the pixels drawn."""
    from PIL import Image, ImageDraw

    from lab.shapes import UNIT_AREA, _draw

    for shape in SHAPES:
        image = Image.new("L", (400, 400), 0)
        _draw(ImageDraw.Draw(image), shape, 200, 200, 100, 255)
        assert (np.asarray(image) > 0).sum() / 100**2 == pytest.approx(UNIT_AREA[shape], rel=0.02)


def test_detector_on_a_plain_image_finds_nothing():
    from PIL import Image

    detection = detect(Image.new("RGB", (64, 64), COLOURS["blue"]))
    assert (detection.shape, detection.colour, detection.background) == ("none", "none", "blue")


def test_frechet_distance_by_hand():
    a = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # mean (1, 1), covariance (4/3)·I
    b = 2 * a + 1  # mean (3, 3), covariance 4·(4/3)·I
    # |Δμ|² + tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½) = 8 + tr((4/3)·I·(1 + 4 − 2·2)) = 8 + 8/3
    assert frechet_distance(a, b) == pytest.approx(8 + 8 / 3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
