#!/usr/bin/env python
"""Benchmarks: the live loop per engine, the tracker, and the FOMM network.

    python scripts/bench.py loop --engines passthrough mesh --video ../shared/data/driving_talking_man_tpsm.mp4
    python scripts/bench.py tracker
    python scripts/bench.py fomm --config avatarcam/weights/configs/vox-256.yaml --device cuda --fp16
    python scripts/bench.py fomm --device cpu --precision-error
    python scripts/bench.py all

Each section prints a table and, with --json PATH, writes the numbers as JSON. Numbers are measured,
never asserted: run it on the machine you care about.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
DEFAULT_VIDEO = DATA / "driving_talking_man_tpsm.mp4"
DEFAULT_AVATAR = DATA / "avatar_obama_photo.jpg"


def machine() -> dict:
    info = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    head = " | ".join(c.ljust(widths[c]) for c in cols)
    sep = "-+-".join("-" * widths[c] for c in cols)
    body = "\n".join(" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) for r in rows)
    return f"{head}\n{sep}\n{body}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "" if v is None else str(v)


def bench_loop(engines: list[str], video: Path, avatar: Path, size: int | None, seconds: float,
               fps: float, output: str = "photo") -> list[dict]:
    """Per engine: offline throughput (every frame, as fast as possible) and live latency (paced loop)."""

    from avatarcam.app import build_cropper, build_tracker, engine_options, fit_avatar
    from avatarcam.avatars.library import load_avatar
    from avatarcam.compositing import Compositor
    from avatarcam.config import AppConfig, EngineConfig, OutputConfig
    from avatarcam.engines import create_engine
    from avatarcam.pipeline import Pipeline
    from avatarcam.processing import FrameProcessor
    from avatarcam.render import render_video
    from avatarcam.sinks.memory import NullSink
    from avatarcam.sources import VideoFileSource

    rows = []
    photo = load_avatar(avatar)
    for name in engines:
        ecfg = EngineConfig(name=name, output=output, **({"size": size} if size else {}))
        config = AppConfig(engine=ecfg, output=OutputConfig(fps=fps))
        engine = create_engine(name, **engine_options(config))
        tracker = build_tracker(config)
        compositor = Compositor(width=config.output.width, height=config.output.height)
        av = fit_avatar(photo, compositor, getattr(engine, "size", None))  # as a live session does
        try:
            res = render_video(avatar=av, driving=video, engine=engine, sink=NullSink(), tracker=tracker,
                               cropper=build_cropper(config), progress=False,
                               compositor=compositor)
            thr = res.frames / res.seconds
            stage = res.stats["stage_ms"]
            proc = FrameProcessor(engine=engine, compositor=compositor, tracker=tracker,
                                  cropper=build_cropper(config))
            proc.set_avatar(av)
            with Pipeline(open_source=lambda: VideoFileSource(path=video, realtime=True, loop=True),
                          processor=proc, sinks=[NullSink()], fps=fps) as p:
                p.run(duration=seconds, until_input_ends=False)
            snap = p.stats.snapshot()
            rows.append({
                "engine": name, "size": ecfg.size, "output": output,
                "photo": "x".join(map(str, av.image.shape[1::-1])), "throughput_fps": thr,
                "landmarks_ms": stage.get("landmarks", {}).get("p50"), "engine_ms": stage.get("engine", {}).get("p50"),
                "compose_ms": stage.get("compose", {}).get("p50"),
                "live_in_fps": snap.input_fps, "live_engine_fps": snap.engine_fps, "live_out_fps": snap.output_fps,
                "latency_p50_ms": snap.latency_ms[0], "latency_p95_ms": snap.latency_ms[1],
                "dropped": snap.dropped_capture + snap.dropped_engine,
            })
        finally:
            engine.close()
            tracker.close()
    return rows


def bench_tracker_all(frames: int) -> list[dict]:
    from avatarcam.landmarks.bench import bench_tracker

    rows = []
    for video in sorted(DATA.glob("driving_*.mp4")):
        r = bench_tracker(video, frames=frames)
        rows.append({"video": video.name, **r})
    return rows


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2e}" if v and abs(v) < 0.01 else f"{v:.3f}"
    return str(v)


def bench_precision_error(args: argparse.Namespace) -> list[dict]:
    """fp16 and bf16 against fp32: the engine's policy (autocast + fp32 regions) and a naive cast."""
    import torch

    from avatarcam.models.fomm.bench import precision_error

    cfg = args.config or str(REPO / "avatarcam" / "weights" / "configs" / "vox-256.yaml")
    size = args.size or 256
    rows, meta = [], {}
    for dtype in (torch.float16, torch.bfloat16):
        r = precision_error(cfg, args.checkpoint, device=args.device, size=size, dtype=dtype,
                            avatar=args.avatar, video=args.video)
        meta = r
        short = "fp16" if dtype == torch.float16 else "bf16"
        for key, name in (("policy", f"{short} autocast + fp32 regions"), ("naive", f"naive {short} (model.to)")):
            rows.append({"policy": name, **r[key]})
    print(f"\n## fomm precision error vs fp32 ({Path(cfg).name}, {meta['weights']} weights, device "
          f"{meta['device']} [{meta['device_name']}], {size} px, {meta['frames']} driver frames: "
          f"{args.avatar.name} + {args.video.name})")
    print(f"fp32 reference: key points within +-{meta['kp_ref_max_abs']:.3f}, jacobian entries within "
          f"+-{_num(meta['jacobian_ref_max_abs'])}, render std {meta['image_ref_std']:.1f}/255\n")
    cells = []
    for row in rows:
        if "error" in row:
            cells.append({"policy": row["policy"], "features": "failed: " + row["error"]})
            continue
        cells.append({"policy": row["policy"], "features": row["features_dtype"],
                      "kp max abs": _num(row["kp_max_abs"]), "jacobian max abs": _num(row["jacobian_max_abs"]),
                      "image max /255": _num(row["image_max_abs"]), "image mean /255": _num(row["image_mean_abs"]),
                      "pixels > 2/255": f"{100 * row['image_frac_gt2']:.2f}%"})
    print(table(cells, ["policy", "features", "kp max abs", "jacobian max abs", "image max /255", "image mean /255",
                        "pixels > 2/255"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["loop", "tracker", "fomm", "mesh", "all"], nargs="?", default="all")
    ap.add_argument("--engines", nargs="+", default=["passthrough", "mesh"])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR)
    ap.add_argument("--size", type=int)
    ap.add_argument("--output-mode", choices=["photo", "crop"], default="photo",
                    help="engine output: the whole avatar photo (app default) or the face crop")
    ap.add_argument("--seconds", type=float, default=8.0, help="live-loop measurement time per engine")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=120, help="tracker frames per video")
    ap.add_argument("--config", default=None, help="FOMM YAML (default: vox-256)")
    ap.add_argument("--checkpoint", default=None, help="FOMM checkpoint (default: random weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--precision-error", action="store_true",
                    help="fomm: measure fp16/bf16 error against fp32 (same device and inputs) instead of speed")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    results: dict = {"machine": machine()}
    print(json.dumps(results["machine"]))
    if args.section in ("loop", "all"):
        rows = bench_loop(args.engines, args.video, args.avatar, args.size, args.seconds, args.fps,
                          args.output_mode)
        results["loop"] = rows
        print("\n## live loop (" + args.video.name + ")")
        print(table(rows, list(rows[0].keys())))
    if args.section in ("tracker", "all"):
        rows = bench_tracker_all(args.frames)
        results["tracker"] = rows
        print("\n## tracker")
        print(table(rows, list(rows[0].keys())))
    if args.section in ("mesh", "all"):
        from avatarcam.engines.mesh.bench import bench_mesh

        r = bench_mesh()
        results["mesh"] = r
        print("\n## mesh engine")
        print(json.dumps(r, indent=2))
    if args.section in ("fomm", "all") and args.precision_error:
        rows = bench_precision_error(args)
        results["fomm_precision_error"] = rows
    elif args.section in ("fomm", "all"):
        from avatarcam.models.fomm.bench import bench_fomm

        cfg = args.config or str(REPO / "avatarcam" / "weights" / "configs" / "vox-256.yaml")
        rows = []
        variants = [(False, True, False)]
        if args.device.startswith("cuda"):
            variants = [(fp16, cache, graphs) for fp16 in (False, True) for cache in (False, True)
                        for graphs in (False, True)]
        else:
            variants = [(False, False, False), (False, True, False)]
        for fp16, cache, graphs in variants:
            r = bench_fomm(cfg, args.checkpoint, args.device, fp16, iters=args.iters, cache_source=cache,
                           cuda_graphs=graphs)
            rows.append({"fp16": fp16, "cache_source": cache, "cuda_graphs": graphs, **r})
        results["fomm"] = rows
        print("\n## fomm (" + Path(cfg).name + f", {args.device})")
        print(table(rows, list(rows[0].keys())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
