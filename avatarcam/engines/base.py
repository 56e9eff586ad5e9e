"""The engine interface: prepare an avatar once, animate one driving frame at a time."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.frame import Frame
from avatarcam.geometry import Box, crop_square
from avatarcam.landmarks.types import LandmarkResult


@dataclass(frozen=True)
class Drive:
    """One driving input. ``landmarks`` is None when the pipeline runs no tracker; ``box`` is the
    driver crop (face-following when tracked, else centred)."""

    frame: Frame
    box: Box
    landmarks: LandmarkResult | None = None
    #: A synthetic expression (voice-driven mouth, idle blinks and head motion; an
    #: ``avatarcam.audio.SyntheticExpression``) to show instead of the tracked face, when set.
    expression: Any = None

    def crop(self, size: int) -> np.ndarray:
        """The driver's square crop, ``size x size x 3`` uint8 RGB."""
        return crop_square(self.frame.image, self.box, size)


class Engine(abc.ABC):
    """A reenactment engine.

    ``prepare`` turns an avatar into engine-specific prepared state (computed once per avatar and
    cached by the caller, so switching is instant); ``animate`` renders one driving frame against a
    prepared avatar and returns an RGB uint8 image (a square face crop or the whole photo, per config).
    ``calibrate`` makes the next driving frame the neutral reference for relative motion.
    """

    name: ClassVar[str]
    needs_landmarks: ClassVar[bool] = False
    #: False when ``animate`` uses only ``drive.landmarks``, ``drive.box`` and the frame size, never the
    #: driving pixels, so a remote worker can run it from keypoints alone. May be set per instance.
    reads_drive_pixels: bool = True
    #: When set, ``animate`` reads the driving image only through ``drive.crop(drive_crop_size)``, so a
    #: remote client may send just that crop (landmarks mapped into it) instead of the camera frame.
    drive_crop_size: int | None = None

    @abc.abstractmethod
    def prepare(self, avatar: Avatar) -> Any: ...

    @abc.abstractmethod
    def animate(self, prepared: Any, drive: Drive) -> np.ndarray: ...

    def calibrate(self) -> None:  # noqa: B027 - optional hook, no-op for engines without a neutral pose
        """Take the next driving frame as neutral."""

    def get_calibration(self) -> dict[str, np.ndarray] | None:
        """The neutral reference as plain arrays (persisted per avatar), or None when not calibrated."""
        return None

    def set_calibration(self, state: dict[str, np.ndarray] | None) -> None:  # noqa: B027
        """Restore a reference returned by :meth:`get_calibration` (None: calibrate on the next frame)."""

    def close(self) -> None:  # noqa: B027
        """Release resources; called once."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
