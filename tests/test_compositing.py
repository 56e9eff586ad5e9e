import numpy as np
import pytest

from avatarcam.compositing import Compositor, paste_back
from avatarcam.geometry import Box


def test_face_framing_fills_a_wide_canvas_with_the_face_of_a_tall_portrait():
    photo = np.zeros((1280, 720, 3), np.uint8)  # a tall portrait
    face = Box(360.0, 400.0, 300.0)
    x0, y0 = int(face.x0), int(face.y0)
    photo[y0:y0 + 300, x0:x0 + 300] = 255  # the face: a white square
    c = Compositor(width=1280, height=720, fit="face")
    out = c.compose(photo, face)
    assert out.shape == (720, 1280, 3)
    white = np.argwhere(out[..., 0] > 128)
    (ty, tx), (by, bx) = white.min(0), white.max(0)
    assert (by - ty) / 720 > 0.35  # the face is large: about FACE_SHARE of the height
    assert abs((tx + bx) / 2 - 640) < 40  # and centred horizontally
    # map_points agrees with the pixels it drew
    corners = np.array([[face.x0, face.y0], [face.x0 + face.side - 1, face.y0 + face.side - 1]])
    mapped = c.map_points(corners, (720, 1280), face)
    assert np.allclose(mapped[0], (tx, ty), atol=3) and np.allclose(mapped[1], (bx, by), atol=3)
    # without a face box (a square crop, the real camera) it letterboxes
    lb = Compositor(width=1280, height=720, fit="letterbox").compose(photo)
    assert np.array_equal(c.compose(photo, None), lb)


def test_face_framing_near_the_photo_edge_stays_inside_the_photo():
    photo = np.full((400, 300, 3), 80, np.uint8)
    face = Box(40.0, 30.0, 120.0)
    out = Compositor(width=320, height=180, fit="face").compose(photo, face)
    assert out.shape == (180, 320, 3)
    assert out.min() == 80  # no padding pulled in from outside the photo


def test_paste_back_blends_only_inside_the_box():
    photo = np.full((200, 300, 3), 50, np.uint8)
    crop = np.full((64, 64, 3), 250, np.uint8)
    box = Box(150.0, 100.0, 100.0)
    out = paste_back(photo, crop, box)
    assert out[100, 150, 0] > 240  # centre replaced
    assert out[10, 10, 0] == 50 and out[100, 95, 0] == 50  # outside untouched
    mid = out[100, 110, 0]
    assert 50 < mid <= 250  # feathered edge blends


def test_letterbox_bars_are_a_blurred_dimmed_copy_by_default_and_black_on_request():
    rng = np.random.default_rng(0)
    photo = np.zeros((400, 400, 3), np.uint8)
    photo[:, :200] = (200, 40, 40)  # left half red, right half blue: the bars must echo that
    photo[:, 200:] = (40, 40, 200)
    photo[150:250, 150:250] = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)  # detail the blur removes
    blur = Compositor(width=640, height=360, fit="letterbox").compose(photo)
    black = Compositor(width=640, height=360, fit="letterbox", pad="black").compose(photo)
    assert blur.shape == black.shape == (360, 640, 3)
    # the picture itself is identical, 360 x 360 at x 140..499
    assert np.array_equal(blur[:, 140:500], black[:, 140:500])
    assert black[:, :140].max() == 0 and black[:, 500:].max() == 0
    left, right = blur[:, :140].astype(int), blur[:, 500:].astype(int)
    # the bars carry the picture's colours (red side left, blue side right), dimmed
    assert left[..., 0].mean() > left[..., 2].mean() + 40 and right[..., 2].mean() > right[..., 0].mean() + 40
    assert left.max() < 200 and right.max() < 200
    # and they are smooth: no pixel-to-pixel detail
    assert np.abs(np.diff(left, axis=1)).max() <= 8 and np.abs(np.diff(left, axis=0)).max() <= 8


def test_compositor_rejects_an_unknown_pad():
    import pytest

    with pytest.raises(ValueError, match="pad"):
        Compositor(width=64, height=36, pad="grey")


@pytest.mark.parametrize("fit", ["face", "letterbox", "crop", "stretch"])
def test_photo_scale_is_the_resize_compose_applies(fit):
    photo = np.zeros((1600, 1200, 3), np.uint8)
    face = Box(600.0, 700.0, 400.0)
    photo[500:900, 400:800] = 255  # the face: a white 400-pixel square
    c = Compositor(width=640, height=360, fit=fit, pad="black")
    out = c.compose(photo, face)
    rows = np.flatnonzero((out[..., 0] > 128).any(axis=1))
    scale = c.photo_scale((1200, 1600), face)
    if fit == "stretch":  # each axis its own: the scale is the larger one (no pixel beyond it is seen)
        cols = np.flatnonzero((out[..., 0] > 128).any(axis=0))
        assert scale == pytest.approx(max(cols.size, rows.size) / 400, abs=0.01)
    else:
        assert rows.size == pytest.approx(400 * scale, abs=2)
    assert scale < 1.0
    assert Compositor(width=None, height=None).photo_scale((1200, 1600), face) == 1.0
