"""Native libraries' routine start-up lines, kept off the user's terminal.

MediaPipe's C++ graph and TensorFlow Lite write straight to file descriptor 2 while a face mesh
starts and on its first frame: "All log messages before absl::InitializeLog() ...", EGL and GL
versions, "Created TensorFlow Lite XNNPACK delegate", "Feedback manager requires a model with a
single signature ...", "Using NORM_RECT without IMAGE_DIMENSIONS ...". absl prints every severity
until ``absl::InitializeLog()``, which the Python wheel never calls, so ``GLOG_minloglevel`` and
``TF_CPP_MIN_LOG_LEVEL`` do not silence them. They are harmless, but on every start they look like
something went wrong.

:func:`native_stderr` captures file descriptor 2 while a block runs. Afterwards every captured line
goes back to stderr, in order, except absl's info and warning lines and TensorFlow Lite's ``INFO:``
lines, which are dropped. Error and fatal lines, Python output from other threads and anything
unrecognised pass through unchanged, only delayed to the end of the block. With the
``avatarcam.native`` logger enabled for DEBUG (``avatarcam -vv``) nothing is captured at all, so
every native line arrives, live. A process that dies inside a block (a crash in the native code)
takes what was captured with it: rerun with ``-vv`` to see everything it printed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger("avatarcam.native")

# absl: severity letter, MMDD, time, thread id, file:line] message. Only I and W are routine.
_ABSL_ROUTINE = re.compile(rb"^[IW]\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_ROUTINE = (
    _ABSL_ROUTINE,
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(rb"^INFO: "),  # TensorFlow Lite's own logger (delegates, interpreter)
)

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture = None


def is_routine(line: bytes) -> bool:
    """True for a native library's routine info / warning line (no trailing newline)."""
    return any(p.match(line) for p in _ROUTINE)


def _start() -> None:
    global _saved_fd, _capture
    capture = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _finish, when the last capture ends
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        raise
    try:
        os.dup2(capture.fileno(), 2)
    except OSError:
        os.close(saved)
        capture.close()
        raise
    _saved_fd, _capture = saved, capture


def _finish() -> None:
    global _saved_fd, _capture
    saved, capture = _saved_fd, _capture
    _saved_fd = _capture = None
    if saved is None or capture is None:
        return
    _flush_python_stderr()
    os.dup2(saved, 2)
    os.close(saved)
    capture.seek(0)
    data = capture.read()
    capture.close()
    kept = [line for line in data.splitlines(keepends=True) if not is_routine(line.rstrip(b"\r\n"))]
    if kept:
        os.write(2, b"".join(kept))


def _flush_python_stderr() -> None:
    stream = sys.stderr
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def native_stderr() -> Iterator[None]:
    """Capture file descriptor 2 for the block and pass on all but the routine native lines.

    Safe to nest and to enter from several threads: the first entry captures, the last exit
    releases. Without a usable file descriptor 2, or with ``avatarcam.native`` at DEBUG, it
    does nothing."""
    global _depth
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _lock:
        captured = True
        if _depth == 0:
            try:
                _start()
            except OSError:  # no usable fd 2 (a windowed app without a console): nothing to keep clean
                captured = False
        if captured:
            _depth += 1
    try:
        yield
    finally:
        if captured:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _finish()
