#!/usr/bin/env python
"""Detection rate, jitter (raw vs smoothed), smoothing lag and tracker speed per driving video.

Usage: python scripts/tracker_stats.py [VIDEO ...] [--min-cutoff HZ] [--beta B] [--no-bench]
Without videos it measures every driving_*.mp4 in ../shared/data. Jitter columns are per frame,
in face sizes: "motion" = mean landmark displacement, "accel" = mean second difference (noise with
smooth motion factored out). "lag" = delay of the smoothed track behind the raw one.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--min-cutoff", type=float, default=None, help="One Euro min cutoff (Hz)")
    parser.add_argument("--beta", type=float, default=None, help="One Euro beta (per face size / s)")
    parser.add_argument("--no-bench", action="store_true", help="skip the speed measurement")
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    logging.basicConfig(level=logging.WARNING)

    from avatarcam.landmarks.bench import bench_tracker, tracker_stats
    from avatarcam.landmarks.config import TrackerConfig

    overrides = {k: v for k, v in (("min_cutoff", args.min_cutoff), ("beta", args.beta)) if v is not None}
    config = TrackerConfig(**overrides)
    videos = args.videos or sorted((REPO / ".." / "shared" / "data").glob("driving_*.mp4"))
    if not videos:
        print("no videos given and none found in ../shared/data", file=sys.stderr)
        return 2
    print(f"One Euro: min_cutoff={config.min_cutoff} Hz, beta={config.beta}, d_cutoff={config.d_cutoff} Hz")
    header = (f"{'video':42s} {'frames':>6s} {'detect':>7s} {'motion raw':>10s} {'smoothed':>9s} "
              f"{'accel raw':>10s} {'smoothed':>9s} {'lag ms':>7s}")
    if not args.no_bench:
        header += f" {'detect ms':>9s} {'p90':>6s} {'signals ms':>10s}"
    print(header)
    for video in videos:
        s = tracker_stats(video, config=config)
        line = (f"{s['video']:42s} {s['frames']:6d} {s['detection_rate']:7.3f} {s['raw_motion']:10.5f} "
                f"{s['smooth_motion']:9.5f} {s['raw_accel']:10.5f} {s['smooth_accel']:9.5f} {s['lag_ms']:7.1f}")
        if not args.no_bench:
            b = bench_tracker(video, frames=120, config=config)
            line += f" {b['detect_ms']:9.2f} {b['detect_p90_ms']:6.2f} {b['signals_ms']:10.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
