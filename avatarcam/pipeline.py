"""The live loop: capture thread -> processing thread -> paced output loop -> sinks.

Stages hand over through one-slot mailboxes (latest frame wins), so a slow engine skips stale
frames instead of building a queue. The output loop runs on the caller's thread at a steady
``fps`` (``start + n * period``): when the engine is late it repeats the last frame, because
video-call apps want a steady stream. Every thread stops on an event and is joined by
``close()``; an exception in a worker thread is re-raised by ``run()``.

Live controls that act on the output itself live here, so they take effect on the very next
output frame whatever the engine is doing: ``freeze`` (hold the frame on screen), ``still``
(an image shown instead, e.g. "be right back"), and two hooks that add preview-only text
(``overlay_provider``) and layers (``preview_provider``) to each :class:`OutputFrame`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

import cv2
import numpy as np

from avatarcam.frame import Frame, OutputFrame, PreviewLayers
from avatarcam.mailbox import Mailbox
from avatarcam.processing import FrameProcessor
from avatarcam.sinks.base import Sink
from avatarcam.sources.base import Source
from avatarcam.sources.capture import CaptureThread
from avatarcam.stats import Stats

log = logging.getLogger(__name__)


def placeholder_image(width: int, height: int, text: str) -> np.ndarray:
    """A dark frame with a centred message, for when there is nothing to show yet."""
    img = np.full((height, width, 3), 24, dtype=np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.5, width / 1280)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(img, text, ((width - tw) // 2, (height + th) // 2), font, scale, (200, 200, 200), 1, cv2.LINE_AA)
    return img


class Pipeline:
    def __init__(self, *, open_source: Callable[[], Source], processor: FrameProcessor, sinks: Sequence[Sink],
                 fps: float = 30.0, stats: Stats | None = None, retry_s: float = 2.0, show_stats: bool = False,
                 placeholder: np.ndarray | None = None,
                 overlay_provider: Callable[[], Sequence[str]] | None = None,
                 preview_provider: Callable[[PreviewLayers | None], PreviewLayers | None] | None = None) -> None:
        self.processor, self.sinks, self.fps = processor, list(sinks), fps
        self.stats = stats or processor.stats
        self.show_stats = show_stats
        self.freeze = False  # hold the frame on screen (the engine keeps running)
        self.still: np.ndarray | None = None  # shown instead of the live output when set (output size)
        self.overlay_provider = overlay_provider
        self.preview_provider = preview_provider
        self._frames: Mailbox[Frame] = Mailbox()
        self._outputs: Mailbox[OutputFrame] = Mailbox()
        self._capture = CaptureThread(open_source=open_source, mailbox=self._frames, stats=self.stats, retry_s=retry_s)
        self._stop = threading.Event()
        # Set by request_stop() from a signal handler, where taking _stop's lock could deadlock.
        self._stop_requested = False
        self._processed_all = threading.Event()
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._process_loop, name="avatarcam-process", daemon=True)
        size = (processor.compositor.width, processor.compositor.height)
        self._placeholder = placeholder if placeholder is not None else placeholder_image(*size, "starting camera...")
        self._started = False
        self._closed = False
        self.last_output: OutputFrame | None = None

    # -- threads -------------------------------------------------------------------------
    def start(self) -> "Pipeline":
        if not self._started:
            self._started = True
            self._capture.start()
            self._worker.start()
        return self

    def _process_loop(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self._frames.get(timeout=0.1)
                if frame is None:
                    if self._frames.closed and self._capture.finished.is_set():
                        break
                    continue
                self.stats.dropped_capture = self._frames.dropped
                out = self.processor.process(frame)
                self._outputs.put(out)
                self.stats.dropped_engine = self._outputs.dropped
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread by run()
            self._error = exc
            log.exception("processing thread failed")
        finally:
            self._processed_all.set()
            self._outputs.close()

    # -- output loop (caller's thread) ---------------------------------------------------
    @property
    def capture_status(self) -> str:
        return self._capture.status

    def stop(self) -> None:
        """Ask ``run()`` to return (safe from any thread, e.g. a hotkey)."""
        self._stop.set()

    def request_stop(self) -> None:
        """Ask ``run()`` to return, from a signal handler. A handler runs on the main thread between
        two bytecodes, possibly while that thread holds the lock inside ``_stop.wait()``; ``stop()``
        would then wait on that lock for ever. This only sets a flag, which ``run()`` reads at least
        once per output frame."""
        self._stop_requested = True

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop`, :meth:`request_stop` (or :meth:`close`) was called."""
        return self._stop_requested or self._stop.is_set()

    def _raise_worker_error(self) -> None:
        err = self._error or self._capture.error
        if err is not None:
            raise err

    def run(self, *, duration: float | None = None, max_frames: int | None = None,
            until_input_ends: bool = True) -> int:
        """Send frames to the sinks at ``fps`` until stopped, ``duration`` s, ``max_frames`` sent, or (for a
        finite source with ``until_input_ends``) the input is exhausted. Returns the number of frames sent."""
        self.start()
        period = 1.0 / self.fps
        t_start = time.perf_counter()
        n = 0
        current: OutputFrame | None = None
        while not self.stopping:
            due = t_start + n * period
            now = time.perf_counter()
            if due > now:
                if self._stop.wait(due - now) or self._stop_requested:
                    break
            elif now - due > 5 * period:
                t_start = now - n * period  # we were suspended: resync instead of bursting frames
            self._raise_worker_error()
            fresh = self._outputs.get_nowait()
            now = time.perf_counter()
            if fresh is not None and (current is None or not self.freeze):
                current = fresh
                self.stats.latency(now - fresh.t_capture)
            elif current is not None:
                fresh = None  # a frozen frame counts as repeated
                self.stats.repeated_output += 1
            elif self._processed_all.is_set() and until_input_ends:
                break
            # One read of ``still``: another thread may clear it meanwhile.
            still = self.still
            image = still if still is not None else current.image if current is not None else self._placeholder
            preview = current.preview if current is not None and still is None else None
            if self.preview_provider is not None:
                preview = self.preview_provider(preview)
            out = OutputFrame(image, current.source_index if current else -1, current.t_capture if current else 0.0,
                              overlay=self._overlay_lines(), repeated=fresh is None, preview=preview)
            for sink in self.sinks:
                sink.send(out)
            self.last_output = out
            self.stats.event("output")
            self.stats.frames_out += 1
            n += 1
            if max_frames is not None and n >= max_frames:
                break
            if duration is not None and time.perf_counter() - t_start >= duration:
                break
            if until_input_ends and fresh is None and self._processed_all.is_set():
                break
        self._raise_worker_error()
        return n

    def _overlay_lines(self) -> tuple[str, ...]:
        lines: list[str] = []
        status = self._capture.status
        if status not in ("ok", "end of input"):
            lines.append(f"camera: {status}")
        if self.show_stats:
            lines.extend(self.stats.snapshot().lines())
        if self.overlay_provider is not None:
            lines.extend(self.overlay_provider())
        return tuple(lines)

    def close(self) -> None:
        """Stop and join every thread (idempotent). Sinks are closed by their owner."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._capture.close()
        self._frames.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
