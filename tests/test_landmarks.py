"""Landmark tracking, smoothing, signals and the 68-point subset, on the real media in ../shared/data."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from avatarcam.errors import ConfigError
from avatarcam.landmarks import FaceLandmarks, LandmarkResult, TrackerConfig, create_tracker, face_signals
from avatarcam.landmarks.bench import tracker_stats
from avatarcam.landmarks.smoothing import LandmarkSmoother, OneEuro, face_size
from avatarcam.landmarks.subsets import MP_TO_68, to_68

from conftest import AVATARS  # noqa: E402 - the shared list of avatar photos
VIDEOS = [
    "driving_talking_man_lp_d20.mp4",
    "driving_talking_man_tpsm.mp4",
    "driving_talking_woman_retalking4.mp4",
    "driving_talking_woman_sadtalker_aoc.mp4",
]


def load_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


@pytest.fixture(scope="module")
def image_tracker():
    with create_tracker(mode="image") as tracker:
        yield tracker


@pytest.fixture(scope="module")
def video_stats(data_dir: Path) -> dict[str, dict]:
    return {name: tracker_stats(data_dir / name) for name in VIDEOS}


def detect_one(tracker, image: np.ndarray) -> FaceLandmarks:
    result = tracker.detect(image, 0)
    assert result.face is not None, "no face found"
    return result.face


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, word",
    [({"backend": "dlib"}, "dlib"), ({"max_faces": 0}, "max_faces"), ({"min_cutoff": 0.0}, "min_cutoff"),
     ({"beta": -1.0}, "beta"), ({"min_detection_confidence": 1.5}, "1.5")],
)
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        TrackerConfig(**kwargs)


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        create_tracker(mode="stream")


def test_fan_backend_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"avatarcam\[fan\]"):
        create_tracker(TrackerConfig(backend="fan"))


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("name", AVATARS)
def test_landmarks_found_on_every_avatar(image_tracker, data_dir, name):
    image = load_rgb(data_dir / name)
    result = image_tracker.detect(image)
    h, w = image.shape[:2]
    assert result.image_size == (w, h)
    assert len(result.faces) == 1
    pts = result.face.points
    assert pts.shape == (478, 3) and pts.dtype == np.float32
    # Pixel units: the face lies inside the photo and is a sizeable part of it.
    x0, y0, x1, y1 = result.face.bbox
    assert -0.05 * w < x0 < x1 < 1.05 * w and -0.05 * h < y0 < y1 < 1.05 * h
    assert face_size(pts) > 0.1 * min(w, h)


def test_no_face_gives_an_empty_result(image_tracker):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    gradient = np.repeat(np.linspace(0, 255, 480, dtype=np.uint8)[None, :, None], 360, 0).repeat(3, 2)
    for image in (noise, np.ascontiguousarray(gradient)):
        result = image_tracker.detect(image, 5)
        assert result.faces == () and result.face is None
        assert result.image_size == (480, 360) and result.timestamp_ms == 5
    with create_tracker(mode="video") as tracker:
        assert tracker.detect(noise, 0).faces == ()


def test_video_mode_loses_and_refinds_the_face(data_dir):
    face = load_rgb(data_dir / "avatar_young_woman_photo.png")
    blank = np.full_like(face, 90)
    with create_tracker(mode="video") as tracker:
        seen = [tracker.detect(img, i * 40).face is not None for i, img in enumerate([face, face, blank, face])]
    assert seen == [True, True, False, True]


# ---------------------------------------------------------------- smoothing


def test_one_euro_removes_still_jitter_and_follows_fast_motion():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 300, (478, 3))
    fps, size = 30.0, 300.0
    still = [base + rng.normal(0, 0.5, base.shape) for _ in range(90)]
    smoother = LandmarkSmoother(min_cutoff=TrackerConfig().min_cutoff, beta=TrackerConfig().beta)
    out = np.array([smoother(p.astype(np.float32), i / fps) for i, p in enumerate(still)])
    raw_step = np.abs(np.diff(np.array(still), axis=0)).mean()
    smooth_step = np.abs(np.diff(out[30:], axis=0)).mean()
    assert smooth_step < raw_step / 4, (raw_step, smooth_step)

    # A fast head move: 2 face sizes per second to the right, with the same noise.
    speed = 2.0 * size / fps  # px per frame
    f = OneEuro(min_cutoff=TrackerConfig().min_cutoff, beta=TrackerConfig().beta)
    lags = []
    for i in range(60):
        x = base + np.array([speed * i, 0, 0]) + rng.normal(0, 0.5, base.shape)
        y = f(x, i / fps, size)
        if i >= 20:
            lags.append(((base[:, 0] + speed * i) - y[:, 0]).mean() / speed)
    # Under a third of a frame behind (about 10 ms at 30 fps) while moving fast.
    assert 0.0 < np.mean(lags) < 0.33, np.mean(lags)


def test_smoother_restarts_on_a_jump():
    smoother = LandmarkSmoother(min_cutoff=0.5, beta=0.0)
    pts = np.random.default_rng(2).uniform(0, 100, (478, 3)).astype(np.float32)
    smoother(pts, 0.0)
    moved = pts + np.array([500, 0, 0], np.float32)  # 5 face sizes away: another face / re-detection
    np.testing.assert_allclose(smoother(moved, 0.033), moved, atol=1e-3)


def test_video_tracker_smoothing_steadies_a_still_noisy_face(data_dir):
    image = cv2.resize(load_rgb(data_dir / "avatar_obama_photo.jpg"), (400, 400), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(3)
    frames = [np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8) for _ in range(30)]
    steps = {}
    for smoothing in (False, True):
        with create_tracker(TrackerConfig(smoothing=smoothing), mode="video") as tracker:
            pts = np.array([tracker.detect(f, i * 33).face.points for i, f in enumerate(frames)])
        steps[smoothing] = np.linalg.norm(np.diff(pts[10:, :, :2], axis=0), axis=2).mean()
    assert steps[True] < steps[False] / 2, steps


@pytest.mark.parametrize("name", VIDEOS)
def test_driving_videos_detection_and_jitter(video_stats, name):
    s = video_stats[name]
    print(f"{name}: detection {s['detection_rate']:.3f}, motion/frame raw {s['raw_motion']:.5f} "
          f"smoothed {s['smooth_motion']:.5f}, accel raw {s['raw_accel']:.5f} smoothed {s['smooth_accel']:.5f}")
    assert s["detection_rate"] >= 0.99
    assert s["smooth_accel"] < 0.75 * s["raw_accel"]
    assert s["smooth_motion"] < s["raw_motion"]
    # Smoothing must not drift away from the face: mean distance to the raw points stays small.
    ok = ~np.isnan(s["raw"][:, 0, 0])
    sizes = np.array([face_size(p) for p in s["raw"][ok]])
    offset = np.linalg.norm(s["raw"][ok, :, :2] - s["smooth"][ok, :, :2], axis=2).mean(axis=1) / sizes
    assert offset.mean() < 0.01, offset.mean()


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("name", VIDEOS)
def test_mouth_open_follows_the_lips_on_video(video_stats, name):
    raw = video_stats[name]["raw"]
    raw = raw[~np.isnan(raw[:, 0, 0])]
    signal = np.array([face_signals(FaceLandmarks(p)).mouth_open for p in raw])
    # Independent measure: vertical inner-lip distance in pixels / face height.
    heights = raw[:, :, 1].max(axis=1) - raw[:, :, 1].min(axis=1)
    lips = (raw[:, 14, 1] - raw[:, 13, 1]) / heights
    r = np.corrcoef(signal, lips)[0, 1]
    assert r > 0.9, r
    assert signal.min() < 0.03 and signal.max() > 0.15  # these people close and open their mouths


@pytest.mark.parametrize("name", VIDEOS)
def test_yaw_follows_the_nose_offset_on_video(video_stats, name):
    raw = video_stats[name]["raw"]
    raw = raw[~np.isnan(raw[:, 0, 0])]
    yaw = np.array([face_signals(FaceLandmarks(p)).yaw for p in raw])
    # Independent 2D proxy (no depth): nose tip offset from the eye midpoint along the eye line
    # (so head roll does not leak in) / inter-ocular distance.
    eyes = raw[:, 263, :2] - raw[:, 33, :2]
    iod = np.linalg.norm(eyes, axis=1)
    nose = raw[:, 1, :2] - (raw[:, 33, :2] + raw[:, 263, :2]) / 2
    proxy = (nose * eyes).sum(axis=1) / iod**2
    if np.std(proxy) > 0.02:  # enough head turning to correlate
        assert np.corrcoef(yaw, proxy)[0, 1] > 0.8
    assert np.all(np.sign(yaw[np.abs(proxy) > 0.1]) == np.sign(proxy[np.abs(proxy) > 0.1]))


@pytest.mark.parametrize("name", ["avatar_mona_lisa_painting.jpg", "avatar_einstein_bw_photo.jpg",
                                  "avatar_child_photo_in_hand.jpg"])
def test_flipping_a_photo_flips_yaw_and_roll(image_tracker, data_dir, name):
    image = load_rgb(data_dir / name)
    a = face_signals(detect_one(image_tracker, image))
    b = face_signals(detect_one(image_tracker, np.ascontiguousarray(image[:, ::-1])))
    assert abs(a.yaw) > 2.0 or abs(a.roll) > 2.0
    assert a.yaw + b.yaw == pytest.approx(0.0, abs=3.0)
    # Tolerances: the detector itself is not exactly mirror-symmetric (1.7 degrees of roll on Mona Lisa).
    assert a.roll + b.roll == pytest.approx(0.0, abs=2.5)
    if abs(a.yaw) > 5:
        assert np.sign(a.yaw) != np.sign(b.yaw)


@pytest.mark.parametrize("angle", [10.0, -10.0])
def test_rotating_a_photo_changes_roll_by_the_angle(image_tracker, data_dir, angle):
    image = load_rgb(data_dir / "avatar_young_woman_photo.png")
    h, w = image.shape[:2]
    # OpenCV's positive angle turns counter-clockwise on screen; roll is positive clockwise.
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0)
    rotated = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    base = face_signals(detect_one(image_tracker, image))
    turned = face_signals(detect_one(image_tracker, rotated))
    assert turned.roll - base.roll == pytest.approx(angle, abs=1.5)
    assert turned.yaw == pytest.approx(base.yaw, abs=3.0)
    assert turned.mouth_open == pytest.approx(base.mouth_open, abs=0.03)


def test_eye_iris_and_brow_signals_move_the_right_way(image_tracker, data_dir):
    pts = detect_one(image_tracker, load_rgb(data_dir / "avatar_obama_photo.jpg")).points.copy()
    base = face_signals(FaceLandmarks(pts))
    assert 0.15 < base.eye_open_left < 0.5 and 0.15 < base.eye_open_right < 0.5
    assert abs(base.iris_left[0]) < 0.3 and abs(base.iris_right[0]) < 0.3

    closed = pts.copy()  # upper lids of the subject's left eye onto the lower lids
    closed[[387, 386, 385]] = closed[[373, 374, 380]]
    s = face_signals(FaceLandmarks(closed))
    assert s.eye_open_left < 0.02 and s.eye_open_right == pytest.approx(base.eye_open_right)

    look = pts.copy()  # both irises shifted toward the image's right by a fifth of an eye width
    for iris, (a, b) in ((range(468, 473), (33, 133)), (range(473, 478), (263, 362))):
        look[list(iris), 0] += 0.2 * abs(pts[a, 0] - pts[b, 0])
    s = face_signals(FaceLandmarks(look))
    assert s.iris_left[0] - base.iris_left[0] == pytest.approx(0.4, abs=0.05)
    assert s.iris_right[0] - base.iris_right[0] == pytest.approx(0.4, abs=0.05)

    raised = pts.copy()  # brows up by a tenth of the inter-ocular distance
    iod = np.linalg.norm(pts[33] - pts[263])
    raised[[334, 296, 336, 295, 282, 105, 66, 107, 65, 52], 1] -= 0.1 * iod
    s = face_signals(FaceLandmarks(raised))
    assert s.brow_left - base.brow_left == pytest.approx(0.1, abs=0.02)
    assert s.brow_right - base.brow_right == pytest.approx(0.1, abs=0.02)


def test_signals_without_iris_points(image_tracker, data_dir):
    pts = detect_one(image_tracker, load_rgb(data_dir / "avatar_obama_photo.jpg")).points
    full = face_signals(FaceLandmarks(pts))
    mesh_only = face_signals(FaceLandmarks(pts[:468]))
    assert mesh_only.iris_left == (0.0, 0.0) and mesh_only.yaw == pytest.approx(full.yaw)
    with pytest.raises(ValueError, match="landmarks"):
        face_signals(FaceLandmarks(pts[:100]))


# ---------------------------------------------------------------- 68-point subset


def test_mp_to_68_layout(image_tracker, data_dir):
    assert MP_TO_68.shape == (68,) and len(set(MP_TO_68.tolist())) == 68 and MP_TO_68.max() < 468
    pts = detect_one(image_tracker, load_rgb(data_dir / "avatar_young_woman_photo.png")).points
    p68 = to_68(pts)
    assert p68.shape == (68, 3)
    size = face_size(pts)
    mid_x = (p68[39, 0] + p68[42, 0]) / 2  # between the inner eye corners
    # Mirror pairs of the iBUG layout sit symmetrically about the midline of a frontal face.
    for i, j in [(0, 16), (3, 13), (5, 11), (7, 9), (17, 26), (19, 24), (36, 45), (39, 42), (31, 35), (48, 54),
                 (60, 64)]:
        assert p68[i, 0] < mid_x < p68[j, 0], (i, j)
        assert abs((p68[i, 0] + p68[j, 0]) / 2 - mid_x) < 0.05 * size, (i, j)
        assert abs(p68[i, 1] - p68[j, 1]) < 0.05 * size, (i, j)
    # Vertical order: brows above eyes above nose tip above mouth above chin.
    assert p68[19, 1] < p68[37, 1] < p68[30, 1] < p68[51, 1] < p68[57, 1] < p68[8, 1]
    # The 68-point layout gives the same pose and expression signals.
    full, sub = face_signals(FaceLandmarks(pts)), face_signals(FaceLandmarks(p68))
    assert sub.roll == pytest.approx(full.roll, abs=1.0)
    assert sub.yaw == pytest.approx(full.yaw, abs=4.0)
    assert sub.mouth_open == pytest.approx(full.mouth_open, abs=0.02)
    assert sub.iris_left == (0.0, 0.0)
    with pytest.raises(ValueError):
        to_68(pts[:100])


def test_landmark_result_empty_helper():
    r = LandmarkResult.empty((64, 48), 7)
    assert r.faces == () and r.image_size == (64, 48) and r.timestamp_ms == 7


def test_lips_follow_a_step_faster_than_the_rest_of_the_face(data_dir):
    """Region-aware smoothing: a mouth that opens is tracked with less lag than a brow that moves the
    same distance, while a head that does not move stays put."""
    import cv2 as _cv2

    from avatarcam.landmarks.smoothing import _LIPS_MEDIAPIPE

    img = _cv2.imread(str(data_dir / "avatar_obama_photo.jpg"))[..., ::-1].copy()
    with create_tracker(mode="image") as tracker:
        base = tracker.detect(img).face.points.astype(np.float64)
    smoother = LandmarkSmoother(min_cutoff=1.0, beta=0.0, pose_cutoff=2.0, lips_cutoff=4.0)
    lip, brow = _LIPS_MEDIAPIPE[5], 105  # a lower-lip point and a brow point
    step = 0.08 * face_size(base)
    t = 0.0
    for _ in range(30):
        smoother(base, t)
        t += 1 / 30
    moved = base.copy()
    moved[lip, 1] += step
    moved[brow, 1] -= step
    lip_frames = brow_frames = None
    for i in range(1, 60):
        out = smoother(moved, t)
        t += 1 / 30
        if lip_frames is None and abs(out[lip, 1] - base[lip, 1]) >= 0.9 * step:
            lip_frames = i
        if brow_frames is None and abs(out[brow, 1] - base[brow, 1]) >= 0.9 * step:
            brow_frames = i
    assert lip_frames is not None and brow_frames is not None
    assert lip_frames < brow_frames
    # the rigid points did not move, so neither did their smoothed copies
    assert np.abs(out[1, :2] - base[1, :2]).max() < 0.01 * face_size(base)
