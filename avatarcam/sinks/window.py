"""The preview window (OpenCV highgui). Overlays are drawn here only, never in the virtual camera.

What only the preview shows travels on the :class:`~avatarcam.frame.OutputFrame` (``overlay`` text
and ``preview`` layers) and is drawn on a copy here, so other sinks get the clean image.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import cv2
import numpy as np

from avatarcam.errors import SinkError
from avatarcam.frame import OutputFrame, PreviewLayers
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


def draw_panel(image_bgr: np.ndarray, lines: tuple[str, ...] | list[str], scale: float = 0.5) -> None:
    """Draw ``lines`` in a dark box centred on the image (in place), shrinking the text to fit.
    A tab splits a line into two columns (key, action), aligned by measured width: the font is
    proportional, so padding with spaces would not line up."""
    if not lines:
        return
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    h, w = image_bgr.shape[:2]
    rows = [line.split("\t", 1) for line in lines]

    def width(text: str, s: float) -> int:
        return cv2.getTextSize(text, font, s, thick)[0][0]

    gap = width("    ", scale)
    first = max((width(r[0], scale) for r in rows if len(r) == 2), default=0)
    widest = max(first + gap + width(r[1], scale) if len(r) == 2 else width(r[0], scale) for r in rows)
    line_h = cv2.getTextSize("Hg", font, scale, thick)[0][1] + 8
    fit = min(1.0, (w - 24) / (widest + 12), (h - 12) / (line_h * len(rows) + 6))
    scale, first, gap, line_h = scale * fit, int(first * fit), int(gap * fit), max(1, int(line_h * fit))
    box_w, box_h = int((widest + 12) * fit), line_h * len(rows) + 6
    x0, y0 = max(0, (w - box_w) // 2), max(0, (h - box_h) // 2)
    roi = image_bgr[y0 : y0 + box_h, x0 : x0 + box_w]
    roi[:] = (roi * 0.3).astype(np.uint8)
    for i, row in enumerate(rows):
        y = y0 + (i + 1) * line_h
        cv2.putText(image_bgr, row[0], (x0 + 6, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
        if len(row) == 2:
            cv2.putText(image_bgr, row[1], (x0 + 6 + first + gap, y), font, scale, (255, 255, 255), thick,
                        cv2.LINE_AA)


def draw_layers(image_rgb: np.ndarray, layers: PreviewLayers) -> np.ndarray:
    """The preview picture: ``image_rgb`` with the ghost blended and the landmark points drawn,
    mirrored when asked. Returns a new BGR image; ``image_rgb`` is never modified."""
    ghost = layers.ghost
    if ghost is not None and ghost.shape == image_rgb.shape:
        image_rgb = cv2.addWeighted(image_rgb, 1.0 - layers.ghost_alpha, ghost, layers.ghost_alpha, 0.0)
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    # Square dots set with one fancy-index per layer: ~1000 cv2.circle calls cost ~10 ms a frame.
    r = max(1, round(w / 640)) - 1
    d = np.arange(-r, r + 1)
    dx, dy = (a.ravel() for a in np.meshgrid(d, d))
    for points, (red, green, blue) in layers.points:
        xy = np.round(points).astype(np.intp)
        x = (xy[:, :1] + dx).ravel()
        y = (xy[:, 1:2] + dy).ravel()
        keep = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        bgr[y[keep], x[keep]] = (blue, green, red)
    if layers.mirror:
        bgr = cv2.flip(bgr, 1)
    return bgr


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

    def render(self, frame: OutputFrame) -> np.ndarray:
        """The BGR picture the window shows for ``frame`` (layers, mirroring, text)."""
        layers = frame.preview
        if layers is not None and not self.show_overlay:  # keep the mirroring, drop the drawings
            layers = PreviewLayers(mirror=layers.mirror)
        bgr = draw_layers(frame.image, layers) if layers is not None else cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        if self.show_overlay:
            # Text after mirroring, so it stays readable.
            draw_text_lines(bgr, frame.overlay)
            if layers is not None:
                draw_panel(bgr, layers.panel)
        return bgr

    def send(self, frame: OutputFrame) -> None:
        bgr = self.render(frame)
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
