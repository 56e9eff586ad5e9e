"""The capture thread: reads a source as fast as it delivers and keeps only the latest frame.

A source that cannot be opened or fails mid-call is closed and re-opened every ``retry_s``
seconds; meanwhile ``status`` says what is wrong, and the output loop keeps the stream alive.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from avatarcam.errors import SourceError
from avatarcam.frame import Frame
from avatarcam.mailbox import Mailbox
from avatarcam.sources.base import EndOfStream, Source
from avatarcam.stats import Stats

log = logging.getLogger(__name__)


class CaptureThread:
    def __init__(self, *, open_source: Callable[[], Source], mailbox: Mailbox[Frame], stats: Stats,
                 retry_s: float = 2.0) -> None:
        self._open, self._mailbox, self._stats, self._retry_s = open_source, mailbox, stats, retry_s
        self._stop = threading.Event()
        self.finished = threading.Event()  # set at the end of a finite source or on a fatal error
        self.error: BaseException | None = None
        self.status = "starting"
        self.fps: float | None = None
        self._thread = threading.Thread(target=self._run, name="avatarcam-capture", daemon=True)

    def start(self) -> "CaptureThread":
        self._thread.start()
        return self

    def _set_status(self, status: str) -> None:
        if status != self.status:
            (log.info if status == "ok" else log.warning)("capture: %s", status)
        self.status = status

    def _run(self) -> None:
        source: Source | None = None
        count = 0  # our own index, so indices keep increasing across re-opens
        try:
            while not self._stop.is_set():
                if source is None:
                    try:
                        source = self._open()
                        self.fps = source.fps
                        self._set_status("ok")
                    except SourceError as exc:
                        self._set_status(f"{exc} Retrying every {self._retry_s:g} s.")
                        self._stop.wait(self._retry_s)
                        continue
                try:
                    frame = source.read()
                except EndOfStream:
                    self._set_status("end of input")
                    break
                except SourceError as exc:
                    self._set_status(f"{exc} Retrying every {self._retry_s:g} s.")
                    source.close()
                    source = None
                    self._stop.wait(self._retry_s)
                    continue
                if frame.index != count:
                    frame = Frame(frame.image, count, frame.t_capture)
                count += 1
                self._stats.event("input", frame.t_capture)
                self._mailbox.put(frame)
                self._stats.dropped_capture = self._mailbox.dropped
        except BaseException as exc:  # noqa: BLE001 - handed to the main loop, never swallowed
            self.error = exc
        finally:
            if source is not None:
                source.close()
            self.finished.set()
            self._mailbox.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # a session closed before it ran never started the thread
            self._thread.join(timeout=5.0)
