"""Configuration as data: one small frozen dataclass per stage, composed into :class:`AppConfig`.

Filled, in order, from the defaults, an optional TOML file (one table per stage, e.g. ``[output]``)
and the command line. Each dataclass checks its own fields; :class:`AppConfig` checks the
combinations. Network hyperparameters (the FOMM YAML) live with the weights, not here.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dacite

from avatarcam.audio.config import AudioConfig
from avatarcam.control_api import ApiConfig
from avatarcam.controls import ControlsConfig
from avatarcam.engines.mesh.options import MeshConfig
from avatarcam.errors import ConfigError
from avatarcam.geometry import PADS
from avatarcam.landmarks.config import TrackerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

FITS = ("face", "letterbox", "crop", "stretch")
SINKS = ("virtualcam", "window", "file", "null")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class CaptureConfig:
    """Where driving frames come from: a camera index (``"0"``), a device path (``/dev/video2``),
    a video file, or a still image. ``width``/``height``/``fps`` are requested from cameras."""

    source: str = "0"
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    mjpg: bool = True
    loop: bool = True
    realtime: bool = True
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        _require(self.width > 0 and self.height > 0, f"capture size must be positive, got {self.width}x{self.height}")
        _require(0 < self.fps <= 240, f"capture fps must be in (0, 240], got {self.fps}")
        _require(self.retry_s > 0, f"capture retry_s must be > 0, got {self.retry_s}")


@dataclass(frozen=True)
class EngineConfig:
    """Which engine animates the avatar. ``size``: the square face crop the engine renders;
    ``output``: ``photo`` (pasted back into the whole avatar photo) or ``crop``."""

    name: str = "mesh"
    size: int = 512
    output: str = "photo"
    device: str = "auto"
    fp16: bool | None = None
    weights: str | None = None  # a checkpoint name or path; None: the first one installed
    find_best_frame: bool = False

    def __post_init__(self) -> None:
        _require(16 <= self.size <= 2048, f"engine size must be in [16, 2048], got {self.size}")
        _require(self.output in ("photo", "crop"), f"engine output must be 'photo' or 'crop', got {self.output!r}")
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                 f"engine device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class OutputConfig:
    """The stream the virtual camera and the preview get: size, steady fps, how the avatar fits, mirroring."""

    width: int = 1280
    height: int = 720
    fps: float = 30.0
    fit: str = "face"
    mirror: bool = False
    pad: str = "blur"  # letterbox bars: "blur" (blurred copy of the picture) or "black"

    def __post_init__(self) -> None:
        _require(self.width > 0 and self.height > 0, f"output size must be positive, got {self.width}x{self.height}")
        _require(0 < self.fps <= 120, f"output fps must be in (0, 120], got {self.fps}")
        _require(self.fit in FITS, f"output fit must be one of {FITS}, got {self.fit!r}")
        _require(self.pad in PADS, f"output pad must be one of {PADS}, got {self.pad!r}")


@dataclass(frozen=True)
class SinkConfig:
    """Where output frames go. ``kinds`` from ``virtualcam``, ``window``, ``file``, ``null``."""

    kinds: tuple[str, ...] = ("virtualcam", "window")
    virtualcam_device: str | None = None
    virtualcam_backend: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in SINKS]
        _require(not bad, f"unknown sink(s) {bad}; choose from {SINKS}")
        _require("file" not in self.kinds or bool(self.file), "the file sink needs a path: --out PATH.mp4")


@dataclass(frozen=True)
class AvatarConfig:
    """The avatar library: a folder of photos, the one to start with (name, index or path)."""

    folder: str = "avatars"
    avatar: str | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class CropConfig:
    """The driver crop that follows the face: margin around the face, zoom (> 1 = tighter),
    offset (fractions of the crop side), how long to hold a lost face and how fast to ease back."""

    follow: bool = True
    margin: float = 0.3
    zoom: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    hold_s: float = 1.0
    ease_s: float = 1.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.margin <= 3.0, f"crop margin must be in [0, 3] face sizes, got {self.margin}")
        _require(0.2 <= self.zoom <= 5.0, f"crop zoom must be in [0.2, 5], got {self.zoom}")
        _require(len(self.offset) == 2, f"crop offset must be (x, y), got {self.offset}")
        _require(self.hold_s >= 0 and self.ease_s >= 0, f"crop hold_s/ease_s must be >= 0, got {self.hold_s}, {self.ease_s}")


@dataclass(frozen=True)
class AppConfig:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    avatars: AvatarConfig = field(default_factory=AvatarConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    stats: bool = False

    def __post_init__(self) -> None:
        if "virtualcam" in self.sinks.kinds:
            # I420/YUYV virtual cameras subsample chroma by 2: odd sizes are refused by the drivers.
            _require(self.output.width % 2 == 0 and self.output.height % 2 == 0,
                     f"the virtual camera needs an even output size, got {self.output.width}x{self.output.height}")
        if self.engine.find_best_frame:
            _require(self.engine.name != "passthrough",
                     "find_best_frame needs an animating engine (mesh or fomm), not passthrough")


_DACITE = dacite.Config(strict=True, cast=[tuple])


def config_from_mapping(data: dict[str, Any]) -> AppConfig:
    """Build an :class:`AppConfig` from nested plain data (as read from TOML). Unknown keys and
    wrong types raise :class:`ConfigError` naming the field."""
    try:
        return dacite.from_dict(AppConfig, data, config=_DACITE)
    except ConfigError:
        raise
    except (dacite.DaciteError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def load_config(path: str | Path | None) -> AppConfig:
    """Defaults, overlaid by the TOML file at ``path`` when given."""
    if path is None:
        return AppConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return config_from_mapping(data)


def with_overrides(config: AppConfig, overrides: dict[str, dict[str, Any]]) -> AppConfig:
    """Return ``config`` with ``{"stage": {"field": value}}`` replaced (``None`` values are skipped)."""
    changes: dict[str, Any] = {}
    for stage, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            continue
        current = getattr(config, stage)
        if dataclasses.is_dataclass(current):
            changes[stage] = dataclasses.replace(current, **values)
        else:
            raise ConfigError(f"{stage!r} is not a config section")
    return dataclasses.replace(config, **changes) if changes else config


def to_toml(config: AppConfig) -> str:
    """The effective configuration as TOML text (what ``avatarcam config --print`` shows)."""
    lines: list[str] = []
    scalars = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            continue
        scalars[f.name] = value
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not dataclasses.is_dataclass(value):
            continue
        lines.append("")
        lines.append(f"[{f.name}]")
        for sub in dataclasses.fields(value):
            v = getattr(value, sub.name)
            if v is None:
                lines.append(f"# {sub.name} = (unset)")
            elif dataclasses.is_dataclass(v):
                continue
            else:
                lines.append(f"{sub.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
