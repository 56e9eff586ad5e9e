"""The source interface: ``read()`` returns the next :class:`~avatarcam.frame.Frame`."""
from __future__ import annotations

import abc

from avatarcam.frame import Frame


class EndOfStream(Exception):
    """A finite source (a video without ``loop``) has no more frames."""


class Source(abc.ABC):
    """A driving-frame source. ``read`` blocks until the next frame and returns it; it raises
    :class:`~avatarcam.errors.SourceError` when the device fails and :class:`EndOfStream` at the end."""

    fps: float
    size: tuple[int, int]  # (width, height)

    @abc.abstractmethod
    def read(self) -> Frame: ...

    def close(self) -> None:  # noqa: B027
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        while True:
            try:
                yield self.read()
            except EndOfStream:
                return
