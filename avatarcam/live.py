"""A live session: the pipeline plus the state a user changes while live (avatar, calibration, ...).

Hotkeys from the preview window and requests to the control API both become commands of one
:class:`~avatarcam.controls.Controller` (see :mod:`avatarcam.hotkeys`, :mod:`avatarcam.control_api`).
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import Callable, Sequence

from avatarcam.app import (build_compositor, build_cropper, build_sinks, build_tracker, engine_options,
                           fit_avatar, load_avatars, pick_avatar)
from avatarcam.avatars.types import Avatar
from avatarcam.config import AppConfig
from avatarcam.control_api import ApiConfig, ControlApi
from avatarcam.controls import Controller, ControlsConfig
from avatarcam.engines import Engine, create_engine
from avatarcam.hotkeys import handle_key
from avatarcam.pipeline import Pipeline
from avatarcam.processing import FrameProcessor
from avatarcam.settings import SettingsStore
from avatarcam.sinks.base import Sink
from avatarcam.sources import Source, open_source

log = logging.getLogger(__name__)


class LiveSession:
    """Builds and owns the live loop's parts from ``config``; ``run()`` blocks until quit.

    ``sinks`` and ``source_factory`` replace the configured ones (tests, embedding); ``avatars``
    replaces the avatar library with a fixed list (then "reload" has nothing to scan).
    ``controls`` / ``api`` replace ``config.controls`` / ``config.api``.
    """

    def __init__(self, *, config: AppConfig, engine_factory: Callable[[AppConfig], Engine] | None = None,
                 sinks: Sequence[Sink] | None = None, source_factory: Callable[[], Source] | None = None,
                 avatars: Sequence[Avatar] | None = None, controls: ControlsConfig | None = None,
                 api: ApiConfig | None = None) -> None:
        self.config = config
        controls = controls or getattr(config, "controls", None) or ControlsConfig()
        api = api or getattr(config, "api", None) or ApiConfig()
        self.api: ControlApi | None = None
        self._closers: list[Callable[[], None]] = []
        try:
            reload: Callable[[], Sequence[Avatar]] | None = None
            extra: list[Avatar] = []
            if avatars is not None:
                self.library = None
                picked = avatars[0]
            else:
                self.library = load_avatars(config)
                picked = pick_avatar(config, self.library)
                if not any(a.content_hash == picked.content_hash for a in self.library):
                    extra = [picked]
            # A factory (e.g. a remote worker) decides itself which local options it needs.
            self.engine = (engine_factory(config) if engine_factory
                           else create_engine(config.engine.name, **engine_options(config)))
            self._closers.append(self.engine.close)
            self.tracker = build_tracker(config) if (self.engine.needs_landmarks or config.crop.follow) else None
            if self.tracker is not None:
                self._closers.append(self.tracker.close)
            self.compositor = build_compositor(config)
            # Every avatar at the resolution this output needs (see fit_avatar), before anything uses
            # it; the library keeps only those copies, so a folder of phone photos costs little memory.
            fit = functools.partial(fit_avatar, compositor=self.compositor,
                                    crop_size=getattr(self.engine, "size", None))
            if self.library is not None:
                self.library.set_fit(fit)
                extra = [fit(a) for a in extra]
                switchable = extra + list(self.library)
                reload = self._reload_library(extra)
            else:
                switchable = [fit(a) for a in avatars]
            self.avatar = next(a for a in switchable if a.content_hash == picked.content_hash)
            self.processor = FrameProcessor(engine=self.engine, compositor=self.compositor, tracker=self.tracker,
                                            cropper=build_cropper(config), crossfade_s=controls.crossfade_s)
            self._closers.append(self.processor.close)
            self.processor.set_avatar(self.avatar)
            self.sinks = list(sinks) if sinks is not None else build_sinks(config, on_key=self.on_key)
            if sinks is None:
                self._closers.extend(s.close for s in self.sinks)
            self.pipeline = Pipeline(
                open_source=source_factory or (lambda: open_source(config.capture)),
                processor=self.processor, sinks=self.sinks, fps=config.output.fps,
                retry_s=config.capture.retry_s, show_stats=config.stats,
                placeholder=self.compositor.compose(
                    self.avatar.image, self.avatar.face.box if self.avatar.face is not None else None))
            settings = SettingsStore(folder=controls.settings_dir) if controls.persist else None
            self.controller = Controller(
                processor=self.processor, pipeline=self.pipeline, avatars=switchable, reload=reload,
                settings=settings, config=controls, base_zoom=config.crop.zoom,
                base_offset=tuple(config.crop.offset), mirror_output=config.output.mirror)
            self._closers.append(self.controller.close)  # after the loop stops: saves the avatar's settings
            self.pipeline.overlay_provider = self.controller.overlay_lines
            self.pipeline.preview_provider = self.controller.preview_layers
            self._closers.append(self.pipeline.close)
            if api.enabled:
                self.api = ControlApi(controller=self.controller, config=api).start()
                self._closers.append(self.api.close)
            self.audio, self.voice = self._start_audio(config)
        except BaseException:
            self.close()
            raise
        self._stats_stop = threading.Event()

    def _start_audio(self, config: AppConfig):
        """The delayed microphone pass-through and the voice-driven mouth, when enabled. A missing audio
        device or PortAudio library is reported once; the video keeps running without audio."""
        if not config.audio.enabled:
            return None, None
        from avatarcam.audio import AudioPassthrough, SyntheticDriver
        from avatarcam.errors import AvatarcamError

        voice = SyntheticDriver.from_config(config.audio) if config.audio.voice_mode != "off" else None
        try:
            audio = AudioPassthrough(config=config.audio, on_level=voice.push_level if voice else None)
            audio.start()
        except (AvatarcamError, OSError) as exc:
            log.warning("audio disabled: %s", exc)
            return None, None
        self._closers.append(audio.close)
        self.processor.voice = voice
        log.info("audio: microphone -> output delayed by %s", config.audio.delay)
        return audio, voice

    def _reload_library(self, extra: list[Avatar]) -> Callable[[], list[Avatar]]:
        def reload() -> list[Avatar]:
            self.library.reload()
            for path, problem in self.library.problems:
                log.warning("avatar %s skipped: %s", path, problem)
            return extra + list(self.library)

        return reload

    def on_key(self, key: int) -> None:
        """A key code from the preview window (``cv2.waitKeyEx``): run its hotkey, if any."""
        handle_key(self.controller, key)

    def _monitor(self) -> None:
        """Once a second: keep the audio delay on the measured video latency; every 5 s print stats."""
        ticks = 0
        auto_delay = self.audio is not None and self.config.audio.delay == "auto"
        while not self._stats_stop.wait(1.0):
            ticks += 1
            snap = self.pipeline.stats.snapshot()
            if auto_delay and snap.latency_ms[0] == snap.latency_ms[0]:  # not NaN
                self.audio.set_target_delay(snap.latency_ms[0] / 1000.0)
            if self.config.stats and ticks % 5 == 0:
                log.info("stats: %s", " | ".join(snap.lines()))

    def run(self, *, duration: float | None = None) -> int:
        printer = None
        if self.config.stats or self.audio is not None:
            printer = threading.Thread(target=self._monitor, name="avatarcam-monitor", daemon=True)
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
        # Reverse order of creation: the API and the pipeline's threads stop before the settings are
        # saved and before the engine and sinks go.
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
