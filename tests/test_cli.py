import os
import signal
import subprocess
import sys
import time

import cv2
import pytest

from avatarcam.cli import main

from conftest import REPO, avatarcam_threads


def avatarcam_cmd() -> list[str]:
    """The console script of the project's venv, or the module when there is none."""
    exe = REPO / ".venv" / "bin" / "avatarcam"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "avatarcam.cli"]


def start_run_to_file(out, driving_video, avatar_photo) -> subprocess.Popen:
    """A live run (the video as the camera) writing ``out``, returned once the file has grown."""
    proc = subprocess.Popen([*avatarcam_cmd(), "run", "--engine", "passthrough", "--avatar", str(avatar_photo),
                             "--driving", str(driving_video), "--sink", "file", "--out", str(out), "--width", "320",
                             "--height", "180"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 20000):
        time.sleep(0.2)
    time.sleep(0.5)
    return proc


def frame_count(path):
    cap = cv2.VideoCapture(str(path))
    n, fps = 0, cap.get(cv2.CAP_PROP_FPS)
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps


def test_render_passthrough_writes_one_frame_per_input_frame(tmp_path, driving_video, avatar_photo, capsys):
    out = tmp_path / "pt.mp4"
    rc = main(["render", "--engine", "passthrough", "--avatar", str(avatar_photo), "--driving", str(driving_video),
               "--out", str(out), "--size", "256", "--no-progress"])
    assert rc == 0
    n, fps = frame_count(out)
    assert (n, fps) == (169, 25.0)
    assert "wrote 169 frames" in capsys.readouterr().out


def test_run_with_a_video_as_camera_to_a_file(tmp_path, driving_video, avatar_photo):
    out = tmp_path / "live.mp4"
    rc = main(["run", "--engine", "passthrough", "--avatar", str(avatar_photo), "--driving", str(driving_video),
               "--sink", "file", "--out", str(out), "--width", "320", "--height", "180", "--fps", "20",
               "--duration", "1.5"])
    assert rc == 0
    n, fps = frame_count(out)
    assert fps == 20 and 25 <= n <= 31
    assert avatarcam_threads() == []


@pytest.mark.parametrize("argv, needle", [
    (["render", "--engine", "passthrough", "--driving", "/nope.mp4", "--out", "/tmp/x.mp4"], "not found"),
    (["run", "--engine", "passthrough", "--sink", "file", "--out", "/no/such/dir/o.mp4", "--driving", "x.mp4"],
     "does not exist"),
    (["run", "--avatar", "/definitely/missing.png", "--sink", "null"], "missing"),
])
def test_bad_input_exits_with_a_clear_error(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("avatarcam: error:") and needle in err


def test_console_script_and_doctor_run():
    cmd = avatarcam_cmd()
    r = subprocess.run([*cmd, "doctor"], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    assert "landmark models" in r.stdout and "virtual camera" in r.stdout
    # Each fix is said once: a missing camera suggests --driving in one place, not twice.
    assert r.stdout.count("--driving") <= 1, r.stdout
    r = subprocess.run([*cmd, "devices"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Virtual camera backends" in r.stdout


def test_sigterm_finalises_the_output_file(tmp_path, driving_video, avatar_photo):
    """A terminated live run still leaves a playable mp4 (the loop stops and the sinks close)."""
    out = tmp_path / "term.mp4"
    proc = start_run_to_file(out, driving_video, avatar_photo)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    n, fps = frame_count(out)
    assert n > 5 and fps == 30


def test_repeated_sigterm_still_finalises_the_output_file(tmp_path, driving_video, avatar_photo):
    """`timeout make run` delivers SIGTERM twice (timeout signals the process group, make passes its
    own on). A signal that lands after the loop has ended but before the sinks are closed must not
    kill the run with a half-written file: SIGTERM every 20 ms until the process is gone."""
    out = tmp_path / "burst.mp4"
    proc = start_run_to_file(out, driving_video, avatar_photo)
    deadline = time.time() + 30
    while proc.poll() is None and time.time() < deadline:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
    # Once everything is closed, a last SIGTERM may still end the process itself; the file must be whole.
    assert proc.wait(5) in (0, -signal.SIGTERM)
    n, fps = frame_count(out)
    assert n > 5 and fps == 30


def test_missing_camera_is_explained_once_not_flooded(tmp_path, avatar_photo):
    """No camera at the given path: the live run keeps streaming its placeholder and says, once, what to
    do (OpenCV's own two warnings per retry are silenced), then stops cleanly at --duration."""
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    r = subprocess.run([*avatarcam_cmd(), "run", "--engine", "passthrough", "--avatar", str(avatar_photo), "--camera",
                        "/dev/video-missing-77", "--sink", "null", "--duration", "5"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("cannot be opened") == 1 and "--driving FILE" in r.stderr, r.stderr
    assert "[ WARN" not in r.stderr, r.stderr


def test_global_options_work_before_and_after_the_command(tmp_path, capsys):
    from avatarcam.cli import build_parser

    parser = build_parser()
    assert (parser.parse_args(["run"]).verbose, parser.parse_args(["run"]).config) == (0, None)
    assert parser.parse_args(["-v", "run"]).verbose == 1
    assert parser.parse_args(["run", "-vv"]).verbose == 2
    assert parser.parse_args(["--config", "a.toml", "render", "--driving", "d", "--out", "o"]).config == "a.toml"
    assert parser.parse_args(["--config", "a.toml", "doctor", "--config", "b.toml"]).config == "b.toml"
    toml = tmp_path / "mine.toml"
    toml.write_text("[output]\nwidth = 640\nheight = 360\n")
    assert main(["config", "--print", "--config", str(toml)]) == 0
    printed = capsys.readouterr().out
    assert "width = 640" in printed and "height = 360" in printed
