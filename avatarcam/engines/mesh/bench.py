"""Speed of the mesh engine end to end: tracker + driver crop + re-targeting + warp + painting."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median": float(np.median(a)), "mean": float(a.mean()), "p95": float(np.percentile(a, 95))}


def bench_mesh(video: Path | str | None = None, avatar: Path | str | None = None, *, size: int = 512,
               output: str = "crop", frames: int = 150, warmup: int = 10, device: str = "cpu",
               mouth_fill: str = "synthetic") -> dict:
    """Time every frame of ``video`` (default: ../shared/data/driving_talking_man_tpsm.mp4) driving
    ``avatar`` (default: avatar_obama_photo.jpg) through the live path, one frame after the other:
    video-mode tracker, DriverCrop, MeshEngine.animate. Frames are decoded beforehand, so decoding
    does not count.

    Returns a dict: ``prepare_ms`` (one avatar, first time in the process), per-stage milliseconds (``tracker_ms``, ``retarget_ms``, ``render_ms``,
    ``engine_ms``, ``total_ms``, each median/mean/p95 over the frames after ``warmup``), ``fps``
    (1000 / mean total: frames per second one processing thread sustains) and ``latency_p95_ms``
    (tracker + engine time of a frame, 95th percentile: what the processing adds to glass-to-glass
    latency).
    """
    from avatarcam.avatars.library import load_avatar
    from avatarcam.crop import DriverCrop
    from avatarcam.engines.base import Drive
    from avatarcam.engines.mesh import MeshEngine
    from avatarcam.frame import Frame
    from avatarcam.landmarks import TrackerConfig, create_tracker
    from avatarcam.landmarks.bench import read_frames

    video = Path(video) if video is not None else DATA / "driving_talking_man_tpsm.mp4"
    avatar_path = Path(avatar) if avatar is not None else DATA / "avatar_obama_photo.jpg"
    images, fps_in = read_frames(video, frames + warmup)
    av = load_avatar(avatar_path)
    engine = MeshEngine(output=output, size=size, device=device, mouth_fill=mouth_fill)
    crop = DriverCrop()
    times: dict[str, list[float]] = {k: [] for k in ("tracker", "retarget", "render", "engine", "total")}
    h, w = images[0].shape[:2]
    with create_tracker(TrackerConfig(), mode="video") as tracker:
        # Timed after the tracker exists, as in the app: MediaPipe is imported by then.
        t0 = time.perf_counter()
        prepared = engine.prepare(av)
        prepare_ms = (time.perf_counter() - t0) * 1000.0
        for i, image in enumerate(images):
            t = i / fps_in
            a = time.perf_counter()
            result = tracker.detect(image, int(round(t * 1000.0)))
            box = crop.update(result, (w, h), t)
            b = time.perf_counter()
            drive = Drive(frame=Frame(image, i, t), box=box, landmarks=result)
            face = result.face
            if face is not None:
                moves, target = engine.targets(prepared, face.points)
                c = time.perf_counter()
                out = engine.render(prepared, moves, target, drive)
            else:
                c = time.perf_counter()
                out = engine.animate(prepared, drive)
            d = time.perf_counter()
            if i >= warmup:
                times["tracker"].append((b - a) * 1000.0)
                times["retarget"].append((c - b) * 1000.0)
                times["render"].append((d - c) * 1000.0)
                times["engine"].append((d - b) * 1000.0)
                times["total"].append((d - a) * 1000.0)
    engine.close()
    total = _stats(times["total"])
    return {
        "video": video.name,
        "avatar": avatar_path.name,
        "input": f"{w}x{h}",
        "output": f"{size}x{size}" if output == "crop" else "x".join(map(str, av.image.shape[1::-1])),
        "device": engine.device,
        "frames": len(times["total"]),
        "prepare_ms": prepare_ms,
        **{f"{k}_ms": _stats(v) for k, v in times.items()},
        "fps": 1000.0 / total["mean"],
        "latency_p95_ms": total["p95"],
    }
