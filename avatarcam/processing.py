"""One driving frame through the per-frame stages: landmarks -> driver crop -> engine -> compositing.

Shared by the live loop (on its processing thread) and offline rendering, so both produce the
same pixels for the same input.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.compositing import Compositor
from avatarcam.engines.base import Drive, Engine
from avatarcam.frame import Frame, OutputFrame
from avatarcam.geometry import Box
from avatarcam.landmarks.types import LandmarkResult
from avatarcam.stats import Stats


class Tracker(Protocol):
    def detect(self, image: np.ndarray, timestamp_ms: int | None = None) -> LandmarkResult: ...


class Cropper(Protocol):
    def update(self, result: LandmarkResult, frame_size: tuple[int, int], t: float) -> Box: ...


class FrameProcessor:
    """Runs the per-frame stages for one engine and one current avatar.

    Prepared avatars are cached by content hash, so switching back to an avatar is instant.
    ``tracker`` and ``cropper`` are optional: without them the driver crop is the centred square.
    """

    def __init__(self, *, engine: Engine, compositor: Compositor, tracker: Tracker | None = None,
                 cropper: Cropper | None = None, stats: Stats | None = None) -> None:
        self.engine, self.compositor, self.tracker, self.cropper = engine, compositor, tracker, cropper
        self.stats = stats or Stats()
        self._prepared: dict[str, Any] = {}
        self.avatar: Avatar | None = None
        self._state: Any = None
        self._last_ts = -1
        self.last_landmarks: LandmarkResult | None = None
        self.last_box: Box | None = None

    def prepare(self, avatar: Avatar) -> Any:
        """Engine state for ``avatar``, computed once per content hash."""
        key = f"{self.engine.name}:{avatar.content_hash}"
        if key not in self._prepared:
            t0 = time.perf_counter()
            self._prepared[key] = self.engine.prepare(avatar)
            self.stats.stage("prepare", time.perf_counter() - t0)
        return self._prepared[key]

    def set_avatar(self, avatar: Avatar) -> None:
        state = self.prepare(avatar)
        self.avatar, self._state = avatar, state

    def drive_for(self, frame: Frame) -> Drive:
        """Landmarks and the driver crop box for ``frame``."""
        result = None
        w, h = frame.size
        if self.tracker is not None:
            t0 = time.perf_counter()
            # MediaPipe's video mode needs strictly increasing timestamps.
            ts = max(self._last_ts + 1, int(frame.t_capture * 1000))
            self._last_ts = ts
            result = self.tracker.detect(frame.image, ts)
            self.stats.stage("landmarks", time.perf_counter() - t0)
        if self.cropper is not None and result is not None:
            box = self.cropper.update(result, (w, h), frame.t_capture)
        else:
            box = Box.centered(w, h)
        self.last_landmarks, self.last_box = result, box
        return Drive(frame=frame, box=box, landmarks=result)

    def animate(self, drive: Drive) -> np.ndarray:
        """Engine output (before compositing) for ``drive`` against the current avatar."""
        t0 = time.perf_counter()
        image = self.engine.animate(self._state, drive)
        self.stats.stage("engine", time.perf_counter() - t0)
        return image

    def process(self, frame: Frame) -> OutputFrame:
        if self.avatar is None:
            raise RuntimeError("FrameProcessor.set_avatar must be called before process")
        image = self.animate(self.drive_for(frame))
        t0 = time.perf_counter()
        out = self.compositor.compose(image)
        self.stats.stage("compose", time.perf_counter() - t0)
        self.stats.event("engine")
        return OutputFrame(out, frame.index, frame.t_capture)
