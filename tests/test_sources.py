import time

import cv2
import numpy as np
import pytest

from avatarcam.config import CaptureConfig
from avatarcam.errors import SourceError
from avatarcam.mailbox import Mailbox
from avatarcam.sources import ImageSource, VideoFileSource, WebcamSource, open_source
from avatarcam.sources.capture import CaptureThread
from avatarcam.stats import Stats


def test_video_file_as_fast_as_possible_reads_every_frame(driving_video):
    with VideoFileSource(path=driving_video, realtime=False) as src:
        assert src.size == (410, 412) and src.fps == 25.0
        frames = list(src)
    assert len(frames) == 169
    assert [f.index for f in frames] == list(range(169))
    f = frames[10]
    assert f.image.dtype == np.uint8 and f.image.shape == (412, 410, 3) and f.image.flags.c_contiguous
    # offline frames carry media time
    assert f.t_capture == pytest.approx(10 / 25.0)


def test_video_file_is_rgb(driving_video):
    with VideoFileSource(path=driving_video, realtime=False) as src:
        rgb = src.read().image
    cap = cv2.VideoCapture(str(driving_video))
    ok, bgr = cap.read()
    cap.release()
    assert ok and np.array_equal(rgb, bgr[..., ::-1])


def test_video_file_realtime_is_paced(driving_video):
    with VideoFileSource(path=driving_video, realtime=True) as src:
        t0 = time.perf_counter()
        for _ in range(11):
            src.read()
        elapsed = time.perf_counter() - t0
    assert elapsed >= 10 / 25.0 - 0.01  # never faster than the file's fps


def test_video_loop_keeps_counting(driving_video):
    with VideoFileSource(path=driving_video, realtime=False, loop=True) as src:
        idx = [src.read().index for _ in range(200)]
    assert idx == list(range(200))


def test_missing_and_corrupt_video(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        VideoFileSource(path=tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 500)
    with pytest.raises(SourceError, match="bad.mp4"):
        VideoFileSource(path=bad)


def test_image_source_and_bad_images(tmp_path, avatar_photo):
    with ImageSource(path=avatar_photo, fps=50, realtime=False) as src:
        a, b = src.read(), src.read()
    assert a.index == 0 and b.index == 1 and a.image.shape[2] == 3
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="not a readable image"):
        ImageSource(path=empty)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"<html>not an image</html>")
    with pytest.raises(SourceError, match="not a readable image"):
        ImageSource(path=junk)


def test_open_source_dispatch(driving_video, avatar_photo):
    assert isinstance(open_source(CaptureConfig(source=str(driving_video))), VideoFileSource)
    assert isinstance(open_source(CaptureConfig(source=str(avatar_photo))), ImageSource)


def test_missing_camera_says_what_to_do():
    with pytest.raises(SourceError) as info:
        WebcamSource(device=7)
    msg = str(info.value)
    assert "camera 7" in msg and ("--camera" in msg)


class FlakySource:
    """Fails to open ``fail_opens`` times, then delivers ``per_open`` frames and 'disappears'."""

    fps = 100.0
    size = (32, 24)

    def __init__(self, log, per_open):
        self.log, self.per_open, self.n = log, per_open, 0

    def read(self):
        from avatarcam.frame import Frame

        if self.n >= self.per_open:
            raise SourceError("camera 'fake' stopped delivering frames")
        self.n += 1
        time.sleep(0.005)
        return Frame(np.full((24, 32, 3), self.n, np.uint8), self.n - 1)

    def close(self):
        self.log.append("close")


def test_capture_thread_closes_cleanly_when_never_started():
    """A live session that fails before its loop runs closes a capture thread that never started."""
    opened = []
    cap = CaptureThread(open_source=lambda: opened.append(1), mailbox=Mailbox(), stats=Stats())
    cap.close()
    cap.close()
    assert opened == [] and not cap._thread.is_alive()


def test_capture_thread_retries_until_the_camera_is_back():
    log: list[str] = []
    attempts = {"n": 0}

    def opener():
        attempts["n"] += 1
        if attempts["n"] <= 2:
            raise SourceError("camera 'fake' cannot be opened.")
        return FlakySource(log, per_open=5)

    box: Mailbox = Mailbox()
    cap = CaptureThread(open_source=opener, mailbox=box, stats=Stats(), retry_s=0.02).start()
    seen = []
    deadline = time.time() + 5
    while len(seen) < 12 and time.time() < deadline:
        f = box.get(timeout=0.2)
        if f is not None:
            seen.append(f.index)
    cap.close()
    assert attempts["n"] >= 4  # 2 failures, then re-opened after the camera vanished mid-stream
    assert "close" in log
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # indices keep increasing across re-opens
    assert not cap._thread.is_alive()
