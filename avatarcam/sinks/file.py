"""Video file sink (mp4)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2

from avatarcam.errors import SinkError
from avatarcam.frame import OutputFrame
from avatarcam.geometry import fit_into
from avatarcam.sinks.base import Sink


class FileSink(Sink):
    """Writes frames to ``path`` at ``fps``. The size is taken from the first frame; later frames of
    another size (an avatar switch with photo output) are letterboxed into it."""

    name = "file"

    def __init__(self, *, path: str | os.PathLike, fps: float, fourcc: str = "mp4v") -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise SinkError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.fps, self.fourcc = fps, fourcc
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.count = 0

    def send(self, frame: OutputFrame) -> None:
        image = frame.image
        h, w = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                raise SinkError(f"cannot open {self.path} for writing as {self.fourcc} video")
            self._size = (w, h)
        elif (w, h) != self._size:
            image = fit_into(image, *self._size)
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
