"""Loop statistics: per-stage timings, glass-to-glass latency p50/p95, rates and drops.

Thread-safe; each stage records into its own rolling window. Rates are events per second
over the last ``window_s`` seconds.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


def _pct(values: deque, q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if values else float("nan")


@dataclass(frozen=True)
class StatsSnapshot:
    stage_ms: dict[str, tuple[float, float]]  # stage -> (p50, p95) in ms
    latency_ms: tuple[float, float]  # glass to glass (p50, p95)
    input_fps: float
    engine_fps: float
    output_fps: float
    dropped_capture: int
    dropped_engine: int
    repeated_output: int
    frames_out: int
    extra: dict[str, str] = field(default_factory=dict)

    def lines(self) -> tuple[str, ...]:
        """Short text lines for the preview overlay and ``--stats``."""
        out = [
            f"in {self.input_fps:5.1f} fps | engine {self.engine_fps:5.1f} fps | out {self.output_fps:5.1f} fps",
            f"latency p50 {self.latency_ms[0]:5.1f} ms  p95 {self.latency_ms[1]:5.1f} ms",
            f"dropped: capture {self.dropped_capture}  engine {self.dropped_engine}  repeated {self.repeated_output}",
        ]
        stages = "  ".join(f"{k} {v[0]:.1f}" for k, v in self.stage_ms.items())
        if stages:
            out.append("ms p50: " + stages)
        out.extend(f"{k}: {v}" for k, v in self.extra.items())
        return tuple(out)

    def as_dict(self) -> dict:
        return {
            "stage_ms": {k: {"p50": v[0], "p95": v[1]} for k, v in self.stage_ms.items()},
            "latency_ms": {"p50": self.latency_ms[0], "p95": self.latency_ms[1]},
            "input_fps": self.input_fps,
            "engine_fps": self.engine_fps,
            "output_fps": self.output_fps,
            "dropped_capture": self.dropped_capture,
            "dropped_engine": self.dropped_engine,
            "repeated_output": self.repeated_output,
            "frames_out": self.frames_out,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


class Stats:
    def __init__(self, *, window: int = 300, window_s: float = 2.0) -> None:
        self._lock = threading.Lock()
        self._stage: dict[str, deque] = {}
        self._latency: deque = deque(maxlen=window)
        self._events: dict[str, deque] = {"input": deque(), "engine": deque(), "output": deque()}
        self._window, self._window_s = window, window_s
        self.dropped_capture = 0
        self.dropped_engine = 0
        self.repeated_output = 0
        self.frames_out = 0
        self.extra: dict[str, str] = {}

    def stage(self, name: str, seconds: float) -> None:
        with self._lock:
            self._stage.setdefault(name, deque(maxlen=self._window)).append(seconds * 1000.0)

    def event(self, kind: str, t: float | None = None) -> None:
        t = time.perf_counter() if t is None else t
        with self._lock:
            q = self._events[kind]
            q.append(t)
            while q and q[0] < t - self._window_s:
                q.popleft()

    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency.append(seconds * 1000.0)

    def _rate(self, kind: str, now: float) -> float:
        q = self._events[kind]
        recent = [t for t in q if t >= now - self._window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def snapshot(self) -> StatsSnapshot:
        now = time.perf_counter()
        with self._lock:
            return StatsSnapshot(
                stage_ms={k: (_pct(v, 50), _pct(v, 95)) for k, v in self._stage.items()},
                latency_ms=(_pct(self._latency, 50), _pct(self._latency, 95)),
                input_fps=self._rate("input", now),
                engine_fps=self._rate("engine", now),
                output_fps=self._rate("output", now),
                dropped_capture=self.dropped_capture,
                dropped_engine=self.dropped_engine,
                repeated_output=self.repeated_output,
                frames_out=self.frames_out,
                extra=dict(self.extra),
            )
