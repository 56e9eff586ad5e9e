"""A live session: the pipeline plus the state a user changes while live (avatar, calibration, ...)."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from avatarcam.app import (build_compositor, build_cropper, build_sinks, build_tracker, engine_options,
                           load_avatars, pick_avatar)
from avatarcam.config import AppConfig
from avatarcam.engines import Engine, create_engine
from avatarcam.pipeline import Pipeline
from avatarcam.processing import FrameProcessor
from avatarcam.sinks.base import Sink
from avatarcam.sources import Source, open_source

log = logging.getLogger(__name__)

QUIT_KEYS = {27, ord("q"), ord("Q")}


class LiveSession:
    """Builds and owns the live loop's parts from ``config``; ``run()`` blocks until quit.

    ``sinks`` and ``source_factory`` replace the configured ones (tests, embedding).
    """

    def __init__(self, *, config: AppConfig, engine_factory: Callable[[dict[str, Any]], Engine] | None = None,
                 sinks: Sequence[Sink] | None = None, source_factory: Callable[[], Source] | None = None) -> None:
        self.config = config
        self._closers: list[Callable[[], None]] = []
        try:
            self.library = load_avatars(config)
            self.avatar = pick_avatar(config, self.library)
            options = engine_options(config)
            self.engine = engine_factory(options) if engine_factory else create_engine(config.engine.name, **options)
            self._closers.append(self.engine.close)
            self.tracker = build_tracker(config) if (self.engine.needs_landmarks or config.crop.follow) else None
            if self.tracker is not None:
                self._closers.append(self.tracker.close)
            self.compositor = build_compositor(config)
            self.processor = FrameProcessor(engine=self.engine, compositor=self.compositor, tracker=self.tracker,
                                            cropper=build_cropper(config))
            self.processor.set_avatar(self.avatar)
            self.sinks = list(sinks) if sinks is not None else build_sinks(config, on_key=self.on_key)
            if sinks is None:
                self._closers.extend(s.close for s in self.sinks)
            self.pipeline = Pipeline(
                open_source=source_factory or (lambda: open_source(config.capture)),
                processor=self.processor, sinks=self.sinks, fps=config.output.fps,
                retry_s=config.capture.retry_s, show_stats=config.stats,
                placeholder=self.compositor.compose(self.avatar.image))
            self._closers.append(self.pipeline.close)
        except BaseException:
            self.close()
            raise
        self._stats_stop = threading.Event()

    def on_key(self, key: int) -> None:
        if key in QUIT_KEYS:
            self.pipeline.stop()
        elif key in (ord("i"), ord("I")):
            self.pipeline.show_stats = not self.pipeline.show_stats
        elif key in (ord("x"), ord("X")):
            self.engine.calibrate()

    def _print_stats(self) -> None:
        while not self._stats_stop.wait(5.0):
            log.info("stats: %s", " | ".join(self.pipeline.stats.snapshot().lines()))

    def run(self, *, duration: float | None = None) -> int:
        printer = None
        if self.config.stats:
            printer = threading.Thread(target=self._print_stats, name="avatarcam-stats", daemon=True)
            printer.start()
        try:
            return self.pipeline.run(duration=duration, until_input_ends=not self.config.capture.loop)
        except KeyboardInterrupt:
            return 0
        finally:
            self._stats_stop.set()
            if printer is not None:
                printer.join()

    def close(self) -> None:
        # Reverse order of creation: the pipeline's threads stop before the engine and sinks go.
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - keep closing the rest
                log.exception("error while closing")

    def __enter__(self) -> "LiveSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
