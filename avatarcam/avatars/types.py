"""The avatar record every engine consumes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
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

    def scaled(self, factor: float) -> "Avatar":
        """This avatar with its photo resized by ``factor`` (area filter when shrinking) and its
        landmarks and face box moved with it. Name, path and content hash stay: it is the same photo."""
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        h, w = self.image.shape[:2]
        nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
        if (nw, nh) == (w, h):
            return self
        interpolation = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_CUBIC
        image = cv2.resize(self.image, (nw, nh), interpolation=interpolation)
        face = self.face
        if face is not None:
            # Landmarks are normalised coordinates times the image size, so they scale with the sides;
            # MediaPipe's depth is in the x axis' units.
            fx, fy = nw / w, nh / h
            points = np.asarray(face.landmarks, dtype=np.float32) * np.array([fx, fy, fx], dtype=np.float32)
            box = face.box
            face = AvatarFace(landmarks=points, box=Box(box.cx * fx, box.cy * fy, box.side * (fx + fy) / 2.0))
        return dataclasses.replace(self, image=image, face=face)
