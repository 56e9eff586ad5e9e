"""The driver crop: a square that follows the face, smoothed, with margin, zoom and offset.

The same framing (:func:`face_box`) prepares avatar photos, so the driver's crop and the avatar's
crop show the face at the same size and place, as reenactment models trained on VoxCeleb-style
crops expect (face about 60-65 % of the crop side).
"""
from __future__ import annotations

import numpy as np

from avatarcam.geometry import Box, smoothstep
from avatarcam.landmarks.smoothing import OneEuro
from avatarcam.landmarks.types import LandmarkResult

DEFAULT_MARGIN = 0.3  # each side, in face sizes: the face fills 1 / (1 + 2 * 0.3) = 62.5 % of the crop


def face_box(points: np.ndarray, margin: float = DEFAULT_MARGIN) -> Box:
    """The square crop around landmarks ``points`` (``N x 2+``, pixels): centred on their bounding
    box, side = larger bounding-box side * (1 + 2 * margin)."""
    xy = points[:, :2]
    lo = xy.min(axis=0)
    hi = xy.max(axis=0)
    size = float(max(hi[0] - lo[0], hi[1] - lo[1], 1.0))
    return Box(float(lo[0] + hi[0]) / 2.0, float(lo[1] + hi[1]) / 2.0, size * (1.0 + 2.0 * margin))


def fit_inside(box: Box, width: int, height: int, *, min_side: float, max_shift: float = 0.12) -> Box:
    """Move (by up to ``max_shift`` of the side per axis) and shrink (down to ``min_side``) ``box``
    so it stays inside a ``width x height`` image where it can.

    For avatar photos: a crop hanging over the photo's edge is filled with smeared border pixels,
    which then get animated; a slightly off-centre or tighter face is the lesser evil. What still
    overhangs after both limits stays (the crop replicates the border there).
    """
    side = min(box.side, max(float(min(width, height)), min_side))

    def place(c: float, length: int) -> float:
        lo, hi = side / 2.0, length - side / 2.0
        target = min(max(c, lo), hi) if lo <= hi else length / 2.0
        limit = max_shift * side
        return c + min(max(target - c, -limit), limit)

    return Box(place(box.cx, width), place(box.cy, height), side)


class DriverCrop:
    """Turns per-frame landmarks into a steady square crop box of the driving frame.

    ``update(result, frame_size, t)`` returns the box for this frame (``t`` in seconds, e.g.
    ``Frame.t_capture``): the face box (:func:`face_box` with ``margin``) through a One Euro filter
    (``min_cutoff`` Hz, ``beta`` per crop-size/second: a crop that wobbles with every landmark
    tremor is far more visible than a slightly late one, so it is smoothed harder than the
    landmarks). When the face is lost the last box is held for ``hold_s`` seconds, then eased
    (smoothstep) over ``ease_s`` seconds to the centred square. ``zoom`` (> 1 = tighter) and
    ``offset`` (fractions of the crop side, +x right, +y down) apply on top, immediately, so
    hotkeys feel direct.
    """

    def __init__(
        self,
        *,
        margin: float = DEFAULT_MARGIN,
        zoom: float = 1.0,
        offset: tuple[float, float] = (0.0, 0.0),
        hold_s: float = 1.0,
        ease_s: float = 1.0,
        min_cutoff: float = 0.3,
        beta: float = 1.5,
        d_cutoff: float = 1.0,
    ) -> None:
        if not 0.0 <= margin <= 3.0:
            raise ValueError(f"margin must be in [0, 3] face sizes, got {margin}")
        if hold_s < 0 or ease_s < 0:
            raise ValueError(f"hold_s and ease_s must be >= 0, got {hold_s}, {ease_s}")
        self.margin = float(margin)
        self.hold_s = float(hold_s)
        self.ease_s = float(ease_s)
        self.zoom = zoom
        self.offset = offset
        self._filter = OneEuro(min_cutoff=min_cutoff, beta=beta, d_cutoff=d_cutoff, norm_axis=None)
        self._frame_size: tuple[int, int] | None = None
        self._box: np.ndarray | None = None  # last tracked (cx, cy, side) before zoom / offset
        self._lost_at: float | None = None
        self._lost_box: np.ndarray | None = None

    @property
    def zoom(self) -> float:
        return self._zoom

    @zoom.setter
    def zoom(self, value: float) -> None:
        if not 0.2 <= value <= 10.0:
            raise ValueError(f"zoom must be in [0.2, 10], got {value}")
        self._zoom = float(value)

    @property
    def offset(self) -> tuple[float, float]:
        return self._offset

    @offset.setter
    def offset(self, value: tuple[float, float]) -> None:
        dx, dy = (float(v) for v in value)
        if abs(dx) > 1.0 or abs(dy) > 1.0:
            raise ValueError(f"offset must be within [-1, 1] crop sides per axis, got {value}")
        self._offset = (dx, dy)

    @property
    def tracking(self) -> bool:
        """True while the last update saw a face."""
        return self._box is not None and self._lost_at is None

    def reset(self) -> None:
        """Forget the face: the next update starts from scratch."""
        self._filter.reset()
        self._frame_size = None
        self._box = None
        self._lost_at = None
        self._lost_box = None

    def update(self, result: LandmarkResult, frame_size: tuple[int, int], t: float) -> Box:
        """The crop box for this frame. ``frame_size``: (width, height) in pixels; ``t``: seconds."""
        if frame_size != self._frame_size:
            self.reset()
            self._frame_size = frame_size
        w, h = frame_size
        centred = Box.centered(w, h)
        home = np.array([centred.cx, centred.cy, centred.side])
        face = result.face
        if face is not None:
            raw = face_box(face.points, self.margin)
            target = np.array([raw.cx, raw.cy, raw.side])
            if self._box is None:
                self._filter.reset()  # first sight: start on the face
            elif self._lost_at is not None:
                # Re-acquired: start from where the crop is now so it glides there, not jumps.
                self._filter.reset(self._current_lost(t, home), t)
                self._lost_at = None
            self._box = self._filter(target, t, float(target[2]))
            box = self._box
        elif self._box is None:
            box = home
        else:
            if self._lost_at is None:
                self._lost_at = t
                self._lost_box = self._box
            box = self._current_lost(t, home)
        return self._apply_controls(box)

    def _current_lost(self, t: float, home: np.ndarray) -> np.ndarray:
        """Box while the face is lost: hold, then ease toward ``home``."""
        if self._lost_at is None:
            return self._box
        elapsed = t - self._lost_at - self.hold_s
        if elapsed <= 0:
            return self._lost_box
        k = 1.0 if self.ease_s == 0 else float(smoothstep(elapsed / self.ease_s))
        return self._lost_box + (home - self._lost_box) * k

    def _apply_controls(self, box: np.ndarray) -> Box:
        side = float(box[2]) / self._zoom
        return Box(float(box[0]) + self._offset[0] * side, float(box[1]) + self._offset[1] * side, side)
