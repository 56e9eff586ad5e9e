"""The avatar record every engine consumes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarcam.geometry import Box, crop_square


@dataclass(frozen=True, eq=False)
class AvatarFace:
    """Where the face is in the avatar photo.

    ``landmarks``: ``N x 3`` float32 in full-photo pixels. ``box``: the square crop around the
    face (with margin) that engines animate; the same box pastes the result back into the photo.
    """

    landmarks: np.ndarray
    box: Box


@dataclass(frozen=True, eq=False)
class Avatar:
    """A photo to animate. ``image``: full photo, ``H x W x 3`` uint8 RGB.

    ``content_hash`` (sha256 of the file bytes, or of the pixels for generated avatars) keys
    every per-avatar cache. ``face`` is None until the tracker has prepared it.
    """

    name: str
    image: np.ndarray
    content_hash: str
    path: Path | None = None
    face: AvatarFace | None = None

    @property
    def box(self) -> Box:
        """The face box, or the centred square when no face is known."""
        if self.face is not None:
            return self.face.box
        h, w = self.image.shape[:2]
        return Box.centered(w, h)

    def crop(self, size: int) -> np.ndarray:
        """The square face crop at ``size x size`` (RGB uint8)."""
        return crop_square(self.image, self.box, size)
