"""Avatar loading, preparation cache and the library, on the real photos in ../shared/data."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from avatarcam.avatars.default import default_avatar
from avatarcam.avatars.library import MIN_FACE_PX, AvatarLibrary, load_avatar
from avatarcam.errors import AvatarError, NoFaceError
from avatarcam.landmarks import create_tracker
from avatarcam.landmarks.smoothing import face_size

from conftest import AVATARS  # noqa: E402 - the shared list of avatar photos


class CountingTracker:
    """Wraps an image-mode tracker and counts detect calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def detect(self, image, timestamp_ms=None):
        self.calls += 1
        return self.inner.detect(image, timestamp_ms)


@pytest.fixture(scope="module")
def image_tracker():
    with create_tracker(mode="image") as tracker:
        yield tracker


@pytest.fixture()
def counting(image_tracker) -> CountingTracker:
    return CountingTracker(image_tracker)


def save(image: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(image).save(path, **kw)
    return path


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("name", AVATARS)
def test_every_real_photo_loads_with_a_framed_face(data_dir, avatar_cache, counting, name):
    path = data_dir / name
    avatar = load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert avatar.name == path.stem and avatar.path == path
    assert avatar.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert avatar.image.dtype == np.uint8 and avatar.image.ndim == 3 and avatar.image.shape[2] == 3
    assert not avatar.image.flags.writeable
    pts, box = avatar.face.landmarks, avatar.face.box
    assert pts.shape == (478, 3)
    # The face fills 55-70 % of the square crop and lies wholly inside it.
    assert 0.55 < face_size(pts) / box.side < 0.70
    assert pts[:, 0].min() > box.x0 and pts[:, 0].max() < box.x0 + box.side
    assert pts[:, 1].min() > box.y0 and pts[:, 1].max() < box.y0 + box.side
    # Inside the photo wherever the framing allows (only Einstein's crop overhangs: face at the bottom).
    h, w = avatar.image.shape[:2]
    overhang = max(0.0, -box.x0, -box.y0, box.x0 + box.side - w, box.y0 + box.side - h)
    assert overhang < 0.05 * box.side
    crop = avatar.crop(256)
    assert crop.shape == (256, 256, 3)


def test_cache_hit_skips_the_tracker(data_dir, avatar_cache, counting):
    path = data_dir / "avatar_obama_photo.jpg"
    first = load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert counting.calls == 1
    assert (avatar_cache / f"{first.content_hash}.npz").is_file()
    second = load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert counting.calls == 1  # hit: the tracker was not asked again
    np.testing.assert_array_equal(first.face.landmarks, second.face.landmarks)
    assert first.face.box == second.face.box
    # Another cache folder misses; different bytes (same picture) miss too.
    load_avatar(path, tracker=counting, cache_dir=avatar_cache / "other")
    assert counting.calls == 2


def test_changed_file_misses_and_corrupt_cache_is_rebuilt(data_dir, avatar_cache, counting, tmp_path):
    photo = save(rgb(data_dir / "avatar_young_woman_photo.png"), tmp_path / "me.png")
    a = load_avatar(photo, tracker=counting, cache_dir=avatar_cache)
    save(rgb(data_dir / "avatar_east_asian_woman.jpg"), photo)  # same name, new content
    b = load_avatar(photo, tracker=counting, cache_dir=avatar_cache)
    assert counting.calls == 2 and a.content_hash != b.content_hash
    (avatar_cache / f"{b.content_hash}.npz").write_bytes(b"not a numpy file")
    c = load_avatar(photo, tracker=counting, cache_dir=avatar_cache)
    assert counting.calls == 3
    np.testing.assert_allclose(c.face.landmarks, b.face.landmarks, atol=1e-3)
    load_avatar(photo, tracker=counting, cache_dir=avatar_cache)
    assert counting.calls == 3  # the rebuilt cache file works


def test_without_a_tracker_one_is_made_on_a_miss_only(data_dir, avatar_cache):
    avatar = load_avatar(data_dir / "avatar_jobs_glasses_photo.jpg", cache_dir=avatar_cache)
    assert avatar.face is not None


@pytest.mark.parametrize("kind", ["noise", "gradient"])
def test_photo_without_a_face_raises_no_face(tmp_path, avatar_cache, counting, kind):
    if kind == "noise":
        image = np.random.default_rng(4).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    else:
        image = np.ascontiguousarray(np.repeat(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], 300, 0)
                                     .repeat(3, 2))
    path = save(image, tmp_path / f"{kind}.png")
    with pytest.raises(NoFaceError, match="no face found") as err:
        load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert str(path) in str(err.value)
    assert not avatar_cache.exists() or not list(avatar_cache.glob("*.npz"))  # nothing cached


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "text"])
def test_corrupt_files_raise_avatar_error(data_dir, tmp_path, avatar_cache, counting, damage):
    good = (data_dir / "avatar_obama_photo.jpg").read_bytes()
    data = {"random": np.random.default_rng(5).bytes(5000), "truncated": good[: len(good) // 3],
            "empty": b"", "text": b"hello, I am not a photo\n"}[damage]
    path = tmp_path / "broken.jpg"
    path.write_bytes(data)
    with pytest.raises(AvatarError) as err:
        load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert not isinstance(err.value, NoFaceError)
    assert str(path) in str(err.value)
    assert counting.calls == 0


def test_missing_file_raises_avatar_error(tmp_path, avatar_cache):
    with pytest.raises(AvatarError, match="cannot read"):
        load_avatar(tmp_path / "nope.jpg", cache_dir=avatar_cache)


def test_grayscale_photo_becomes_rgb(data_dir, tmp_path, avatar_cache, counting):
    gray = np.asarray(Image.open(data_dir / "avatar_young_woman_photo.png").convert("L"))
    avatar = load_avatar(save(gray, tmp_path / "gray.png"), tracker=counting, cache_dir=avatar_cache)
    assert avatar.image.shape == gray.shape + (3,)
    np.testing.assert_array_equal(avatar.image[..., 0], gray)
    np.testing.assert_array_equal(avatar.image[..., 2], gray)
    assert avatar.face is not None


def test_16_bit_grayscale_is_stretched(data_dir, tmp_path, avatar_cache, counting):
    gray = np.asarray(Image.open(data_dir / "avatar_young_woman_photo.png").convert("L")).astype(np.uint16) * 64
    path = tmp_path / "deep.png"
    Image.fromarray(gray).save(path)
    avatar = load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert avatar.image.max() == 255 and avatar.face is not None


def test_transparent_pixels_become_white(data_dir, tmp_path, avatar_cache, counting):
    image = rgb(data_dir / "avatar_young_woman_photo.png")
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0  # a transparent strip on the left
    rgba = np.dstack([image, alpha])
    avatar = load_avatar(save(rgba, tmp_path / "cutout.png"), tracker=counting, cache_dir=avatar_cache)
    assert avatar.image.shape == image.shape
    assert (avatar.image[:, :40] == 255).all()
    np.testing.assert_array_equal(avatar.image[:, 60:], image[:, 60:])
    assert avatar.face is not None


def test_webp_loads(data_dir, tmp_path, avatar_cache, counting):
    path = save(rgb(data_dir / "avatar_east_asian_woman.jpg"), tmp_path / "photo.webp", quality=90)
    assert load_avatar(path, tracker=counting, cache_dir=avatar_cache).face is not None


def test_exif_rotation_is_applied(data_dir, tmp_path, avatar_cache, counting):
    upright = Image.open(data_dir / "avatar_young_woman_photo.png").convert("RGB")
    upright = upright.crop((0, 0, 474, 400))  # not square, so a missed rotation shows in the shape
    straight = load_avatar(save(np.asarray(upright), tmp_path / "upright.jpg", quality=95),
                           tracker=counting, cache_dir=avatar_cache)
    # Stored turned a quarter counter-clockwise, tagged "rotate 90 clockwise to display" (6).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif)
    assert Image.open(path).size == (400, 474)
    turned = load_avatar(path, tracker=counting, cache_dir=avatar_cache)
    assert turned.image.shape == (400, 474, 3)
    np.testing.assert_allclose(turned.face.landmarks[:, :2], straight.face.landmarks[:, :2], atol=3.0)
    assert turned.face.box.cx == pytest.approx(straight.face.box.cx, abs=3.0)
    assert turned.face.box.cy == pytest.approx(straight.face.box.cy, abs=3.0)


def test_several_faces_take_the_largest_and_warn(data_dir, tmp_path, avatar_cache, counting, caplog):
    big = cv2.resize(rgb(data_dir / "avatar_obama_photo.jpg"), (500, 500), interpolation=cv2.INTER_AREA)
    small = cv2.resize(rgb(data_dir / "avatar_young_woman_photo.png"), (350, 350), interpolation=cv2.INTER_AREA)
    group = np.full((500, 850, 3), 200, np.uint8)
    group[:, 350:] = big
    group[:350, :350] = small
    with caplog.at_level(logging.WARNING, logger="avatarcam.avatars.library"):
        avatar = load_avatar(save(group, tmp_path / "two.png"), tracker=counting, cache_dir=avatar_cache)
    assert "2 faces" in caplog.text and "largest" in caplog.text
    assert avatar.face.box.cx > 350 + 100  # the big face on the right


def test_tiny_face_loads_with_a_warning(data_dir, tmp_path, avatar_cache, counting, caplog):
    face = cv2.resize(rgb(data_dir / "avatar_obama_photo.jpg"), (90, 90), interpolation=cv2.INTER_AREA)
    canvas = np.full((600, 800, 3), 120, np.uint8)
    canvas[300:390, 500:590] = face  # too small for the whole-photo pass: found by the tiled one
    with caplog.at_level(logging.WARNING, logger="avatarcam.avatars.library"):
        avatar = load_avatar(save(canvas, tmp_path / "far.png"), tracker=counting, cache_dir=avatar_cache)
    assert "blurry" in caplog.text
    assert face_size(avatar.face.landmarks) < MIN_FACE_PX
    assert 500 < avatar.face.box.cx < 590 and 300 < avatar.face.box.cy < 390
    assert counting.calls > 1  # the tiled second pass ran


def test_default_avatar_is_the_astronaut(avatar_cache, counting):
    avatar = default_avatar(tracker=counting, cache_dir=avatar_cache)
    assert avatar.name == "astronaut" and avatar.path is None
    assert avatar.image.shape == (512, 512, 3)
    assert avatar.content_hash == hashlib.sha256(avatar.image.tobytes()).hexdigest()
    assert avatar.face is not None and 0.55 < face_size(avatar.face.landmarks) / avatar.face.box.side < 0.7
    default_avatar(tracker=counting, cache_dir=avatar_cache)
    assert counting.calls == 1


def test_library_skips_bad_files_and_reloads(data_dir, tmp_path, avatar_cache):
    folder = tmp_path / "avatars"
    folder.mkdir()
    for name in ("avatar_young_woman_photo.png", "avatar_jobs_glasses_photo.jpg"):
        os.symlink(data_dir / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    save(np.full((200, 200, 3), 30, np.uint8), folder / "blank.png")
    (folder / "notes.txt").write_text("not an avatar")
    lib = AvatarLibrary(folder=folder, cache_dir=avatar_cache)
    assert lib.names == ["astronaut", "avatar_jobs_glasses_photo", "avatar_young_woman_photo"]
    assert len(lib) == 3 and lib[1].name == "avatar_jobs_glasses_photo"
    assert sorted(p.name for p, _ in lib.problems) == ["blank.png", "broken.jpg"]
    messages = dict((p.name, m) for p, m in lib.problems)
    assert "no face" in messages["blank.png"] and "broken.jpg" in messages["broken.jpg"]

    os.symlink(data_dir / "avatar_einstein_bw_photo.jpg", folder / "a_einstein.jpg")
    (folder / "avatar_jobs_glasses_photo.jpg").unlink()
    lib.reload()
    assert lib.names == ["astronaut", "a_einstein", "avatar_young_woman_photo"]

    only = AvatarLibrary(folder=folder, cache_dir=avatar_cache, include_default=False)
    assert only.names == ["a_einstein", "avatar_young_woman_photo"]


def test_library_reload_from_cache_never_starts_the_tracker(data_dir, tmp_path, avatar_cache, monkeypatch):
    folder = tmp_path / "avatars"
    folder.mkdir()
    os.symlink(data_dir / "avatar_obama_photo.jpg", folder / "obama.jpg")
    AvatarLibrary(folder=folder, cache_dir=avatar_cache)

    def no_tracker(*a, **k):
        raise AssertionError("the tracker was created although everything is cached")

    monkeypatch.setattr("avatarcam.landmarks.tracker.create_tracker", no_tracker)
    lib = AvatarLibrary(folder=folder, cache_dir=avatar_cache)
    assert lib.names == ["astronaut", "obama"]


def test_library_missing_folder_is_a_problem_not_a_crash(tmp_path, avatar_cache):
    lib = AvatarLibrary(folder=tmp_path / "nowhere", cache_dir=avatar_cache)
    assert lib.names == ["astronaut"]
    assert lib.problems and "does not exist" in lib.problems[0][1]
    assert AvatarLibrary(folder=None, cache_dir=avatar_cache, include_default=False).names == []


@pytest.mark.parametrize("factor", [0.37, 1.6])
def test_a_scaled_avatar_keeps_its_face_where_the_photo_shows_it(data_dir, avatar_cache, counting, factor):
    avatar = load_avatar(data_dir / "avatar_obama_photo.jpg", tracker=counting, cache_dir=avatar_cache)
    scaled = avatar.scaled(factor)
    h, w = avatar.image.shape[:2]
    assert scaled.image.shape == (round(h * factor), round(w * factor), 3)
    assert (scaled.name, scaled.content_hash, scaled.path) == (avatar.name, avatar.content_hash, avatar.path)
    # The tracker, run on the scaled photo itself, finds the face where the scaled landmarks say.
    found = counting.detect(scaled.image, 0).face.points
    size = face_size(found)
    error = np.linalg.norm(found[:, :2] - scaled.face.landmarks[:, :2], axis=1)
    assert np.median(error) < 0.02 * size, f"median landmark error {np.median(error):.1f} px, face {size:.0f} px"
    box = avatar.face.box
    assert scaled.face.box.side == pytest.approx(box.side * factor, rel=0.005)
    assert (scaled.face.box.cx, scaled.face.box.cy) == pytest.approx((box.cx * factor, box.cy * factor), rel=0.005)
    assert avatar.scaled(1.0) is avatar
    with pytest.raises(ValueError):
        avatar.scaled(0.0)


def test_library_keeps_only_fitted_copies_after_set_fit_and_reload(data_dir, tmp_path, avatar_cache):
    folder = tmp_path / "avatars"
    folder.mkdir()
    os.symlink(data_dir / "avatar_jobs_glasses_photo.jpg", folder / "jobs.jpg")
    lib = AvatarLibrary(folder=folder, cache_dir=avatar_cache)
    full = {a.name: a.image.shape[:2] for a in lib}
    lib.set_fit(lambda a: a.scaled(0.5))
    half = {a.name: a.image.shape[:2] for a in lib}
    assert half == {n: (round(h * 0.5), round(w * 0.5)) for n, (h, w) in full.items()}
    os.symlink(data_dir / "avatar_einstein_bw_photo.jpg", folder / "einstein.jpg")
    lib.reload()  # new and unchanged photos alike come back fitted
    einstein = rgb(data_dir / "avatar_einstein_bw_photo.jpg").shape[:2]
    assert {a.name: a.image.shape[:2] for a in lib} == {**half, "einstein": (round(einstein[0] * 0.5),
                                                                          round(einstein[1] * 0.5))}
    lib.set_fit(None)
    lib.reload()
    assert {a.name: a.image.shape[:2] for a in lib}["jobs"] == full["jobs"]
