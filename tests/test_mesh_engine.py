"""The mesh engine on real photos and real driving landmarks: identity at the neutral, mouth, pose,
eyes, sizes, untouched background, the warp itself and the GPU resampling path (run on CPU)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from avatarcam.avatars.library import load_avatar, prepare_avatar
from avatarcam.compositing import Compositor
from avatarcam.crop import DriverCrop
from avatarcam.engines.base import Drive
from avatarcam.engines.mesh import MeshEngine
from avatarcam.engines.mesh import topology as tp
from avatarcam.engines.mesh.retarget import FaceFrame, jaw_weights, pair_gaps, synthetic_face
from avatarcam.engines.mesh.warp import MeshWarp, TorchRemap, remap_cpu
from avatarcam.errors import EngineError
from avatarcam.frame import Frame
from avatarcam.geometry import Box
from avatarcam.landmarks import TrackerConfig, create_tracker, face_signals
from avatarcam.landmarks.types import FaceLandmarks, LandmarkResult
from avatarcam.processing import FrameProcessor


@pytest.fixture(scope="module")
def avatar(data_dir, tmp_path_factory):
    return load_avatar(data_dir / "avatar_obama_photo.jpg", cache_dir=tmp_path_factory.mktemp("mesh-cache"))


@pytest.fixture(scope="module")
def judge():
    with create_tracker(TrackerConfig(), mode="image") as tracker:
        yield tracker


@pytest.fixture(scope="module")
def driver(driving_video):
    """(frame RGB, landmarks N x 3) of a neutral face: the most closed-mouth frame among the first
    60 of the video whose eyes are open (not mid-blink: eye openness at least 85 % of the median)."""
    cap = cv2.VideoCapture(str(driving_video))
    frames = []
    with create_tracker(TrackerConfig(), mode="video") as tracker:
        for i in range(60):
            ok, bgr = cap.read()
            assert ok, "driving video too short"
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            face = tracker.detect(rgb, i * 40).face
            assert face is not None
            s = face_signals(face)
            frames.append((s.mouth_open, min(s.eye_open_left, s.eye_open_right), rgb, face.points.astype(np.float64)))
    cap.release()
    eyes = float(np.median([f[1] for f in frames]))
    best = min((f for f in frames if f[1] >= 0.85 * eyes), key=lambda f: f[0])
    best = (best[0], best[2], best[3])
    assert best[0] < 0.03, f"expected a closed mouth in the first 60 frames, best gap {best[0]:.3f}"
    return best[1], best[2]


def drive_of(image: np.ndarray, points: np.ndarray | None, index: int = 0) -> Drive:
    h, w = image.shape[:2]
    faces = () if points is None else (FaceLandmarks(points.astype(np.float32)),)
    return Drive(frame=Frame(image, index), box=Box.centered(w, h), landmarks=LandmarkResult(faces, (w, h)))


def opened(points: np.ndarray, amount: float) -> np.ndarray:
    """``points`` with the jaw and lower lip moved down by ``amount`` inter-ocular distances."""
    f = FaceFrame.of(points)
    return points + np.outer(jaw_weights(points, f.axes) * amount * f.iod, f.axes[:, 1])


def rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    """``points`` turned in the image plane about their centre (positive = clockwise on screen)."""
    a = math.radians(degrees)
    c = points[:, :2].mean(axis=0)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out = points.copy()
    out[:, :2] = (points[:, :2] - c) @ rot.T + c
    return out


@pytest.mark.parametrize("output", ["crop", "photo"])
def test_identity_when_driver_is_the_neutral(avatar, driver, output):
    image, points = driver
    engine = MeshEngine(output=output, size=512, neutral_frames=3)
    prepared = engine.prepare(avatar)
    rest = avatar.crop(512) if output == "crop" else avatar.image
    for i in range(5):  # calibration frames, then frames after it: all the same pose and expression
        out = engine.animate(prepared, drive_of(image, points, i))
        assert out.shape == rest.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - rest.astype(int))
        assert diff.max() <= 1, f"frame {i}: output differs from the photo by up to {diff.max()} levels"


def test_synthetic_mouth_opening_opens_the_avatars_mouth(avatar, driver, judge):
    image, points = driver
    engine = MeshEngine(output="crop", size=512, neutral_frames=1)
    prepared = engine.prepare(avatar)
    closed = engine.animate(prepared, drive_of(image, points, 0))
    wide = engine.animate(prepared, drive_of(image, opened(points, 0.25), 1))
    m_closed = face_signals(judge.detect(closed).face).mouth_open
    m_open = face_signals(judge.detect(wide).face).mouth_open
    assert m_closed < 0.05, m_closed
    assert m_open > m_closed + 0.1, (m_closed, m_open)
    # The cavity is dark: the mouth region got darker than in the rest image.
    lips = engine.targets(prepared, opened(points, 0.25))[1][tp.MOUTH_POLYGON, :2]
    mask = np.zeros(wide.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(lips).astype(np.int32)], 1)
    assert wide[mask > 0].mean() < closed[mask > 0].mean() - 20


def test_head_roll_is_transferred(avatar, driver, judge):
    image, points = driver
    engine = MeshEngine(output="crop", size=512, neutral_frames=1)
    prepared = engine.prepare(avatar)
    rest = face_signals(judge.detect(engine.animate(prepared, drive_of(image, points, 0))).face).roll
    tilted = face_signals(judge.detect(engine.animate(prepared, drive_of(image, rotated(points, 10.0), 1))).face).roll
    assert tilted - rest == pytest.approx(10.0, abs=2.0)


def test_head_roll_past_the_limit_is_eased_to_it(avatar, driver, judge):
    image, points = driver
    rolls = {}
    for limit in (30.0, 8.0):
        engine = MeshEngine(output="crop", size=512, neutral_frames=1, max_roll=limit)
        prepared = engine.prepare(avatar)
        rest = face_signals(judge.detect(engine.animate(prepared, drive_of(image, points, 0))).face).roll
        for i, degrees in enumerate((4.0, 25.0), start=1):
            out = engine.animate(prepared, drive_of(image, rotated(points, degrees), i))
            rolls[limit, degrees] = face_signals(judge.detect(out).face).roll - rest
    assert rolls[30.0, 25.0] == pytest.approx(25.0, abs=3.0)  # within the limit: as driven
    assert rolls[8.0, 4.0] == pytest.approx(4.0, abs=1.0)  # below the knee (70 %): untouched
    # Past it: eased toward the limit (the target stops short of 8 degrees; the tracker reading
    # the rendered face back reads it up to ~10 % high).
    assert 5.6 < rolls[8.0, 25.0] < 8.0 * 1.2, rolls


def test_closed_driver_eyes_close_the_avatars_eyes(avatar, driver, judge):
    image, points = driver
    engine = MeshEngine(output="crop", size=512, neutral_frames=1)
    prepared = engine.prepare(avatar)
    rest = face_signals(judge.detect(engine.animate(prepared, drive_of(image, points, 0))).face)
    blink = points.copy()
    for pairs in (tp.EYE_RIGHT_PAIRS, tp.EYE_LEFT_PAIRS):
        blink[pairs[:, 0]] += 0.9 * (points[pairs[:, 1]] - points[pairs[:, 0]])  # upper lids down
    shut = face_signals(judge.detect(engine.animate(prepared, drive_of(image, blink, 1))).face)
    for side in ("eye_open_left", "eye_open_right"):
        assert getattr(shut, side) < 0.6 * getattr(rest, side), (side, getattr(rest, side), getattr(shut, side))


def test_lids_move_further_than_read_and_a_blink_read_a_third_open_shuts(avatar, driver):
    # The tracker reads a shut eye a third open, and a warped lid looks less closed than it is:
    # the avatar's lids move LID_GAIN (1.5) times as far as the driver's, relative to each gap.
    image, points = driver
    engine = MeshEngine(output="crop", size=512, neutral_frames=1)
    prepared = engine.prepare(avatar)
    engine.animate(prepared, drive_of(image, points, 0))  # the neutral
    down = prepared.face.axes[:, 1]
    eyes = (tp.EYE_RIGHT_PAIRS, tp.EYE_LEFT_PAIRS)
    rest = [pair_gaps(prepared.face.points, pairs, down) for pairs in eyes]

    def lowered(share: float) -> np.ndarray:
        out = points.copy()
        for pairs in eyes:
            out[pairs[:, 0]] += share * (points[pairs[:, 1]] - points[pairs[:, 0]])
        return out

    for share, expected in ((0.2, 0.7), (2.0 / 3.0, 0.0)):
        target = engine.targets(prepared, lowered(share))[1]
        for pairs, r in zip(eyes, rest):
            left = float(pair_gaps(target, pairs, down).sum() / r.sum())
            assert left == pytest.approx(expected, abs=0.04), (share, left)
    # Made-up expressions are exact: a synthetic half blink closes half the gap.
    half = engine.targets(prepared, synthetic_face(engine._neutral.frame, mouth_open=0, blink=0.5, yaw=0, pitch=0,
                                                   roll=0), synthetic=True)[1]
    for pairs, r in zip(eyes, rest):
        assert float(pair_gaps(half, pairs, down).sum() / r.sum()) == pytest.approx(0.5, abs=0.05)


def test_a_shut_lid_is_skin_without_the_open_eyes_streaks(avatar):
    """A shut lid must not show the open eye's lashes (stretched by the warp, they read as a
    streaky band). Stripes drawn over the upper lid of a photo (as long lashes look) are gone from
    the lid painted shut over that same photo."""
    from avatarcam.engines.mesh.eyes import EyelidPainter

    crease = (247, 30, 29, 27, 28, 56, 190)  # MediaPipe's ring just above the right upper lid
    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    lid = np.concatenate([pts[list(tp.EYE_RIGHT_UPPER)], pts[list(crease[::-1])]])
    inside = np.zeros(avatar.image.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(lid).astype(np.int32)], 1)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
    assert inside.sum() > 100
    image = avatar.image.copy()
    columns = np.arange(image.shape[1])
    stripes = np.where((columns // 3) % 2 == 0, 40, 200).astype(np.uint8)
    image[inside] = stripes[np.nonzero(inside)[1]][:, None]

    def streaks(img: np.ndarray) -> float:  # mean contrast between neighbouring 3-px columns
        grey = img.astype(np.float32).mean(axis=2)
        return float(np.abs(grey[:, 3:] - grey[:, :-3])[inside[:, 3:] & inside[:, :-3]].mean())

    before = streaks(image)
    painter = EyelidPainter(image=image, landmarks=avatar.face.landmarks)
    painter.paint(image, avatar.face.landmarks, (1.0, 0.0))  # no table: the photo itself, unwarped
    assert before > 100
    after = streaks(image)
    assert after < 0.1 * before, (before, after)


def test_a_shut_lid_has_the_skins_grain(avatar):
    """The filled-in lid is smooth; the skin's fine texture is laid back over it, so a shut eye is
    not a flat patch. On a photo that is all grainy skin, the shut lid keeps most of the grain."""
    from avatarcam.engines.mesh.eyes import EyelidPainter

    rng = np.random.default_rng(7)
    h, w = avatar.image.shape[:2]
    noise = cv2.GaussianBlur(rng.normal(0.0, 30.0, (h, w)).astype(np.float32), (0, 0), 1.0)
    image = np.repeat(np.clip(150.0 + noise, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    width = float(np.linalg.norm(pts[33] - pts[133]))
    opening = np.zeros((h, w), np.uint8)
    ring = np.concatenate([pts[list(tp.EYE_RIGHT_UPPER)], pts[list(tp.EYE_RIGHT_LOWER[-2:0:-1])]])
    cv2.fillPoly(opening, [np.round(ring).astype(np.int32)], 1)
    away = int(0.1 * width)  # from the lash line drawn along the upper lid
    opening = cv2.erode(opening, np.ones((2 * away + 1, 2 * away + 1), np.uint8)).astype(bool)
    assert opening.sum() > 30

    def grain(img: np.ndarray) -> float:
        grey = img.astype(np.float32).mean(axis=2)
        return float((grey - cv2.GaussianBlur(grey, (0, 0), 0.05 * width))[opening].std())

    before = grain(image)
    painted = image.copy()
    EyelidPainter(image=image, landmarks=avatar.face.landmarks).paint(painted, avatar.face.landmarks, (1.0, 0.0))
    assert not np.array_equal(painted[opening], image[opening])  # it was painted over
    assert grain(painted) > 0.5 * before, (before, grain(painted))


def test_a_shut_lid_takes_the_skins_tone_not_the_brows_or_the_lashes(avatar):
    """The lid is filled in from the skin around it; the ring it starts from runs along the brow's
    lower edge and the lashes line its bottom, and neither may pull the whole lid darker. On a
    photo of plain skin with a dark brow and dark lashes drawn in, the filled-in lid stays within
    15 % of the skin's tone (the lid edge itself is lit to LID_LIGHT, 0.85, of the skin under the
    eye, so it is never quite as bright)."""
    from avatarcam.engines.mesh.eyes import ABOVE_RIGHT, EyelidPainter

    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    width = float(np.linalg.norm(pts[33] - pts[133]))
    skin = (200, 170, 150)
    image = np.empty_like(avatar.image)
    image[:] = skin
    for idx, thick, colour in ((ABOVE_RIGHT, 0.12, (60, 45, 35)),  # a brow whose lower edge the ring follows
                               (tp.EYE_RIGHT_UPPER, 0.06, (20, 15, 15)),  # upper lashes
                               (tp.EYE_RIGHT_LOWER, 0.04, (40, 30, 30))):  # lower lashes
        cv2.polylines(image, [np.round(pts[list(idx)] * 16).astype(np.int32)], False, colour,
                      max(1, round(thick * width)), cv2.LINE_AA, shift=4)
    source = EyelidPainter(image=image, landmarks=avatar.face.landmarks).sources[0]
    x0, y0 = source.offset
    h, w = source.patch.shape[:2]
    lid = np.zeros((h, w), np.uint8)
    region = np.concatenate([pts[list(tp.EYE_RIGHT_UPPER)], pts[list(ABOVE_RIGHT[::-1])]]) - (x0, y0)
    cv2.fillPoly(lid, [np.round(region).astype(np.int32)], 1)
    lid = cv2.erode(lid, np.ones((3, 3), np.uint8), iterations=max(1, round(0.08 * width))).astype(bool)
    assert lid.sum() > 100
    tone = float(source.patch[lid].astype(np.float64).mean()) / float(np.mean(skin))
    assert tone > 0.85, f"the filled-in lid is {tone:.2f} of the skin's tone"


def _bright_lids(avatar):
    """A grey photo (100) the avatar's size and a lid painter for it whose lids are plain 200, so
    a pixel's grey level tells how much lid was painted there."""
    import dataclasses

    from avatarcam.engines.mesh.eyes import EyelidPainter

    image = np.full_like(avatar.image, 100)
    painter = EyelidPainter(image=image, landmarks=avatar.face.landmarks)
    painter.sources = [dataclasses.replace(src, patch=np.full_like(src.patch, 200), grain=None)
                       for src in painter.sources]
    return image, painter


def test_a_shut_lids_edge_fades_into_the_photo(avatar):
    """Where the painted lid meets the photo under the brow it fades in over a band (LID_FEATHER,
    0.06 eye widths of blur), so it has no drawn outline, and still covers the lid fully below."""
    from avatarcam.engines.mesh.eyes import ABOVE_RIGHT

    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    width = float(np.linalg.norm(pts[33] - pts[133]))
    image, painter = _bright_lids(avatar)
    painted = image.copy()
    painter.paint(painted, avatar.face.landmarks, (1.0, 0.0))
    # Down a line through the eye's middle, from above the ring under the brow toward the lid edge.
    top, edge = pts[ABOVE_RIGHT[3]], pts[tp.EYE_RIGHT_UPPER[len(tp.EYE_RIGHT_UPPER) // 2]]
    ts = np.linspace(-0.6, 0.6, 241, dtype=np.float32)
    xy = (top[None] + ts[:, None] * (edge - top)[None]).astype(np.float32)
    line = cv2.remap(painted[..., 0].astype(np.float32), xy[None, :, 0], xy[None, :, 1], cv2.INTER_LINEAR)[0]
    share = (line - 100.0) / 100.0
    assert share[0] < 0.02 and share[-1] > 0.95, (share[0], share[-1])
    rise = (int(np.argmax(share >= 0.9)) - int(np.argmax(share >= 0.1))) * float(np.linalg.norm(edge - top)) * 0.005
    assert rise > 0.12 * width, f"the lid's edge rises over {rise:.1f} px, eye width {width:.0f} px"


def test_lids_are_painted_alike_unless_one_eye_winks(avatar):
    """The tracker reads each eye's lid with its own noise; two lids painted unequally from it read
    as a head tilt. Eyes a little apart in closure get the same amount of painted lid, a wink gets
    one lid only, and the lid starts to be painted early in a blink (by a third closed it is mostly
    on), before the warp smears the lashes down over the iris."""
    from avatarcam.engines.mesh.eyes import ABOVE_LEFT, ABOVE_RIGHT

    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    image, painter = _bright_lids(avatar)

    def painted(closure: tuple[float, float]) -> list[float]:
        """The share of each lid (right, left) painted, halfway from under the brow to the lid edge."""
        out = image.copy()
        painter.paint(out, avatar.face.landmarks, closure)
        shares = []
        for above, upper in ((ABOVE_RIGHT, tp.EYE_RIGHT_UPPER), (ABOVE_LEFT, tp.EYE_LEFT_UPPER)):
            x, y = np.round(0.5 * (pts[above[3]] + pts[upper[len(upper) // 2]])).astype(int)
            shares.append((float(out[y - 1:y + 2, x - 1:x + 2, 0].mean()) - 100.0) / 100.0)
        return shares

    apart = painted((0.45, 0.2))
    assert apart[0] == pytest.approx(apart[1], abs=0.01), apart
    assert apart[0] > 0.5, apart  # a third closed on average: mostly painted
    wink = painted((1.0, 0.0))
    assert wink[0] > 0.95 and wink[1] < 0.01, wink
    assert painted((0.0, 0.0)) == pytest.approx([0.0, 0.0], abs=0.01)


def test_a_shut_eyes_lash_line_is_the_photos_own(avatar):
    """The lash line drawn along a shut lid takes the photo's lash colour and is about as soft as
    the photo: on plain skin with blue lashes drawn in, the line is blue, and on the same photo
    blurred the line is blurred too."""
    from avatarcam.engines.mesh.eyes import EyelidPainter, _eye_frame, _lid_curve

    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    up = pts[list(tp.EYE_RIGHT_UPPER)]
    width = float(np.linalg.norm(up[-1] - up[0]))
    middle = _lid_curve(up)[12]
    _, normal = _eye_frame(up)
    sharp = np.empty_like(avatar.image)
    sharp[:] = (200, 170, 150)
    lashes = np.concatenate([up - 0.1 * width * normal, (up + 0.02 * width * normal)[::-1]])
    cv2.fillPoly(sharp, [np.round(lashes * 16).astype(np.int32)], (30, 30, 140), cv2.LINE_AA, shift=4)
    soft = cv2.GaussianBlur(sharp, (0, 0), 0.06 * width)

    def shut(image: np.ndarray) -> np.ndarray:
        painted = image.copy()
        EyelidPainter(image=image, landmarks=avatar.face.landmarks).paint(painted, avatar.face.landmarks, (1.0, 0.0))
        return painted

    def spread(image: np.ndarray) -> int:
        """How many of 61 samples across the lid edge (0.15 eye widths each way) are darker than
        halfway from the line's darkest to the lid around it."""
        xy = (middle[None] + np.linspace(-0.15, 0.15, 61)[:, None] * width * normal[None]).astype(np.float32)
        grey = cv2.remap(image.astype(np.float32).mean(axis=2), xy[None, :, 0], xy[None, :, 1], cv2.INTER_LINEAR)[0]
        return int((grey < 0.5 * (grey.min() + grey.max())).sum())

    painted = shut(sharp)
    x, y = np.round(middle).astype(int)
    r, _, b = painted[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(float).mean(axis=0)
    assert b > r + 30, (r, b)
    assert spread(shut(soft)) > 1.5 * spread(painted), (spread(shut(soft)), spread(painted))


def test_the_lid_skin_is_the_photo_away_from_the_eye(avatar):
    """The lid source fills in the eye and its lashes from the skin around them and leaves every
    other pixel as it is, so the painted lid has no outline of its own; inside the eye the iris
    and the eye white are gone."""
    from avatarcam.engines.mesh.eyes import ABOVE_RIGHT, EyelidPainter

    pts = avatar.face.landmarks[:, :2].astype(np.float64)
    source = EyelidPainter(image=avatar.image, landmarks=avatar.face.landmarks).sources[0]
    x0, y0 = source.offset
    h, w = source.patch.shape[:2]
    photo = avatar.image[y0:y0 + h, x0:x0 + w].astype(np.int16)
    changed = np.abs(source.patch.astype(np.int16) - photo).max(axis=2) > 0
    local = pts - (x0, y0)
    eye = np.zeros((h, w), np.uint8)
    region = np.concatenate([local[list(tp.EYE_RIGHT_LOWER)], local[list(ABOVE_RIGHT[::-1])]])
    cv2.fillPoly(eye, [np.round(region).astype(np.int32)], 1)
    width = float(np.linalg.norm(pts[33] - pts[133]))
    near = cv2.dilate(eye, np.ones((3, 3), np.uint8), iterations=int(0.2 * width) + 3).astype(bool)
    assert changed.any()
    assert not changed[~near].any(), "the lid source changed pixels away from the eye"
    opening = np.zeros((h, w), np.uint8)
    ring = np.concatenate([local[list(tp.EYE_RIGHT_UPPER)], local[list(tp.EYE_RIGHT_LOWER[-2:0:-1])]])
    cv2.fillPoly(opening, [np.round(ring).astype(np.int32)], 1)
    opening = opening.astype(bool)
    grey = source.patch.astype(np.float32).mean(axis=2)
    # The iris is the darkest part of the open eye; filled in, the opening is as even as skin.
    assert photo.mean(axis=2)[opening].std() > 2.0 * grey[opening].std(), (photo.mean(axis=2)[opening].std(),
                                                                          grey[opening].std())
    assert grey[opening].min() > photo.mean(axis=2)[opening].min() + 20


def test_background_and_body_stay_put_in_photo_output(avatar, driver):
    image, points = driver
    engine = MeshEngine(output="photo", neutral_frames=1)
    prepared = engine.prepare(avatar)
    engine.animate(prepared, drive_of(image, points, 0))
    moved = opened(rotated(points, 12.0), 0.2)
    moved[:, 0] += 15.0
    out = engine.animate(prepared, drive_of(image, moved, 1))
    photo = avatar.image
    x0, y0, x1, y1 = prepared.window
    changed = np.any(out != photo, axis=2)
    assert changed[y0:y1, x0:x1].mean() > 0.2  # the head did move
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any(), "pixels outside the animated region changed"
    # Everything well below the chin (shoulders, suit) is untouched.
    chin = avatar.face.landmarks[152, 1]
    iod = float(np.linalg.norm(avatar.face.landmarks[33, :2] - avatar.face.landmarks[263, :2]))
    assert not changed[int(chin + 0.8 * iod):].any()


def test_a_still_driver_gives_a_still_avatar(avatar, driver):
    # The live path (FrameProcessor: video tracker with its default smoothing, driver crop, engine)
    # on a driver who holds still in front of a noisy camera: sensor noise of 4 grey levels a frame.
    image, _ = driver
    rng = np.random.default_rng(0)
    outs = []
    with create_tracker(TrackerConfig(), mode="video") as tracker:
        proc = FrameProcessor(engine=MeshEngine(output="crop", size=512), compositor=Compositor(width=64, height=64),
                              tracker=tracker, cropper=DriverCrop())
        proc.set_avatar(avatar)
        for i in range(60):
            noisy = np.clip(image + rng.normal(0.0, 4.0, image.shape), 0, 255).astype(np.uint8)
            out = proc.animate(proc.drive_for(Frame(noisy, i, i / 25.0)))
            if i >= 20:  # past the neutral's calibration and the filters' settling
                outs.append(out.astype(np.float32))
    steps = np.abs(np.diff(np.array(outs), axis=0)).mean(axis=(1, 2, 3))
    # Measured 0.43 grey levels per frame (1.03 at most); with the tracker's smoothing off, 1.42 (2.21).
    assert steps.mean() < 0.7 and steps.max() < 1.2, (steps.mean(), steps.max())


def test_an_opening_mouth_does_not_pump_the_face(avatar, driver):
    # The head's scale and place come from skull-fixed points only, so a mouth opening and closing
    # leaves the rest of the face where it is (a fit on all landmarks grows and shrinks the face
    # by 8 % and moves the forehead by 21 pixels here).
    _, points = driver
    engine = MeshEngine(output="crop", size=512, neutral_frames=1)
    prepared = engine.prepare(avatar)
    eyes, forehead = [], []
    for i in range(60):
        amount = 0.15 * (1.0 - math.cos(2.0 * math.pi * i / 15.0))
        target = engine.targets(prepared, opened(points, amount), i / 30.0)[1]
        eyes.append(float(np.linalg.norm(target[33, :2] - target[263, :2])))
        forehead.append(target[[10, 151, 9], :2].mean(axis=0))
    mouth = engine.targets(prepared, opened(points, 0.3), 2.0)[1]
    assert pair_gaps(mouth, tp.LIP_PAIRS, prepared.face.axes[:, 1]).mean() > 0.2 * prepared.face.iod
    assert np.ptp(eyes) < 0.002 * np.mean(eyes), np.ptp(eyes)
    assert np.ptp(np.array(forehead), axis=0).max() < 0.5


def _bends(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each source row ``y`` in ``rows``, where the output shows it (per output column, where the
    table's source y crosses it), and that curve's sharpest bend: its largest second difference
    over 4-pixel steps, in pixels. A crease in the warp shows as a large one."""
    sy = table[..., 1]
    out = []
    for y in rows:
        c = sy - y
        hit = (c[:-1] <= 0) & (c[1:] > 0)
        single = hit.sum(axis=0) == 1
        k = hit.argmax(axis=0)
        cols = np.arange(sy.shape[1])
        frac = -c[k, cols] / np.maximum(c[k + 1, cols] - c[k, cols], 1e-9)
        curve = np.where(single, k + frac, np.nan)
        second = np.abs(curve[8:] - 2.0 * curve[4:-4] + curve[:-8])
        if np.isfinite(second).any():
            out.append(np.nanmax(second))
    return np.array(out)


@pytest.mark.parametrize("degrees", [8.0, -8.0])
def test_straight_lines_behind_a_tilting_head_bend_without_creases(avatar, driver, degrees):
    # The band around the head absorbs its motion. Rows of the photo above the head cross it:
    # they must bend in smooth curves, not in the kinks of a piecewise-affine band. Measured, the
    # sharpest bend per row, averaged: 0.37-0.39 px per 4 px with the band as one strip of
    # triangles between two rings; 0.24-0.27 with the rings inside it but no smoothing; 0.19-0.20
    # now. And the face itself stays exactly the mesh's.
    _, points = driver
    engine = MeshEngine(output="photo", neutral_frames=1)
    prepared = engine.prepare(avatar)
    engine.targets(prepared, points, 0.0)
    for i in range(1, 40):  # past the scale filter's settling
        moves, target = engine.targets(prepared, rotated(points, degrees), i / 30.0)
    warp_map, calls = prepared.warp.map, []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return warp_map(*args, **kwargs)

    prepared.warp.map = spy
    table = engine.warp_table(prepared, moves, target) - np.array(prepared.origin, np.float32)
    face = prepared.face
    top = face.points[10, 1]
    rows = np.arange(max(4.0, top - 1.6 * face.iod), top - 0.1 * face.iod, 6.0)
    bends = _bends(table, rows)
    assert len(bends) > 20
    assert bends.mean() < 0.225, bends.mean()
    # Inside the face the table is the mesh's own, untouched by the smoothing.
    args, kwargs = calls[0]
    assert kwargs["calm"] is not None
    plain = warp_map(*args, **{**kwargs, "calm": None}) - np.array(prepared.origin, np.float32)
    inside = np.zeros(table.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round(target[list(tp.FACE_OVAL), :2]).astype(np.int32)], 1)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
    assert np.abs(table[inside] - plain[inside]).max() < 0.05


def test_the_band_eases_out_smoothly_and_never_squeezes_more_than_a_straight_falloff_would():
    from avatarcam.engines.mesh.engine import BAND_SQUEEZE, band_falloff
    rho = np.arange(1, 7) / 7.0
    radial = np.array([[0.0, -100.0], [100.0, 0.0]])  # two head ring vertices, a band 100 px wide
    smooth = 1.0 - rho * rho * (3.0 - 2.0 * rho)
    for squeeze in (0.2, 0.5, 0.9, 1.2):
        moves = squeeze * radial  # each moves that share of the band's width toward the fixed ring
        share = band_falloff(moves, radial, rho)
        assert share.shape == (6, 2)
        assert np.all(np.diff(share, axis=0) < 0)  # falling from the head ring to the fixed ring
        steps = np.diff(np.concatenate([[1.0], share[:, 0], [0.0]])) * -squeeze * 7.0  # squeeze per ring gap
        assert steps.max() <= max(squeeze, BAND_SQUEEZE) + 1e-6, (squeeze, steps.max())
        if squeeze * 1.5 <= BAND_SQUEEZE:
            np.testing.assert_allclose(share[:, 0], smooth)
    # Moving away from the fixed ring stretches the band and may always ease out smoothly.
    np.testing.assert_allclose(band_falloff(-0.9 * radial, radial, rho)[:, 0], smooth)


@pytest.mark.parametrize("shape, size, output", [((601, 931), 257, "crop"), ((931, 601), 255, "photo"),
                                                 ((647, 645), 127, "crop")])
def test_odd_sizes_and_non_square_photos(avatar, driver, tmp_path, shape, size, output):
    image, points = driver
    h, w = shape
    photo = avatar.image
    canvas = np.full((h, w, 3), 90, np.uint8)
    ph, pw = photo.shape[:2]
    # Paste the photo so that the face is inside the canvas.
    cy, cx = avatar.face.landmarks[:, 1].mean(), avatar.face.landmarks[:, 0].mean()
    oy, ox = int(h / 2 - cy), int(w / 2 - cx)
    ys, xs = slice(max(oy, 0), min(oy + ph, h)), slice(max(ox, 0), min(ox + pw, w))
    canvas[ys, xs] = photo[ys.start - oy: ys.stop - oy, xs.start - ox: xs.stop - ox]
    av = prepare_avatar(canvas, name="odd", content_hash=f"odd-{h}x{w}", cache_dir=tmp_path)
    engine = MeshEngine(output=output, size=size, neutral_frames=1)
    prepared = engine.prepare(av)
    for i, p in enumerate((points, opened(rotated(points, -8.0), 0.2))):
        out = engine.animate(prepared, drive_of(image, p, i))
        expected = (size, size, 3) if output == "crop" else canvas.shape
        assert out.shape == expected and out.dtype == np.uint8
        assert np.isfinite(out).all()


def test_no_face_gives_the_rest_image_and_holds_then_eases(avatar, driver):
    image, points = driver
    engine = MeshEngine(output="crop", size=256, neutral_frames=1)
    prepared = engine.prepare(avatar)
    assert np.array_equal(engine.animate(prepared, drive_of(image, None)), avatar.crop(256))
    engine.animate(prepared, drive_of(image, points, 0))
    moved = engine.animate(prepared, drive_of(image, opened(rotated(points, 10.0), 0.2), 1))
    lost = [engine.animate(prepared, drive_of(image, None, 2 + i)) for i in range(60)]
    rest = avatar.crop(256).astype(int)
    dists = [np.abs(x.astype(int) - rest).mean() for x in (moved, *lost)]
    assert dists[1] > 0.5 * dists[0]  # holds at first
    assert dists[-1] < 0.1 * dists[0]  # then goes back to rest
    assert all(b <= a + 1e-6 for a, b in zip(dists[1:], dists[2:]))


def test_calibrate_takes_the_next_frame_as_neutral(avatar, driver):
    image, points = driver
    engine = MeshEngine(output="crop", size=256, neutral_frames=1)
    prepared = engine.prepare(avatar)
    engine.animate(prepared, drive_of(image, points, 0))
    tilted = rotated(points, 10.0)
    assert not np.array_equal(engine.animate(prepared, drive_of(image, tilted, 1)), avatar.crop(256))
    engine.calibrate()
    out = engine.animate(prepared, drive_of(image, tilted, 2))
    assert np.abs(out.astype(int) - avatar.crop(256).astype(int)).max() <= 1


def test_warp_is_exact_for_an_affine_motion():
    """Inner square moved by (3, -2) inside a fixed frame: inside it the backward map is exactly the
    inverse shift; outside the frame it is zero."""
    inner = np.array([[40, 40], [80, 40], [80, 80], [40, 80]], float)
    outer = np.array([[10, 10], [110, 10], [110, 110], [10, 110]], float)
    vertices = np.concatenate([inner, outer])
    tris = [(0, 1, 2), (0, 2, 3)]
    for k in range(4):  # ring between the squares
        a, b = k, (k + 1) % 4
        tris += [(a, b, 4 + b), (a, 4 + b, 4 + a)]
    warp = MeshWarp(vertices=vertices, triangles=np.array(tris), size=(121, 121), step=2)
    moves = np.zeros_like(vertices)
    moves[:4] = (3.0, -2.0)
    table = warp.map(moves)
    assert table.shape == (121, 121, 2)
    ident = np.dstack(np.meshgrid(np.arange(121), np.arange(121))).astype(np.float32)
    disp = table - ident
    np.testing.assert_allclose(disp[50:70, 50:70], np.broadcast_to((-3.0, 2.0), (20, 20, 2)), atol=1e-4)
    assert np.abs(disp[115:, :]).max() == 0 and np.abs(disp[:, :6]).max() == 0
    np.testing.assert_allclose(warp.map(np.zeros_like(vertices)), ident, atol=1e-3)


def test_torch_resampling_matches_opencv():
    rng = np.random.default_rng(0)
    source = cv2.GaussianBlur(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8), (0, 0), 2)
    table = np.dstack(np.meshgrid(np.linspace(-3, 72, 50), np.linspace(2, 80, 40))).astype(np.float32)
    a = remap_cpu(source, table)
    b = TorchRemap(source, "cpu")(table)
    assert a.shape == b.shape == (40, 50, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_the_drawn_mouth_is_as_soft_as_the_photo(avatar):
    """The drawn teeth and cavity get the softness of the photo's own edges around the mouth: on the
    sharp photo they stay as drawn, on the same photo blurred (a soft print, an up-scaled small
    picture) they are blurred to match instead of standing out crisp."""
    from avatarcam.engines.mesh.measure import edge_softness
    from avatarcam.engines.mesh.mouth import MouthPainter

    points = avatar.face.landmarks.astype(np.float64)
    target = opened(points, 0.15)
    poly = target[list(tp.MOUTH_POLYGON), :2]
    width = float(np.ptp(poly[:, 0]))
    x0, y0 = np.floor(poly.min(axis=0) - 0.4 * width).astype(int)
    x1, y1 = np.ceil(poly.max(axis=0) + 0.4 * width).astype(int)
    read = []
    for image in (avatar.image, cv2.GaussianBlur(avatar.image, (0, 0), 2.5)):
        painted = np.full_like(image, 128)
        MouthPainter(image=image, landmarks=points).paint(painted, target, 1.0)
        read.append((edge_softness(np.ascontiguousarray(image[y0:y1, x0:x1])),
                     edge_softness(np.ascontiguousarray(painted[y0:y1, x0:x1]))))
    (sharp_photo, sharp_drawn), (soft_photo, soft_drawn) = read
    assert soft_photo > sharp_photo + 1.0, read
    assert abs(sharp_drawn - sharp_photo) <= 0.5, read
    assert abs(soft_drawn - soft_photo) <= 0.5, read


def test_driver_mouth_fill_and_options(avatar, driver):
    image, points = driver
    engine = MeshEngine(output="crop", size=256, mouth_fill="driver", neutral_frames=1)
    prepared = engine.prepare(avatar)
    engine.animate(prepared, drive_of(image, points, 0))
    out = engine.animate(prepared, drive_of(image, opened(points, 0.25), 1))
    assert out.shape == (256, 256, 3)
    for bad in ({"output": "video"}, {"mouth_fill": "paint"}, {"size": 8}, {"max_roll": 120.0},
                {"neutral_frames": 0}, {"device": "tpu"}):
        with pytest.raises(EngineError):
            MeshEngine(**bad)


def test_engine_factory_knows_mesh():
    from avatarcam.engines import create_engine

    engine = create_engine("mesh", size=128, output="crop", device="cpu")
    assert isinstance(engine, MeshEngine) and engine.needs_landmarks


def test_synthetic_expression_drives_the_avatar_without_a_face(avatar, judge):
    from avatarcam.audio.voice import SyntheticExpression

    engine = MeshEngine(output="crop", size=512)
    prepared = engine.prepare(avatar)
    blank = np.zeros((240, 320, 3), np.uint8)

    def show(**kw) -> np.ndarray:
        values = {"mouth_open": 0.0, "blink": 0.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, **kw}
        drive = Drive(frame=Frame(blank, 0), box=Box.centered(320, 240), landmarks=None,
                      expression=SyntheticExpression(**values))
        return engine.animate(prepared, drive)

    rest = show()  # no driver seen yet: relative to the avatar's own face, so the photo itself
    assert np.abs(rest.astype(int) - avatar.crop(512).astype(int)).max() <= 1
    s_rest = face_signals(judge.detect(rest).face)
    s_talk = face_signals(judge.detect(show(mouth_open=1.0)).face)
    s_blink = face_signals(judge.detect(show(blink=1.0)).face)
    s_tilt = face_signals(judge.detect(show(roll=8.0)).face)
    assert s_talk.mouth_open > s_rest.mouth_open + 0.1
    assert s_blink.eye_open_left < 0.6 * s_rest.eye_open_left and s_blink.eye_open_right < 0.6 * s_rest.eye_open_right
    assert s_tilt.roll - s_rest.roll == pytest.approx(8.0, abs=2.0)


def test_calibration_round_trip(avatar, driver):
    image, points = driver
    engine = MeshEngine(output="crop", size=256, neutral_frames=2)
    prepared = engine.prepare(avatar)
    assert engine.get_calibration() is None
    tilted = rotated(points, 10.0)
    for i in range(2):
        engine.animate(prepared, drive_of(image, tilted, i))
    saved = engine.get_calibration()
    assert saved is not None and saved["neutral"].shape == (478, 3)
    other = MeshEngine(output="crop", size=256)
    other.set_calibration(saved)
    prepared2 = other.prepare(avatar)
    # The restored neutral is the tilted face: showing it is the rest, showing the upright face is not.
    assert np.abs(other.animate(prepared2, drive_of(image, tilted, 0)).astype(int) - avatar.crop(256).astype(int)).max() <= 1
    assert not np.array_equal(other.animate(prepared2, drive_of(image, points, 1)), avatar.crop(256))
    with pytest.raises(EngineError):
        other.set_calibration({"neutral": np.zeros((5, 3))})
    other.set_calibration(None)
    assert other.get_calibration() is None


def test_only_the_driver_fill_reads_driving_pixels():
    assert MeshEngine(mouth_fill="synthetic").reads_drive_pixels is False
    assert MeshEngine(mouth_fill="driver").reads_drive_pixels is True


def test_a_large_photo_is_animated_at_the_resolution_the_output_shows(avatar, driver):
    """A phone-sized photo (here the Obama photo upscaled to 2790 px) is fitted to a 1280 x 720
    output before it is animated: the canvas is the same as when the whole photo is warped."""
    from avatarcam.app import fit_avatar
    from avatarcam.compositing import Compositor

    image, points = driver
    big = avatar.scaled(3.0)
    compositor = Compositor(width=1280, height=720)
    fitted = fit_avatar(big, compositor, crop_size=512)
    assert fitted.image.shape[0] < 0.4 * big.image.shape[0]
    assert fitted.box.side >= 511  # the face never below the engine's crop size
    assert fit_avatar(fitted, compositor, crop_size=512) is fitted  # already fitted: left alone
    moved = opened(rotated(points, 8.0), 0.15)
    canvases = []
    for av in (big, fitted):
        engine = MeshEngine(output="photo", neutral_frames=1)
        prepared = engine.prepare(av)
        rest = compositor.compose(engine.animate(prepared, drive_of(image, points, 0)), av.face.box)
        out = compositor.compose(engine.animate(prepared, drive_of(image, moved, 1)), av.face.box)
        canvases.append((rest, out))
    (rest_big, out_big), (_, out_fit) = canvases
    motion = np.abs(out_big.astype(float) - rest_big).mean()
    diff = np.abs(out_fit.astype(float) - out_big).mean()
    assert motion > 4.0, "the head did not move"
    assert diff < 0.15 * motion and diff < 2.0, (diff, motion)
