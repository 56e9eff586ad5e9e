"""Round-trip overhead of the remote worker on loopback.

``python -m avatarcam.remote.bench [--video V] [--frames N]`` starts a worker with the
passthrough engine on 127.0.0.1, sends square driver crops (256 and 512) from a real video, and
reports per frame: synchronous round-trip time (p50/p95), the same engine run locally, the
difference (the remote overhead: encode, transfer, decode, both ways), bytes each way, and the
rate the pipelined ``animate`` sustains.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcam.avatars.types import Avatar
from avatarcam.engines import create_engine
from avatarcam.engines.base import Drive
from avatarcam.frame import Frame
from avatarcam.geometry import Box, crop_square

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "driving_talking_man_tpsm.mp4"


def _read_crops(video: Path, count: int, size: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    crops = []
    try:
        while len(crops) < count:
            ok, bgr = cap.read()
            if not ok:
                if not crops:
                    raise OSError(f"cannot read frames from {video}")
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            crops.append(crop_square(rgb, Box.centered(w, h), size))
    finally:
        cap.release()
    return crops


def bench_remote(*, video: str | Path, sizes: Sequence[int] = (256, 512), codecs: Sequence[str] = ("jpeg", "png"),
                 frames: int = 100, jpeg_quality: int = 85) -> list[dict[str, Any]]:
    """One row per (size, codec): ``rtt_ms_p50``/``p95`` (synchronous ``animate_sync``),
    ``local_ms_p50`` (the passthrough engine in-process), ``overhead_ms_p50`` (their difference),
    ``up_kb``/``down_kb`` per frame, ``pipelined_fps`` (results per second while ``animate`` is
    called back to back, two frames in flight: the most the transport sustains)."""
    from avatarcam.remote.client import RemoteEngine
    from avatarcam.remote.server import Worker, WorkerConfig

    rows = []
    avatar = Avatar(name="bench", image=np.zeros((64, 64, 3), np.uint8), content_hash="0" * 64)
    for size in sizes:
        crops = _read_crops(Path(video), frames, size)
        drives = [Drive(frame=Frame(image=c, index=i), box=Box(size / 2, size / 2, size)) for i, c in enumerate(crops)]
        local = create_engine("passthrough", size=size)
        t_local = []
        for d in drives:
            t0 = time.perf_counter()
            local.animate(None, d)
            t_local.append((time.perf_counter() - t0) * 1000)
        config = WorkerConfig(token="bench", bind="127.0.0.1:0", engine="passthrough", engine_options={"size": size},
                              max_fps_per_client=10_000.0)
        with Worker(config=config).start() as worker:
            for codec in codecs:
                common = dict(address=worker.address, token="bench", engine="passthrough", codec=codec,
                              jpeg_quality=jpeg_quality)
                with RemoteEngine(pipelined=False, **common) as remote:
                    remote.connect(10.0)
                    prepared = remote.prepare(avatar)
                    remote.animate_sync(prepared, drives[0])  # warm-up: avatar upload, first allocation
                    before = remote.stats()
                    rtt = []
                    for d in drives:
                        t0 = time.perf_counter()
                        remote.animate_sync(prepared, d)
                        rtt.append((time.perf_counter() - t0) * 1000)
                    after = remote.stats()
                with RemoteEngine(pipelined=True, **common) as remote:
                    prepared = remote.prepare(avatar)
                    remote.animate(prepared, drives[0])
                    got0 = remote.stats()["received"]
                    t0 = time.perf_counter()
                    i = 0
                    while remote.stats()["received"] - got0 < frames and time.perf_counter() - t0 < 20.0:
                        remote.animate(prepared, drives[i % frames])
                        i += 1
                    pipelined_fps = (remote.stats()["received"] - got0) / (time.perf_counter() - t0)
                rows.append({
                    "size": size, "codec": codec, "frames": frames,
                    "rtt_ms_p50": float(np.percentile(rtt, 50)), "rtt_ms_p95": float(np.percentile(rtt, 95)),
                    "local_ms_p50": float(np.percentile(t_local, 50)),
                    "overhead_ms_p50": float(np.percentile(rtt, 50) - np.percentile(t_local, 50)),
                    "up_kb": (after["bytes_sent"] - before["bytes_sent"]) / frames / 1024,
                    "down_kb": (after["bytes_received"] - before["bytes_received"]) / frames / 1024,
                    "pipelined_fps": pipelined_fps,
                })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args(argv)
    rows = bench_remote(video=args.video, frames=args.frames, jpeg_quality=args.quality)
    print(f"{'size':>5} {'codec':>5} {'rtt p50':>8} {'rtt p95':>8} {'local':>6} {'overhead':>8} "
          f"{'up KB':>6} {'down KB':>7} {'pipe fps':>8}")
    for r in rows:
        print(f"{r['size']:>5} {r['codec']:>5} {r['rtt_ms_p50']:>8.2f} {r['rtt_ms_p95']:>8.2f} {r['local_ms_p50']:>6.2f} "
              f"{r['overhead_ms_p50']:>8.2f} {r['up_kb']:>6.1f} {r['down_kb']:>7.1f} {r['pipelined_fps']:>8.1f}")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
