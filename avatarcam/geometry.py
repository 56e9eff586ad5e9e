"""Square crop boxes shared by the driver crop, the avatar crop and paste-back."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned square in image pixels: centre (cx, cy) and side length.

    It may extend past the image; crops pad by replicating the border.
    """

    cx: float
    cy: float
    side: float

    @classmethod
    def centered(cls, width: int, height: int, zoom: float = 1.0) -> "Box":
        """The largest centred square of a ``width x height`` image, shrunk by ``zoom`` (>= 1 zooms in)."""
        return cls(width / 2.0, height / 2.0, min(width, height) / max(zoom, 1e-6))

    @property
    def x0(self) -> float:
        return self.cx - self.side / 2.0

    @property
    def y0(self) -> float:
        return self.cy - self.side / 2.0

    def scaled(self, factor: float) -> "Box":
        return Box(self.cx, self.cy, self.side * factor)

    def shifted(self, dx: float, dy: float) -> "Box":
        return Box(self.cx + dx, self.cy + dy, self.side)

    def to_crop_matrix(self, size: int) -> np.ndarray:
        """2 x 3 affine matrix mapping image pixels into a ``size x size`` crop."""
        s = size / self.side
        return np.array([[s, 0.0, -self.x0 * s], [0.0, s, -self.y0 * s]], dtype=np.float64)


def smoothstep(x):
    """``x`` (a float or an array) clipped to [0, 1] and eased: 3 x^2 - 2 x^3, flat at both ends,
    so a ramp built from it shows no seam where it starts or stops."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def crop_square(image: np.ndarray, box: Box, size: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """Cut ``box`` out of ``image`` and resize it to ``size x size`` (border replicated outside)."""
    m = box.to_crop_matrix(size)
    if box.side > size and interpolation == cv2.INTER_AREA:
        # warpAffine has no area filter: pre-shrink so downscaling does not alias.
        factor = size / box.side
        small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        m = Box(box.cx * factor, box.cy * factor, box.side * factor).to_crop_matrix(size)
        image = small
        interpolation = cv2.INTER_LINEAR
    elif interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (size, size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


PADS = ("blur", "black")


def blurred_backdrop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to cover ``width x height``, heavily blurred and dimmed: the fill for
    letterbox bars, as phones show a portrait video in a landscape frame. Blurred at 1/16 of the
    size and scaled up, so it costs about a millisecond at 1280 x 720."""
    sw, sh = max(1, width // 16), max(1, height // 16)
    h, w = image.shape[:2]
    scale = max(sw / w, sh / h)
    # Halve with a proper low-pass first (pyrDown is cheap; INTER_AREA on the full image is not),
    # so the moving face does not make the fill shimmer.
    while scale < 0.25 and min(image.shape[:2]) >= 4:
        image = cv2.pyrDown(image)
        scale *= 2.0
    h, w = image.shape[:2]
    nw, nh = max(sw, round(w * scale)), max(sh, round(h * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    x0, y0 = (nw - sw) // 2, (nh - sh) // 2
    small = cv2.GaussianBlur(small[y0 : y0 + sh, x0 : x0 + sw], (0, 0), max(sw, sh) / 24.0)
    small = cv2.convertScaleAbs(small, alpha=0.55)  # dimmed so the picture itself stands out
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def fit_scale(w: int, h: int, width: int, height: int, mode: str = "letterbox") -> float:
    """The factor :func:`fit_into` resizes a ``w x h`` image by to place it in ``width x height``:
    ``letterbox`` the smaller of the two side ratios, ``crop`` the larger (``stretch`` resizes each
    axis by its own ratio; this gives the larger)."""
    sx, sy = width / max(w, 1), height / max(h, 1)
    return min(sx, sy) if mode == "letterbox" else max(sx, sy)


def fit_into(image: np.ndarray, width: int, height: int, mode: str = "letterbox", pad: str = "black") -> np.ndarray:
    """Place ``image`` into a ``width x height`` canvas.

    ``letterbox`` keeps everything and pads the bars (``pad``: ``black``, or ``blur``: a blurred,
    dimmed copy of the image, see :func:`blurred_backdrop`), ``crop`` fills the canvas and cuts the
    overflow, ``stretch`` ignores the aspect ratio.
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if mode == "stretch":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    scale = fit_scale(w, h, width, height, mode)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    if mode == "letterbox":
        if (nw, nh) == (width, height):
            return resized
        if pad == "blur":
            canvas = blurred_backdrop(resized, width, height)
        else:
            canvas = np.zeros((height, width, 3), dtype=np.uint8)
        x0, y0 = (width - nw) // 2, (height - nh) // 2
        canvas[y0 : y0 + nh, x0 : x0 + nw] = resized
        return canvas
    x0, y0 = (nw - width) // 2, (nh - height) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])
