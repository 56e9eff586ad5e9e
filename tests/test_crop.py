"""The driver crop: framing, smoothing, hold-then-ease on loss, zoom/offset, on synthetic and real tracks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatarcam.crop import DEFAULT_MARGIN, DriverCrop, face_box, fit_inside
from avatarcam.geometry import Box
from avatarcam.landmarks import FaceLandmarks, LandmarkResult, create_tracker
from avatarcam.landmarks.bench import read_frames

FRAME = (640, 480)


def face_at(cx: float, cy: float, size: float = 100.0, noise: np.ndarray | None = None) -> LandmarkResult:
    """A square "face" of 478 points, ``size`` px wide, centred at (cx, cy)."""
    grid = np.random.default_rng(0).uniform(-0.5, 0.5, (478, 3)) * size
    grid[:4, :2] = np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]) * size  # exact extent
    pts = grid + np.array([cx, cy, 0.0])
    if noise is not None:
        pts = pts + noise
    return LandmarkResult((FaceLandmarks(pts.astype(np.float32)),), FRAME)


NO_FACE = LandmarkResult.empty(FRAME)


def test_face_box_frames_the_face_with_margin():
    box = face_box(face_at(300, 200, 100).face.points, margin=0.3)
    assert (box.cx, box.cy) == pytest.approx((300, 200), abs=1e-3)
    assert box.side == pytest.approx(160.0, rel=1e-4)  # face = 62.5 % of the crop
    assert face_box(face_at(300, 200, 100).face.points, margin=0.0).side == pytest.approx(100.0, rel=1e-4)


def test_first_sight_starts_on_the_face_and_no_face_is_centred():
    crop = DriverCrop()
    assert crop.update(NO_FACE, FRAME, 0.0) == Box.centered(*FRAME)
    box = crop.update(face_at(200, 150), FRAME, 0.04)
    assert (box.cx, box.cy) == pytest.approx((200, 150), abs=1e-3)
    assert box.side == pytest.approx(100 * (1 + 2 * DEFAULT_MARGIN), rel=1e-4)
    assert crop.tracking


def test_still_noisy_face_gives_a_steady_box():
    rng = np.random.default_rng(1)
    crop = DriverCrop()
    raw_boxes, boxes = [], []
    for i in range(90):
        result = face_at(320, 240, noise=rng.normal(0, 1.0, (478, 3)))
        raw = face_box(result.face.points)
        raw_boxes.append((raw.cx, raw.cy, raw.side))
        b = crop.update(result, FRAME, i / 30)
        boxes.append((b.cx, b.cy, b.side))
    raw_step = np.abs(np.diff(np.array(raw_boxes)[30:], axis=0)).mean()
    step = np.abs(np.diff(np.array(boxes)[30:], axis=0)).mean()
    assert step < raw_step / 5, (raw_step, step)


def test_box_follows_a_moving_face():
    crop = DriverCrop()
    for i in range(60):  # 1.5 face sizes per second to the right
        b = crop.update(face_at(150 + 5.0 * i, 240), FRAME, i / 30)
    lag_frames = (150 + 5.0 * 59 - b.cx) / 5.0
    assert 0 < lag_frames < 3.0, lag_frames
    for i in range(60, 120):  # then it stops: the box settles on the face
        b = crop.update(face_at(150 + 5.0 * 59, 240), FRAME, i / 30)
    assert b.cx == pytest.approx(150 + 5.0 * 59, abs=0.5)


def test_lost_face_holds_then_eases_to_the_centre():
    crop = DriverCrop(hold_s=1.0, ease_s=1.0)
    for i in range(10):
        crop.update(face_at(120, 100), FRAME, i * 0.1)
    held = crop.update(face_at(120, 100), FRAME, 1.0)
    home = Box.centered(*FRAME)
    assert crop.update(NO_FACE, FRAME, 1.1) == held and not crop.tracking
    assert crop.update(NO_FACE, FRAME, 2.05) == held  # still within hold_s of the loss
    mid = crop.update(NO_FACE, FRAME, 2.6)  # halfway through the ease
    assert held.cx < mid.cx < home.cx and held.cy < mid.cy < home.cy and held.side < mid.side < home.side
    assert crop.update(NO_FACE, FRAME, 3.2) == home
    # The face comes back elsewhere: the box glides from the centre instead of jumping.
    back = crop.update(face_at(500, 350), FRAME, 3.3)
    assert home.cx < back.cx < 500
    for k in range(30):
        back = crop.update(face_at(500, 350), FRAME, 3.3 + (k + 1) / 30)
    assert (back.cx, back.cy) == pytest.approx((500, 350), abs=1.0)


def test_zoom_and_offset_apply_at_once_and_validate():
    crop = DriverCrop()
    base = crop.update(face_at(320, 240), FRAME, 0.0)
    crop.zoom = 2.0
    crop.offset = (0.1, -0.2)
    b = crop.update(face_at(320, 240), FRAME, 0.033)
    assert b.side == pytest.approx(base.side / 2, rel=1e-3)
    assert (b.cx, b.cy) == pytest.approx((base.cx + 0.1 * b.side, base.cy - 0.2 * b.side), abs=0.05)
    for bad in (0.0, 50.0):
        with pytest.raises(ValueError, match="zoom"):
            crop.zoom = bad
    with pytest.raises(ValueError, match="offset"):
        crop.offset = (2.0, 0.0)
    with pytest.raises(ValueError, match="margin"):
        DriverCrop(margin=-1)


def test_reset_and_frame_size_change_start_over():
    crop = DriverCrop()
    crop.update(face_at(100, 100), FRAME, 0.0)
    crop.reset()
    assert not crop.tracking
    b = crop.update(face_at(400, 300), FRAME, 0.033)
    assert (b.cx, b.cy) == pytest.approx((400, 300), abs=1e-3)  # no glide from the old face
    assert crop.update(NO_FACE, (320, 240), 0.066) == Box.centered(320, 240)


def test_crop_keeps_the_real_face_inside_on_a_moving_video(data_dir: Path):
    frames, fps = read_frames(data_dir / "driving_talking_man_tpsm.mp4")
    crop = DriverCrop()
    margins = []
    with create_tracker(mode="video") as tracker:
        for i, image in enumerate(frames[::2]):  # every other frame: still a live-like rate
            t = 2 * i / fps
            result = tracker.detect(image, int(t * 1000))
            box = crop.update(result, (image.shape[1], image.shape[0]), t)
            pts = result.face.points[:, :2]
            # Distance from the face's bounding box to the crop edge, in crop sides (> 0 = inside).
            inside = min(pts[:, 0].min() - box.x0, box.x0 + box.side - pts[:, 0].max(),
                         pts[:, 1].min() - box.y0, box.y0 + box.side - pts[:, 1].max()) / box.side
            margins.append(inside)
    assert min(margins) > 0.1, min(margins)


def test_fit_inside_moves_then_tightens_then_accepts_overhang():
    # Fits already: unchanged.
    assert fit_inside(Box(100, 100, 80), 400, 300, min_side=50) == Box(100, 100, 80)
    # Hangs 30 px over the bottom: moved up (within 12 % of 300 = 36 px).
    b = fit_inside(Box(200, 380, 300), 400, 500, min_side=200)
    assert (b.cx, b.cy, b.side) == pytest.approx((200, 350, 300))
    # Larger than the photo: shrinks to the photo's short side, but not below min_side.
    assert fit_inside(Box(200, 200, 500), 400, 400, min_side=300).side == 400
    tight = fit_inside(Box(200, 200, 500), 400, 400, min_side=450)
    assert tight.side == 450  # overhang left for the border replication
    # Far over the edge: moved only by max_shift.
    far = fit_inside(Box(390, 200, 100), 400, 400, min_side=50)
    assert far.cx == pytest.approx(390 - 12)
