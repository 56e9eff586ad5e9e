"""The inside of an opened mouth, which the avatar photo does not show.

Two fills, both blended into the inner-lip polygon with a feathered edge:

- ``synthetic``: a dark cavity shaded toward the back, a row of upper teeth hanging from the upper
  lip (individual teeth around an arch, shadowed toward the corners), a dimmer row of lower teeth,
  and a tongue once the mouth is wide open; colours derive from the avatar's own lips and skin
  (grey for black-and-white photos), and it is drawn as soft as the photo's own edges around the
  mouth, so crisp teeth do not stand out on a blurred print or an up-scaled small photo;
- ``driver``: the driver's own mouth interior, mapped onto the avatar's lips by the affine fit
  between the two inner-lip outlines, and colour-matched to the avatar's skin.
"""
from __future__ import annotations

import cv2
import numpy as np

from avatarcam.engines.mesh import topology as tp
from avatarcam.engines.mesh.measure import edge_softness, sample_colours

# Landmarks on the cheeks and nose, sampled to match the driver's colours to the avatar's.
SKIN_POINTS = np.array([50, 280, 101, 330, 4, 5, 195, 123, 352, 36, 266], dtype=np.int64)
# The lip body: between the outer and inner lip contours (MediaPipe's second and third lip rings).
LIP_POINTS = np.array([0, 37, 39, 40, 185, 267, 269, 270, 409, 17, 84, 181, 91, 146, 314, 405, 321, 375,
                       11, 12, 72, 73, 74, 302, 303, 304, 16, 15, 85, 86, 180, 179, 315, 316, 404, 403],
                      dtype=np.int64)
MOUTH_MARGIN = 0.4  # the photo around the mouth whose softness is read, in mouth widths each way
DRAWN_OPENING = 0.15  # the opening, in mouth widths, at which the drawn interior's softness is read


class MouthPainter:
    """Paints the mouth interior of one avatar.

    ``image``: the avatar image the warp samples (``H x W x 3`` uint8 RGB); ``landmarks``: its
    ``N x 2+`` points in that image's pixels; ``mode``: ``synthetic`` or ``driver``.
    """

    def __init__(self, *, image: np.ndarray, landmarks: np.ndarray, mode: str = "synthetic") -> None:
        if mode not in ("synthetic", "driver"):
            raise ValueError(f"mouth fill must be 'synthetic' or 'driver', got {mode!r}")
        self.mode = mode
        lips = sample_colours(image, landmarks[LIP_POINTS])
        skin = sample_colours(image, landmarks[SKIN_POINTS])
        self.skin = skin
        grey = float(np.abs(skin - skin.mean()).max() + np.abs(lips - lips.mean()).max()) < 6.0
        self.grey = grey
        brightness = float(np.clip(skin.mean() / 150.0, 0.55, 1.25))
        cavity = lips * 0.22 + np.array([6.0, 2.0, 2.0])
        deep = lips * 0.08
        teeth = np.array([232.0, 226.0, 212.0]) * min(1.0, 0.78 * brightness + 0.2)
        tongue = lips * 0.78 + np.array([18.0, -8.0, -6.0])
        if grey:
            cavity, deep, teeth, tongue = (np.full(3, c.mean()) for c in (cavity, deep, teeth, tongue))
        self.cavity, self.deep, self.teeth, self.tongue = (np.clip(c, 0, 255).astype(np.float32)
                                                           for c in (cavity, deep, teeth, tongue))
        self.blur = 0.0
        self.blur = self._blur_to_match(image, landmarks)

    def paint(self, out: np.ndarray, points: np.ndarray, strength: float,
              driver: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Blend the interior into ``out`` (in place) inside the inner-lip polygon of ``points``
        (``N x 2+`` target landmarks in ``out`` pixels) with opacity ``strength`` (0..1).
        ``driver``: (driver frame RGB, its landmarks ``N x 2+``) for the ``driver`` fill."""
        poly = points[tp.MOUTH_POLYGON, :2].astype(np.float64)
        h, w = out.shape[:2]
        reach = 3 + int(np.ceil(2.5 * self.blur))
        lo = np.floor(poly.min(axis=0)).astype(int) - reach
        hi = np.ceil(poly.max(axis=0)).astype(int) + reach + 1
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], w), min(hi[1], h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        rw, rh = x1 - x0, y1 - y0
        mask = np.zeros((rh, rw), np.float32)
        local = poly - (x0, y0)
        cv2.fillPoly(mask, [np.round(local * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        width = float(np.linalg.norm(poly[0] - poly[len(tp.LIP_INNER_UPPER) - 1]))
        sigma = float(np.hypot(max(0.5, 0.012 * width), self.blur))
        mask = cv2.GaussianBlur(mask, (0, 0), sigma) * strength
        if driver is not None and self.mode == "driver":
            fill = self._driver_fill(driver, local, (rw, rh))  # a photo already, as soft as the driver's
        else:
            fill = self._synthetic(points, (x0, y0), (rw, rh), width)
            if self.blur > 0.0:
                fill = cv2.GaussianBlur(fill, (0, 0), self.blur)
        roi = out[y0:y1, x0:x1].astype(np.float32)
        a = mask[..., None]
        out[y0:y1, x0:x1] = np.clip(roi + a * (fill - roi) + 0.5, 0, 255).astype(np.uint8)

    def _blur_to_match(self, image: np.ndarray, landmarks: np.ndarray) -> float:
        """The blur (pixels) that makes the drawn interior as soft as ``image``'s edges around the
        mouth (``landmarks`` in its pixels). Both are read with ``measure.edge_softness``, the interior
        drawn unblurred on grey with the mouth opened by DRAWN_OPENING; Gaussian blurs add in squares,
        so the blur is the root of the difference of the two squares, 0 where the photo is as sharp."""
        lips = landmarks[list(tp.MOUTH_POLYGON) + list(LIP_POINTS), :2]
        lo, hi = lips.min(axis=0), lips.max(axis=0)
        length = float(hi[0] - lo[0])
        pad = MOUTH_MARGIN * length
        h, w = image.shape[:2]
        x0, y0 = (max(int(np.floor(v - pad)), 0) for v in lo)
        x1, y1 = min(int(np.ceil(hi[0] + pad)) + 1, w), min(int(np.ceil(hi[1] + pad)) + 1, h)
        if x1 - x0 < 8 or y1 - y0 < 8 or length < 4.0:
            return 0.0
        photo = edge_softness(np.ascontiguousarray(image[y0:y1, x0:x1]))
        # The same region with the mouth drawn open on grey (the lower inner lip moved down the
        # mouth's normal; the corners stay).
        points = landmarks[:, :2].astype(np.float64) - (x0, y0)
        corners = points[[tp.LIP_INNER_UPPER[0], tp.LIP_INNER_UPPER[-1]]]
        axis = (corners[1] - corners[0]) / max(float(np.linalg.norm(corners[1] - corners[0])), 1e-9)
        down = np.array([-axis[1], axis[0]])
        points[list(tp.LIP_INNER_LOWER[1:-1])] += DRAWN_OPENING * length * down
        canvas = np.full((y1 - y0, x1 - x0, 3), 128, np.uint8)
        self.paint(canvas, points, 1.0)
        drawn = edge_softness(canvas)
        return float(np.sqrt(max(photo * photo - drawn * drawn, 0.0)))

    def _synthetic(self, points: np.ndarray, origin: tuple[int, int], size: tuple[int, int],
                   width: float) -> np.ndarray:
        """Procedural interior in the mouth's own frame (u along the corners, v across), so a
        tilted head tilts the teeth with it."""
        rw, rh = size
        up = points[list(tp.LIP_INNER_UPPER), :2] - origin
        low = points[list(tp.LIP_INNER_LOWER), :2] - origin
        c0 = up[0]
        span = up[-1] - c0
        length = max(float(np.linalg.norm(span)), 1.0)
        axis = span / length
        normal = np.array([-axis[1], axis[0]])  # points down for an upright mouth
        xs = np.arange(rw, dtype=np.float32)[None, :] - c0[0]
        ys = np.arange(rh, dtype=np.float32)[:, None] - c0[1]
        u = xs * axis[0] + ys * axis[1]
        v = xs * normal[0] + ys * normal[1]
        uu, uv = (up - c0) @ axis, (up - c0) @ normal
        lu, lv = (low - c0) @ axis, (low - c0) @ normal
        iu, il = np.argsort(uu), np.argsort(lu)
        vu = np.interp(u, uu[iu], uv[iu])  # upper inner lip at this u
        vl = np.interp(u, lu[il], lv[il])  # lower inner lip
        gap = np.maximum(vl - vu, 1e-3)
        t = (v - vu) / gap  # 0 at the upper lip, 1 at the lower lip
        s = np.clip(u / length, 0.0, 1.0)
        side = np.abs(2.0 * s - 1.0)  # 0 in the middle, 1 at the corners
        # Dark cavity, darkest in the middle and toward the back.
        depth = np.clip(1.0 - np.abs(t - 0.5) * 2.0, 0.0, 1.0) * (1.0 - side ** 2)
        fill = self.cavity + (self.deep - self.cavity) * depth[..., None]
        # Upper teeth hang from the upper lip: individual teeth around an arch (narrower toward the
        # corners), rounded lower edges, darker gaps between them and shadow toward the corners.
        theta = np.arcsin(np.clip(2.0 * s - 1.0, -1.0, 1.0))
        phase = theta / 0.32
        frac = phase - np.floor(phase)
        teeth_h = np.minimum(0.11 * length, 0.5 * gap) * (1.0 - 0.45 * side ** 2)
        edge = teeth_h * (1.0 - 0.3 * (2.0 * frac - 1.0) ** 2)
        below = v - vu
        tooth = np.clip((edge - below) / 0.8 + 0.5, 0.0, 1.0) * (side < 0.9)
        light = (1.0 - 0.6 * side ** 1.5) * (1.0 - 0.18 * np.clip(below / np.maximum(teeth_h, 1.0), 0.0, 1.0))
        light = light * (1.0 - 0.35 * np.exp(-((np.minimum(frac, 1.0 - frac)) / 0.07) ** 2))
        fill = fill + (self.teeth * light[..., None] - fill) * tooth[..., None]
        # Lower teeth: a lower, dimmer row just above the lower lip, in the middle of the mouth.
        low_h = np.minimum(0.06 * length, 0.22 * gap) * np.clip(1.0 - side / 0.6, 0.0, 1.0)
        above = vl - v
        lower_tooth = np.clip((low_h - above) / 0.8 + 0.5, 0.0, 1.0) * (low_h > 0.5) * (above > -0.5)
        fill = fill + (self.teeth * 0.72 * light[..., None] - fill) * lower_tooth[..., None]
        # Tongue: a rounded hump rising from the back of the lower teeth when the mouth is wide open.
        open_ratio = np.clip((gap - 0.15 * length) / (0.3 * length), 0.0, 1.0)
        hump = np.clip((t - (1.0 - 0.45 * open_ratio)) / 0.15, 0.0, 1.0) * (1.0 - side ** 2) * open_ratio
        hump = hump * (1.0 - lower_tooth)
        fill = fill + (self.tongue - fill) * hump[..., None] * 0.85
        return fill

    def _driver_fill(self, driver: tuple[np.ndarray, np.ndarray], local: np.ndarray,
                     size: tuple[int, int]) -> np.ndarray:
        """The driver's mouth interior warped onto ``local`` (the avatar's inner-lip polygon in ROI
        pixels), colour-matched by the avatar / driver skin ratio per channel."""
        frame, dpts = driver
        src = dpts[tp.MOUTH_POLYGON, :2].astype(np.float64)
        # Affine from the driver's inner lips to the avatar's (least squares, 3 x 2).
        a = np.hstack([src, np.ones((len(src), 1))])
        m, *_ = np.linalg.lstsq(a, local, rcond=None)
        fill = cv2.warpAffine(frame, m.T.astype(np.float64), size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        gain = np.clip(self.skin / np.maximum(sample_colours(frame, dpts[SKIN_POINTS]), 1.0), 0.4, 2.5)
        fill = fill * gain
        if self.grey:
            fill = np.repeat(fill.mean(axis=2, keepdims=True), 3, axis=2)
        return fill
