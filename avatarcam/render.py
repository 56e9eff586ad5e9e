"""Offline rendering: every frame of a driving video through the engine, written to a file."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from avatarcam.avatars.types import Avatar
from avatarcam.compositing import Compositor
from avatarcam.engines.base import Engine
from avatarcam.processing import Cropper, FrameProcessor, Tracker
from avatarcam.sinks.base import Sink
from avatarcam.sinks.file import FileSink
from avatarcam.sources.opencv import VideoFileSource
from avatarcam.stats import Stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderResult:
    frames: int
    fps: float
    seconds: float
    out: Path | None
    stats: dict


def render_video(*, avatar: Avatar, driving: str | Path, engine: Engine, out: str | Path | None = None,
                 sink: Sink | None = None, tracker: Tracker | None = None, cropper: Cropper | None = None,
                 compositor: Compositor | None = None, progress: bool = True,
                 max_frames: int | None = None) -> RenderResult:
    """Render ``driving`` (every frame, in order) against ``avatar`` to ``out`` (mp4 at the input's fps)
    or to ``sink``. The output size is the engine's own unless ``compositor`` says otherwise."""
    source = VideoFileSource(path=driving, realtime=False, loop=False)
    stats = Stats()
    processor = FrameProcessor(engine=engine, compositor=compositor or Compositor(width=None, height=None),
                               tracker=tracker, cropper=cropper, stats=stats)
    processor.set_avatar(avatar)
    own_sink = sink is None
    if own_sink:
        if out is None:
            raise ValueError("render_video needs out= or sink=")
        sink = FileSink(path=out, fps=source.fps)
    total = source.frame_count if max_frames is None else min(max_frames, source.frame_count)
    t0 = time.perf_counter()
    n = 0
    try:
        with source, tqdm(total=total or None, unit="frame", disable=not progress, desc="render") as bar:
            for frame in source:
                sink.send(processor.process(frame))
                n += 1
                bar.update(1)
                if max_frames is not None and n >= max_frames:
                    break
    finally:
        if own_sink:
            sink.close()
    seconds = time.perf_counter() - t0
    return RenderResult(frames=n, fps=source.fps, seconds=seconds, out=Path(out) if out else None,
                        stats=stats.snapshot().as_dict())
