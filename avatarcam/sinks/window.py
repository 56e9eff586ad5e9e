"""The preview window (OpenCV highgui). Overlays are drawn here only, never in the virtual camera."""
from __future__ import annotations

import os
import sys
from typing import Callable

import cv2
import numpy as np

from avatarcam.errors import SinkError
from avatarcam.frame import OutputFrame
from avatarcam.sinks.base import Sink


def draw_text_lines(image_bgr: np.ndarray, lines: tuple[str, ...] | list[str], origin: tuple[int, int] = (10, 10),
                    scale: float = 0.5) -> None:
    """Draw ``lines`` in the top-left corner on a translucent dark box (in place)."""
    if not lines:
        return
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    sizes = [cv2.getTextSize(s, font, scale, thick)[0] for s in lines]
    line_h = max(h for _, h in sizes) + 8
    w = max(w for w, _ in sizes) + 12
    h = line_h * len(lines) + 6
    x0, y0 = origin
    x1, y1 = min(image_bgr.shape[1], x0 + w), min(image_bgr.shape[0], y0 + h)
    roi = image_bgr[y0:y1, x0:x1]
    roi[:] = (roi * 0.35).astype(np.uint8)
    for i, s in enumerate(lines):
        cv2.putText(image_bgr, s, (x0 + 6, y0 + (i + 1) * line_h), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


class WindowSink(Sink):
    """Shows frames in a resizable window and reports key presses to ``on_key`` (OpenCV key codes).

    Must be driven from one thread (the pipeline's output loop runs on the main thread). Closing the
    window reports ``ord('q')``.
    """

    name = "window"

    def __init__(self, *, title: str = "avatarcam", on_key: Callable[[int], None] | None = None,
                 show_overlay: bool = True) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise SinkError("no display for the preview window (DISPLAY is not set). "
                            "Run from a desktop session, or use --sink virtualcam / --sink file --out OUT.mp4.")
        self.title, self.on_key, self.show_overlay = title, on_key, show_overlay
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"cannot open the preview window ({exc}). Use --sink virtualcam or --sink file.") from exc
        self._sized = False
        self.count = 0

    def send(self, frame: OutputFrame) -> None:
        bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        if self.show_overlay and frame.overlay:
            draw_text_lines(bgr, frame.overlay)
        if not self._sized:
            h, w = bgr.shape[:2]
            scale = min(1.0, 960 / w)
            cv2.resizeWindow(self.title, int(w * scale), int(h * scale))
            self._sized = True
        cv2.imshow(self.title, bgr)
        self.count += 1
        key = cv2.waitKeyEx(1)
        if self.on_key is None:
            return
        if key != -1:
            self.on_key(key)
        elif cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.on_key(ord("q"))

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
