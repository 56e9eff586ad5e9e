"""What the avatar photo says about itself, so painted parts (a mouth interior, a shut lid) match it:
its colours at landmarks and how soft it is.

Two softness measures, both in the photo's pixels and both the Gaussian blur that halves a gradient
energy (found in steps of a quarter pixel up to 8):

- :func:`softness` halves the energy of the whole region, so smooth shading counts as well as edges:
  it says how soft a region looks overall (a blurred print at two or more, a sharp photo about one).
- :func:`edge_softness` halves the energy at the region's sharpest edges only. For a step edge already
  blurred by ``s``, a further blur of ``s`` halves its squared slope, so this reads the blur of the
  photo's own edges (the lip line, hairs), which is what a drawn edge next to them has to match.
"""
from __future__ import annotations

import cv2
import numpy as np

SOFTNESS_STEP = 0.25  # pixels
SOFTNESS_MAX = 8.0
EDGE_SHARE = 2.0  # edge_softness reads the strongest EDGE_SHARE % of the region's gradients


def sample_colours(image: np.ndarray, points: np.ndarray, radius: int = 2) -> np.ndarray:
    """Mean RGB (float32, 3) of small squares around ``points`` (``K x 2+`` pixels) in ``image``."""
    h, w = image.shape[:2]
    xs = np.clip(np.round(points[:, 0]).astype(np.int64), radius, w - 1 - radius)
    ys = np.clip(np.round(points[:, 1]).astype(np.int64), radius, h - 1 - radius)
    offs = np.arange(-radius, radius + 1)
    yy = ys[:, None, None] + offs[None, :, None]
    xx = xs[:, None, None] + offs[None, None, :]
    return image[yy, xx].reshape(-1, 3).astype(np.float32).mean(axis=0)


def _gradient_energy(grey: np.ndarray) -> np.ndarray:
    return cv2.Sobel(grey, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(grey, cv2.CV_32F, 0, 1) ** 2


def _halving_blur(grey: np.ndarray, where: np.ndarray | None) -> float:
    """The blur (in SOFTNESS_STEP steps up to SOFTNESS_MAX) that halves the mean gradient energy
    of ``grey``, over the pixels ``where`` (a boolean mask) or over all of them."""

    def energy(img: np.ndarray) -> float:
        e = _gradient_energy(img)
        return float(e[where].mean() if where is not None else e.mean())

    half = 0.5 * energy(grey)
    sigma = SOFTNESS_STEP
    while sigma < SOFTNESS_MAX and energy(cv2.GaussianBlur(grey, (0, 0), sigma)) > half:
        sigma += SOFTNESS_STEP
    return sigma


def softness(patch: np.ndarray) -> float:
    """How soft ``patch`` (RGB uint8) looks, in its pixels: the blur that halves its gradient energy.
    A sharp photo halves at about a pixel, a blurred print at two or more."""
    return _halving_blur(cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).astype(np.float32), None)


def edge_softness(patch: np.ndarray) -> float:
    """How soft the sharpest edges of ``patch`` (RGB uint8) are, in its pixels: the blur that halves
    the gradient energy at the pixels where it is strongest (the top EDGE_SHARE %). A sharp edge
    reads 1.0 here (the Sobel filter's own width), a blurred one about its blur."""
    grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = _gradient_energy(grey)
    if not energy.any():
        return SOFTNESS_STEP
    return _halving_blur(grey, energy >= np.percentile(energy, 100.0 - EDGE_SHARE))
