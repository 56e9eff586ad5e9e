"""Measuring the tracker on video files: speed (``bench_tracker``) and quality (``tracker_stats``).

Both decode the frames first, so decoding never counts; video time (frame index / fps) is passed
as the timestamp, so smoothing sees the real frame spacing however fast the file is processed.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np

from avatarcam.errors import SourceError
from avatarcam.landmarks.config import TrackerConfig
from avatarcam.landmarks.signals import face_signals
from avatarcam.landmarks.smoothing import LandmarkSmoother, face_size
from avatarcam.landmarks.tracker import create_tracker


def read_frames(video_path: Path | str, frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """The first ``frames`` frames (all when None) as RGB uint8 arrays, and the file's fps."""
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise SourceError(f"cannot open video {video_path}: check the path and that it is a video file")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        out: list[np.ndarray] = []
        while frames is None or len(out) < frames:
            ok, bgr = cap.read()
            if not ok:
                break
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not out:
        raise SourceError(f"no frames could be decoded from {video_path}")
    return out, float(fps)


def bench_tracker(video_path: Path | str, frames: int = 120, config: TrackerConfig = TrackerConfig(),
                  warmup: int = 5) -> dict:
    """Milliseconds per frame of ``detect`` (video mode, with smoothing) and ``face_signals``.

    Returns ``{"video", "resolution", "frames", "detect_ms", "detect_p90_ms", "signals_ms",
    "total_ms", "fps", "detection_rate"}``; ms values are medians over the frames after ``warmup``.
    """
    images, fps = read_frames(video_path, frames)
    detect_ms, signal_ms, found = [], [], 0
    with create_tracker(config, mode="video") as tracker:
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            result = tracker.detect(image, int(round(i * 1000.0 / fps)))
            t1 = time.perf_counter()
            if result.face is not None:
                face_signals(result.face)
                found += 1
            t2 = time.perf_counter()
            if i >= warmup:
                detect_ms.append((t1 - t0) * 1e3)
                signal_ms.append((t2 - t1) * 1e3)
    total = np.add(detect_ms, signal_ms)
    h, w = images[0].shape[:2]
    return {
        "video": Path(video_path).name,
        "resolution": f"{w}x{h}",
        "frames": len(images),
        "detect_ms": float(np.median(detect_ms)),
        "detect_p90_ms": float(np.percentile(detect_ms, 90)),
        "signals_ms": float(np.median(signal_ms)),
        "total_ms": float(np.median(total)),
        "fps": float(1000.0 / np.median(total)),
        "detection_rate": found / len(images),
    }


def motion_per_frame(points: np.ndarray) -> float:
    """Mean frame-to-frame landmark motion (x, y) / face size, over a ``T x N x 3`` sequence."""
    sizes = np.array([face_size(p) for p in points[1:]])
    step = np.linalg.norm(np.diff(points[:, :, :2], axis=0), axis=2).mean(axis=1)
    return float(np.mean(step / sizes))


def acceleration_per_frame(points: np.ndarray) -> float:
    """Mean second difference |p[t+1] - 2 p[t] + p[t-1]| / face size: jitter with smooth motion
    (which has a small second difference at video rates) mostly factored out."""
    sizes = np.array([face_size(p) for p in points[1:-1]])
    acc = points[2:, :, :2] - 2.0 * points[1:-1, :, :2] + points[:-2, :, :2]
    return float(np.mean(np.linalg.norm(acc, axis=2).mean(axis=1) / sizes))


def lag_ms(raw: np.ndarray, smooth: np.ndarray, fps: float, max_frames: float = 3.0) -> float:
    """How late the smoothed track is, in ms: the delay ``d`` for which the raw track shifted by
    ``d`` (linear interpolation between frames, searched in 0.05-frame steps) is closest to the
    smoothed one. Both ``T x N x 3`` without gaps."""
    best, best_err = 0.0, np.inf
    start = int(np.ceil(max_frames)) + 1
    for d in np.arange(0.0, max_frames + 1e-9, 0.05):
        k, frac = int(d), d - int(d)
        # raw at time t - d, for t >= start
        a = raw[start - k : len(raw) - k]
        b = raw[start - k - 1 : len(raw) - k - 1]
        shifted = (1 - frac) * a + frac * b
        err = float(np.mean(np.abs(smooth[start:, :, :2] - shifted[:, :, :2])))
        if err < best_err:
            best, best_err = d, err
    return best * 1000.0 / fps


def tracker_stats(video_path: Path | str, frames: int | None = None,
                  config: TrackerConfig = TrackerConfig()) -> dict:
    """Detection rate and jitter, raw vs smoothed, for one video.

    Raw landmarks come from a video-mode tracker with smoothing off; the smoothed ones are the
    same raw points through the tracker's own :class:`LandmarkSmoother` with ``config``'s
    parameters (exactly what a smoothing tracker returns, without running the model twice).
    Jitter is measured over the longest run of frames with a face. Returns ``{"video", "frames",
    "detection_rate", "raw_motion", "smooth_motion", "raw_accel", "smooth_accel", "lag_ms", "raw",
    "smooth", "timestamps"}``; the last three are the arrays (``T x N x 3`` float32, NaN where no face;
    ``T`` seconds).
    """
    images, fps = read_frames(video_path, frames)
    raw_cfg = dataclasses.replace(config, smoothing=False)
    smoother = LandmarkSmoother(min_cutoff=config.min_cutoff, beta=config.beta, d_cutoff=config.d_cutoff)
    raw, smooth, times = [], [], []
    with create_tracker(raw_cfg, mode="video") as tracker:
        for i, image in enumerate(images):
            t = i / fps
            face = tracker.detect(image, int(round(t * 1000.0))).face
            times.append(t)
            if face is None:
                smoother.reset()
                nan = np.full((raw[0].shape if raw else (478, 3)), np.nan, np.float32)
                raw.append(nan)
                smooth.append(nan)
                continue
            raw.append(face.points)
            smooth.append(smoother(face.points, t))
    raw_a, smooth_a = np.stack(raw), np.stack(smooth)
    ok = ~np.isnan(raw_a[:, 0, 0])
    run = _longest_run(ok)
    return {
        "video": Path(video_path).name,
        "frames": len(images),
        "detection_rate": float(ok.mean()),
        "raw_motion": motion_per_frame(raw_a[run]),
        "smooth_motion": motion_per_frame(smooth_a[run]),
        "raw_accel": acceleration_per_frame(raw_a[run]),
        "smooth_accel": acceleration_per_frame(smooth_a[run]),
        "lag_ms": lag_ms(raw_a[run], smooth_a[run], fps),
        "raw": raw_a,
        "smooth": smooth_a,
        "timestamps": np.array(times),
    }


def _longest_run(mask: np.ndarray) -> slice:
    best, start, best_slice = 0, None, slice(0, 0)
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best:
                best, best_slice = i - start, slice(start, i)
            start = None
    return best_slice
