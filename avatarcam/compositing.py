"""Compositing: paste an animated face crop back into its photo, fit into the output canvas."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from avatarcam.geometry import PADS, Box, fit_into, fit_scale, smoothstep


@functools.lru_cache(maxsize=16)
def feather_mask(size: int, feather: float = 0.12) -> np.ndarray:
    """``size x size x 1`` float32 mask, 1 inside, falling smoothly to 0 over ``feather * size`` at the edges."""
    ramp = max(1, int(round(size * feather)))
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    edge = smoothstep(d / ramp)  # no visible seam at the ramp ends
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
    """Fits engine output into the output canvas and mirrors it.

    ``fit``: ``face`` (default) frames the avatar photo around its face at the output's aspect ratio,
    so a tall portrait still fills a 16:9 call with the face large; ``letterbox`` keeps everything and
    pads; ``crop`` fills the canvas and cuts the overflow; ``stretch`` ignores the aspect ratio. ``face``
    needs the face box (``focus``); without one (a square face crop, the real camera) it letterboxes.
    ``pad``: what fills letterbox bars, ``blur`` (a blurred, dimmed copy of the picture; default)
    or ``black``.
    """

    #: in ``face`` framing, the face box's side as a share of the window height
    FACE_SHARE = 0.42

    def __init__(self, *, width: int | None, height: int | None, fit: str = "face", mirror: bool = False,
                 pad: str = "blur") -> None:
        """``width``/``height`` None keeps the engine's own output size (offline rendering)."""
        if pad not in PADS:
            raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
        self.width, self.height, self.fit, self.mirror, self.pad = width, height, fit, mirror, pad

    @property
    def resize_mode(self) -> str:
        """How the (framed) picture is resized into the canvas: ``face`` framing letterboxes its window."""
        return "letterbox" if self.fit == "face" else self.fit

    def window(self, size: tuple[int, int], focus: Box | None) -> tuple[int, int, int, int] | None:
        """The part (x0, y0, x1, y1) of a ``size`` = (w, h) image that ``face`` framing shows, or None."""
        if self.fit != "face" or focus is None or self.width is None or self.height is None:
            return None
        w, h = size
        aspect = self.width / self.height
        wh = min(focus.side / self.FACE_SHARE, h)
        ww = wh * aspect
        if ww > w:
            # Too narrow a photo for the canvas: fill the width if the whole face box still fits,
            # otherwise keep the face whole and let letterboxing pad the sides.
            ww = w
            if ww / aspect >= min(h, focus.side * 1.1):
                wh = ww / aspect
        x0 = min(max(focus.cx - ww / 2.0, 0.0), w - ww)
        y0 = min(max(focus.cy - wh * 0.45, 0.0), h - wh)  # face a little above the middle, like a webcam
        x0, y0 = int(round(x0)), int(round(y0))
        return x0, y0, min(w, x0 + int(round(ww))), min(h, y0 + int(round(wh)))

    def photo_scale(self, size: tuple[int, int], focus: Box | None = None) -> float:
        """How much :meth:`compose` resizes a ``size`` = (w, h) photo framed on ``focus``: below 1 it
        shrinks it, so pixels beyond that are never seen (1.0 without a canvas size)."""
        if self.width is None or self.height is None:
            return 1.0
        win = self.window(size, focus)
        w, h = (win[2] - win[0], win[3] - win[1]) if win is not None else size
        return fit_scale(w, h, self.width, self.height, self.resize_mode)

    def compose(self, image: np.ndarray, focus: Box | None = None) -> np.ndarray:
        win = self.window((image.shape[1], image.shape[0]), focus)
        if win is not None:
            x0, y0, x1, y1 = win
            image = image[y0:y1, x0:x1]
        out = (image if self.width is None or self.height is None
               else fit_into(image, self.width, self.height, self.resize_mode, self.pad))
        if self.mirror:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def map_points(self, points: np.ndarray, src_size: tuple[int, int], focus: Box | None = None) -> np.ndarray:
        """Where ``points`` (``N x 2+`` pixels of a ``src_size`` = (w, h) image) land in what
        :meth:`compose` makes of that image: ``N x 2`` float32 output pixels (preview overlays)."""
        w, h = src_size
        xy = np.asarray(points, dtype=np.float32)[:, :2]
        win = self.window(src_size, focus)
        if win is not None:
            xy = xy - np.array([win[0], win[1]], np.float32)
            w, h = win[2] - win[0], win[3] - win[1]
        fit = self.resize_mode
        if self.width is None or self.height is None:
            out_w, sx, sy, ox, oy = w, 1.0, 1.0, 0.0, 0.0
        else:
            out_w, out_h = self.width, self.height
            if (w, h) == (out_w, out_h):
                sx = sy = 1.0
                ox = oy = 0.0
            elif fit == "stretch":
                sx, sy, ox, oy = out_w / w, out_h / h, 0.0, 0.0
            else:
                # The same arithmetic as geometry.fit_into, so points sit on the pixels they belong to.
                scale = fit_scale(w, h, out_w, out_h, fit)
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
                sx, sy = nw / w, nh / h
                if fit == "letterbox":
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
