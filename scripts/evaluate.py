#!/usr/bin/env python
"""Expression-transfer fidelity of an engine: does the output move like the driver?

    python scripts/evaluate.py --engine mesh --avatar avatar_obama_photo.jpg --driving driving_talking_man_tpsm.mp4
    python scripts/evaluate.py --engine mesh --all --out eval/
    python scripts/evaluate.py --avatar avatar_obama_photo.jpg avatar_mona_lisa_painting.jpg \
        --driving driving_talking_woman_sadtalker_aoc.mp4 --strip docs/mesh_strip.png

Every frame of the driving video goes through the live path (video-mode tracker, DriverCrop, engine);
a second, independent video-mode tracker then reads the rendered output. The driver's and the
output's pose and expression signals (avatarcam.landmarks.signals) are compared per signal with
Pearson's r over the frames where both show a face. Method and thresholds: docs/evaluation.md.
Writes ``<out>/<engine>__<avatar>__<driving>.json`` and ``.png`` (signals over time) per pair,
and, for several pairs, ``summary_<engine>.json``; a table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
SIGNALS = ("mouth", "eyes", "eye_left", "eye_right", "roll", "yaw", "pitch")
# The quality targets of the mesh engine (issue 4): r per signal, face found rate.
TARGETS = {"mouth": 0.9, "roll": 0.95, "eyes": 0.8}
TARGET_FOUND = 0.99


def resolve(name: str, pattern: str) -> Path:
    """A path as given, or a file name / stem looked up in ../shared/data."""
    p = Path(name)
    if p.is_file():
        return p
    hits = sorted(DATA.glob(pattern))
    for h in hits:
        if name in (h.name, h.stem):
            return h
    raise SystemExit(f"{name!r} is neither a file nor one of {[h.name for h in hits]} in {DATA}")


def build_engine(name: str, args: argparse.Namespace):
    """The engine by name (``avatarcam.engines.create_engine``) with the options this script exposes."""
    from avatarcam.engines import create_engine

    options: dict = {"size": args.size}
    if name == "mesh":
        options.update(output=args.output, mouth_fill=args.mouth_fill, device=args.device)
    elif name == "fomm":
        from avatarcam.weights.store import resolve_fomm_weights

        checkpoint, config = resolve_fomm_weights(args.weights)
        options.update(checkpoint=str(checkpoint), config=str(config), device=args.device, output=args.output)
    return create_engine(name, **options)


def signal_vector(face) -> list[float]:
    from avatarcam.landmarks.signals import face_signals

    s = face_signals(face)
    return [s.mouth_open, (s.eye_open_left + s.eye_open_right) / 2.0, s.eye_open_left, s.eye_open_right,
            s.roll, s.yaw, s.pitch]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def jitter(points: list[np.ndarray | None]) -> float:
    """Median over frames of the RMS second difference of the landmarks (x, y), in thousandths of the
    inter-ocular distance: 0 for a face at rest or in uniform motion, large for frame-to-frame shake."""
    vals = []
    for a, b, c in zip(points, points[1:], points[2:]):
        if a is None or b is None or c is None:
            continue
        iod = float(np.linalg.norm(b[33, :2] - b[263, :2]))
        acc = a[:, :2] - 2.0 * b[:, :2] + c[:, :2]
        vals.append(1000.0 * float(np.sqrt((acc ** 2).sum(axis=1).mean())) / max(iod, 1e-6))
    return float(np.median(vals)) if vals else float("nan")


def evaluate_pair(engine_name: str, avatar_path: Path, driving: Path, args: argparse.Namespace) -> dict:
    import cv2

    from avatarcam.avatars.library import load_avatar
    from avatarcam.engines.base import Drive
    from avatarcam.frame import Frame
    from avatarcam.geometry import Box
    from avatarcam.landmarks import TrackerConfig, create_tracker

    try:
        from avatarcam.crop import DriverCrop
    except ImportError:
        DriverCrop = None

    avatar = load_avatar(avatar_path)
    engine = build_engine(engine_name, args)
    prepared = engine.prepare(avatar)
    cap = cv2.VideoCapture(str(driving))
    if not cap.isOpened():
        raise SystemExit(f"cannot open driving video {driving}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cropper = DriverCrop() if DriverCrop is not None else None
    writer = None
    drv_sig, out_sig, drv_pts, out_pts = [], [], [], []
    total_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
    if args.max_frames is not None:
        total_frames = min(total_frames, args.max_frames)
    strip_at = set(np.linspace(0, total_frames - 1, args.strip_frames + 2)[1:-1].round().astype(int).tolist())
    strip: list[tuple[np.ndarray, np.ndarray]] = []
    t_track, t_engine = [], []
    cutoffs = dict(min_cutoff=args.min_cutoff, beta=args.beta, pose_min_cutoff=args.pose_cutoff,
                   lips_min_cutoff=args.lips_cutoff)
    live = TrackerConfig(**cutoffs)
    judged = TrackerConfig(**cutoffs, smoothing=args.judge_smoothing == "on")
    with create_tracker(live, mode="video") as tracker, create_tracker(judged, mode="video") as judge:
        i = 0
        while args.max_frames is None or i < args.max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t = i / fps
            ts = int(round(t * 1000.0))
            t0 = time.perf_counter()
            result = tracker.detect(rgb, ts)
            t_track.append(time.perf_counter() - t0)
            h, w = rgb.shape[:2]
            box = cropper.update(result, (w, h), t) if cropper is not None else Box.centered(w, h)
            drive = Drive(frame=Frame(rgb, i, t), box=box, landmarks=result)
            t0 = time.perf_counter()
            out = engine.animate(prepared, drive)
            t_engine.append(time.perf_counter() - t0)
            if not np.isfinite(out).all() or out.dtype != np.uint8:
                raise SystemExit(f"engine {engine_name} produced a non-uint8 or non-finite frame {i}")
            seen = judge.detect(out, ts)
            drv_sig.append(signal_vector(result.face) if result.face is not None else None)
            out_sig.append(signal_vector(seen.face) if seen.face is not None else None)
            drv_pts.append(result.face.points if result.face is not None else None)
            out_pts.append(seen.face.points if seen.face is not None else None)
            if args.strip and i in strip_at:
                strip.append((cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA),
                              cv2.resize(out, (128 * out.shape[1] // out.shape[0], 128), interpolation=cv2.INTER_AREA)))
            if args.video:
                if writer is None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    oh = 384
                    ow_ = int(round(out.shape[1] * oh / out.shape[0]))
                    path = args.out / f"{engine_name}__{avatar_path.stem}__{driving.stem}.mp4"
                    writer = (cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (oh + ow_, oh)),
                              oh, ow_)
                vw, oh, ow_ = writer
                frame = np.hstack([cv2.resize(rgb, (oh, oh)), cv2.resize(out, (ow_, oh))])
                vw.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            i += 1
    cap.release()
    if writer is not None:
        writer[0].release()
    engine.close()
    n = len(out_sig)
    both = [k for k in range(n) if drv_sig[k] is not None and out_sig[k] is not None]
    d = np.array([drv_sig[k] for k in both]) if both else np.zeros((0, len(SIGNALS)))
    o = np.array([out_sig[k] for k in both]) if both else np.zeros((0, len(SIGNALS)))
    r = {name: pearson(d[:, j], o[:, j]) for j, name in enumerate(SIGNALS)}
    found = sum(s is not None for s in out_sig) / max(n, 1)
    eng_ms = np.array(t_engine) * 1000.0
    trk_ms = np.array(t_track) * 1000.0
    total = eng_ms + trk_ms
    res = {
        "engine": engine_name,
        "avatar": avatar_path.name,
        "driving": driving.name,
        "frames": n,
        "r": r,
        "face_found_output": found,
        "face_found_driver": sum(s is not None for s in drv_sig) / max(n, 1),
        "jitter_driver": jitter(drv_pts),
        "jitter_output": jitter(out_pts),
        "engine_ms_median": float(np.median(eng_ms)),
        "engine_ms_p95": float(np.percentile(eng_ms, 95)),
        "tracker_ms_median": float(np.median(trk_ms)),
        "fps_engine": float(1000.0 / max(eng_ms.mean(), 1e-9)),
        "fps_tracker_plus_engine": float(1000.0 / max(total.mean(), 1e-9)),
        "series": {"frames": both, "driver": d.round(5).tolist(), "output": o.round(5).tolist(),
                   "names": list(SIGNALS)},
    }
    res["pass"] = passes(res)
    res["strip"] = strip
    return res


def save_strip(strips: list[list[tuple[np.ndarray, np.ndarray]]], path: Path) -> None:
    """Driver frames above output frames, one block per pair, as a palette PNG (small for a README)."""
    from PIL import Image

    blocks = []
    for strip in strips:
        top = np.hstack([d for d, _ in strip])
        bottom = np.hstack([o for _, o in strip])
        width = max(top.shape[1], bottom.shape[1])
        pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
        blocks.append(np.vstack([pad(top), pad(bottom), np.full((4, width, 3), 255, np.uint8)]))
    width = max(b.shape[1] for b in blocks)
    image = np.vstack([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def passes(res: dict) -> bool:
    return all(res["r"][k] >= v for k, v in TARGETS.items()) and res["face_found_output"] >= TARGET_FOUND


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("mouth", "eyes", "roll", "yaw", "pitch")
    cols = [res["series"]["names"].index(k) for k in names]
    frames = np.array(res["series"]["frames"])
    d = np.array(res["series"]["driver"])
    o = np.array(res["series"]["output"])
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 9), sharex=True)
    for ax, name, j in zip(axes, names, cols):
        if len(frames):
            ax.plot(frames, d[:, j], label="driver", lw=1.2)
            # The output on its own axis scale (z-scored onto the driver's): r ignores scale and offset.
            oz = (o[:, j] - o[:, j].mean()) / max(o[:, j].std(), 1e-9) * d[:, j].std() + d[:, j].mean()
            ax.plot(frames, oz, label="output (rescaled)", lw=1.2)
        ax.set_ylabel(name)
        ax.set_title(f"{name}: r = {res['r'][name]:.3f}", fontsize=9, loc="left")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("frame")
    fig.suptitle(f"{res['engine']}: {res['avatar']} driven by {res['driving']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


COLS = ("avatar", "driving", "mouth", "roll", "eyes", "yaw", "pitch", "found", "jit_d", "jit_o", "eng_ms", "pass")


def row(res: dict) -> dict:
    return {"avatar": res["avatar"].rsplit(".", 1)[0].replace("avatar_", ""),
            "driving": res["driving"].rsplit(".", 1)[0].replace("driving_", ""),
            **{k: res["r"][k] for k in ("mouth", "roll", "eyes", "yaw", "pitch")},
            "found": res["face_found_output"], "jit_d": res["jitter_driver"], "jit_o": res["jitter_output"],
            "eng_ms": res["engine_ms_median"], "pass": "yes" if res["pass"] else "NO"}


def table(rows: list[dict]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in COLS}
    lines = [" | ".join(c.ljust(widths[c]) for c in COLS), "-+-".join("-" * widths[c] for c in COLS)]
    lines += [" | ".join(fmt(r[c]).ljust(widths[c]) for c in COLS) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from avatarcam.landmarks import TrackerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="mesh", help="engine name: mesh, passthrough, fomm")
    ap.add_argument("--avatar", nargs="+", help="avatar photo(s) (path, or file name in ../shared/data)")
    ap.add_argument("--driving", nargs="+", help="driving video(s) (path, or file name in ../shared/data); "
                                                 "every avatar is run with every video")
    ap.add_argument("--all", action="store_true", help="every avatar x driving pair in ../shared/data")
    ap.add_argument("--out", type=Path, default=Path("eval"), help="folder for JSON, plots (and videos)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--output", default="crop", choices=("crop", "photo"), help="engine output (default crop)")
    ap.add_argument("--mouth-fill", default="synthetic", choices=("synthetic", "driver"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default="vox-cpk", help="fomm checkpoint name")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--min-cutoff", type=float, default=TrackerConfig().min_cutoff,
                    help="tracker One Euro min_cutoff (Hz), for the live tracker and the judge alike")
    ap.add_argument("--beta", type=float, default=TrackerConfig().beta, help="tracker One Euro beta, both trackers")
    ap.add_argument("--pose-cutoff", type=float, default=TrackerConfig().pose_min_cutoff,
                    help="tracker One Euro minimum cutoff (Hz) of the head pose, both trackers")
    ap.add_argument("--lips-cutoff", type=float, default=TrackerConfig().lips_min_cutoff,
                    help="tracker One Euro minimum cutoff (Hz) of the lips, both trackers")
    ap.add_argument("--judge-smoothing", default="on", choices=("on", "off"),
                    help="One Euro smoothing in the tracker that reads the output (the driver's is always on)")
    ap.add_argument("--video", action="store_true", help="also write a driver|output side-by-side mp4")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--strip", type=Path, default=None,
                    help="PNG: for each pair a row of driver frames over a row of output frames")
    ap.add_argument("--strip-frames", type=int, default=5, help="frames per pair in --strip")
    args = ap.parse_args(argv)
    if args.all:
        pairs = [(a, v) for a in sorted(DATA.glob("avatar_*")) for v in sorted(DATA.glob("driving_*.mp4"))]
    else:
        if not args.avatar or not args.driving:
            ap.error("give --avatar and --driving, or --all")
        pairs = [(resolve(a, "avatar_*"), resolve(v, "driving_*.mp4")) for a in args.avatar for v in args.driving]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    strips: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for avatar, driving in pairs:
        res = evaluate_pair(args.engine, avatar, driving, args)
        stem = f"{args.engine}__{avatar.stem}__{driving.stem}"
        strip = res.pop("strip")
        if strip:
            strips.append(strip)
        (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
        if not args.no_plot:
            plot(res, args.out / f"{stem}.png")
        results.append(res)
        print(table([row(res)]).splitlines()[-1], flush=True)
    if strips:
        save_strip(strips, args.strip)
    rows = [row(r) for r in results]
    print()
    print(table(rows))
    if len(results) > 1:
        summary = [{k: v for k, v in r.items() if k != "series"} for r in results]
        (args.out / f"summary_{args.engine}.json").write_text(json.dumps(summary, indent=1))
        failing = [r for r in results if not r["pass"]]
        print(f"\n{len(results) - len(failing)}/{len(results)} pairs meet every target "
              f"(mouth r >= {TARGETS['mouth']}, roll r >= {TARGETS['roll']}, eyes r >= {TARGETS['eyes']}, "
              f"face found >= {TARGET_FOUND:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
