"""Head pose and expression signals from one face's landmarks (MediaPipe 468/478 or the 68-point layout).

Conventions (image coordinates: x right, y down; MediaPipe z: larger = farther from the camera):

- ``yaw`` (degrees): positive when the nose turns toward the image's right (the subject's left in an
  unmirrored camera image). 0 = facing the camera.
- ``pitch`` (degrees): positive when the chin goes up (looking up). 0 is calibrated so that frontal
  photos read about 0 (see ``PITCH_OFFSET_DEG``).
- ``roll`` (degrees): positive when the head is tilted clockwise as seen in the image.
- Distances are normalised by the face scale: the 3D distance between the outer eye corners
  (inter-ocular distance, IOD), which does not shrink when the head turns.
- ``mouth_open``: inner-lip gap / IOD (about 0 closed, 0.3-0.6 wide open); ``mouth_width``: mouth
  corner distance / IOD (about 0.5 neutral, larger when smiling).
- ``eye_open_left/right``: eyelid gap / eye width (about 0.25-0.35 open, below 0.1 closed).
  Left = the subject's left eye (image right in an unmirrored image).
- ``iris_left/right``: iris centre within the eye, (x, y) in the eye's own frame (corner-to-corner
  axis, so head roll does not move it): x = offset / half the eye width, positive toward the
  image's right, measured from the corners' midpoint less a small outward bias; y = offset from
  the lids' centre / a quarter of the eye width, positive downward; clipped to -1..1. Looking at
  the camera reads about (0, 0) (mean within 0.15 on the driving videos). (0, 0) as well without
  iris points (no refinement, or the 68-point layout).
- ``brow_left/right``: height of the brow above the eye centre along the head's up axis / IOD
  (about 0.3-0.4 neutral, larger when raised).

Head pose comes from the landmarks' own geometry: the head's left-right axis is the mean direction
of symmetric point pairs (eye corners, mouth corners, cheeks, jaw), its up-down axis the chin-to-
forehead direction made orthogonal to it, both in 3D using MediaPipe's depth. That needs no camera
intrinsics and no external face model, and costs a few dozen microseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avatarcam.landmarks.types import FaceLandmarks


@dataclass(frozen=True)
class FaceSignals:
    """Head pose (degrees) and expression measures of one face; conventions in the module doc."""

    yaw: float
    pitch: float
    roll: float
    mouth_open: float
    mouth_width: float
    eye_open_left: float
    eye_open_right: float
    iris_left: tuple[float, float]
    iris_right: tuple[float, float]
    brow_left: float
    brow_right: float


@dataclass(frozen=True)
class _Layout:
    """Landmark indices for one layout. "right"/"left" are the subject's sides."""

    pairs_r: tuple[int, ...]  # subject's-right side of symmetric pairs
    pairs_l: tuple[int, ...]  # their subject's-left partners
    top: tuple[int, ...]  # upper midline (forehead / nose bridge)
    bottom: tuple[int, ...]  # lower midline (chin)
    eye_r: tuple[int, int, tuple[int, ...], tuple[int, ...]]  # outer, inner corner, upper lid, lower lid
    eye_l: tuple[int, int, tuple[int, ...], tuple[int, ...]]
    lips_inner_upper: tuple[int, ...]
    lips_inner_lower: tuple[int, ...]
    mouth_corners: tuple[int, int]
    brow_r: tuple[int, ...]
    brow_l: tuple[int, ...]
    iris_r: int | None  # iris centre indices (refined MediaPipe only)
    iris_l: int | None


_MEDIAPIPE = _Layout(
    pairs_r=(33, 133, 61, 234, 127, 172, 50),
    pairs_l=(263, 362, 291, 454, 356, 397, 280),
    top=(10, 151, 9),
    bottom=(152, 175, 199),
    eye_r=(33, 133, (160, 159, 158), (144, 145, 153)),
    eye_l=(263, 362, (387, 386, 385), (373, 374, 380)),
    lips_inner_upper=(82, 13, 312),
    lips_inner_lower=(87, 14, 317),
    mouth_corners=(61, 291),
    brow_r=(105, 66, 107, 65, 52),
    brow_l=(334, 296, 336, 295, 282),
    iris_r=468,
    iris_l=473,
)

# iBUG 68 (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67. Its points carry
# depth only when the backend gives it (face-alignment 3D); with z = 0 yaw and pitch read 0.
_IBUG68 = _Layout(
    pairs_r=(36, 39, 48, 0, 2, 4),
    pairs_l=(45, 42, 54, 16, 14, 12),
    top=(27, 21, 22),
    bottom=(8, 7, 9),
    eye_r=(36, 39, (37, 38), (41, 40)),
    eye_l=(45, 42, (44, 43), (46, 47)),
    lips_inner_upper=(61, 62, 63),
    lips_inner_lower=(67, 66, 65),
    mouth_corners=(48, 54),
    brow_r=(18, 19, 20),
    brow_l=(23, 24, 25),
    iris_r=None,
    iris_l=None,
)

# Without this offset, faces looking at the camera read a pitch of about -6 degrees (the mean over the
# three frontal photos and the four talking-to-camera videos in ../shared/data: -10.7, -14.3, -3.9,
# -4.4, -4.4, +0.3, -2.9): MediaPipe's chin-to-forehead line leans back that much, so it is removed
# to make pitch 0 mean "facing the camera".
PITCH_OFFSET_DEG = -6.0


# A straight gaze puts the iris slightly toward the outer eye corner (mean over the four driving
# videos: 0.07 half-widths); removed so both eyes read x = 0 when looking at the camera.
IRIS_OUTWARD_BIAS = 0.07


def _layout(n: int) -> _Layout:
    if n >= 468:
        return _MEDIAPIPE
    if n == 68:
        return _IBUG68
    raise ValueError(f"face_signals needs 468/478 (MediaPipe) or 68 (iBUG) landmarks, got {n}")


class _Plan:
    """A layout's indices as arrays, so one call does a handful of vectorised numpy operations
    instead of a hundred tiny ones (face_signals runs every frame)."""

    def __init__(self, lay: _Layout) -> None:
        self.lay = lay
        self.pairs_r = np.array(lay.pairs_r)
        self.pairs_l = np.array(lay.pairs_l)
        self.top = np.array(lay.top)
        self.bottom = np.array(lay.bottom)
        # Every vertical gap in one array: inner lips, right eye lids, left eye lids.
        ups = (lay.lips_inner_upper, lay.eye_r[2], lay.eye_l[2])
        lows = (lay.lips_inner_lower, lay.eye_r[3], lay.eye_l[3])
        self.gap_a = np.concatenate([np.array(u) for u in ups])
        self.gap_b = np.concatenate([np.array(v) for v in lows])
        bounds = np.cumsum([0] + [len(u) for u in ups])
        self.gap_slices = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(3)]
        # Every width in one array: inter-ocular, right eye, left eye, mouth.
        self.dist_a = np.array([lay.eye_r[0], lay.eye_r[0], lay.eye_l[0], lay.mouth_corners[0]])
        self.dist_b = np.array([lay.eye_l[0], lay.eye_r[1], lay.eye_l[1], lay.mouth_corners[1]])
        self.brow_r = np.array(lay.brow_r)
        self.brow_l = np.array(lay.brow_l)
        self.eye_r_lids = np.array(lay.eye_r[2] + lay.eye_r[3])
        self.eye_l_lids = np.array(lay.eye_l[2] + lay.eye_l[3])


_PLANS = {id(_MEDIAPIPE): _Plan(_MEDIAPIPE), id(_IBUG68): _Plan(_IBUG68)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(math.sqrt(float(v @ v)), 1e-9)


def _axes(p: np.ndarray, plan: _Plan) -> np.ndarray:
    across = p[plan.pairs_l] - p[plan.pairs_r]
    x = _unit((across / np.sqrt((across * across).sum(axis=1, keepdims=True))).sum(axis=0))
    down = p[plan.bottom].mean(axis=0) - p[plan.top].mean(axis=0)
    y = _unit(down - x * float(down @ x))
    return np.stack([x, y, np.cross(x, y)], axis=1)


def head_axes(points: np.ndarray) -> np.ndarray:
    """Head rotation as a 3 x 3 matrix whose columns are the head's axes in image space: the
    subject's right-to-left, forehead-to-chin, and front-to-back directions (unit vectors)."""
    return _axes(points.astype(np.float64, copy=False), _PLANS[id(_layout(len(points)))])


def _pose(rot: np.ndarray) -> tuple[float, float, float]:
    # rot = Ry(a) @ Rx(b) @ Rz(c) in camera axes (x right, y down, z away): a turns about the
    # vertical, b nods, c tilts in the image plane. Third column = back-of-head direction.
    back = rot[:, 2]
    a = math.atan2(back[0], back[2])
    b = math.asin(max(-1.0, min(1.0, -back[1])))
    c = math.atan2(rot[1, 0], rot[1, 1])
    # A face turned to the image's right has its back direction pointing left (a < 0); chin up
    # makes the back direction point down (b < 0): flip both to the documented signs.
    return -math.degrees(a), -math.degrees(b) - PITCH_OFFSET_DEG, math.degrees(c)


def _iris(p: np.ndarray, outer: int, inner: int, lids: np.ndarray, iris: int) -> tuple[float, float]:
    # The eye's own 2D frame: x along the corners (pointing to the image right), y perpendicular
    # (down). Horizontal offsets are measured from the corners' midpoint, vertical ones from the
    # lids' midpoint: the iris sits level with the lids' centre, about a quarter-width above the
    # corner line (measured on the driving videos), so this makes a straight gaze read (0, 0).
    a, b = p[outer, :2], p[inner, :2]
    outward = -1.0  # image direction from the inner to the outer corner
    if a[0] > b[0]:
        a, b = b, a
        outward = 1.0
    d = b - a
    half = max(math.sqrt(float(d @ d)) / 2.0, 1e-9)
    ux = d / (2.0 * half)
    uy = np.array([-ux[1], ux[0]])
    centre_lids = p[lids, :2].mean(axis=0)
    iris_xy = p[iris, :2]
    ix = float((iris_xy - (a + b) / 2.0) @ ux) / half - outward * IRIS_OUTWARD_BIAS
    iy = float((iris_xy - centre_lids) @ uy) / (half / 2.0)
    return max(-1.0, min(1.0, ix)), max(-1.0, min(1.0, iy))


def face_signals(face: FaceLandmarks) -> FaceSignals:
    """Pose and expression of ``face`` (points ``N x 3``, N = 468/478 MediaPipe or 68 iBUG)."""
    p = face.points.astype(np.float64, copy=False)
    lay = _layout(len(p))
    plan = _PLANS[id(lay)]
    rot = _axes(p, plan)
    yaw, pitch, roll = _pose(rot)
    g = p[plan.gap_a] - p[plan.gap_b]
    gaps = np.sqrt((g * g).sum(axis=1))
    w = p[plan.dist_a] - p[plan.dist_b]
    iod, eye_w_r, eye_w_l, mouth_w = (max(v, 1e-9) for v in np.sqrt((w * w).sum(axis=1)).tolist())
    lips, lids_r, lids_l = (float(gaps[s].mean()) for s in plan.gap_slices)
    has_iris = lay.iris_r is not None and len(p) > max(lay.iris_r, lay.iris_l)
    if has_iris:
        iris_r = _iris(p, lay.eye_r[0], lay.eye_r[1], plan.eye_r_lids, lay.iris_r)
        iris_l = _iris(p, lay.eye_l[0], lay.eye_l[1], plan.eye_l_lids, lay.iris_l)
    else:
        iris_r = iris_l = (0.0, 0.0)
    up = -rot[:, 1]
    brow_r = float((p[plan.brow_r].mean(axis=0) - (p[lay.eye_r[0]] + p[lay.eye_r[1]]) / 2.0) @ up) / iod
    brow_l = float((p[plan.brow_l].mean(axis=0) - (p[lay.eye_l[0]] + p[lay.eye_l[1]]) / 2.0) @ up) / iod
    return FaceSignals(
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        mouth_open=lips / iod,
        mouth_width=mouth_w / iod,
        eye_open_left=lids_l / eye_w_l,
        eye_open_right=lids_r / eye_w_r,
        iris_left=iris_l,
        iris_right=iris_r,
        brow_left=brow_l,
        brow_right=brow_r,
    )
