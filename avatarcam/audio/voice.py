"""Synthetic expression: a voice-driven mouth plus idle blinks and head motion.

Used when no face is tracked (or always, in "voice mode") so the avatar keeps talking and looks
alive. The mesh engine consumes :class:`SyntheticExpression` values from :class:`SyntheticDriver`.

Audio side: :meth:`VoiceMouth.push_level` takes one block's RMS level in dBFS (what
:class:`~avatarcam.audio.passthrough.AudioPassthrough` reports through ``on_level``), or
:meth:`VoiceMouth.update` takes the block itself. Both only do a few float operations, so they can
run inside the audio callback; the video thread reads :attr:`VoiceMouth.value` (a float
assignment, atomic under the GIL).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from avatarcam.audio.config import VOICE_MODES, AudioConfig

SILENCE_DB = -120.0


def rms_dbfs(block: np.ndarray) -> float:
    """RMS level of a block of float samples in [-1, 1] (any shape), in dBFS, floored at -120."""
    flat = block.reshape(-1)
    if flat.size == 0:
        return SILENCE_DB
    # np.dot on a 1-D view avoids allocating the squared block.
    mean_square = float(np.dot(flat, flat)) / flat.size
    if mean_square <= 1e-12:
        return SILENCE_DB
    return 10.0 * math.log10(mean_square)


class VoiceMouth:
    """Microphone level -> ``mouth_open`` in [0, 1].

    A noise gate at ``gate_db`` keeps the mouth shut on background noise; above it the target opening
    rises linearly to 1 at ``open_db``. The output follows the target with a one-pole filter whose
    time constant is ``attack_s`` while opening and ``release_s`` while closing, so the mouth snaps
    open on syllables and closes a little slower, as a real one does.
    """

    def __init__(self, *, samplerate: int = 48000, blocksize: int = 480, gate_db: float = -45.0,
                 open_db: float = -15.0, attack_s: float = 0.03, release_s: float = 0.15) -> None:
        if open_db <= gate_db:
            raise ValueError(f"open_db ({open_db}) must be above gate_db ({gate_db})")
        if attack_s <= 0 or release_s <= 0:
            raise ValueError(f"attack_s and release_s must be positive, got {attack_s}, {release_s}")
        if samplerate <= 0 or blocksize <= 0:
            raise ValueError(f"samplerate and blocksize must be positive, got {samplerate}, {blocksize}")
        self.samplerate = int(samplerate)
        self.blocksize = int(blocksize)
        self.gate_db = float(gate_db)
        self.open_db = float(open_db)
        self.attack_s = float(attack_s)
        self.release_s = float(release_s)
        self._value = 0.0
        self._level_db = SILENCE_DB

    @classmethod
    def from_config(cls, config: AudioConfig) -> "VoiceMouth":
        return cls(samplerate=config.samplerate, blocksize=config.blocksize, gate_db=config.gate_db,
                   open_db=config.open_db, attack_s=config.attack_s, release_s=config.release_s)

    @property
    def value(self) -> float:
        """The latest mouth opening in [0, 1]."""
        return self._value

    @property
    def level_db(self) -> float:
        """The latest block level in dBFS."""
        return self._level_db

    def target(self, level_db: float) -> float:
        """The un-smoothed opening for a level: 0 at or below the gate, 1 at or above ``open_db``."""
        if level_db <= self.gate_db:
            return 0.0
        return min((level_db - self.gate_db) / (self.open_db - self.gate_db), 1.0)

    def push_level(self, level_db: float, frames: int | None = None) -> float:
        """Advance by one block of ``frames`` samples (default ``blocksize``) at ``level_db``; return the opening."""
        self._level_db = level_db
        target = self.target(level_db)
        tau = self.attack_s if target > self._value else self.release_s
        dt = (self.blocksize if frames is None else frames) / self.samplerate
        self._value += (target - self._value) * (1.0 - math.exp(-dt / tau))
        return self._value

    def update(self, block: np.ndarray) -> float:
        """Advance by one block of float samples (``frames`` or ``frames x channels``); return the opening."""
        return self.push_level(rms_dbfs(block), block.shape[0])

    def reset(self) -> None:
        self._value = 0.0
        self._level_db = SILENCE_DB


class IdleMotion:
    """Idle blinks at natural random intervals and slow, small head motion, as functions of time.

    ``sample(t)`` is deterministic for a given ``seed`` and may be called with any ``t >= 0`` in any
    order. Blinks: intervals drawn from a gamma distribution (mean ``blink_interval_s``, never under
    1 s), with an occasional double blink; each closes in ~80 ms, stays shut ~40 ms and reopens in
    ~160 ms. Head motion: for each of yaw, pitch and roll a sum of three sines with random
    incommensurate frequencies (0.03-0.2 Hz: slow sway) and phases, scaled to peak about ``*_deg`` degrees.
    """

    _CLOSE_S, _HOLD_S, _OPEN_S = 0.08, 0.04, 0.16

    def __init__(self, *, seed: int | None = 0, blink_interval_s: float = 4.0, yaw_deg: float = 3.0,
                 pitch_deg: float = 2.0, roll_deg: float = 1.5) -> None:
        if blink_interval_s < 1.0:
            raise ValueError(f"blink_interval_s must be at least 1 s, got {blink_interval_s}")
        for name, value in (("yaw_deg", yaw_deg), ("pitch_deg", pitch_deg), ("roll_deg", roll_deg)):
            if not 0 <= value <= 30:
                raise ValueError(f"{name} must be in 0..30 degrees, got {value}")
        self._rng = np.random.default_rng(seed)
        self.blink_interval_s = float(blink_interval_s)
        amplitudes = np.array([yaw_deg, pitch_deg, roll_deg], dtype=np.float64)
        self._freqs = self._rng.uniform(0.03, 0.2, size=(3, 3))
        self._phases = self._rng.uniform(0, 2 * np.pi, size=(3, 3))
        # Three unit sines rarely line up, so dividing by 2 (not 3) gives a peak near the amplitude.
        self._weights = self._rng.uniform(0.5, 1.0, size=(3, 3)) * (amplitudes / 2.0)[:, None]
        self._blinks: list[float] = []
        self._horizon = 0.0

    def _extend_blinks(self, t: float) -> None:
        shape = 4.0  # gamma shape: intervals cluster around the mean but vary naturally
        while self._horizon <= t + 1.0:
            gap = max(1.0, float(self._rng.gamma(shape, self.blink_interval_s / shape)))
            self._horizon += gap
            self._blinks.append(self._horizon)
            if self._rng.random() < 0.1:  # people sometimes blink twice in a row
                self._horizon += 0.35
                self._blinks.append(self._horizon)

    def blink(self, t: float) -> float:
        """Eyelid closure at time ``t``: 0 open, 1 shut."""
        self._extend_blinks(t)
        i = bisect.bisect_right(self._blinks, t) - 1
        if i < 0:
            return 0.0
        dt = t - self._blinks[i]
        if dt < self._CLOSE_S:
            x = dt / self._CLOSE_S
        elif dt < self._CLOSE_S + self._HOLD_S:
            return 1.0
        elif dt < self._CLOSE_S + self._HOLD_S + self._OPEN_S:
            x = 1.0 - (dt - self._CLOSE_S - self._HOLD_S) / self._OPEN_S
        else:
            return 0.0
        return 0.5 - 0.5 * math.cos(math.pi * x)

    def head(self, t: float) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in degrees at time ``t``."""
        angles = (self._weights * np.sin(2 * np.pi * self._freqs * t + self._phases)).sum(axis=1)
        return float(angles[0]), float(angles[1]), float(angles[2])

    def sample(self, t: float) -> tuple[float, float, float, float]:
        """(blink 0..1, yaw, pitch, roll in degrees) at time ``t`` seconds."""
        yaw, pitch, roll = self.head(t)
        return self.blink(t), yaw, pitch, roll


@dataclass(frozen=True)
class SyntheticExpression:
    """An expression for the engine when no face drives it. ``mouth_open`` and ``blink`` in [0, 1]
    (0 closed mouth / open eyes); ``yaw``, ``pitch``, ``roll`` head angles in degrees."""

    mouth_open: float
    blink: float
    yaw: float
    pitch: float
    roll: float


class SyntheticDriver:
    """Voice mouth + idle motion -> :class:`SyntheticExpression`.

    Wire the audio side with ``AudioPassthrough(config=..., on_level=driver.push_level)``; the video
    side calls :meth:`current` once per frame with the frame time, and :meth:`applies` to decide
    whether the synthetic expression should drive the avatar (per ``voice_mode``).
    """

    def __init__(self, *, voice: VoiceMouth, idle: IdleMotion, voice_mode: str = "fallback") -> None:
        if voice_mode not in VOICE_MODES:
            raise ValueError(f"voice_mode must be one of {', '.join(VOICE_MODES)}, got {voice_mode!r}")
        self.voice = voice
        self.idle = idle
        self.voice_mode = voice_mode

    @classmethod
    def from_config(cls, config: AudioConfig, *, seed: int | None = None) -> "SyntheticDriver":
        return cls(voice=VoiceMouth.from_config(config), idle=IdleMotion(seed=seed), voice_mode=config.voice_mode)

    def push_level(self, level_db: float) -> None:
        """Audio-callback hook: one block's level in dBFS."""
        self.voice.push_level(level_db)

    def applies(self, face_tracked: bool) -> bool:
        """Whether the synthetic expression should drive the avatar now: whenever no face is tracked
        (idle motion keeps it alive, whatever the voice mode), and always in "always" voice mode."""
        return not face_tracked or self.voice_mode == "always"

    def current(self, t: float) -> SyntheticExpression:
        """The expression at time ``t`` seconds (any monotonic clock; only differences matter).
        In voice mode "off" the mouth stays closed."""
        blink, yaw, pitch, roll = self.idle.sample(t)
        mouth = 0.0 if self.voice_mode == "off" else self.voice.value
        return SyntheticExpression(mouth_open=mouth, blink=blink, yaw=yaw, pitch=pitch, roll=roll)
