"""A ring-buffer delay line whose delay can change without clicks, and the smoother for "auto" delay.

The delay is an integer number of samples on the audio device's clock: the pass-through reads and
writes in one full-duplex stream callback, so input and output advance together, and the read
position is always ``samples written - delay``, kept in Python integers. Nothing accumulates, so the
delay cannot drift however long the stream runs.

A delay change never jumps the read position: the line keeps reading at the old position and at the
new one for ``crossfade`` samples and blends from the first to the second with a raised-cosine ramp.
Changes that arrive during a crossfade wait until it ends (only the latest one is kept).
"""
from __future__ import annotations

import numpy as np


class DelayLine:
    """``out[n] = in[n - delay]`` on blocks of ``frames x channels`` samples.

    ``max_delay``: largest delay in samples. ``crossfade``: length of a delay change in samples.
    ``max_block``: the largest block handled in one piece (larger ones are split). ``dtype``: sample
    type of the ring (float32 for audio; float64 lets tests carry exact sample indices).
    The ring starts silent, so the first ``delay`` output samples are zeros.
    """

    def __init__(self, *, max_delay: int, channels: int = 1, crossfade: int = 1440,
                 max_block: int = 4096, delay: int = 0, dtype: np.dtype | type = np.float32) -> None:
        if max_delay < 0:
            raise ValueError(f"max_delay must be >= 0 samples, got {max_delay}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if crossfade < 1:
            raise ValueError(f"crossfade must be >= 1 sample, got {crossfade}")
        if max_block < 1:
            raise ValueError(f"max_block must be >= 1 sample, got {max_block}")
        self.max_delay = int(max_delay)
        self.channels = int(channels)
        self.max_block = int(max_block)
        # Room for the oldest sample a read at max_delay needs plus one block being written.
        self._size = self.max_delay + self.max_block
        self._ring = np.zeros((self._size, self.channels), dtype=dtype)
        self._old = np.zeros((self.max_block, self.channels), dtype=dtype)
        # Raised cosine 0 -> 1, sampled at the centres so neither end is exactly 0 or 1.
        phase = (np.arange(crossfade, dtype=np.float64) + 0.5) / crossfade
        self._ramp = (0.5 - 0.5 * np.cos(np.pi * phase)).astype(dtype)[:, None]
        self._written = 0
        self._delay = self._clamp(delay)
        self._target = self._delay
        self._fade_from = self._delay
        self._fade_pos = len(self._ramp)  # == crossfade: no fade running

    @property
    def delay(self) -> int:
        """The delay in samples that the output follows now (the new one as soon as a fade starts)."""
        return self._delay

    @property
    def target(self) -> int:
        """The delay in samples most recently asked for."""
        return self._target

    @property
    def fading(self) -> bool:
        """True while a crossfade between two delays is running."""
        return self._fade_pos < len(self._ramp)

    @property
    def written(self) -> int:
        """Samples processed since creation."""
        return self._written

    def _clamp(self, samples: int) -> int:
        return min(max(int(samples), 0), self.max_delay)

    def set_delay(self, samples: int) -> None:
        """Ask for a new delay (clamped to ``0..max_delay``); it takes effect, crossfaded, at the next block.

        Safe to call from another thread than the one calling :meth:`process`: it only stores an int.
        """
        self._target = self._clamp(samples)

    def reset(self, delay: int | None = None) -> None:
        """Silence the ring and jump to ``delay`` (or the target) without a crossfade."""
        self._ring.fill(0)
        if delay is not None:
            self._target = self._clamp(delay)
        self._delay = self._fade_from = self._target
        self._fade_pos = len(self._ramp)

    def process(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Push ``block`` (``frames x channels``) and return the delayed block of the same shape.

        ``out`` (same shape, may not alias ``block``) receives the result without allocating; the
        audio callback passes the device's output buffer here.
        """
        if out is None:
            out = np.empty(block.shape, dtype=self._ring.dtype)
        frames = block.shape[0]
        start = 0
        while start < frames:
            stop = min(start + self.max_block, frames)
            self._process_piece(block[start:stop], out[start:stop])
            start = stop
        return out

    def _write(self, block: np.ndarray, pos: int) -> None:
        n = block.shape[0]
        i = pos % self._size
        first = min(n, self._size - i)
        self._ring[i:i + first] = block[:first]
        if first < n:
            self._ring[:n - first] = block[first:]

    def _read(self, pos: int, out: np.ndarray) -> None:
        n = out.shape[0]
        i = pos % self._size
        first = min(n, self._size - i)
        out[:first] = self._ring[i:i + first]
        if first < n:
            out[first:] = self._ring[:n - first]

    def _process_piece(self, block: np.ndarray, out: np.ndarray) -> None:
        n = block.shape[0]
        pos = self._written
        self._write(block, pos)
        self._written = pos + n
        fade_len = len(self._ramp)
        if self._fade_pos >= fade_len and self._target != self._delay:
            self._fade_from, self._delay, self._fade_pos = self._delay, self._target, 0
        self._read(pos - self._delay, out)
        if self._fade_pos >= fade_len:
            return
        # Blend old -> new read heads: out = old + ramp * (new - old), in place.
        m = min(n, fade_len - self._fade_pos)
        old = self._old[:m]
        self._read(pos - self._fade_from, old)
        ramp = self._ramp[self._fade_pos:self._fade_pos + m]
        head = out[:m]
        head -= old
        head *= ramp
        head += old
        self._fade_pos += m


class DelaySmoother:
    """Turns a stream of latency figures (seconds) into a calm delay for "auto" mode.

    Each figure moves an exponential average by ``weight`` of the difference; the applied delay only
    changes when the average has moved more than ``hysteresis_s`` away from it, so measurement noise
    does not make the audio hunt (each change costs a crossfade). ``offset_s`` is subtracted from the
    average (the audio path's own latency, which already delays the sound) and the result is clamped
    to ``0..max_s``.
    """

    def __init__(self, *, weight: float = 0.1, hysteresis_s: float = 0.010, max_s: float = 1.0,
                 offset_s: float = 0.0) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        if hysteresis_s < 0:
            raise ValueError(f"hysteresis_s must be >= 0, got {hysteresis_s}")
        self.weight = float(weight)
        self.hysteresis_s = float(hysteresis_s)
        self.max_s = float(max_s)
        self.offset_s = float(offset_s)
        self._average: float | None = None
        self._applied: float | None = None

    @property
    def applied(self) -> float | None:
        """The delay last returned by :meth:`update` (None before the first figure)."""
        return self._applied

    def update(self, latency_s: float) -> float | None:
        """Feed one latency figure; return the new delay to apply, or None to keep the current one."""
        if not np.isfinite(latency_s) or latency_s < 0:
            return None
        if self._average is None:
            self._average = float(latency_s)
        else:
            self._average += self.weight * (float(latency_s) - self._average)
        wanted = min(max(self._average - self.offset_s, 0.0), self.max_s)
        if self._applied is None or abs(wanted - self._applied) > self.hysteresis_s:
            self._applied = wanted
            return wanted
        return None
