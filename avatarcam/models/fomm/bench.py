"""FOMM speed measurement (called by scripts/bench.py): kp detector, generator, end to end."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatarcam.avatars.types import Avatar
from avatarcam.engines.base import Drive
from avatarcam.engines.fomm import FommEngine
from avatarcam.frame import Frame
from avatarcam.geometry import Box
from avatarcam.models.fomm.loading import build_fomm, load_fomm
from avatarcam.precision import Precision, select_precision


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random RGB uint8 picture (``size x size x 3``): upsampled noise, like a blurry face crop."""
    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def _sync(precision: Precision) -> None:
    if precision.is_cuda:
        torch.cuda.synchronize(precision.device)


def _time_ms(fn: Callable[[], Any], precision: Precision, iters: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds, synchronising the GPU around each call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        _sync(precision)
        t0 = time.perf_counter()
        fn()
        _sync(precision)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def bench_fomm(
    config_path: str | Path,
    checkpoint_path: str | Path | None,
    device: str = "auto",
    fp16: bool | None = None,
    size: int = 256,
    iters: int = 20,
    warmup: int = 3,
    cache_source: bool = True,
    cuda_graphs: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Median ms/frame of the key-point detector, the generator (key points given) and the whole
    engine step (driver crop -> uint8 image, ``output="crop"``), and the engine's fps.

    ``checkpoint_path=None`` builds random weights from the config: speed does not depend on
    the weights, so vox-256 can be measured without the real checkpoint. ``size`` is the model
    input side. Returns a flat dict (numbers plus what was measured, device name included).
    """
    precision = select_precision(device, fp16)
    if checkpoint_path is None:
        model = build_fomm(config_path, device=precision.device)
    else:
        model = load_fomm(checkpoint_path, config_path, device=precision.device)
    engine = FommEngine.from_model(
        model, device=str(precision.device), fp16=precision.autocast, output="crop",
        cache_source=cache_source, cuda_graphs=cuda_graphs, compile=compile, size=size,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    avatar = Avatar(name="bench", image=_smooth_image(rng, size), content_hash="bench")
    side = size + size // 4
    drives = [
        Drive(frame=Frame(image=_smooth_image(rng, side), index=i, t_capture=i / 30.0), box=Box.centered(side, side))
        for i in range(4)
    ]
    prepared = engine.prepare(avatar)
    counter = iter(range(10**12))

    def end_to_end() -> None:
        engine.animate(prepared, drives[next(counter) % len(drives)])

    x = engine._to_tensor(drives[1].crop(size))
    with precision.inference():
        ks = prepared.kp_source
        kd = model.kp_detector(x)

    def kp_step() -> None:
        with precision.inference():
            model.kp_detector(x)

    def generator_step() -> None:
        with precision.inference():
            if cache_source:
                model.generator(kp_source=ks, kp_driving=kd, source_cache=prepared.cache, with_deformed=False)
            else:
                model.generator(prepared.source, kp_source=ks, kp_driving=kd, with_deformed=False)

    kp_ms = _time_ms(kp_step, precision, iters, warmup)
    gen_ms = _time_ms(generator_step, precision, iters, warmup)
    e2e_ms = _time_ms(end_to_end, precision, iters, warmup)
    engine.close()
    device_name = torch.cuda.get_device_name(precision.device) if precision.is_cuda else "cpu"
    return {
        "config": str(config_path),
        "weights": "random" if checkpoint_path is None else str(checkpoint_path),
        "device": str(precision.device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "precision": precision.describe(),
        "size": size,
        "iters": iters,
        "cache_source": cache_source,
        "cuda_graphs": cuda_graphs and precision.is_cuda,
        "compile": compile and precision.is_cuda,
        "kp_detector_ms": kp_ms,
        "generator_ms": gen_ms,
        "end_to_end_ms": e2e_ms,
        "fps": 1000.0 / e2e_ms,
    }
