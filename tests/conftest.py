"""Shared test fixtures: real media from ../shared/data, a recording pyvirtualcam backend."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"
# Every avatar photo in ../shared/data, listed so that a missing one fails instead of shrinking the tests.
AVATARS = [
    "avatar_child_photo_in_hand.jpg",
    "avatar_east_asian_woman.jpg",
    "avatar_einstein_bw_photo.jpg",
    "avatar_jobs_glasses_photo.jpg",
    "avatar_mona_lisa_painting.jpg",
    "avatar_obama_photo.jpg",
    "avatar_young_woman_photo.png",
]

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def _private_user_dirs(tmp_path_factory):
    """Keep the per-user caches, settings and tokens of a test run out of the real home folder."""
    names = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
    old = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ[n] = str(tmp_path_factory.mktemp(n.lower()))
    yield
    for n, value in old.items():
        if value is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = value


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test media not found at {DATA}: the repository must sit beside shared/")
    return DATA


@pytest.fixture(scope="session")
def driving_video(data_dir: Path) -> Path:
    """410x412, 25 fps, 169 frames."""
    return data_dir / "driving_talking_man_tpsm.mp4"


@pytest.fixture(scope="session")
def avatar_photo(data_dir: Path) -> Path:
    return data_dir / "avatar_obama_photo.jpg"


@pytest.fixture()
def avatar_cache(tmp_path: Path) -> Path:
    return tmp_path / "avatar-cache"


class RecordingBackend:
    """A pyvirtualcam backend (registered through pyvirtualcam.register_backend) that keeps what it is sent."""

    instances: list["RecordingBackend"] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "recording0"
        self.frames: list[np.ndarray] = []
        self.closed = 0
        RecordingBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed += 1

    def device(self) -> str:
        return self._device

    def native_fourcc(self):
        return None


@pytest.fixture()
def recording_backend():
    import pyvirtualcam

    RecordingBackend.instances.clear()
    pyvirtualcam.register_backend("avatarcam-test", RecordingBackend)
    try:
        yield RecordingBackend
    finally:
        pyvirtualcam.camera.BACKENDS.pop("avatarcam-test", None)


@pytest.fixture(scope="session")
def xvfb_display():
    """A virtual X display for window tests (Xvfb from Debian's package, installed by .ci/run)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb); the preview window cannot be tested")
    display = ":97"
    proc = subprocess.Popen([exe, display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
            break
        time.sleep(0.1)
    os.environ["DISPLAY"] = display
    try:
        yield display
    finally:
        os.environ.pop("DISPLAY", None)
        proc.terminate()
        proc.wait(5)


def avatarcam_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("avatarcam")]
