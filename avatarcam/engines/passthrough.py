"""The passthrough engine: the driver's own face, cropped and zoomed like an avatar output."""
from __future__ import annotations

import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.engines.base import Drive, Engine


class PassthroughEngine(Engine):
    """Shows the camera itself: the driver crop (centred, or following the face when tracked)
    resized to ``size x size``. The avatar is ignored."""

    name = "passthrough"

    def __init__(self, *, size: int = 512) -> None:
        self.size = size
        self.drive_crop_size = size  # reads only drive.crop(size): remote clients send just that

    def prepare(self, avatar: Avatar) -> None:
        return None

    def animate(self, prepared: None, drive: Drive) -> np.ndarray:
        return drive.crop(self.size)
