"""Helpers for the live-control tests: a LiveSession running on a thread with a video as the
camera and an in-memory sink, flat-colour avatars, and engines that record what they were asked."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.compositing import Compositor
from avatarcam.config import AppConfig, CaptureConfig, CropConfig, EngineConfig, OutputConfig, SinkConfig
from avatarcam.control_api import ApiConfig
from avatarcam.controls import ControlsConfig
from avatarcam.engines.base import Engine
from avatarcam.engines.passthrough import PassthroughEngine
from avatarcam.frame import OutputFrame
from avatarcam.live import LiveSession
from avatarcam.sinks.memory import MemorySink

OUT_W, OUT_H, FPS = 160, 90, 20.0


def flat_avatar(name: str, rgb: tuple[int, int, int], size: int = 64) -> Avatar:
    image = np.empty((size, size, 3), np.uint8)
    image[:] = rgb
    image.setflags(write=False)
    return Avatar(name=name, image=image, content_hash=f"flat{name}")


@dataclass(frozen=True)
class SpyOptions:
    find_best_frame: bool = False


class SpyPassthrough(PassthroughEngine):
    """The passthrough engine plus a recorded calibration ("neutral" = the calibration frame's
    index) and a best-frame option, so calibrate / best-frame / persistence have effects to see."""

    name = "passthrough"

    def __init__(self, *, size: int = 96) -> None:
        super().__init__(size=size)
        self.options = SpyOptions()
        self.calibrate_calls = 0
        self.prepared: list[str] = []
        self.restored: list[dict | None] = []
        self._calibration: dict[str, np.ndarray] | None = None
        self._want_calibration = False
        self.threads: set[str] = set()

    def prepare(self, avatar):
        self.prepared.append(avatar.name)
        return None

    def animate(self, prepared, drive):
        self.threads.add(threading.current_thread().name)
        if self._want_calibration:
            self._want_calibration = False
            self._calibration = {"neutral": np.array([drive.frame.index], np.int64),
                                 "best": np.array([self.options.find_best_frame])}
        return super().animate(prepared, drive)

    def calibrate(self):
        self.threads.add(threading.current_thread().name)
        self.calibrate_calls += 1
        self._want_calibration = True

    def get_calibration(self):
        return self._calibration

    def set_calibration(self, state):
        self.restored.append(state)
        self._calibration = state


class FlatEngine(Engine):
    """Returns the avatar photo itself (``output = "photo"``), so every output frame is exactly the
    avatar's colour; ``prepare_s`` simulates a slow first preparation; names in ``broken`` fail."""

    name = "flat"
    output = "photo"

    def __init__(self, *, prepare_s: float = 0.0, animate_s: float = 0.0, broken: Sequence[str] = ()) -> None:
        self.prepare_s, self.animate_s, self.broken = prepare_s, animate_s, set(broken)
        self.prepare_threads: set[str] = set()

    def prepare(self, avatar):
        self.prepare_threads.add(threading.current_thread().name)
        time.sleep(self.prepare_s)
        if avatar.name in self.broken:
            raise RuntimeError(f"{avatar.name} is broken")
        return avatar.image

    def animate(self, prepared, drive):
        if self.animate_s:
            time.sleep(self.animate_s)
        return prepared


def live_config(video: Path, *, follow: bool = True, engine: str = "passthrough", size: int = 96,
                mirror: bool = False) -> AppConfig:
    return AppConfig(
        capture=CaptureConfig(source=str(video), loop=True),
        engine=EngineConfig(name=engine, size=size),
        output=OutputConfig(width=OUT_W, height=OUT_H, fps=FPS, mirror=mirror, fit="letterbox", pad="black"),
        sinks=SinkConfig(kinds=("null",)),
        crop=CropConfig(follow=follow),
    )


class Live:
    """A LiveSession running on a background thread."""

    def __init__(self, session: LiveSession, sink: MemorySink) -> None:
        self.session, self.sink = session, sink
        self.controller = session.controller
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-live", daemon=True)

    def _run(self) -> None:
        try:
            self.session.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def frames_after(self, mark: int, n: int = 3, timeout: float = 10.0,
                     fresh: bool = True) -> list[OutputFrame]:
        """Wait for ``n`` frames sent after sink count ``mark`` (fresh ones only when asked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.since(mark)
            if fresh:
                got = [f for f in got if not f.repeated]
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError(f"fewer than {n} {'fresh ' if fresh else ''}frames within {timeout} s "
                             f"(loop error: {self.error!r})")

    def since(self, mark: int) -> list[OutputFrame]:
        frames = list(self.sink.frames)
        skip = mark - (self.sink.count - len(frames))
        return frames[max(0, skip):]

    def settle(self, n: int = 2) -> list[OutputFrame]:
        """Frames rendered after everything asked so far has reached the processing thread."""
        mark = self.sink.count
        time.sleep(0.01)
        return self.frames_after(mark, n)


@contextlib.contextmanager
def running(config: AppConfig, *, engine: Engine | None = None, avatars: Sequence[Avatar] | None = None,
            controls: ControlsConfig | None = None, api: ApiConfig | None = None,
            keep: int = 400) -> Iterator[Live]:
    sink = MemorySink(maxlen=keep)
    factory: Callable | None = (lambda opts: engine) if engine is not None else None
    session = LiveSession(config=config, engine_factory=factory, sinks=[sink], avatars=avatars,
                          controls=controls or ControlsConfig(persist=False), api=api)
    live = Live(session, sink)
    try:
        live.thread.start()
        live.frames_after(0, 1, timeout=20.0)
        yield live
    finally:
        session.pipeline.stop()
        live.thread.join(20.0)
        session.close()
    if live.error is not None:
        raise live.error


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class VideoFrames:
    """Random access to the driving video's frames (RGB), for reference renders."""

    def __init__(self, path: Path) -> None:
        cap = cv2.VideoCapture(str(path))
        self.frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            self.frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()

    def __getitem__(self, index: int) -> np.ndarray:
        return self.frames[index % len(self.frames)]


def reference_compose(image: np.ndarray, *, mirror: bool = False) -> np.ndarray:
    return Compositor(width=OUT_W, height=OUT_H, fit="letterbox", pad="black", mirror=mirror).compose(image)


def replace(config, **changes):
    return dataclasses.replace(config, **changes)
