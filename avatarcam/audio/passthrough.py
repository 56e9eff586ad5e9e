"""Microphone -> delay -> output device, so the voice arrives together with the avatar's lips.

One full-duplex ``sounddevice.Stream`` reads the microphone and writes the output in the same
callback, so both sides run on one device clock and the delay, counted in samples by
:class:`~avatarcam.audio.delay.DelayLine`, cannot drift. (When input and output are different
hardware devices, PortAudio still drives both from one callback; their clocks may differ slightly,
which shows as occasional over/underruns, counted in :attr:`AudioPassthrough.xruns`: the extra
delay stays bounded by the stream's buffers instead of growing.)

Routing to a video-call app, Linux (PulseAudio or PipeWire's pulse server)::

    pactl load-module module-null-sink sink_name=avatarcam_out sink_properties=device.description=avatarcam_out
    # AudioConfig(enabled=True, output_device="avatarcam_out"): the delayed voice goes into that sink
    # In Zoom/Meet/Teams choose the microphone "Monitor of avatarcam_out".

PortAudio sees PulseAudio as one ``pulse`` device; names that are PulseAudio sinks/sources (or
``pulse:NAME``) are reached through it with ``PULSE_SINK``/``PULSE_SOURCE`` set while the stream
opens (see :mod:`avatarcam.audio.devices`). A sink name as *input* means its monitor. Through
PortAudio's ALSA plugin for PulseAudio a duplex stream's first callback can come about 2 s after
:meth:`AudioPassthrough.start` (measured on Debian 12, PulseAudio 16, PortAudio 19.6); the output is
silent until then and exact afterwards (:attr:`AudioPassthrough.blocks` counts callbacks). On Windows
and macOS install a virtual cable (VB-CABLE, BlackHole), choose its playback side as the output
device here and its recording side as the microphone in the call app.

Delay: a fixed ``AudioConfig.delay`` in seconds, or ``"auto"``, in which the pipeline calls
:meth:`AudioPassthrough.set_target_delay` with its glass-to-glass latency (p50); the figure is
smoothed, the audio path's own latency is subtracted, and the delay only moves by more than
``delay_hysteresis_s``, each move crossfaded over ``crossfade_s``.

A watchdog thread reopens the stream when no callback has come for ``AudioConfig.stall_s`` (a new
stream is first given :data:`FIRST_CALLBACK_GRACE_S` to start): the ALSA plugin for PulseAudio
occasionally never starts a duplex stream, and a suspended or unplugged device stops one. It keeps
retrying until a stream runs again (:attr:`AudioPassthrough.restarts` counts the reopenings); the
video never waits for it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from avatarcam.audio.config import AudioConfig
from avatarcam.audio.delay import DelayLine, DelaySmoother
from avatarcam.audio.devices import import_sounddevice, pulse_routing, resolve_device
from avatarcam.audio.voice import SILENCE_DB, rms_dbfs
from avatarcam.errors import AudioError

log = logging.getLogger(__name__)

# How long a newly opened stream may take to deliver its first block before the watchdog counts it
# as stalled: the ALSA plugin for PulseAudio takes about 2 s (see above).
FIRST_CALLBACK_GRACE_S = 4.0


class AudioPassthrough:
    """Delayed microphone pass-through on one full-duplex stream.

    ``on_level(level_dbfs)`` is called from the audio thread once per block with the input block's
    RMS level in dBFS (e.g. ``SyntheticDriver.push_level``); it must be quick and must not block.
    The latest level is also in :attr:`level_db`. Raises :class:`AudioError` from :meth:`start` when
    PortAudio or a device is missing; callers catch it and keep the video running.
    """

    def __init__(self, *, config: AudioConfig, on_level: Callable[[float], None] | None = None) -> None:
        if not isinstance(config, AudioConfig):
            raise TypeError(f"config must be an AudioConfig, got {type(config).__name__}")
        self.config = config
        self._on_level = on_level
        sr = config.samplerate
        fixed = config.fixed_delay_s
        self._line = DelayLine(max_delay=round(config.max_delay_s * sr), channels=config.channels,
                               crossfade=max(1, round(config.crossfade_s * sr)),
                               max_block=max(config.blocksize, 2048),
                               delay=0 if fixed is None else round(fixed * sr))
        self._smoother = DelaySmoother(weight=config.delay_smoothing, hysteresis_s=config.delay_hysteresis_s,
                                       max_s=config.max_delay_s)
        self._stream: Any = None
        self._level_db = SILENCE_DB
        self._xruns = 0
        self._blocks = 0
        self._restarts = 0
        self._lock = threading.Lock()  # opening and closing the stream
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- audio thread -------------------------------------------------------------------------
    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        # Runs on PortAudio's thread: no locks, no logging, no allocation beyond small scalars.
        if status:
            self._xruns += 1
        self._line.process(indata, outdata)
        level = rms_dbfs(indata)
        self._level_db = level
        self._blocks += 1
        if self._on_level is not None:
            self._on_level(level)

    # -- control ------------------------------------------------------------------------------
    def start(self) -> "AudioPassthrough":
        """Open and start the stream. Raises :class:`AudioError` with what to do when it cannot."""
        with self._lock:
            if self._stream is not None:
                return self
            self._stream = self._open()
            if self.config.stall_s > 0 and self._watchdog is None:
                self._stop.clear()
                self._watchdog = threading.Thread(target=self._watch, name="avatarcam-audio-watchdog", daemon=True)
                self._watchdog.start()
        return self

    def _open(self) -> Any:
        cfg = self.config
        sd = import_sounddevice()
        source = resolve_device(cfg.input_device, "input")
        sink = resolve_device(cfg.output_device, "output")
        try:
            with pulse_routing(source, sink):
                stream = sd.Stream(samplerate=cfg.samplerate, blocksize=cfg.blocksize,
                                   device=(source.index, sink.index), channels=cfg.channels,
                                   dtype="float32", latency=cfg.latency, callback=self._callback)
        except Exception as exc:  # PortAudioError, ValueError from bad device settings
            raise AudioError(f"cannot open the audio stream (input {cfg.input_device!r}, output "
                             f"{cfg.output_device!r}, {cfg.samplerate} Hz): {exc}. Run `avatarcam devices` "
                             "and pick working devices, or disable audio.") from exc
        # The stream itself delays the sound by its input + output latency; "auto" only adds the rest.
        self._smoother.offset_s = float(sum(stream.latency))
        try:
            stream.start()
        except Exception as exc:
            stream.close()
            raise AudioError(f"cannot start the audio stream: {exc}. Check the devices with `avatarcam devices`.") from exc
        return stream

    def _watch(self) -> None:
        """Reopen the stream whenever ``stall_s`` passes without a callback. A newly opened stream
        is not judged before :data:`FIRST_CALLBACK_GRACE_S` (its start can be slow and uneven)."""
        stall = self.config.stall_s
        grace = max(stall, FIRST_CALLBACK_GRACE_S)
        seen, last_block = self._blocks, time.monotonic()
        opened_at = last_block
        while not self._stop.wait(min(0.25, stall / 4.0)):
            now = time.monotonic()
            if self._blocks != seen:
                seen, last_block = self._blocks, now
                continue
            if now - opened_at < grace or now - last_block < stall:
                continue
            with self._lock:
                if self._stop.is_set():
                    return
                log.warning("audio: no sound from the stream for %.1f s; reopening it", now - last_block)
                old, self._stream = self._stream, None
                _abort(old)
                try:
                    self._stream = self._open()
                except AudioError as exc:
                    log.warning("audio: %s Retrying in %.0f s.", exc, grace)
                self._restarts += 1
            seen, last_block = self._blocks, time.monotonic()
            opened_at = last_block

    def close(self) -> None:
        """Stop the watchdog, then stop and close the stream (idempotent)."""
        self._stop.set()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(timeout=5.0)
        with self._lock:
            stream, self._stream = self._stream, None
        _abort(stream)  # not stop(): a stalled stream never drains, and the last block's sound is not missed

    def __enter__(self) -> "AudioPassthrough":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_target_delay(self, seconds: float) -> None:
        """Feed the video loop's latency (p50, seconds) in ``"auto"`` mode; ignored with a fixed delay.

        Smoothed and with hysteresis (see :class:`DelaySmoother`), so calling it every frame is fine.
        """
        if self.config.fixed_delay_s is not None:
            return
        new = self._smoother.update(seconds)
        if new is not None:
            self._line.set_delay(round(new * self.config.samplerate))

    def set_delay(self, seconds: float) -> None:
        """Set the delay now (any mode), crossfaded; clamped to ``0..max_delay_s``."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"delay must be a non-negative number of seconds, got {seconds!r}")
        self._line.set_delay(round(seconds * self.config.samplerate))

    # -- state --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    @property
    def delay_s(self) -> float:
        """The delay in force or on its way (seconds): the output reaches it within one crossfade."""
        return self._line.target / self.config.samplerate

    @property
    def delay_samples(self) -> int:
        """:attr:`delay_s` in samples."""
        return self._line.target

    @property
    def level_db(self) -> float:
        """RMS level of the latest input block, dBFS."""
        return self._level_db

    @property
    def stream_latency_s(self) -> float:
        """Input + output latency that PortAudio reports for the open stream (0 when closed)."""
        return 0.0 if self._stream is None else float(sum(self._stream.latency))

    @property
    def xruns(self) -> int:
        """Blocks that came with an over/underflow flag."""
        return self._xruns

    @property
    def blocks(self) -> int:
        """Blocks processed since start."""
        return self._blocks

    @property
    def restarts(self) -> int:
        """Times the watchdog reopened a stream that had stopped delivering audio."""
        return self._restarts


def _abort(stream: Any) -> None:
    """Stop a stream at once and close it (``stop`` waits for buffers that a stalled stream never
    drains); errors from a device that is gone are logged at debug level, the stream dropped anyway."""
    if stream is None:
        return
    try:
        stream.abort()
    except Exception as exc:  # noqa: BLE001 - a dead device may fail either call; the stream is dropped anyway
        log.debug("audio: abort failed: %s", exc)
    try:
        stream.close()
    except Exception as exc:  # noqa: BLE001
        log.debug("audio: close failed: %s", exc)
