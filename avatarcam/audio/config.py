"""Audio settings: the delayed microphone pass-through and the voice-driven mouth."""
from __future__ import annotations

import math
from dataclasses import dataclass

VOICE_MODES = ("fallback", "always", "off")


def _check_device(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{name} must be a device name, a device index or None, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be a non-negative device index, got {value!r}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{name} must not be an empty string (use None for the default device)")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class AudioConfig:
    """Audio pass-through and voice-mouth settings.

    Devices are a PortAudio device index, a (sub)string of a PortAudio device name, or a
    PulseAudio/PipeWire sink or source name such as ``"avatarcam_out"`` or ``"pulse:avatarcam_out"``
    (see :mod:`avatarcam.audio.passthrough`); None means the system default.

    ``delay`` is the added audio delay in seconds, or ``"auto"``: follow the video loop's
    measured glass-to-glass latency (smoothed; only moves when the change exceeds
    ``delay_hysteresis_s``). Delay changes crossfade between read positions over ``crossfade_s``.

    Voice mouth: the block RMS level (dBFS) below ``gate_db`` keeps the mouth shut; from there to
    ``open_db`` the mouth opens linearly; ``attack_s``/``release_s`` are the time constants of the
    opening and closing. ``voice_mode``: ``"fallback"`` drives the mouth from the voice only while no
    face is tracked, ``"always"`` always (users without a camera), ``"off"`` never.

    ``stall_s``: when the stream delivers no audio for this long (a driver that hangs on start, a
    microphone unplugged during a call), it is closed and opened again, and again until one works
    (each new stream first gets ``passthrough.FIRST_CALLBACK_GRACE_S``, 4 s, to start); 0 turns this
    watchdog off.
    """

    enabled: bool = False
    input_device: str | int | None = None
    output_device: str | int | None = None
    samplerate: int = 48000
    blocksize: int = 480
    channels: int = 1
    latency: str | float = "low"
    delay: str | float = "auto"
    max_delay_s: float = 1.0
    crossfade_s: float = 0.03
    delay_hysteresis_s: float = 0.010
    delay_smoothing: float = 0.1
    voice_mode: str = "fallback"
    gate_db: float = -45.0
    open_db: float = -15.0
    attack_s: float = 0.03
    release_s: float = 0.15
    stall_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        _check_device("input_device", self.input_device)
        _check_device("output_device", self.output_device)
        if isinstance(self.samplerate, bool) or not isinstance(self.samplerate, int) or not 8000 <= self.samplerate <= 192000:
            raise ValueError(f"samplerate must be an integer in 8000..192000 Hz, got {self.samplerate!r}")
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or not 16 <= self.blocksize <= 8192:
            raise ValueError(f"blocksize must be an integer in 16..8192 frames, got {self.blocksize!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or not 1 <= self.channels <= 8:
            raise ValueError(f"channels must be an integer in 1..8, got {self.channels!r}")
        if isinstance(self.latency, str):
            if self.latency not in ("low", "high"):
                raise ValueError(f"latency must be 'low', 'high' or seconds, got {self.latency!r}")
        else:
            _check_positive("latency", self.latency)
        _check_positive("max_delay_s", self.max_delay_s)
        if self.max_delay_s > 10:
            raise ValueError(f"max_delay_s must be at most 10 s, got {self.max_delay_s!r}")
        if isinstance(self.delay, str):
            if self.delay != "auto":
                raise ValueError(f"delay must be 'auto' or seconds, got {self.delay!r}")
        elif (isinstance(self.delay, bool) or not isinstance(self.delay, (int, float))
              or not math.isfinite(self.delay) or not 0 <= self.delay <= self.max_delay_s):
            raise ValueError(f"delay must be 'auto' or seconds in 0..max_delay_s ({self.max_delay_s}), got {self.delay!r}")
        _check_positive("crossfade_s", self.crossfade_s)
        if self.crossfade_s > 0.5:
            raise ValueError(f"crossfade_s must be at most 0.5 s, got {self.crossfade_s!r}")
        if not isinstance(self.delay_hysteresis_s, (int, float)) or not 0 <= self.delay_hysteresis_s <= 1:
            raise ValueError(f"delay_hysteresis_s must be in 0..1 s, got {self.delay_hysteresis_s!r}")
        if not isinstance(self.delay_smoothing, (int, float)) or not 0 < self.delay_smoothing <= 1:
            raise ValueError(f"delay_smoothing must be in (0, 1] (weight of each new latency figure), got {self.delay_smoothing!r}")
        if self.voice_mode not in VOICE_MODES:
            raise ValueError(f"voice_mode must be one of {', '.join(VOICE_MODES)}, got {self.voice_mode!r}")
        for name in ("gate_db", "open_db"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -120 <= value <= 0:
                raise ValueError(f"{name} must be in -120..0 dBFS, got {value!r}")
        if self.open_db <= self.gate_db:
            raise ValueError(f"open_db ({self.open_db}) must be above gate_db ({self.gate_db})")
        _check_positive("attack_s", self.attack_s)
        _check_positive("release_s", self.release_s)
        if (isinstance(self.stall_s, bool) or not isinstance(self.stall_s, (int, float))
                or not (self.stall_s == 0 or 0.2 <= self.stall_s <= 60)):
            raise ValueError(f"stall_s must be 0 (off) or 0.2..60 s, got {self.stall_s!r}")

    @property
    def fixed_delay_s(self) -> float | None:
        """The fixed delay in seconds, or None in ``"auto"`` mode."""
        return None if self.delay == "auto" else float(self.delay)
