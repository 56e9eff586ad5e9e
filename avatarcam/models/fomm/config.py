"""FOMM model configuration: the public YAML schema (``model_params``) as a validated record."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avatarcam.errors import ConfigError
from avatarcam.models.fomm.generator import OcclusionAwareGenerator
from avatarcam.models.fomm.keypoints import KPDetector


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_scale(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if value != 1 and abs(1 / value - round(1 / value)) > 1e-9:
        raise ValueError(f"{name} must be 1/n for an integer n, got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class FommConfig:
    """``model_params`` of a FOMM YAML plus the training frame size.

    ``common`` holds ``num_kp``, ``num_channels``, ``estimate_jacobian``; ``kp_detector`` and
    ``generator`` hold ``kp_detector_params`` / ``generator_params`` verbatim (the generator's
    may contain ``dense_motion_params``). ``image_size`` is ``dataset_params.frame_shape[0]``
    (256 for vox), the resolution the model was trained at and the engine runs at.
    ``normalization`` is ``animate_params.normalization_params`` when present.
    """

    common: Mapping[str, Any]
    kp_detector: Mapping[str, Any]
    generator: Mapping[str, Any]
    image_size: int = 256
    normalization: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    def __post_init__(self) -> None:
        for key in ("num_kp", "num_channels"):
            if key not in self.common:
                raise ValueError(f"model_params.common_params.{key} is missing in {self.source}")
        _positive_int(self.common["num_kp"], "num_kp")
        _positive_int(self.common["num_channels"], "num_channels")
        _positive_int(self.image_size, "image_size")
        for key in ("block_expansion", "max_features", "num_blocks", "temperature"):
            if key not in self.kp_detector:
                raise ValueError(f"model_params.kp_detector_params.{key} is missing in {self.source}")
        for key in ("block_expansion", "max_features", "num_down_blocks", "num_bottleneck_blocks"):
            if key not in self.generator:
                raise ValueError(f"model_params.generator_params.{key} is missing in {self.source}")
        _check_scale(self.kp_detector.get("scale_factor", 1), "kp_detector_params.scale_factor")
        dense = self.generator.get("dense_motion_params")
        if dense is not None:
            _check_scale(dense.get("scale_factor", 1), "dense_motion_params.scale_factor")
        self.check_size(self.image_size)

    @property
    def num_kp(self) -> int:
        return int(self.common["num_kp"])

    @property
    def estimate_jacobian(self) -> bool:
        return bool(self.common.get("estimate_jacobian", False))

    def check_size(self, size: int) -> None:
        """Raise ValueError unless ``size x size`` inputs fit every module's pooling pyramid."""
        kp_scale = float(self.kp_detector.get("scale_factor", 1))
        kp_side = -(-size // round(1 / kp_scale)) if kp_scale != 1 else size
        if kp_side % (2 ** int(self.kp_detector["num_blocks"])):
            raise ValueError(
                f"size {size} does not fit the key-point detector: size * scale_factor ({kp_side}) must be "
                f"divisible by 2**num_blocks ({2 ** int(self.kp_detector['num_blocks'])})"
            )
        if kp_side - 6 + 2 * int(self.kp_detector.get("pad", 0)) < 1:
            raise ValueError(f"size {size} is too small for the key-point detector's 7x7 head")
        if size % (2 ** int(self.generator["num_down_blocks"])):
            raise ValueError(f"size {size} must be divisible by 2**num_down_blocks for the generator")
        dense = self.generator.get("dense_motion_params")
        if dense is not None:
            dm_scale = float(dense.get("scale_factor", 1))
            dm_side = -(-size // round(1 / dm_scale)) if dm_scale != 1 else size
            if dm_side % (2 ** int(dense["num_blocks"])):
                raise ValueError(
                    f"size {size} does not fit the dense motion network: size * scale_factor ({dm_side}) "
                    f"must be divisible by 2**num_blocks ({2 ** int(dense['num_blocks'])})"
                )

    @classmethod
    def load(cls, config: str | Path | Mapping[str, Any]) -> FommConfig:
        """From a YAML path or an already-parsed YAML dict (the whole file, or just ``model_params``).

        Raises :class:`ConfigError` naming the file and the problem.
        """
        where = "<dict>"
        if isinstance(config, (str, Path)):
            where = str(config)
            try:
                with open(config, encoding="utf-8") as f:
                    data = yaml.safe_load(f)
            except FileNotFoundError as exc:
                raise ConfigError(
                    f"FOMM config not found: {config}. "
                    "Pass the YAML that belongs to the checkpoint (e.g. vox-256.yaml)."
                ) from exc
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"FOMM config {config} cannot be read as YAML: {exc}") from exc
        else:
            data = config
        if not isinstance(data, Mapping):
            raise ConfigError(f"FOMM config {where} is not a YAML mapping.")
        model = data.get("model_params", data)
        if not isinstance(model, Mapping) or not {"common_params", "kp_detector_params", "generator_params"} <= set(
            model
        ):
            raise ConfigError(
                f"FOMM config {where} has no model_params with common_params, kp_detector_params and "
                "generator_params: is it a first-order-model config such as vox-256.yaml?"
            )
        frame_shape = (data.get("dataset_params") or {}).get("frame_shape", [256, 256, 3])
        normalization = (data.get("animate_params") or {}).get("normalization_params") or {}
        try:
            return cls(
                common=copy.deepcopy(dict(model["common_params"])),
                kp_detector=copy.deepcopy(dict(model["kp_detector_params"])),
                generator=copy.deepcopy(dict(model["generator_params"])),
                image_size=int(frame_shape[0]),
                normalization=dict(normalization),
                source=where,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"FOMM config {where} is invalid: {exc}") from exc

    def _build(self, cls: type, params: Mapping[str, Any], what: str) -> Any:
        try:
            return cls(**params, **self.common)
        except TypeError as exc:
            raise ConfigError(f"FOMM config {self.source}: {what} parameters are not understood ({exc}).") from exc

    def build_kp_detector(self) -> KPDetector:
        """``KPDetector(**kp_detector_params, **common_params)``, randomly initialised."""
        return self._build(KPDetector, self.kp_detector, "kp_detector_params")

    def build_generator(self) -> OcclusionAwareGenerator:
        """``OcclusionAwareGenerator(**generator_params, **common_params)``, randomly initialised."""
        return self._build(OcclusionAwareGenerator, self.generator, "generator_params")
