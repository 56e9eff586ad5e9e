"""OpenCV-backed sources: webcams, video files and still images."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from avatarcam.errors import SourceError
from avatarcam.frame import Frame
from avatarcam.sources.base import EndOfStream, Source


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_OTHER_SOURCE = ("pick another with --camera N (see `avatarcam devices`), or drive the avatar from a video "
                 "file with --driving FILE.")


def camera_help() -> str:
    if sys.platform.startswith("linux"):
        nodes = sorted(str(p) for p in Path("/dev").glob("video*"))
        found = f"video devices present: {', '.join(nodes)}" if nodes else "no /dev/video* device exists on this machine"
        return (f"{found}. Check that the camera is plugged in, that your user is in the 'video' group, "
                f"that no other app holds it, or {_OTHER_SOURCE}")
    if sys.platform == "darwin":
        return ("Allow camera access for your terminal in System Settings > Privacy & Security > Camera, "
                f"or {_OTHER_SOURCE}")
    return f"Close other apps using the camera, or {_OTHER_SOURCE}"


class WebcamSource(Source):
    """A camera by index (``0``) or device path (``/dev/video2``), at a requested size and fps.

    MJPG is requested because most USB cameras deliver 720p at 30 fps only compressed.
    """

    def __init__(self, *, device: int | str = 0, width: int = 1280, height: int = 720, fps: float = 30.0,
                 mjpg: bool = True) -> None:
        self.device = device
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(device, api)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"camera {device!r} cannot be opened. {camera_help()}")
        if mjpg:
            self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._cap.set(cv2.CAP_PROP_FPS, fps)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a queue
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or fps
        self.size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self._index = 0

    def read(self) -> Frame:
        ok, bgr = self._cap.read()
        t = time.perf_counter()
        if not ok or bgr is None:
            raise SourceError(f"camera {self.device!r} stopped delivering frames (unplugged or taken by another app?)")
        frame = Frame(_rgb(bgr), self._index, t)
        self._index += 1
        return frame

    def close(self) -> None:
        self._cap.release()


class VideoFileSource(Source):
    """A video file used as a camera.

    ``realtime=True`` paces frames at the file's fps (``start + n * period``, drift free), like a
    camera; ``realtime=False`` returns them as fast as they decode (offline rendering).
    ``loop=True`` starts again at the end; frame indices keep counting up.
    """

    def __init__(self, *, path: str | os.PathLike, realtime: bool = True, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"cannot open {self.path} as a video (unsupported or corrupt file)")
        ok, first = self._cap.read()
        if not ok or first is None or first.size == 0:
            self._cap.release()
            raise SourceError(f"{self.path} has no decodable video frames (corrupt or not a video)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or 25.0
        if not (0 < self.fps < 1000):
            self.fps = 25.0
        self.size = (first.shape[1], first.shape[0])
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._pending: np.ndarray | None = first
        self.realtime, self.loop = realtime, loop
        self._index = 0
        self._t0: float | None = None

    def read(self) -> Frame:
        if self._pending is not None:
            bgr, self._pending = self._pending, None
        else:
            ok, bgr = self._cap.read()
            if not ok:
                if not self.loop or self._index == 0:
                    raise EndOfStream(str(self.path))
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self._cap.read()
                if not ok:
                    raise SourceError(f"{self.path} cannot be rewound for looping")
        if self.realtime:
            now = time.perf_counter()
            if self._t0 is None:
                self._t0 = now
            due = self._t0 + self._index / self.fps
            if due > now:
                time.sleep(due - now)
            elif now - due > 1.0:
                self._t0 = now - self._index / self.fps  # fell far behind (paused?): resync, don't burst
        # Offline frames carry media time (index / fps): deterministic, and the trackers' filters see
        # the true frame spacing rather than the decode speed.
        t = time.perf_counter() if self.realtime else self._index / self.fps
        frame = Frame(_rgb(bgr), self._index, t)
        self._index += 1
        return frame

    def close(self) -> None:
        self._cap.release()


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (EXIF orientation applied), with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"image file not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise SourceError(f"{path} is not a readable image (corrupt, empty or unsupported format)")
    return _rgb(bgr)


class ImageSource(Source):
    """A still image repeated at ``fps`` (paced when ``realtime``)."""

    def __init__(self, *, path: str | os.PathLike, fps: float = 30.0, realtime: bool = True) -> None:
        self._image = read_image(path)
        self.size = (self._image.shape[1], self._image.shape[0])
        self.fps, self.realtime = fps, realtime
        self._index = 0
        self._t0: float | None = None

    def read(self) -> Frame:
        if self.realtime:
            now = time.perf_counter()
            self._t0 = now if self._t0 is None else self._t0
            due = self._t0 + self._index / self.fps
            if due > now:
                time.sleep(due - now)
        frame = Frame(self._image, self._index, time.perf_counter())
        self._index += 1
        return frame
