import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarcam.app import build_sinks
from avatarcam.config import AppConfig, SinkConfig
from avatarcam.errors import NoVirtualCameraError, SinkError
from avatarcam.frame import OutputFrame
from avatarcam.sinks.file import FileSink
from avatarcam.sinks.memory import MemorySink, NullSink
from avatarcam.sinks.virtualcam import VirtualCameraSink


def frame(w=64, h=48, value=0, index=0):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = value
    img[: h // 2, :, 1] = 255
    return OutputFrame(img, index, 0.0)


def test_virtual_camera_through_a_registered_pyvirtualcam_backend(recording_backend):
    sink = VirtualCameraSink(width=64, height=48, fps=30, backend="avatarcam-test")
    assert sink.device == "recording0" and sink.backend == "avatarcam-test"
    for i in range(5):
        sink.send(frame(value=10 * i))
    with pytest.raises(ValueError):  # pyvirtualcam's own shape check runs: wrong size is refused
        sink.send(frame(w=32, h=48))
    sink.close()
    cam = recording_backend.instances[-1]
    assert len(cam.frames) == 5 and cam.closed == 1
    got = cam.frames[3].reshape(48, 64, 3)  # 1-D RGB buffer, as pyvirtualcam hands it to a backend
    assert got[0, 0, 0] == 30 and got[0, 0, 1] == 255 and got[-1, 0, 1] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux") or any(Path("/dev").glob("video*")),
                    reason="needs a Linux machine without video devices to exercise the no-device path")
def test_no_virtual_camera_is_one_clear_message():
    with pytest.raises(NoVirtualCameraError) as info:
        VirtualCameraSink(width=640, height=480, fps=30)
    msg = str(info.value)
    assert "modprobe v4l2loopback" in msg and "exclusive_caps=1" in msg


@pytest.mark.skipif(any(Path("/dev").glob("video*")), reason="a real video device is present")
def test_app_keeps_running_without_virtual_camera(caplog):
    config = AppConfig(sinks=SinkConfig(kinds=("virtualcam", "null")))
    sinks = build_sinks(config)
    assert [type(s) for s in sinks] == [NullSink]
    assert any("v4l2loopback" in r.getMessage() for r in caplog.records)
    with pytest.raises(SinkError, match="no output could be opened"):
        build_sinks(AppConfig(sinks=SinkConfig(kinds=("virtualcam",))))


def test_file_sink_writes_every_frame_and_letterboxes_other_sizes(tmp_path):
    out = tmp_path / "o.mp4"
    with FileSink(path=out, fps=25) as sink:
        for i in range(12):
            sink.send(frame(value=20 * (i % 10), index=i))
        sink.send(frame(w=32, h=48))  # an avatar switch with another photo size
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 13
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    assert cap.get(cv2.CAP_PROP_FPS) == 25
    ok, bgr = cap.read()
    cap.release()
    assert ok and bgr[5, 5, 1] > 200 and bgr[40, 5, 1] < 50  # green top half survived, in the right place


def test_file_sink_bad_folder(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        FileSink(path=tmp_path / "missing" / "o.mp4", fps=30)


def test_memory_sink_bounded():
    s = MemorySink(maxlen=3)
    for i in range(10):
        s.send(frame(index=i))
    assert s.count == 10 and [f.source_index for f in s.frames] == [7, 8, 9]


def test_window_sink_shows_frames_and_reports_keys(xvfb_display):
    from avatarcam.sinks.window import WindowSink

    keys: list[int] = []
    sink = WindowSink(title="avatarcam-test", on_key=keys.append)
    try:
        img = frame(w=320, h=240, value=200)
        img = OutputFrame(img.image, 0, 0.0, overlay=("stats line",))
        for _ in range(5):
            sink.send(img)
        assert sink.count == 5
        xdotool = shutil.which("xdotool")
        if xdotool:
            wid = subprocess.run([xdotool, "search", "--name", "avatarcam-test"], capture_output=True,
                                 text=True).stdout.split()
            assert wid, "the preview window is not on the X display"
            subprocess.run([xdotool, "windowfocus", "--sync", wid[0]], check=False, timeout=5)
            subprocess.run([xdotool, "key", "--window", wid[0], "i"], check=False, timeout=5)
            deadline = time.time() + 3
            while not keys and time.time() < deadline:
                sink.send(img)
            assert ord("i") in keys
    finally:
        sink.close()


def test_window_sink_without_display_is_a_clear_error(monkeypatch):
    from avatarcam.sinks.window import WindowSink

    if not sys.platform.startswith("linux"):
        pytest.skip("DISPLAY only matters on Linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="DISPLAY"):
        WindowSink()
