"""The built-in avatar: scikit-image's bundled astronaut photo (NASA, public domain), so the app
works before the user has chosen any photo."""
from __future__ import annotations

import hashlib
from pathlib import Path

from avatarcam.avatars.library import prepare_avatar
from avatarcam.avatars.types import Avatar
from avatarcam.landmarks.tracker import LandmarkTracker

DEFAULT_NAME = "astronaut"


def default_avatar(tracker: LandmarkTracker | None = None, cache_dir: Path | str | None = None) -> Avatar:
    """Eileen Collins' NASA portrait (``skimage.data.astronaut()``, 512 x 512) prepared like any photo;
    ``content_hash`` is the sha256 of its pixels."""
    from skimage import data

    image = data.astronaut()[:, :, :3].copy()
    content_hash = hashlib.sha256(image.tobytes()).hexdigest()
    return prepare_avatar(image, name=DEFAULT_NAME, content_hash=content_hash, tracker=tracker,
                          cache_dir=cache_dir)
