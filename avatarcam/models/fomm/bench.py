"""FOMM measurements (called by scripts/bench.py): speed of the kp detector, the generator and the
whole engine step; numerical error of reduced-precision inference against fp32."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from avatarcam.avatars.types import Avatar
from avatarcam.engines.base import Drive
from avatarcam.engines.fomm import FommEngine
from avatarcam.frame import Frame
from avatarcam.geometry import Box
from avatarcam.models.fomm.loading import FommModel, build_fomm, load_fomm
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


# ---- reduced-precision error ------------------------------------------------------------------


class _ComputeIn(TorchFunctionMode):
    """Makes every float32 request run in ``dtype`` instead: ``Tensor.float()``,
    ``Tensor.to(torch.float32)`` and ``dtype=torch.float32`` keyword arguments (grids, scalars).

    With a model cast to ``dtype`` this switches the model's fp32 regions off (they are written as
    explicit ``.float()`` casts and fp32 grids), which is what a naive ``model.half()`` port does.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float:
            return args[0].to(self.dtype)
        if func is torch.Tensor.numpy and args[0].dtype == torch.bfloat16:
            # NumPy has no bfloat16; widening for the host copy (hull area) is exact.
            return args[0].to(torch.float32).numpy()
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = self.dtype
        if func is torch.Tensor.to:
            args = tuple(self.dtype if a is torch.float32 else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _strict_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off on CUDA while the fp32 reference runs (TF32 convolutions are not fp32)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def _naive_context(dtype: torch.dtype) -> Iterator[None]:
    """Inference with every float32 request redirected to ``dtype`` (see :class:`_ComputeIn`)."""
    with torch.inference_mode(), _ComputeIn(dtype):
        yield


def _precision_inputs(
    avatar: Avatar | str | Path | None,
    video: str | Path | Sequence[np.ndarray] | None,
    frames: int,
    size: int,
    seed: int,
) -> tuple[Avatar, list[np.ndarray]]:
    """The avatar and ``frames`` driver images (RGB uint8): real media when given, else smooth noise."""
    rng = np.random.default_rng(seed)
    if avatar is None:
        avatar = Avatar(name="bench", image=_smooth_image(rng, size), content_hash="bench")
    elif not isinstance(avatar, Avatar):
        bgr = cv2.imread(str(avatar))
        if bgr is None:
            raise FileNotFoundError(f"cannot read the avatar image {avatar}")
        # No face detection here: the centred square of a portrait photo is the face crop.
        avatar = Avatar(name=Path(avatar).stem, image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), content_hash="photo")
    if video is None:
        side = size + size // 4
        return avatar, [_smooth_image(rng, side) for _ in range(frames)]
    if isinstance(video, (str, Path)):
        cap = cv2.VideoCapture(str(video))
        decoded = []
        while len(decoded) < 15 * frames:  # about 0.6 s between the chosen frames at 25 fps
            ok, bgr = cap.read()
            if not ok:
                break
            decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        if not decoded:
            raise FileNotFoundError(f"cannot decode any frame of the driving video {video}")
    else:
        decoded = list(video)
    picks = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    return avatar, [np.ascontiguousarray(decoded[i]) for i in picks]


def _run_variant(
    engine: FommEngine, avatar: Avatar, drivers: list[np.ndarray], context: Callable[[], Any]
) -> dict[str, Any]:
    """Key points of the avatar crop and every driver crop (``N x K x 2`` and ``N x K x 2 x 2``,
    float64 on the CPU) and the engine's crop renders (``F x S x S x 3`` uint8; driver 0 is the
    calibration frame), every model call inside ``context()``."""
    drives = [
        Drive(frame=Frame(image=img, index=i, t_capture=i / 25.0), box=Box.centered(img.shape[1], img.shape[0]))
        for i, img in enumerate(drivers)
    ]
    values, jacobians = [], []
    with context():
        prepared = engine.prepare(avatar)
        for crop in [avatar.crop(engine.size)] + [d.crop(engine.size) for d in drives]:
            kp = engine.model.kp_detector(engine._to_tensor(crop))
            values.append(kp["value"][0].double().cpu())
            if "jacobian" in kp:
                jacobians.append(kp["jacobian"][0].double().cpu())
        images = np.stack([engine.animate(prepared, d) for d in drives])
    features = prepared.cache.features.dtype if prepared.cache is not None else None
    return {
        "value": torch.stack(values),
        "jacobian": torch.stack(jacobians) if jacobians else None,
        "images": images,
        "features_dtype": str(features).replace("torch.", ""),
    }


def _compare(ref: dict[str, Any], low: dict[str, Any]) -> dict[str, Any]:
    diff = np.abs(ref["images"].astype(np.int16) - low["images"].astype(np.int16))
    jac = None
    if ref["jacobian"] is not None:
        jac = (ref["jacobian"] - low["jacobian"]).abs().max().item()
    return {
        "features_dtype": low["features_dtype"],
        "kp_max_abs": (ref["value"] - low["value"]).abs().max().item(),
        "jacobian_max_abs": jac,
        "image_max_abs": int(diff.max()),
        "image_mean_abs": float(diff.mean()),
        # A pixel counts as different when any of its channels is off by more than 2 grey levels.
        "image_frac_gt2": float((diff.max(axis=-1) > 2).mean()),
        "finite": bool(
            torch.isfinite(low["value"]).all() and (low["jacobian"] is None or torch.isfinite(low["jacobian"]).all())
        ),
    }


def precision_error(
    config_path: str | Path,
    checkpoint_path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    size: int = 256,
    dtype: torch.dtype = torch.float16,
    avatar: Avatar | str | Path | None = None,
    video: str | Path | Sequence[np.ndarray] | None = None,
    frames: int = 4,
    seed: int = 0,
    naive: bool = True,
) -> dict[str, Any]:
    """Error of reduced-precision inference against fp32 on the same device and inputs.

    Three runs of the FOMM engine (``output="crop"``, relative motion calibrated on driver 0):
    the fp32 reference; ``"policy"``: the engine's own reduced-precision path (autocast in
    ``dtype`` with the model's fp32 regions); ``"naive"`` (when ``naive``): a copy of the model
    cast to ``dtype`` with every float32 request redirected to ``dtype`` as well, i.e. no fp32
    regions. ``checkpoint_path=None`` builds random weights (seeded by ``seed``) as
    :func:`bench_fomm` does. ``avatar``: an Avatar, a photo path (its centred square is used) or
    None (smooth noise); ``video``: a video path, decoded RGB frames, or None (smooth noise);
    ``frames`` drivers are picked evenly from it.

    Per variant: ``kp_max_abs`` (key points, normalised [-1, 1] coordinates, over the avatar and
    every driver), ``jacobian_max_abs``, ``image_max_abs`` / ``image_mean_abs`` (rendered crops,
    0-255 grey levels), ``image_frac_gt2`` (fraction of pixels with a channel off by > 2) and
    ``features_dtype`` (the dtype the source features were computed in). A naive run that fails
    is reported as ``{"error": message}``.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    reference = select_precision(device, fp16=False)
    dev = reference.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if checkpoint_path is None:
            model = build_fomm(config_path, device=dev)
        else:
            model = load_fomm(checkpoint_path, config_path, device=dev)
    avatar, drivers = _precision_inputs(avatar, video, frames, size, seed)

    def make_engine(m: FommModel) -> FommEngine:
        return FommEngine.from_model(m, device=str(dev), fp16=False, output="crop", size=size)

    ref_engine, low_engine = make_engine(model), make_engine(model)
    # select_precision refuses reduced precision on the CPU (it is slower there), so the policy
    # is set directly: the same autocast the engine uses on CUDA, in ``dtype``.
    low_engine.precision = Precision(device=dev, dtype=dtype, autocast=True, channels_last=reference.channels_last)
    with _strict_fp32(dev):
        ref = _run_variant(ref_engine, avatar, drivers, torch.inference_mode)
    low = _run_variant(low_engine, avatar, drivers, low_engine.precision.inference)
    result: dict[str, Any] = {
        "config": str(config_path),
        "weights": "random" if checkpoint_path is None else str(checkpoint_path),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "size": size,
        "frames": len(drivers),
        "inputs": ("noise" if avatar.content_hash == "bench" else "photo")
        + (" + noise drivers" if video is None else " + video frames"),
        "reference_features_dtype": ref["features_dtype"],
        "kp_ref_max_abs": ref["value"].abs().max().item(),
        "jacobian_ref_max_abs": None if ref["jacobian"] is None else ref["jacobian"].abs().max().item(),
        # How much the fp32 renders vary (grey levels): a flat render would make any error look small.
        "image_ref_std": float(ref["images"].std()),
        "policy": _compare(ref, low),
    }
    for engine in (ref_engine, low_engine):
        engine.close()
    if naive:
        try:
            half = copy.deepcopy(model)
            for module in (half.kp_detector, half.generator):
                module.to(dtype)
            naive_engine = make_engine(half)
            result["naive"] = _compare(
                ref, _run_variant(naive_engine, avatar, drivers, lambda: _naive_context(dtype))
            )
            naive_engine.close()
        except Exception as exc:  # noqa: BLE001 - an op without reduced-precision support is a result
            result["naive"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result
