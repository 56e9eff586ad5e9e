"""A vectorised One Euro filter (Casiez, Roussel, Vogel, CHI 2012) for landmark arrays and boxes.

Why not the ``OneEuroFilter`` package: it filters one Python float per object, so 478 x 3
landmark coordinates take about 2.1 ms per frame on this 2-core machine (measured, idle), a third
of the tracker's own time; this numpy version filters the whole array at once in tens of
microseconds. It also measures speed per point (the norm over x, y, z) instead of per coordinate,
so a point's cutoff does not depend on the direction it moves in, and it divides speed by a
caller-given scale (the face size) so ``beta`` means the same at any resolution and distance.
``LandmarkSmoother`` filters a face's head pose and its shape apart (about 0.4 ms per frame).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

DEFAULT_DT = 1.0 / 30.0  # used when timestamps do not advance (repeated or missing times)
# A detection whose centre moved more than this many face sizes in one frame is treated as a new
# face (re-acquired elsewhere, another person): the filter restarts instead of gliding across.
JUMP_FACE_SIZES = 1.0


def face_size(points: np.ndarray) -> float:
    """Face size in the points' units: the larger side of the x/y bounding box of ``N x 2+`` points."""
    xy = points[:, :2]
    span = xy.max(axis=0) - xy.min(axis=0)
    return float(max(span[0], span[1], 1e-6))


def _alpha(dt: float, cutoff: np.ndarray | float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass with ``cutoff`` Hz sampled every ``dt`` s."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuro:
    """One Euro filter over an array of any shape (e.g. ``N x 3`` landmarks or a 3-vector box).

    ``norm_axis``: axis over which one "point" spans (its speed is the Euclidean norm of the
    velocity along it; cutoff is shared by that point's coordinates); None filters every element
    on its own. ``min_cutoff`` may be an array that broadcasts against the per-point speed (e.g.
    ``N x 1``) to give each point its own cutoff. Call it with the new raw value, a time in seconds
    and the current scale (speed is divided by it: pass the face size in the same units as the values).
    """

    def __init__(self, *, min_cutoff: float | np.ndarray, beta: float, d_cutoff: float = 1.0,
                 norm_axis: int | None = -1) -> None:
        if np.any(np.asarray(min_cutoff) <= 0) or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {min_cutoff}, {d_cutoff}, {beta}")
        # A per-element array (broadcast against the speed) gives regions cutoffs of their own.
        self.min_cutoff = min_cutoff if isinstance(min_cutoff, np.ndarray) else float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.norm_axis = norm_axis
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @property
    def speed(self) -> np.ndarray:
        """The filtered rate of change (per second, same shape as the value; zeros before a sample)."""
        return np.zeros(1) if self._dx is None else self._dx

    @property
    def value(self) -> np.ndarray | None:
        """The last filtered value, or None before the first sample / after reset."""
        return self._x

    def reset(self, value: np.ndarray | None = None, t: float = 0.0) -> None:
        """Forget the history; with ``value`` the filter restarts from it (zero speed)."""
        self._x = None if value is None else np.array(value, dtype=np.float64)
        self._dx = None if value is None else np.zeros_like(self._x)
        self._t = t

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0, extra_speed: float = 0.0) -> np.ndarray:
        """Filter one sample. ``x``: same shape every call; returns a float64 array of that shape.
        ``extra_speed`` (in ``scale`` units per second) is added to every point's speed."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self.reset(x, t)
            return self._x.copy()
        dt = t - self._t
        if not dt > 0:
            dt = DEFAULT_DT
        self._t = t
        a_d = _alpha(dt, self.d_cutoff)
        dx = (x - self._x) / dt
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        if self.norm_axis is None:
            speed = np.abs(self._dx)
        else:
            speed = np.linalg.norm(self._dx, axis=self.norm_axis, keepdims=True)
        cutoff = self.min_cutoff + self.beta * (speed / max(scale, 1e-9) + extra_speed)
        a = _alpha(dt, cutoff)
        self._x = a * x + (1.0 - a) * self._x
        return self._x.copy()


# Skull-fixed MediaPipe points (forehead, nose bridge, eye corners, cheekbones): talking and
# blinking barely move them, so a similarity fit on them is the head pose.
_RIGID_MEDIAPIPE = (151, 9, 8, 108, 337, 69, 299, 168, 6, 197, 195, 5, 4, 1, 45, 275, 33, 133, 362, 263,
                    116, 345, 123, 352, 50, 280, 117, 346, 118, 347, 143, 372)
_RIGID_IBUG68 = (0, 16, 27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45)
# The lips (outer and inner contours): speech moves them fast and far compared with the tracker's
# noise, so they get a higher minimum cutoff (less lag). Eyelids keep the base cutoff: a lid moves
# a few pixels, so there the noise matters more than the lag (measured on scripts/evaluate.py pairs).
_LIPS_MEDIAPIPE = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415)
_LIPS_IBUG68 = tuple(range(48, 68))
# Eyelids and irises.
_LIDS_MEDIAPIPE = (246, 161, 160, 159, 158, 157, 173, 7, 163, 144, 145, 153, 154, 155,
                   466, 388, 387, 386, 385, 384, 398, 249, 390, 373, 374, 380, 381, 382,
                   468, 469, 470, 471, 472, 473, 474, 475, 476, 477)
_LIDS_IBUG68 = (37, 38, 40, 41, 43, 44, 46, 47)
# Pose speed in face sizes per second: a rotation of w rad/s moves the face's points about half a
# face size times w, so rotation (and log-scale) rates are weighted by this lever arm.
_LEVER = 0.5


def _layout_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rigid, lips, lids) point indices for an ``n``-point face; unknown layouts: all rigid, no lips or lids."""
    none = np.zeros(0, dtype=np.int64)
    if n >= 468:
        return np.array(_RIGID_MEDIAPIPE), np.array(_LIPS_MEDIAPIPE), np.array([i for i in _LIDS_MEDIAPIPE if i < n])
    if n == 68:
        return np.array(_RIGID_IBUG68), np.array(_LIPS_IBUG68), np.array(_LIDS_IBUG68)
    return np.arange(n), none, none


def _fit(ref: np.ndarray, cur: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares ``cur - mean ~ s * R @ (ref - mean)`` for centred ``K x 3`` sets: (s, R)."""
    u, sig, vt = np.linalg.svd(cur.T @ ref)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = (u * d) @ vt
    return float((sig * d).sum() / max(float((ref * ref).sum()), 1e-12)), rot


class LandmarkSmoother:
    """One Euro smoothing of one face's ``N x 3`` landmarks over time, split into head pose and shape.

    Each frame is decomposed into a rigid head pose (scale, rotation, translation: a similarity fit
    on skull-fixed points against the first frame) and the face's shape in that head frame. The
    pose is one 7-number signal filtered as a whole: fitted on many points, it is far less noisy
    than any single point, so it follows head motion with little lag and no added shake. The shape
    is filtered per point (speed in face sizes per second, relative to the head, so a turning head
    does not open the filter on a still face); the lips use ``lips_cutoff`` as their minimum
    cutoff, since speech moves them fast and far compared with the tracker's noise, and the rest
    ``min_cutoff``; lips and lids also open with the head's speed (as a per-point image-space
    filter would), the rest of the shape does not, so a moving head keeps a steady outline.
    ``pose_cutoff`` (None: ``min_cutoff``) is the pose's minimum cutoff. Restarts by itself when
    the face jumps by more than ``JUMP_FACE_SIZES`` in one frame; call ``reset()`` when the face
    is lost.
    """

    def __init__(self, *, min_cutoff: float, beta: float, d_cutoff: float = 1.0,
                 pose_cutoff: float | None = None, lips_cutoff: float | None = None) -> None:
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.pose_cutoff = self.min_cutoff if pose_cutoff is None else float(pose_cutoff)
        self.lips_cutoff = self.min_cutoff if lips_cutoff is None else float(lips_cutoff)
        if self.pose_cutoff <= 0 or self.lips_cutoff <= 0:
            raise ValueError(f"cutoffs must be > 0 Hz, got pose {pose_cutoff}, lips {lips_cutoff}")
        self._pose = OneEuro(min_cutoff=self.pose_cutoff, beta=beta, d_cutoff=d_cutoff, norm_axis=-1)
        self._shape: OneEuro | None = None
        self._n = -1
        self._ref: np.ndarray | None = None  # first frame's rigid points, centred
        self._rigid = np.zeros(0, dtype=np.int64)
        self._opens_with_head = np.zeros((0, 1))  # N x 1: 1 for lips and lids
        self._size = 1.0
        self._last_center: np.ndarray | None = None

    def reset(self) -> None:
        self._pose.reset()
        if self._shape is not None:
            self._shape.reset()
        self._ref = None
        self._last_center = None

    def _start(self, p: np.ndarray) -> None:
        n = len(p)
        if n != self._n:
            self._n = n
            self._rigid, lips, lids = _layout_indices(n)
            cut = np.full((n, 1), self.min_cutoff)
            cut[lips] = self.lips_cutoff
            self._opens_with_head = np.zeros((n, 1))
            self._opens_with_head[lips] = 1.0
            self._opens_with_head[lids] = 1.0
            self._shape = OneEuro(min_cutoff=cut, beta=self.beta, d_cutoff=self.d_cutoff, norm_axis=-1)
        rig = p[self._rigid]
        self._ref = rig - rig.mean(axis=0)
        self._size = face_size(p)
        self._pose.reset()
        self._shape.reset()

    def __call__(self, points: np.ndarray, t: float) -> np.ndarray:
        """Smoothed copy of ``points`` (``N x 3`` float32, same N every call); ``t`` in seconds."""
        p = np.asarray(points, dtype=np.float64)
        size = face_size(p)
        center = p[:, :2].mean(axis=0)
        if (self._ref is None or len(p) != self._n
                or np.linalg.norm(center - self._last_center) > JUMP_FACE_SIZES * size):
            self._start(p)
        self._last_center = center
        rig = p[self._rigid]
        mean = rig.mean(axis=0)
        s, rot = _fit(self._ref, rig - mean)
        rvec = cv2.Rodrigues(rot)[0].ravel()
        # Pose in face sizes of the first frame, so its speed is comparable with the points'.
        pose = np.concatenate([[_LEVER * math.log(max(s, 1e-9))], _LEVER * rvec, mean / self._size])[None]
        shape = ((p - mean) @ rot) / s  # the face in its head frame (first frame's pixels)
        pose = self._pose(pose, t, 1.0)[0]
        # Lips and lids also open with the head's speed: their shape in the head frame changes with
        # the view (a nod changes the lid and lip gaps seen), and the other points stay steadier.
        head_speed = float(np.linalg.norm(self._pose.speed)) * self._opens_with_head
        shape = self._shape(shape, t, self._size, head_speed)
        s_f = math.exp(pose[0] / _LEVER)
        rot_f = cv2.Rodrigues(pose[1:4] / _LEVER)[0]
        out = (s_f * shape) @ rot_f.T + pose[4:] * self._size
        return out.astype(np.float32)
