"""The tracker interface and its factory: one ``detect`` verb, backends behind it."""
from __future__ import annotations

import abc
import time

import numpy as np

from avatarcam.landmarks.config import TrackerConfig
from avatarcam.landmarks.smoothing import LandmarkSmoother, face_size
from avatarcam.landmarks.types import FaceLandmarks, LandmarkResult

MODES = ("video", "image")
IMAGE_MODE_MAX_FACES = 5  # photos: look for several faces so "which one?" can be answered

__all__ = ["IMAGE_MODE_MAX_FACES", "LandmarkTracker", "create_tracker", "face_size"]


class LandmarkTracker(abc.ABC):
    """Finds face landmarks in RGB images.

    ``detect(image_rgb, timestamp_ms)`` takes an ``H x W x 3`` uint8 RGB image and returns a
    :class:`LandmarkResult` whose points are in pixels of that image (x, y; z in the x scale).
    In video mode the largest face is smoothed over time with a One Euro filter; pass the frame's
    capture time in ms (``Frame.t_capture * 1000``), or for files the video time, so smoothing
    sees real time steps; without one the wall clock is used.
    """

    def __init__(self, config: TrackerConfig, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.config = config
        self.mode = mode
        self._smoother: LandmarkSmoother | None = None
        if mode == "video" and config.smoothing:
            self._smoother = LandmarkSmoother(min_cutoff=config.min_cutoff, beta=config.beta,
                                              d_cutoff=config.d_cutoff, pose_cutoff=config.pose_min_cutoff,
                                              lips_cutoff=config.lips_min_cutoff)

    @abc.abstractmethod
    def _detect_raw(self, image_rgb: np.ndarray) -> list[FaceLandmarks]:
        """Unsmoothed faces in pixel units."""

    def detect(self, image_rgb: np.ndarray, timestamp_ms: int | None = None) -> LandmarkResult:
        h, w = image_rgb.shape[:2]
        if timestamp_ms is None:
            timestamp_ms = int(time.perf_counter() * 1000.0)
        faces = self._detect_raw(np.ascontiguousarray(image_rgb))
        if not faces:
            self.reset()
            return LandmarkResult.empty((w, h), timestamp_ms)
        if self._smoother is not None:
            # Only the largest face is smoothed: with several faces there is no identity to follow.
            main = max(range(len(faces)), key=lambda i: faces[i].area)
            faces[main] = FaceLandmarks(self._smoother(faces[main].points, timestamp_ms / 1000.0), faces[main].score)
        return LandmarkResult(tuple(faces), (w, h), timestamp_ms)

    def reset(self) -> None:
        """Forget the temporal state (call when the video jumps or restarts)."""
        if self._smoother is not None:
            self._smoother.reset()

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release the backend's resources."""

    def __enter__(self) -> "LandmarkTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_tracker(config: TrackerConfig = TrackerConfig(), *, mode: str = "video") -> LandmarkTracker:
    """A tracker for ``config.backend``.

    ``mode="video"``: temporal tracking and smoothing, for the live loop (one face by default).
    ``mode="image"``: every call is independent (photos), no smoothing, up to
    ``max(config.max_faces, 5)`` faces.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if config.backend == "mediapipe":
        from avatarcam.landmarks.mediapipe_backend import MediaPipeTracker

        return MediaPipeTracker(config, mode)
    from avatarcam.landmarks.fan_backend import FanTracker

    return FanTracker(config, mode)
