"""Loading avatar photos: decode, find the face, frame it, cache the result by content hash.

Outcomes per photo (each a clear message; in :class:`AvatarLibrary` one bad file never stops the rest):

- unreadable / corrupt / not an image -> :class:`AvatarError` naming the file and the decoder's reason;
- no face -> :class:`NoFaceError`;
- several faces -> the largest is used, a warning is logged;
- a tiny face (smaller than ``MIN_FACE_PX`` pixels) -> loaded, with a warning that the animation will be
  blurry (every engine upsamples the crop; refusing would leave the user with nothing);
- grayscale / palette / 16-bit -> converted to RGB; transparency -> composited over white;
- EXIF orientation -> applied, so landmarks and box are in upright-photo pixels;
- a face too small for MediaPipe's whole-photo pass (under about a tenth of the photo) -> looked for
  again in overlapping tiles.

The box is the driver crop's framing (:func:`avatarcam.crop.face_box`, face = 62.5 % of the side),
moved or tightened a little to stay inside the photo (:func:`avatarcam.crop.fit_inside`).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from avatarcam.avatars.types import Avatar, AvatarFace
from avatarcam.crop import DEFAULT_MARGIN, face_box, fit_inside
from avatarcam.errors import AvatarError, NoFaceError
from avatarcam.geometry import Box
from avatarcam.landmarks.smoothing import face_size
from avatarcam.landmarks.tracker import LandmarkTracker
from avatarcam.landmarks.types import FaceLandmarks

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MIN_FACE_PX = 64
# The avatar crop is the driver's framing (face = 62.5 % of the side); to keep it inside the photo
# it may tighten until the face fills this much (see avatarcam.crop.fit_inside).
MAX_FACE_FRACTION = 0.72
# Bump when the framing or the stored fields change: older cache files are then recomputed.
PREP_VERSION = 2
BACKGROUND = (255, 255, 255)  # what transparent pixels become


def default_cache_dir() -> Path:
    """Per-user cache folder for prepared avatars (``platformdirs`` user cache / avatars)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("avatarcam")) / "avatars"


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Decode image bytes to ``H x W x 3`` uint8 RGB, upright per EXIF. Raises AvatarError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)  # animated formats: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except UnidentifiedImageError as exc:
        raise AvatarError(f"{what} is not an image this program can read (corrupt or unsupported format): "
                          f"use a JPEG, PNG or WebP photo ({exc})") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise AvatarError(f"{what} could not be decoded ({exc}): the file is probably truncated or "
                          "corrupt; re-export or re-download it") from exc


def _to_rgb(img) -> np.ndarray:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: stretch to 8 bits (PIL's "L" conversion would clip).
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _cache_path(cache_dir: Path, content_hash: str) -> Path:
    return cache_dir / f"{content_hash}.npz"


def _read_cache(path: Path, image_size: tuple[int, int]) -> AvatarFace | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != PREP_VERSION or tuple(int(v) for v in z["image_size"]) != image_size:
                return None
            landmarks = np.asarray(z["landmarks"], dtype=np.float32)
            cx, cy, side = (float(v) for v in z["box"])
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable avatar cache %s (%s); preparing again", path, exc)
        return None
    return AvatarFace(landmarks=landmarks, box=Box(cx, cy, side))


def _write_cache(path: Path, face: AvatarFace, image_size: tuple[int, int]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash or a second process never leaves a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                version=np.int64(PREP_VERSION),
                image_size=np.array(image_size, dtype=np.int64),
                landmarks=face.landmarks.astype(np.float32),
                box=np.array([face.box.cx, face.box.cy, face.box.side], dtype=np.float64),
            )
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs time, never the avatar
        log.warning("could not write avatar cache %s (%s); it will be prepared again next time", path, exc)


def _faces_in_tiles(image: np.ndarray, tracker: LandmarkTracker) -> list[FaceLandmarks]:
    """Second chance for small faces: MediaPipe's photo detector sees the whole image at 128 px, so
    a face under about a tenth of the image side is missed. Look again in half-size square tiles
    overlapping by half (every face up to a quarter of the short side lies wholly inside one);
    faces touching a tile's inner border are cut off by the tile and are dropped."""
    h, w = image.shape[:2]
    side = min(h, w) // 2
    if side < 128:
        return []
    step = side // 2

    def starts(length: int) -> list[int]:
        return sorted(set(list(range(0, length - side + 1, step)) + [length - side]))

    faces: list[FaceLandmarks] = []
    border = 0.02 * side
    for y0 in starts(h):
        for x0 in starts(w):
            tile = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
            for face in tracker.detect(tile, 0).faces:
                x_lo, y_lo, x_hi, y_hi = face.bbox
                cut = ((x_lo < border and x0 > 0) or (y_lo < border and y0 > 0)
                       or (x_hi > side - border and x0 + side < w) or (y_hi > side - border and y0 + side < h))
                if not cut:
                    pts = face.points + np.array([x0, y0, 0.0], dtype=np.float32)
                    faces.append(FaceLandmarks(pts, face.score))
    # The same face is seen in several overlapping tiles: keep one per place (the largest).
    distinct: list[FaceLandmarks] = []
    for face in sorted(faces, key=lambda f: -f.area):
        c = face.points[:, :2].mean(axis=0)
        if all(np.linalg.norm(c - d.points[:, :2].mean(axis=0)) > 0.5 * face_size(d.points) for d in distinct):
            distinct.append(face)
    return distinct


def find_face(image: np.ndarray, tracker: LandmarkTracker, what: str) -> AvatarFace:
    """Detect the face in ``image`` (``H x W x 3`` RGB) and frame it. Raises NoFaceError."""
    faces = list(tracker.detect(image, 0).faces) or _faces_in_tiles(image, tracker)
    if not faces:
        raise NoFaceError(f"no face found in {what}: use a photo where one face is clearly visible, "
                          f"roughly frontal, not covered, and at least {MIN_FACE_PX} px tall")
    face = max(faces, key=lambda f: f.area)
    if len(faces) > 1:
        log.warning("%s shows %d faces; using the largest one (crop the photo to choose another)",
                    what, len(faces))
    size = face_size(face.points)
    if size < MIN_FACE_PX:
        log.warning("the face in %s is only %.0f px tall; it will look blurry when animated: use a photo "
                    "where the face is at least %d px", what, size, MIN_FACE_PX)
    h, w = image.shape[:2]
    box = fit_inside(face_box(face.points, DEFAULT_MARGIN), w, h, min_side=size / MAX_FACE_FRACTION)
    return AvatarFace(landmarks=face.points.astype(np.float32), box=box)


def prepare_avatar(
    image: np.ndarray,
    *,
    name: str,
    content_hash: str,
    path: Path | None = None,
    tracker: LandmarkTracker | None = None,
    cache_dir: Path | str | None = None,
) -> Avatar:
    """Attach the face (landmarks + box) to ``image``, from the cache when it has this content hash.

    ``tracker`` must be an image-mode tracker; without one a MediaPipe image tracker is created for
    this call (only on a cache miss) and closed again.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    h, w = image.shape[:2]
    cache_file = _cache_path(cache, content_hash)
    face = _read_cache(cache_file, (w, h)) if cache_file.is_file() else None
    what = str(path) if path is not None else f"avatar {name!r}"
    if face is None:
        if tracker is None:
            from avatarcam.landmarks.tracker import create_tracker

            with create_tracker(mode="image") as own:
                face = find_face(image, own, what)
        else:
            face = find_face(image, tracker, what)
        _write_cache(cache_file, face, (w, h))
    image.setflags(write=False)  # shared by every engine: nobody may draw on it
    return Avatar(name=name, image=image, content_hash=content_hash, path=path, face=face)


def load_avatar(
    path: Path | str,
    *,
    tracker: LandmarkTracker | None = None,
    cache_dir: Path | str | None = None,
) -> Avatar:
    """Load one photo as a prepared :class:`Avatar` (name = file stem, hash = sha256 of the bytes).

    Raises :class:`AvatarError` (unreadable, corrupt) or :class:`NoFaceError` (no face found).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AvatarError(f"cannot read avatar file {path} ({exc.strerror or exc}): check the path "
                          "and its permissions") from exc
    if not data:
        raise AvatarError(f"avatar file {path} is empty: replace it with a JPEG, PNG or WebP photo")
    content_hash = hashlib.sha256(data).hexdigest()
    image = decode_image(data, str(path))
    return prepare_avatar(image, name=path.stem, content_hash=content_hash, path=path,
                          tracker=tracker, cache_dir=cache_dir)


def _as_loaded(avatar: Avatar) -> Avatar:
    return avatar


class AvatarLibrary:
    """The avatars of one folder (jpg/jpeg/png/webp, sorted by file name), optionally led by the
    built-in default (the astronaut).

    Files that cannot be used are listed in ``problems`` as (path, message) and skipped; a missing
    folder is a problem too, not an exception, so the default avatar still works. Faces are found
    with one image-mode tracker, created only when some photo is not in the cache yet.
    """

    def __init__(self, *, folder: Path | str | None, cache_dir: Path | str | None = None,
                 include_default: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.include_default = include_default
        self.avatars: list[Avatar] = []
        self.problems: list[tuple[Path, str]] = []
        self._fit: Callable[[Avatar], Avatar] = _as_loaded
        self.reload()

    def set_fit(self, fit: Callable[[Avatar], Avatar] | None) -> None:
        """Keep every avatar as ``fit(avatar)`` (e.g. its photo shrunk for the output), now and
        after each reload; the full-size photos are let go. None: as loaded, from the next reload."""
        self._fit = fit or _as_loaded
        self.avatars = [self._fit(a) for a in self.avatars]

    def reload(self) -> None:
        """Scan the folder again (new, changed and removed photos); unchanged photos hit the cache."""
        from avatarcam.avatars.default import default_avatar

        avatars: list[Avatar] = []
        problems: list[tuple[Path, str]] = []
        tracker: LandmarkTracker | None = None
        try:
            if self.include_default:
                tracker = self._tracker_if_needed(tracker)
                avatars.append(self._fit(default_avatar(tracker=tracker, cache_dir=self.cache_dir)))
            for path in self._files(problems):
                tracker = self._tracker_if_needed(tracker)
                try:
                    avatars.append(self._fit(load_avatar(path, tracker=tracker, cache_dir=self.cache_dir)))
                except AvatarError as exc:
                    log.warning("skipping avatar %s: %s", path, exc)
                    problems.append((path, str(exc)))
        finally:
            if isinstance(tracker, _LazyTracker):
                tracker.close()
        self.avatars = avatars
        self.problems = problems

    def _tracker_if_needed(self, tracker: LandmarkTracker | None) -> LandmarkTracker:
        return tracker if tracker is not None else _LazyTracker()

    def _files(self, problems: list[tuple[Path, str]]) -> list[Path]:
        if self.folder is None:
            return []
        if not self.folder.is_dir():
            problems.append((self.folder, f"avatar folder {self.folder} does not exist or is not a folder: "
                                          "create it and put JPEG, PNG or WebP photos in it"))
            return []
        return sorted((p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS),
                      key=lambda p: p.name.lower())

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.avatars]

    def __len__(self) -> int:
        return len(self.avatars)

    def __getitem__(self, index: int) -> Avatar:
        return self.avatars[index]

    def __iter__(self):
        return iter(self.avatars)


class _LazyTracker(LandmarkTracker):
    """An image-mode MediaPipe tracker that starts only when a photo misses the cache (cache hits
    then never pay for loading the model)."""

    def __init__(self) -> None:
        from avatarcam.landmarks.config import TrackerConfig

        super().__init__(TrackerConfig(), "image")
        self._inner: LandmarkTracker | None = None

    def _detect_raw(self, image_rgb: np.ndarray):
        if self._inner is None:
            from avatarcam.landmarks.tracker import create_tracker

            self._inner = create_tracker(self.config, mode="image")
        return self._inner._detect_raw(image_rgb)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
