"""The FOMM engine: First Order Motion Model reenactment of the avatar photo.

Per avatar (``prepare``): the avatar's face crop at the model size, its key points and every
generator tensor that depends on the source alone. Per frame (``animate``): key points of the
driver crop, relative motion against a calibration frame (with the movement scale adapted to
the avatar's face size), the generator, and paste-back into the photo.

On CUDA the bulk runs under fp16 autocast in channels-last layout, with the numerically
sensitive parts (key-point softmax and jacobians, the hull, grids and grid_sample) kept in fp32
inside the model code. The per-frame step (key points, relative motion, generator) is a pure
function of fixed-shape tensors with no host synchronisation, so it can be compiled and/or
captured as a CUDA graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatarcam.avatars.types import Avatar
from avatarcam.compositing import paste_back
from avatarcam.engines.base import Drive, Engine
from avatarcam.errors import EngineError
from avatarcam.models.fomm import FommConfig, FommModel, SourceCache, hull_area, load_fomm
from avatarcam.models.fomm.blocks import inverse_2x2
from avatarcam.precision import Precision, fp32_region, select_precision

log = logging.getLogger(__name__)

OUTPUTS = ("photo", "crop")


@dataclass(frozen=True)
class FommEngineConfig:
    """Options of :class:`FommEngine`.

    ``device``/``fp16``: see :func:`avatarcam.precision.select_precision`. ``relative``: move the
    avatar by the driver's motion relative to a calibration frame (else copy absolute key
    points). ``adapt_scale``: scale that motion by the ratio of face sizes. ``output``: "photo"
    (pasted back into the full avatar photo) or "crop" (the square face crop). ``find_best_frame``:
    during the first ``best_frame_window_s`` seconds after (re)calibration, take as calibration
    the driving frame whose landmarks best match the avatar's. ``compile`` / ``cuda_graphs``:
    CUDA-only speed-ups (ignored on CPU). ``cache_source``: reuse per-avatar generator work
    (switch off only to benchmark). ``size``: model input side (None: the config's frame size).
    """

    device: str = "auto"
    fp16: bool | None = None
    relative: bool = True
    adapt_scale: bool = True
    output: str = "photo"
    find_best_frame: bool = False
    best_frame_window_s: float = 2.0
    compile: bool = False
    cuda_graphs: bool = False
    cache_source: bool = True
    size: int | None = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if not (self.best_frame_window_s >= 0 and math.isfinite(self.best_frame_window_s)):
            raise ValueError(f"best_frame_window_s must be a finite number >= 0, got {self.best_frame_window_s!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8):
            raise ValueError(f"size must be None or an integer >= 8, got {self.size!r}")


@dataclass(frozen=True, eq=False)
class FommPrepared:
    """An avatar ready to animate (all tensors on the engine's device).

    ``source``: ``1 x 3 x S x S`` float in [0, 1]. ``kp_source``: ``{"value": 1 x K x 2,
    "jacobian": 1 x K x 2 x 2}``. ``cache``: the generator's source-only tensors (None when
    caching is off). ``source_area``: hull area of the source key points (None without adapt
    scale). ``landmarks``: the avatar's normalised landmarks (``N x 2``) for find-best-frame.
    """

    avatar: Avatar
    source: Tensor
    kp_source: dict[str, Tensor]
    cache: SourceCache | None
    source_area: float | None
    landmarks: np.ndarray | None


@dataclass(frozen=True, eq=False)
class _Calibration:
    """The neutral driving frame: its key points, inverse jacobians, hull area, and how well its
    landmarks matched the avatar's (lower is better, inf when unknown)."""

    kp: dict[str, Tensor]
    jacobian_inverse: Tensor | None
    area: float | None
    t_start: float
    score: float


def normalized_landmarks(points: np.ndarray | None) -> np.ndarray | None:
    """``N x 2`` landmarks (x, y of ``N x 2|3`` points) with zero mean and unit RMS radius, or None
    when there are none or they collapse to a point."""
    if points is None or len(points) < 3:
        return None
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    xy = xy - xy.mean(axis=0)
    scale = math.sqrt(float(np.mean(np.sum(xy * xy, axis=1))))
    if not math.isfinite(scale) or scale < 1e-6:
        return None
    return xy / scale


def landmark_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared distance between two normalised landmark sets of the same length."""
    return float(np.mean(np.sum((a - b) ** 2, axis=1)))


class _GraphedStep:
    """A function of fixed-shape tensors captured once as a CUDA graph and replayed per call.

    Inputs are copied into static buffers before each replay, so new avatars or calibrations
    need no recapture. The returned tensor is overwritten by the next call.
    """

    def __init__(self, fn: Callable[..., Tensor], example: Mapping[str, Tensor]) -> None:
        self.static = {k: v.clone() for k, v in example.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: cuDNN autotuning and lazy inits must not happen during capture
                fn(**self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(**self.static)

    def __call__(self, **inputs: Tensor) -> Tensor:
        for key, value in inputs.items():
            self.static[key].copy_(value)
        self.graph.replay()
        return self.output


class FommEngine(Engine):
    """First Order Motion Model engine (see the module docstring).

    Construct with a checkpoint path and its YAML config (or :meth:`from_model` with an already
    built :class:`FommModel`). ``animate`` returns RGB uint8: the full avatar photo with the
    animated face pasted in (``output="photo"``) or the ``S x S`` crop (``output="crop"``).
    """

    name = "fomm"
    needs_landmarks = False

    def __init__(
        self,
        *,
        checkpoint: str | Path | Mapping[str, Any] | None = None,
        config: str | Path | Mapping[str, Any] | FommConfig | None = None,
        model: FommModel | None = None,
        device: str = "auto",
        fp16: bool | None = None,
        relative: bool = True,
        adapt_scale: bool = True,
        output: str = "photo",
        find_best_frame: bool = False,
        best_frame_window_s: float = 2.0,
        compile: bool = False,
        cuda_graphs: bool = False,
        cache_source: bool = True,
        size: int | None = None,
    ) -> None:
        self.options = FommEngineConfig(
            device=device, fp16=fp16, relative=relative, adapt_scale=adapt_scale, output=output,
            find_best_frame=find_best_frame, best_frame_window_s=best_frame_window_s, compile=compile,
            cuda_graphs=cuda_graphs, cache_source=cache_source, size=size,
        )  # fmt: skip
        self.precision: Precision = select_precision(device, fp16)
        if model is None:
            if checkpoint is None or config is None:
                raise EngineError(
                    "the fomm engine needs a checkpoint and its config (e.g. vox-cpk.pth.tar + vox-256.yaml)."
                )
            model = load_fomm(checkpoint, config, device=self.precision.device)
        self.model = model.to(self.precision.device, memory_format=self.precision.memory_format)
        self.size = size if size is not None else model.config.image_size
        self.drive_crop_size = self.size  # the driver is read only through drive.crop(size)
        try:
            model.config.check_size(self.size)
        except ValueError as exc:
            raise EngineError(f"the fomm engine cannot run at size {self.size}: {exc}") from exc
        if self.options.relative and self.options.adapt_scale and model.config.num_kp < 3:
            raise EngineError("adapt_scale needs at least 3 key points; use adapt_scale=False with this model.")
        self._calibration: _Calibration | None = None
        self._pinned: Tensor | None = None
        on_cuda = self.precision.is_cuda
        if not on_cuda:
            log.warning(
                "FOMM engine is running on the CPU (%s): this is far from real time (about 1 s per frame for "
                "the vox-256 model on 2 cores). Use a CUDA GPU with a CUDA build of PyTorch, or --engine mesh.",
                self.precision.describe(),
            )
            if compile or cuda_graphs:
                log.info("fomm: compile/cuda_graphs only apply on CUDA; running eagerly on the CPU.")
        else:
            # Fixed input shapes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        self._use_graphs = on_cuda and cuda_graphs
        self._step: Callable[..., Tensor] = self._frame_step
        if on_cuda and compile:
            self._step = torch.compile(self._frame_step, dynamic=False)
        self._graphed: _GraphedStep | None = None
        log.info("fomm engine: %s, size %d, output %s", self.precision.describe(), self.size, self.options.output)

    @classmethod
    def from_model(cls, model: FommModel, **options: Any) -> FommEngine:
        """An engine around an already built model (e.g. random weights for benchmarks)."""
        return cls(model=model, **options)

    # ---- tensors in and out -------------------------------------------------------------------

    def _to_tensor(self, image: np.ndarray) -> Tensor:
        """``S x S x 3`` uint8 -> ``1 x 3 x S x S`` float in [0, 1] on the device (channels-last on CUDA)."""
        if self.precision.is_cuda:
            if self._pinned is None or self._pinned.shape != image.shape:
                self._pinned = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
            self._pinned.numpy()[...] = image
            hwc = self._pinned.to(self.precision.device, non_blocking=True)
        else:
            hwc = torch.from_numpy(image)
        # An HWC buffer permuted to NCHW already has channels-last strides.
        x = hwc.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        return x.contiguous(memory_format=self.precision.memory_format)

    @staticmethod
    def _to_image(prediction: Tensor) -> np.ndarray:
        """``1 x 3 x S x S`` in [0, 1] -> ``S x S x 3`` uint8 (converted on the device, one small copy)."""
        img = prediction[0].float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0)
        return np.ascontiguousarray(img.cpu().numpy())

    # ---- avatar -------------------------------------------------------------------------------

    def prepare(self, avatar: Avatar) -> FommPrepared:
        """Key points and source-only generator tensors of ``avatar``'s face crop at the model size."""
        x = self._to_tensor(avatar.crop(self.size))
        with self.precision.inference():
            kp_source = self.model.kp_detector(x)
            cache = self.model.generator.encode_source(x) if self.options.cache_source else None
        area = None
        if self.options.relative and self.options.adapt_scale:
            area = self._hull_area(kp_source, "avatar")
        landmarks = None
        if self.options.find_best_frame and avatar.face is not None:
            landmarks = normalized_landmarks(avatar.face.landmarks)
        return FommPrepared(
            avatar=avatar, source=x, kp_source=kp_source, cache=cache, source_area=area, landmarks=landmarks
        )

    @staticmethod
    def _hull_area(kp: Mapping[str, Tensor], what: str) -> float | None:
        try:
            area = hull_area(kp["value"][0])
        except ValueError:
            area = 0.0
        if area <= 0:
            log.warning("fomm: the %s key points are degenerate; movement scale adaptation is off for it.", what)
            return None
        return area

    # ---- calibration --------------------------------------------------------------------------

    def calibrate(self) -> None:
        """Take the next driving frame as the neutral pose (and restart the best-frame window)."""
        self._calibration = None

    def _make_calibration(self, kd: dict[str, Tensor], t: float, score: float, t_start: float | None) -> _Calibration:
        jinv = inverse_2x2(kd["jacobian"]) if "jacobian" in kd else None
        area = self._hull_area(kd, "calibration frame") if self.options.adapt_scale else None
        return _Calibration(
            kp=kd, jacobian_inverse=jinv, area=area, t_start=t if t_start is None else t_start, score=score
        )

    def _consider_calibration(self, prepared: FommPrepared, drive: Drive, kd: dict[str, Tensor]) -> None:
        """Make ``kd`` the calibration when there is none, or when find-best-frame is on, the frame
        is inside the window and its landmarks match the avatar's better than the current one."""
        t = drive.frame.t_capture
        calib = self._calibration
        score = math.inf
        if self.options.find_best_frame and prepared.landmarks is not None and drive.landmarks is not None:
            face = drive.landmarks.face
            if face is not None and len(face.points) == len(prepared.landmarks):
                driver = normalized_landmarks(face.points)
                if driver is not None:
                    score = landmark_distance(driver, prepared.landmarks)
        if calib is None:
            self._calibration = self._make_calibration(kd, t, score, None)
        elif score < calib.score:
            self._calibration = self._make_calibration(kd, t, score, calib.t_start)

    def _in_best_frame_window(self, drive: Drive) -> bool:
        calib = self._calibration
        return (
            self.options.find_best_frame
            and calib is not None
            and drive.frame.t_capture - calib.t_start <= self.options.best_frame_window_s
        )

    def _state(self, prepared: FommPrepared) -> dict[str, Tensor]:
        """The per-frame step's tensor inputs besides the driver image."""
        state = {"ks_value": prepared.kp_source["value"]}
        if "jacobian" in prepared.kp_source:
            state["ks_jacobian"] = prepared.kp_source["jacobian"]
        if self.options.cache_source:
            state["features"] = prepared.cache.features
            if prepared.cache.motion_source is not None:
                state["motion_source"] = prepared.cache.motion_source
        else:
            state["source"] = prepared.source
        calib = self._calibration
        if self.options.relative and calib is not None:
            state["kd0_value"] = calib.kp["value"]
            if calib.jacobian_inverse is not None:
                state["kd0_jacobian_inverse"] = calib.jacobian_inverse
            scale = 1.0
            if self.options.adapt_scale and calib.area is not None and prepared.source_area is not None:
                scale = math.sqrt(prepared.source_area) / math.sqrt(calib.area)
            state["scale"] = torch.full((), scale, dtype=torch.float32, device=self.precision.device)
        return state

    # ---- per frame ----------------------------------------------------------------------------

    def _render(self, kd: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> Tensor:
        """Relative key points (when calibrated) and the generator. Returns ``1 x 3 x S x S``."""
        if "kd0_value" in state:
            # Relative motion is key-point arithmetic: fp32 even under autocast (matmul would go fp16).
            with fp32_region(state["ks_value"].device.type):
                kn = {"value": (kd["value"] - state["kd0_value"]) * state["scale"] + state["ks_value"]}
                if "jacobian" in kd:
                    change = torch.matmul(kd["jacobian"], state["kd0_jacobian_inverse"])
                    kn["jacobian"] = torch.matmul(change, state["ks_jacobian"])
        else:
            kn = dict(kd)
        ks = {"value": state["ks_value"]}
        if "ks_jacobian" in state:
            ks["jacobian"] = state["ks_jacobian"]
        generator = self.model.generator
        if "features" in state:
            cache = SourceCache(source=None, features=state["features"], motion_source=state.get("motion_source"))
            out = generator(kp_source=ks, kp_driving=kn, source_cache=cache, with_deformed=False)
        else:
            out = generator(state["source"], kp_source=ks, kp_driving=kn, with_deformed=False)
        return out["prediction"]

    def _frame_step(self, x: Tensor, **state: Tensor) -> Tensor:
        """The whole per-frame computation as a function of tensors (compiled / graphed on CUDA)."""
        return self._render(self.model.kp_detector(x), state)

    def _run_step(self, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        if self._use_graphs:
            if self._graphed is None or set(self._graphed.static) != {"x", *state}:
                try:
                    with self.precision.autocast_context(cache_enabled=False):
                        self._graphed = _GraphedStep(lambda x, **s: self._step(x, **s), {"x": x, **state})
                except Exception as exc:  # noqa: BLE001 - a failed capture must not end the stream
                    log.warning("fomm: CUDA graph capture failed (%s); continuing without CUDA graphs.", exc)
                    self._use_graphs = False
                    self._graphed = None
                    return self._run_step(x, state)
            return self._graphed(x=x, **state)
        with self.precision.autocast_context():
            if self._step is self._frame_step:
                return self._step(x, **state)
            try:
                return self._step(x, **state)
            except Exception as exc:  # noqa: BLE001 - torch.compile problems (no compiler, no triton) fall back
                log.warning("fomm: torch.compile failed (%s: %s); running eagerly.", type(exc).__name__, exc)
                self._step = self._frame_step
                return self._step(x, **state)

    def animate(self, prepared: FommPrepared, drive: Drive) -> np.ndarray:
        """Render one driving frame. Returns RGB uint8: the photo (``output="photo"``) or the crop."""
        x = self._to_tensor(drive.crop(self.size))
        with torch.inference_mode():
            calibrating = self.options.relative and (self._calibration is None or self._in_best_frame_window(drive))
            if calibrating:
                with self.precision.autocast_context():
                    kd = self.model.kp_detector(x)
                self._consider_calibration(prepared, drive, kd)
                with self.precision.autocast_context():
                    prediction = self._render(kd, self._state(prepared))
            else:
                prediction = self._run_step(x, self._state(prepared))
        crop = self._to_image(prediction)
        if self.options.output == "crop":
            return crop
        return paste_back(prepared.avatar.image, crop, prepared.avatar.box)

    def close(self) -> None:
        self._graphed = None
        self._calibration = None
