"""Landmark results shared by every tracker backend (MediaPipe Tasks style: options in, result out)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceLandmarks:
    """One face. ``points``: ``N x 3`` float32; x, y in pixels of the analysed image, z in the same
    pixel scale (relative depth, smaller = nearer). N = 478 for MediaPipe with iris refinement."""

    points: np.ndarray
    score: float = 1.0

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the points."""
        xy = self.points[:, :2]
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True)
class LandmarkResult:
    """All faces in one image. "No face" is ``faces == ()``, never ``None``."""

    faces: tuple[FaceLandmarks, ...]
    image_size: tuple[int, int]  # (width, height)
    timestamp_ms: int = 0

    @property
    def face(self) -> FaceLandmarks | None:
        """The largest face, or None when there is none."""
        if not self.faces:
            return None
        return max(self.faces, key=lambda f: f.area)

    @classmethod
    def empty(cls, image_size: tuple[int, int], timestamp_ms: int = 0) -> "LandmarkResult":
        return cls((), image_size, timestamp_ms)
