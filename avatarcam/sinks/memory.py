"""Null and in-memory sinks: product code for headless runs, benchmarks and tests."""
from __future__ import annotations

from collections import deque

from avatarcam.frame import OutputFrame
from avatarcam.sinks.base import Sink


class NullSink(Sink):
    """Discards frames, counting them."""

    name = "null"

    def __init__(self) -> None:
        self.count = 0

    def send(self, frame: OutputFrame) -> None:
        self.count += 1


class MemorySink(Sink):
    """Keeps the last ``maxlen`` frames (all when None) in ``frames``."""

    name = "memory"

    def __init__(self, *, maxlen: int | None = None) -> None:
        self.frames: deque[OutputFrame] = deque(maxlen=maxlen)
        self.count = 0
        self.closed = False

    def send(self, frame: OutputFrame) -> None:
        self.frames.append(frame)
        self.count += 1

    def close(self) -> None:
        self.closed = True
