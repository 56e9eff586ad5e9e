"""The sink interface: ``send(frame)`` one :class:`~avatarcam.frame.OutputFrame`, ``close()`` once."""
from __future__ import annotations

import abc

from avatarcam.frame import OutputFrame


class Sink(abc.ABC):
    name: str = "sink"

    @abc.abstractmethod
    def send(self, frame: OutputFrame) -> None: ...

    def close(self) -> None:  # noqa: B027
        pass

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
