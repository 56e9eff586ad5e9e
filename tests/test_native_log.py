"""Native libraries' routine stderr lines are kept off the terminal; everything else gets through."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from avatarcam.native_log import is_routine, native_stderr

ROUTINE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1795290387.496297   17269 gl_context_egl.cc:85] Successfully initialized EGL. Major : 1 Minor: 5",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    (b"W0000 00:00:1795290387.539724   17280 inference_feedback_manager.cc:114] Feedback manager requires a model "
     b"with a single signature inference. Disabling support for feedback tensors."),
]
KEPT = [
    b"E0000 00:00:1795290387.539724   17280 calculator_graph.cc:928] INTERNAL: the model failed to load",
    b"F0000 00:00:1795290387.539724   17280 graph.cc:1] Check failed: x",
    b"Traceback (most recent call last):",
    b"avatarcam: error: camera 0 disappeared",
    b"W0000 but not in absl's format",
]


def test_routine_lines_are_recognised_and_errors_are_not():
    assert all(is_routine(line) for line in ROUTINE)
    assert not any(is_routine(line) for line in KEPT)


def test_capture_drops_routine_lines_keeps_the_rest_in_order(capfd, caplog):
    capfd.readouterr()
    with native_stderr():
        for line in (ROUTINE[0], KEPT[0], ROUTINE[2], KEPT[2], KEPT[3]):
            os.write(2, line + b"\n")
        assert capfd.readouterr().err == ""  # held back until the block ends
    err = capfd.readouterr().err
    assert err.splitlines() == [KEPT[0].decode(), KEPT[2].decode(), KEPT[3].decode()]
    # At DEBUG (avatarcam -vv) nothing is captured: native output arrives live.
    with caplog.at_level(logging.DEBUG, logger="avatarcam.native"), native_stderr():
        os.write(2, ROUTINE[1] + b"\n")
        assert ROUTINE[1].decode() in capfd.readouterr().err


def test_nested_and_concurrent_captures_lose_nothing(capfd):
    capfd.readouterr()
    barrier = threading.Barrier(4)

    def worker(k: int) -> None:
        with native_stderr():
            barrier.wait(timeout=10)
            with native_stderr():
                os.write(2, ROUTINE[k % len(ROUTINE)] + b"\n")
                os.write(2, f"kept line from thread {k}\n".encode())
            barrier.wait(timeout=10)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == [f"kept line from thread {k}" for k in range(4)]
    os.write(2, b"after\n")  # fd 2 is the terminal again
    assert capfd.readouterr().err == "after\n"


def test_a_render_prints_no_mediapipe_start_up_lines(tmp_path, driving_video, avatar_photo):
    """Rendering a few frames (two face meshes start: the avatar photo's and the driver's) prints none
    of MediaPipe's routine start-up lines."""
    out = tmp_path / "o.mp4"
    code = "import sys; from avatarcam.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "render", "--engine", "mesh", "--avatar", str(avatar_photo),
                        "--driving", str(driving_video), "--out", str(out), "--max-frames", "5", "--no-progress"],
                       capture_output=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr.decode()
    lines = (r.stdout + r.stderr).splitlines()
    assert not [line for line in lines if is_routine(line)], r.stderr.decode()
    assert out.stat().st_size > 0
