"""Compositing: paste an animated face crop back into its photo, fit into the output canvas."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from avatarcam.geometry import Box, fit_into


@functools.lru_cache(maxsize=16)
def feather_mask(size: int, feather: float = 0.12) -> np.ndarray:
    """``size x size x 1`` float32 mask, 1 inside, falling smoothly to 0 over ``feather * size`` at the edges."""
    ramp = max(1, int(round(size * feather)))
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    edge = np.clip(d / ramp, 0.0, 1.0)
    edge = edge * edge * (3 - 2 * edge)  # smoothstep: no visible seam at the ramp ends
    m = np.minimum(edge[:, None], edge[None, :])
    return m[..., None]


def _region(photo_shape: tuple[int, ...], box: Box) -> tuple[int, int, int, int]:
    h, w = photo_shape[:2]
    x0 = max(0, int(np.floor(box.x0)))
    y0 = max(0, int(np.floor(box.y0)))
    x1 = min(w, int(np.ceil(box.x0 + box.side)))
    y1 = min(h, int(np.ceil(box.y0 + box.side)))
    return x0, y0, x1, y1


def _crop_to_region(box: Box, size: int, x0: int, y0: int) -> np.ndarray:
    """2 x 3 matrix from crop pixels to region pixels (the crop matrix inverted, shifted to the region)."""
    s = box.side / size
    return np.array([[s, 0.0, box.x0 - x0], [0.0, s, box.y0 - y0]], dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _feather_alpha(size: int, box: Box, photo_shape: tuple[int, ...]) -> np.ndarray:
    """The default feathered mask warped into the photo region (fixed per avatar, so computed once)."""
    x0, y0, x1, y1 = _region(photo_shape, box)
    m = _crop_to_region(box, size, x0, y0)
    alpha = cv2.warpAffine(feather_mask(size)[..., 0], m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha.setflags(write=False)
    return alpha


def paste_back(photo: np.ndarray, crop: np.ndarray, box: Box, mask: np.ndarray | None = None) -> np.ndarray:
    """Warp ``crop`` (``S x S x 3`` uint8) back into ``photo`` at ``box`` and blend with ``mask``.

    ``mask`` is ``S x S`` or ``S x S x 1`` float in [0, 1] (default: a feathered square). Only
    the region the box covers is touched, so the cost scales with the face, not the photo.
    """
    size = crop.shape[0]
    x0, y0, x1, y1 = _region(photo.shape, box)
    if x1 <= x0 or y1 <= y0:
        return photo.copy()
    m = _crop_to_region(box, size, x0, y0)
    rw, rh = x1 - x0, y1 - y0
    warped = cv2.warpAffine(crop, m, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if mask is None:
        alpha = _feather_alpha(size, box, photo.shape)
    else:
        alpha = cv2.warpAffine(np.ascontiguousarray(mask.reshape(size, size), dtype=np.float32), m, (rw, rh),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    out = photo.copy()
    region = out[y0:y1, x0:x1]
    # blendLinear computes (a*w1 + b*w2) / (w1 + w2) per pixel in one pass over uint8 data.
    out[y0:y1, x0:x1] = cv2.blendLinear(warped, np.ascontiguousarray(region), alpha, 1.0 - alpha)
    return out


class Compositor:
    """Fits engine output into the output canvas (letterbox / crop / stretch) and mirrors it."""

    def __init__(self, *, width: int | None, height: int | None, fit: str = "letterbox", mirror: bool = False) -> None:
        """``width``/``height`` None keeps the engine's own output size (offline rendering)."""
        self.width, self.height, self.fit, self.mirror = width, height, fit, mirror

    def compose(self, image: np.ndarray) -> np.ndarray:
        out = image if self.width is None or self.height is None else fit_into(image, self.width, self.height, self.fit)
        if self.mirror:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def map_points(self, points: np.ndarray, src_size: tuple[int, int]) -> np.ndarray:
        """Where ``points`` (``N x 2+`` pixels of a ``src_size`` = (w, h) image) land in what
        :meth:`compose` makes of that image: ``N x 2`` float32 output pixels (preview overlays)."""
        w, h = src_size
        xy = np.asarray(points, dtype=np.float32)[:, :2]
        if self.width is None or self.height is None:
            out_w, sx, sy, ox, oy = w, 1.0, 1.0, 0.0, 0.0
        else:
            out_w, out_h = self.width, self.height
            if (w, h) == (out_w, out_h):
                sx = sy = 1.0
                ox = oy = 0.0
            elif self.fit == "stretch":
                sx, sy, ox, oy = out_w / w, out_h / h, 0.0, 0.0
            else:
                # The same arithmetic as geometry.fit_into, so points sit on the pixels they belong to.
                scale = min(out_w / w, out_h / h) if self.fit == "letterbox" else max(out_w / w, out_h / h)
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
                sx, sy = nw / w, nh / h
                if self.fit == "letterbox":
                    ox, oy = float((out_w - nw) // 2), float((out_h - nh) // 2)
                else:
                    ox, oy = -float((nw - out_w) // 2), -float((nh - out_h) // 2)
        # Pixel centres: cv2.resize maps x to (x + 0.5) * s - 0.5.
        out = np.empty_like(xy)
        out[:, 0] = (xy[:, 0] + 0.5) * sx - 0.5 + ox
        out[:, 1] = (xy[:, 1] + 0.5) * sy - 0.5 + oy
        if self.mirror:
            out[:, 0] = (out_w - 1) - out[:, 0]
        return out


def crossfade(old: np.ndarray, new: np.ndarray, t: float) -> np.ndarray:
    """``(1 - t) * old + t * new`` as a new uint8 image (both ``H x W x 3`` uint8, ``t`` in [0, 1])."""
    return cv2.addWeighted(old, 1.0 - t, new, t, 0.0)
