"""Driving-frame sources (camera, video file, still image) and the capture thread."""
from __future__ import annotations

from pathlib import Path

from avatarcam.config import CaptureConfig
from avatarcam.sources.base import EndOfStream, Source
from avatarcam.sources.opencv import IMAGE_SUFFIXES, ImageSource, VideoFileSource, WebcamSource, read_image


def open_source(config: CaptureConfig) -> Source:
    """Open what ``config.source`` names: a camera index, a ``/dev/video*`` path, an image or a video."""
    spec = config.source.strip()
    if spec.isdigit():
        return WebcamSource(device=int(spec), width=config.width, height=config.height, fps=config.fps,
                            mjpg=config.mjpg)
    if spec.startswith("/dev/video"):
        return WebcamSource(device=spec, width=config.width, height=config.height, fps=config.fps, mjpg=config.mjpg)
    if Path(spec).suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path=spec, fps=config.fps, realtime=config.realtime)
    return VideoFileSource(path=spec, realtime=config.realtime, loop=config.loop)


__all__ = ["EndOfStream", "ImageSource", "Source", "VideoFileSource", "WebcamSource", "open_source", "read_image"]
