"""Closed eyes: the eyelid drawn down over the eye.

The warp alone closes an eye by folding the opening into a line, which leaves the crease shadow
and the lashes of the open eye stretched into a dark band that still reads as a slit. A real
closing lid unfolds skin from the crease. So, as an eye closes (from 15 % closure on, fully from
70 %), the lid region in target positions is blended toward the avatar's lid skin tone (sampled
under the eye and under the brow) mixed with the local tone of the warped image, blurred so the
stretched lashes and the squeezed iris leave no streaks: fading in from under the brow to the
crease (no outline of its own) and full from the crease to the lid edge; a thin lash line is drawn
along the lid edge.
"""
from __future__ import annotations

import cv2
import numpy as np

from avatarcam.engines.mesh import topology as tp
from avatarcam.engines.mesh.mouth import sample_colours

# The ring of points just above each upper lid (the crease), from the outer to the inner corner.
CREASE_RIGHT = (247, 30, 29, 27, 28, 56, 190)
CREASE_LEFT = (467, 260, 259, 257, 258, 286, 414)
# Skin under each eye: the closest stand-in for lid skin that is never hidden by brows or lashes.
UNDER_RIGHT = np.array([111, 117, 118, 119, 120, 121, 228, 229, 230, 231], dtype=np.int64)
UNDER_LEFT = np.array([340, 346, 347, 348, 349, 350, 448, 449, 450, 451], dtype=np.int64)

# The ring above the crease (below the brow).
ABOVE_RIGHT = (113, 225, 224, 223, 222, 221, 189)
ABOVE_LEFT = (342, 445, 444, 443, 442, 441, 413)

LID_KEEP = 0.2  # share of the warped image's local tone in the lid skin
LID_BLUR = 0.06  # its blur, in eye widths

_EYES = (
    (tp.EYE_RIGHT_UPPER, CREASE_RIGHT, UNDER_RIGHT, ABOVE_RIGHT),
    (tp.EYE_LEFT_UPPER, CREASE_LEFT, UNDER_LEFT, ABOVE_LEFT),
)  # (lid edge, crease, skin under the eye, ring under the brow)


def _between(top: np.ndarray, bottom: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel of a ``shape`` region, 0 on the polyline ``top`` rising smoothly to 1 on the
    polyline ``bottom`` (both ``K x 2``, left to right along the same axis), in that axis' frame."""
    axis = bottom[-1] - bottom[0]
    axis = axis / max(float(np.linalg.norm(axis)), 1e-6)
    if axis[0] < 0:  # the normal must point down the face whichever eye this is
        axis = -axis
    normal = np.array([-axis[1], axis[0]])
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    u = xs * axis[0] + ys * axis[1]
    v = xs * normal[0] + ys * normal[1]
    tu, tv = top @ axis, top @ normal
    bu, bv = bottom @ axis, bottom @ normal
    it, ib = np.argsort(tu), np.argsort(bu)
    vt = np.interp(u, tu[it], tv[it])
    vb = np.interp(u, bu[ib], bv[ib])
    t = np.clip((v - vt) / np.maximum(vb - vt, 1e-3), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class EyelidPainter:
    """Lid tones of one avatar (``image`` RGB uint8, ``landmarks`` ``N x 2+`` in its pixels)."""

    def __init__(self, *, image: np.ndarray, landmarks: np.ndarray) -> None:
        self.skin = [0.5 * (sample_colours(image, landmarks[under], radius=2) +
                            sample_colours(image, landmarks[list(ring)], radius=1)) * 0.95
                     for _, _, under, ring in _EYES]

    def paint(self, out: np.ndarray, points: np.ndarray, closure: tuple[float, float]) -> None:
        """Draw the lids over ``out`` (in place) for target landmarks ``points`` (``N x 2+`` in ``out``
        pixels); ``closure`` per eye (right, left): 0 open as in the photo .. 1 shut."""
        h, w = out.shape[:2]
        for (upper, crease, _, above), skin, c in zip(_EYES, self.skin, closure):
            alpha = float(np.clip((c - 0.15) / 0.55, 0.0, 1.0))
            if alpha <= 0.0:
                continue
            alpha = alpha * alpha * (3.0 - 2.0 * alpha)
            lid = np.concatenate([points[[upper[0]], :2], points[list(above), :2], points[[upper[-1]], :2],
                                  points[list(upper[-2:0:-1]), :2]])
            edge = points[list(upper), :2]
            width = float(np.linalg.norm(edge[-1] - edge[0]))
            pad = int(np.ceil(0.1 * width)) + 2
            lo = np.floor(lid.min(axis=0)).astype(int) - pad
            hi = np.ceil(lid.max(axis=0)).astype(int) + pad
            x0, y0 = max(lo[0], 0), max(lo[1], 0)
            x1, y1 = min(hi[0], w), min(hi[1], h)
            if x1 - x0 < 3 or y1 - y0 < 3:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.float32)
            cv2.fillPoly(mask, [np.round((lid - (x0, y0)) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
            mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, 0.03 * width))
            # Fade in from under the brow down to the crease, so the painted skin has no outline of
            # its own (an outline there reads as the upper edge of an open eye); full from the crease
            # to the lid edge, where the warp left the squeezed, shadowed band of the open eye.
            mask *= _between(points[list(above), :2] - (x0, y0), points[list(crease), :2] - (x0, y0), mask.shape)
            lash = np.zeros_like(mask)
            thick = max(1, int(round(0.035 * width)))
            cv2.polylines(lash, [np.round((edge - (x0, y0)) * 16).astype(np.int32)], False, 1.0, thick, cv2.LINE_AA,
                          shift=4)
            lash = cv2.GaussianBlur(lash, (0, 0), 0.6)
            roi = out[y0:y1, x0:x1].astype(np.float32)
            # Lid skin: the avatar's tone with a little of the warped texture's local tone left in,
            # blurred: sharp, that texture is the squeezed eye and the lashes stretched into streaks.
            local = cv2.GaussianBlur(roi, (0, 0), max(1.0, LID_BLUR * width))
            lidded = (1.0 - LID_KEEP) * skin + LID_KEEP * local
            roi = roi + (mask * alpha)[..., None] * (lidded - roi)
            roi = roi + (lash * alpha * 0.75)[..., None] * (skin * 0.3 - roi)
            out[y0:y1, x0:x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
