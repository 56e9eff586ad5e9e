"""Re-targeting: the driver's head pose and expression, relative to its neutral, onto the avatar's landmarks.

Per frame (``N x 3`` float64 arrays of MediaPipe landmarks, x/y/z in pixels):

1. pose: a 3-D similarity (scale, rotation, translation) from the driver's neutral to the current
   frame, fitted on skull-fixed points only (:data:`~.topology.RIGID`), so talking does not move it;
2. expression: the current frame brought back into the neutral's pose, minus the neutral (``E``,
   per point). Outline points slide over the face when it turns, so there only the jaw's movement
   (measured on the front of the chin) is kept;
3. proportions: ``E`` in the neutral face's own axes, scaled per region by the ratio of the
   avatar's feature to the driver's (eye width, eye opening, mouth width), then into the avatar's
   scale and orientation and added to the avatar's own landmarks; the lids' opening and closing
   is amplified (``lid_gain``, see :data:`LID_GAIN`); lids and lips may meet but not cross, irises
   stay between the lids;
4. the pose change, taken in the driver's head frame and re-applied in the avatar's (a nod stays a
   nod on a three-quarter photo), soft-clamped to the configured limits, turning about a pivot at
   the chin (a tilting head swings its top, not its chin): yaw and pitch act through z, roll in
   the image plane; the translation is scaled to the avatar and clamped.

The neutral is the per-point median of the first ``n`` tracked frames (aligned on the rigid points,
placed at their mean pose), which ignores blinks and speech; its mouth is then closed to the
most-closed gap seen (at most nearly touching), and closed further when the driver later closes it
more, so a driver who was talking while calibrating does not leave the avatar with lips that can
only close by crossing.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from avatarcam.engines.mesh import topology as tp
from avatarcam.engines.mesh.options import LID_GAIN, Limits
from avatarcam.geometry import smoothstep
from avatarcam.landmarks.signals import head_axes

RIGID = np.array(tp.RIGID, dtype=np.int64)
CHIN = np.array(tp.CHIN, dtype=np.int64)
REST_GAP = 0.02  # inner-lip gap of a closed mouth, in inter-ocular distances
UPPER_LID_SHARE = 0.85  # of the added lid motion, the upper lid's (it does most of a blink)
_EYE_R = tp.EYE_RIGHT_UPPER + tp.EYE_RIGHT_LOWER[1:-1]
_EYE_L = tp.EYE_LEFT_UPPER + tp.EYE_LEFT_LOWER[1:-1]


def soft_limit(x: float, limit: float, knee: float = 0.7) -> float:
    """Identity up to ``knee * limit``, then a tanh shoulder that never exceeds ``limit``."""
    a = abs(x)
    k = knee * limit
    if a <= k:
        return x
    room = limit - k
    if room <= 0:
        return math.copysign(limit, x)
    return math.copysign(k + room * math.tanh((a - k) / room), x)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``dst ~ s * R @ src + t`` (Umeyama) for ``K x 3`` point sets; (s, R 3x3, t 3)."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = (u * d) @ vt
    s = float((sig * d).sum() / max((a * a).sum(), 1e-12))
    return s, rot, md - s * rot @ ms


def _iod(p: np.ndarray) -> float:
    return float(np.linalg.norm(p[33] - p[263]))


def pair_gaps(p: np.ndarray, pairs: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Signed gaps (lower minus upper along ``down``) of point pairs."""
    return (p[pairs[:, 1]] - p[pairs[:, 0]]) @ down


def jaw_weights(q: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """How much each point follows the jaw when the mouth opens (``N``, 0..1), from the neutral
    face ``q``: the lower lip fully, the chin and the jaw below the mouth fading toward the ears."""
    iod = _iod(q)
    centre = (q[tp.MOUTH_CORNERS[0]] + q[tp.MOUTH_CORNERS[1]]) / 2.0
    rel = (q - centre) @ axes / iod
    horiz = np.clip(1.0 - (np.abs(rel[:, 0]) - 0.35) / 0.6, 0.0, 1.0)
    w = horiz * smoothstep(rel[:, 1] / 0.12)
    d_low = tp.graph_distance(tp.LIP_INNER_LOWER[1:-1], limit=4)
    d_up = tp.graph_distance(tp.LIP_INNER_UPPER[1:-1], limit=4)
    band = (d_low <= 3) & (d_low < d_up)
    w[band] = np.maximum(w[band], horiz[band])
    w[list(tp.LIP_INNER_LOWER[1:-1])] = 1.0
    w[tp.N_MESH:] = 0.0
    return w


@functools.lru_cache(maxsize=1)
def _region_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-point membership (0..1) of the mouth, right eye and left eye regions, and of the
    silhouette (the outline and the ring inside it)."""
    mouth = np.array([1.0, 1.0, 1.0, 1.0, 0.7, 0.4, 0.2, 0.0, 0.0])
    eye = np.array([1.0, 1.0, 0.6, 0.3, 0.0])
    outline = np.array([1.0, 1.0, 0.5, 0.0])
    wm = mouth[tp.graph_distance(tp.LIP_INNER_UPPER + tp.LIP_INNER_LOWER, limit=7)]
    wr = eye[tp.graph_distance(_EYE_R, limit=3)]
    wl = eye[tp.graph_distance(_EYE_L, limit=3)]
    ws = outline[tp.graph_distance(tp.FACE_OVAL, limit=2)]
    wr[tp.IRIS_RIGHT:tp.IRIS_RIGHT + 5] = 1.0
    wl[tp.IRIS_LEFT:tp.IRIS_LEFT + 5] = 1.0
    ws[tp.N_MESH:] = 0.0
    for w in (wm, wr, wl, ws):
        w.setflags(write=False)
    return wm, wr, wl, ws


@dataclass(frozen=True, eq=False)
class FaceFrame:
    """One face's reference geometry: ``points`` (``N x 3``), its head ``axes`` (3 x 3, columns:
    right, down, back; see :func:`avatarcam.landmarks.signals.head_axes`) and sizes in pixels."""

    points: np.ndarray
    axes: np.ndarray
    iod: float
    mouth_width: float
    eye_widths: tuple[float, float]  # right, left
    eye_gaps: tuple[float, float]

    @classmethod
    def of(cls, points: np.ndarray) -> "FaceFrame":
        p = np.asarray(points, dtype=np.float64)
        axes = head_axes(p)
        down = axes[:, 1]
        return cls(
            points=p,
            axes=axes,
            iod=_iod(p),
            mouth_width=float(np.linalg.norm(p[61] - p[291])),
            eye_widths=(float(np.linalg.norm(p[33] - p[133])), float(np.linalg.norm(p[263] - p[362]))),
            eye_gaps=(float(pair_gaps(p, tp.EYE_RIGHT_PAIRS, down).mean()),
                      float(pair_gaps(p, tp.EYE_LEFT_PAIRS, down).mean())),
        )


class Neutral:
    """The driver's calibrated rest face (pose and expression), built from ``frames`` tracked frames.

    ``add(points)`` feeds one frame (``N x 3``) while calibrating and returns True once complete;
    until then ``frame`` is the provisional neutral (the frames so far), so animation starts at once.
    """

    def __init__(self, frames: int) -> None:
        if frames < 1:
            raise ValueError(f"neutral frames must be >= 1, got {frames}")
        self.frames = frames
        self._aligned: list[np.ndarray] = []
        self._poses: list[tuple[float, np.ndarray, np.ndarray]] = []
        self._gaps: list[np.ndarray] = []
        self.frame: FaceFrame | None = None
        self.version = 0  # bumps whenever ``frame`` changes, so pair mappings know to rebuild
        self._jaw: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return len(self._aligned) >= self.frames

    @classmethod
    def restored(cls, points: np.ndarray) -> "Neutral":
        """A complete neutral from a saved one (``N x 3``, e.g. from ``Neutral.frame.points``)."""
        p = np.asarray(points, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] < tp.N_LANDMARKS or p.shape[1] != 3 or not np.isfinite(p).all():
            raise ValueError(f"a saved neutral must be N x 3 finite landmarks with N >= {tp.N_LANDMARKS}, "
                             f"got shape {p.shape}")
        n = cls(1)
        f = FaceFrame.of(p)
        n._aligned = [p]
        n._poses = [(1.0, np.eye(3), np.zeros(3))]
        n._gaps = [pair_gaps(p, tp.LIP_PAIRS, f.axes[:, 1])]
        n._jaw = jaw_weights(p, f.axes)
        n.frame = f
        n.version = 1
        return n

    def add(self, points: np.ndarray) -> bool:
        p = np.asarray(points, dtype=np.float64)
        # Every frame is aligned to the first on the rigid points (its pose relative to frame 0).
        pose = similarity(self._aligned[0][RIGID], p[RIGID]) if self._aligned else (1.0, np.eye(3), np.zeros(3))
        s, rot, t = pose
        aligned = ((p - t) @ rot) / s  # undo the pose: R^T (p - t) / s, row-wise
        self._aligned.append(aligned)
        self._poses.append(pose)
        down = head_axes(aligned)[:, 1]
        self._gaps.append(pair_gaps(aligned, tp.LIP_PAIRS, down))
        self._rebuild()
        return self.complete

    def _rebuild(self) -> None:
        median = np.median(np.stack(self._aligned), axis=0)
        # Put the median face at the mean pose of the calibration frames (not frame 0's pose).
        s = float(np.mean([p[0] for p in self._poses]))
        rot = Rotation.from_matrix(np.stack([p[1] for p in self._poses])).mean().as_matrix()
        t = np.mean([p[2] for p in self._poses], axis=0)
        q = (s * median @ rot.T) + t
        axes = head_axes(q)
        self._jaw = jaw_weights(q, axes)
        # A neutral mouth is closed: rest at the most-closed gap seen, and at most nearly touching.
        rest = np.minimum(np.percentile(np.stack(self._gaps), 10, axis=0), REST_GAP * _iod(self._aligned[0])) * s
        self.frame = FaceFrame.of(self._close(q, axes, rest))
        self.version += 1

    def _close(self, q: np.ndarray, axes: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """``q`` with its jaw lifted so the inner-lip pairs have gaps ``rest`` (never opened)."""
        down = axes[:, 1]
        close = np.maximum(pair_gaps(q, tp.LIP_PAIRS, down) - rest, 0.0)
        amount = self._jaw * float(close.mean())
        amount[tp.LIP_PAIRS[:, 1]] = close  # the lower inner lip pair by pair
        return q - np.outer(amount, down)

    @property
    def rest_gap(self) -> float:
        """The neutral's mean inner-lip gap (pixels)."""
        f = self.frame
        return float(pair_gaps(f.points, tp.LIP_PAIRS, f.axes[:, 1]).mean())

    def close_mouth_to(self, gap: float) -> None:
        """The driver closed the mouth further than the neutral's (mean inner-lip gap ``gap``, in the
        neutral's pixels): lift the neutral's jaw so that this becomes the rest."""
        f = self.frame
        if gap >= self.rest_gap:
            return
        pairs = pair_gaps(f.points, tp.LIP_PAIRS, f.axes[:, 1])
        self.frame = FaceFrame.of(self._close(f.points, f.axes, np.minimum(pairs, gap)))
        self.version += 1


# A synthetic expression's mouth_open = 1 opens the inner lips this far (inter-ocular distances).
SYNTHETIC_MOUTH = 0.35


def synthetic_face(base: FaceFrame, *, mouth_open: float, blink: float, yaw: float, pitch: float,
                   roll: float) -> np.ndarray:
    """Landmarks (``N x 3``) of the rest face ``base`` wearing a made-up expression, for driving the
    avatar without a tracked face (voice-driven mouth, idle blinks and head motion):
    ``mouth_open`` and ``blink`` in [0, 1], angles in degrees in the conventions of
    :mod:`avatarcam.landmarks.signals`, relative to ``base``."""
    p = base.points.copy()
    down = base.axes[:, 1]
    p += np.outer(jaw_weights(p, base.axes) * (SYNTHETIC_MOUTH * float(np.clip(mouth_open, 0.0, 1.0)) * base.iod),
                  down)
    b = float(np.clip(blink, 0.0, 1.0))
    for pairs in (tp.EYE_RIGHT_PAIRS, tp.EYE_LEFT_PAIRS):
        p[pairs[:, 0]] += b * (p[pairs[:, 1]] - p[pairs[:, 0]])
    head = Rotation.from_euler("YXZ", [-math.radians(yaw), -math.radians(pitch), math.radians(roll)]).as_matrix()
    rot = base.axes @ head @ base.axes.T
    centre = p[RIGID].mean(axis=0)
    return (p - centre) @ rot.T + centre


@dataclass(frozen=True)
class Pose:
    """The driver's head motion relative to the neutral, after limits: angles in degrees
    (conventions of :mod:`avatarcam.landmarks.signals`), ``scale`` ratio, ``shift`` in avatar pixels."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    shift: tuple[float, float]


class PairMapping:
    """Maps one driver neutral onto one avatar: scale, rotation and per-point proportion factors."""

    def __init__(self, neutral: FaceFrame, avatar: FaceFrame, limits: Limits) -> None:
        self.neutral, self.avatar, self.limits = neutral, avatar, limits
        q, a = neutral.points, avatar.points
        self.s_a, self.r_a, _ = similarity(q[RIGID], a[RIGID])
        # Pivot: the chin at the depth of the face, near where the head turns on the neck, so a
        # tilting head swings its top, not its chin, and the neck bends little.
        self.pivot_q = self._pivot(neutral)
        self.pivot_a = self._pivot(avatar)
        wm, wr, wl, self._ws = _region_weights()
        self._jaw = jaw_weights(q, neutral.axes)

        def ratio(av: float, dr: float, lo: float, hi: float) -> float:
            return float(np.clip(av / max(self.s_a * dr, 1e-6), lo, hi))

        kx_m = ratio(avatar.mouth_width, neutral.mouth_width, 0.6, 1.6)
        kx_r = ratio(avatar.eye_widths[0], neutral.eye_widths[0], 0.6, 1.6)
        kx_l = ratio(avatar.eye_widths[1], neutral.eye_widths[1], 0.6, 1.6)
        ky_r = ratio(avatar.eye_gaps[0], neutral.eye_gaps[0], 0.4, 3.0)
        ky_l = ratio(avatar.eye_gaps[1], neutral.eye_gaps[1], 0.4, 3.0)
        self.kx = 1.0 + wm * (kx_m - 1.0) + wr * (kx_r - 1.0) + wl * (kx_l - 1.0)
        self.ky = 1.0 + wr * (ky_r - 1.0) + wl * (ky_l - 1.0)
        # Expression deltas: driver-neutral face axes -> scaled -> avatar pixels and orientation.
        self._to_face = neutral.axes
        self._to_avatar = self.s_a * self.r_a.T  # row vectors: e @ R^T
        self._a_down = avatar.axes[:, 1]
        self._irises = []
        for iris, upper, lower, outer, inner in ((tp.IRIS_RIGHT, 159, 145, 33, 133), (tp.IRIS_LEFT, 386, 374, 263, 362)):
            gap = float((a[lower] - a[upper]) @ self._a_down)
            frac = float((a[iris] - a[upper]) @ self._a_down) / gap if gap > 1e-6 else 0.5
            self._irises.append((iris, upper, lower, outer, inner, min(max(frac, 0.15), 0.85)))
        self.avatar_size = avatar.iod

    @staticmethod
    def _pivot(face: FaceFrame) -> np.ndarray:
        p = face.points
        return np.array([p[152, 0], p[152, 1], p[RIGID, 2].mean()])

    def expression(self, current: np.ndarray, lid_gain: float = LID_GAIN
                   ) -> tuple[np.ndarray, tuple[float, np.ndarray, np.ndarray], float]:
        """The avatar's landmarks wearing the driver's current expression (no pose yet), the
        driver's raw pose (s, R, t) relative to the neutral, and the driver's mean inner-lip gap
        in the neutral's pose and pixels. ``lid_gain``: how much further the lids move than the
        driver's (1 for exact, made-up points)."""
        q = self.neutral.points
        s, rot, t = similarity(q[RIGID], current[RIGID])
        e = ((current - t) @ rot) / s - q  # pose-free expression delta
        gap = float(pair_gaps(q + e, tp.LIP_PAIRS, self.neutral.axes[:, 1]).mean())
        # Outline points slide over the face as it turns: there only the jaw's movement is real.
        jaw = e[CHIN].mean(axis=0)
        e += self._ws[:, None] * (np.outer(self._jaw, jaw) - e)
        f = e @ self._to_face
        f[:, 0] *= self.kx
        f[:, 1] *= self.ky
        f[:, 2] *= self.kx
        delta = (f @ self._to_face.T) @ self._to_avatar
        out = self.avatar.points + delta
        if lid_gain != 1.0:
            self._amplify_lids(out, lid_gain)
        self._uncross(out)
        return out, (s, rot, t), gap

    def _amplify_lids(self, p: np.ndarray, gain: float) -> None:
        """Open or close each pair of lid points ``gain`` times as far from the avatar's own gap."""
        a, down = self.avatar.points, self._a_down
        for pairs in (tp.EYE_RIGHT_PAIRS, tp.EYE_LEFT_PAIRS):
            change = pair_gaps(p, pairs, down) - pair_gaps(a, pairs, down)
            extra = (gain - 1.0) * change  # negative: closing further
            p[pairs[:, 0]] -= np.outer(UPPER_LID_SHARE * extra, down)
            p[pairs[:, 1]] += np.outer((1.0 - UPPER_LID_SHARE) * extra, down)

    def _uncross(self, p: np.ndarray) -> None:
        """Lids and lips may meet but not pass through each other; the irises stay inside the eyes."""
        down = self._a_down
        for pairs, upper_share in ((tp.EYE_RIGHT_PAIRS, 1.0), (tp.EYE_LEFT_PAIRS, 1.0), (tp.LIP_PAIRS, 0.5)):
            over = np.minimum(pair_gaps(p, pairs, down), 0.0)  # negative where crossed
            p[pairs[:, 0]] += np.outer(over * upper_share, down)
            p[pairs[:, 1]] -= np.outer(over * (1.0 - upper_share), down)
        for iris, upper, lower, outer, inner, frac in self._irises:
            # Vertically the iris keeps its place between the lids (a closing lid carries it
            # along instead of folding over it); horizontally it stays between the corners.
            lid = p[upper] + frac * (p[lower] - p[upper])
            p[iris] += float((lid - p[iris]) @ down) * down
            axis = p[inner] - p[outer]
            u = float((p[iris] - p[outer]) @ axis) / max(float(axis @ axis), 1e-9)
            p[iris] += (min(max(u, 0.2), 0.8) - u) * axis

    def pose(self, raw: tuple[float, np.ndarray, np.ndarray]) -> tuple[Pose, np.ndarray]:
        """Limited pose and its rotation matrix (avatar image axes).

        The rotation is taken in the driver's own head frame (a nod is a turn about the head's
        left-right axis wherever the head points) and re-applied in the avatar's head frame, so a
        nod stays a nod on an avatar photographed three-quarter (in camera axes it would leak into
        roll). The rotation itself is the rigid-point fit's, not the head axes of
        :mod:`avatarcam.landmarks.signals`: those use the mouth corners and the jaw line, which
        also move with expressions that are transferred separately (they would count twice).
        """
        s, rot, t = raw
        lim = self.limits
        hn, ha = self.neutral.axes, self.avatar.axes
        delta = hn.T @ rot @ hn
        yaw, pitch, roll = Rotation.from_matrix(delta).as_euler("YXZ")
        yaw = math.radians(soft_limit(math.degrees(yaw), lim.max_yaw, lim.knee))
        pitch = math.radians(soft_limit(math.degrees(pitch), lim.max_pitch, lim.knee))
        roll = math.radians(soft_limit(math.degrees(roll), lim.max_roll, lim.knee))
        r = ha @ Rotation.from_euler("YXZ", [yaw, pitch, roll]).as_matrix() @ ha.T
        scale = math.exp(soft_limit(math.log(max(s, 1e-6)), math.log1p(lim.max_scale), lim.knee))
        moved = s * rot @ self.pivot_q + t - self.pivot_q
        shift = (self.s_a * self.r_a @ moved)[:2]
        norm = float(np.linalg.norm(shift))
        limit = lim.max_shift * self.avatar_size
        if norm > 1e-9:
            shift = shift * (soft_limit(norm, limit, lim.knee) / norm)
        # Angles in the head frame, in the signals' sign conventions (yaw to the image's right and
        # chin up positive).
        pose = Pose(yaw=-math.degrees(yaw), pitch=-math.degrees(pitch), roll=math.degrees(roll),
                    scale=scale, shift=(float(shift[0]), float(shift[1])))
        return pose, r

    def apply_pose(self, points: np.ndarray, pose: Pose, rot: np.ndarray) -> np.ndarray:
        """Rotate / scale ``points`` (``K x 3``) around the avatar's pivot, then shift."""
        out = (points - self.pivot_a) @ (pose.scale * rot.T) + self.pivot_a
        out[:, 0] += pose.shift[0]
        out[:, 1] += pose.shift[1]
        return out
