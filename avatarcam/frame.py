"""Frames that carry time.

Every image travelling through the pipeline is RGB, ``H x W x 3`` ``uint8``, C-contiguous.
Sources convert from OpenCV's BGR once, sinks convert back where they need to.
A frame knows its capture index and its capture time (``time.perf_counter()``), so
latency is measured glass to glass from these two numbers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image. ``image``: ``H x W x 3`` uint8 RGB."""

    image: np.ndarray
    index: int
    t_capture: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


@dataclass(frozen=True, eq=False)
class PreviewLayers:
    """What the preview window draws on top of an output frame, and nothing else does.

    ``ghost``: ``H x W x 3`` uint8 RGB at the output size (the avatar, for aligning the face),
    blended at ``ghost_alpha`` in [0, 1]. ``points``: ``(N x 2 float32 output pixels, (r, g, b))``
    pairs (landmarks). ``mirror``: flip the preview horizontally. ``panel``: text lines shown in a
    box in the middle (the hotkey help).
    """

    ghost: np.ndarray | None = None
    ghost_alpha: float = 0.4
    points: tuple[tuple[np.ndarray, tuple[int, int, int]], ...] = ()
    mirror: bool = False
    panel: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputFrame:
    """A composed output image plus what produced it.

    ``image`` is ``H x W x 3`` uint8 RGB at the output size. ``source_index`` and
    ``t_capture`` are those of the driving frame it was rendered from (-1 / 0.0 for
    placeholders), ``overlay`` holds text lines that only the preview draws, ``preview``
    the preview-only layers (landmarks, avatar ghost, mirroring, help).
    """

    image: np.ndarray
    source_index: int
    t_capture: float
    overlay: tuple[str, ...] = ()
    repeated: bool = False
    preview: PreviewLayers | None = None


def check_rgb_image(image: object, what: str = "image") -> np.ndarray:
    """Validate an RGB uint8 image at a public boundary and return it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{what} must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must have shape H x W x 3, got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} has zero size: {tuple(image.shape)}")
    return np.ascontiguousarray(image)
