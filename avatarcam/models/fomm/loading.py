"""Build FOMM modules from a config and load checkpoint weights strictly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avatarcam.errors import WeightsError
from avatarcam.models.fomm.config import FommConfig
from avatarcam.models.fomm.generator import OcclusionAwareGenerator
from avatarcam.models.fomm.keypoints import KPDetector
from avatarcam.weights.checkpoint import read_fomm_state


@dataclass(frozen=True, eq=False)
class FommModel:
    """A loaded model: ``kp_detector`` and ``generator`` in eval mode, gradients off."""

    kp_detector: KPDetector
    generator: OcclusionAwareGenerator
    config: FommConfig

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: torch.device | str, memory_format: torch.memory_format = torch.preserve_format) -> FommModel:
        """Move both modules in place (and optionally to channels-last) and return self."""
        for module in (self.kp_detector, self.generator):
            module.to(device=device, memory_format=memory_format)
        return self


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}"


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], what: str, origin: str) -> None:
    """Raise :class:`WeightsError` listing missing keys, unexpected keys and shape mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_describe(mismatched, 3)}")
    raise WeightsError(
        f"{origin}: the {what} weights do not match the config ({'; '.join(problems)}). "
        "Use the YAML the checkpoint was trained with (vox-256.yaml for vox-cpk.pth.tar and "
        "vox-adv-256.yaml for vox-adv-cpk.pth.tar), or re-download a damaged checkpoint."
    )


def _prepare(module: nn.Module, device: torch.device | str) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module.to(device)


def build_fomm(config: str | Path | Mapping[str, Any] | FommConfig, device: torch.device | str = "cpu") -> FommModel:
    """A randomly initialised model for ``config`` (for benchmarks and tests without weights)."""
    cfg = config if isinstance(config, FommConfig) else FommConfig.load(config)
    kp_detector = _prepare(cfg.build_kp_detector(), device)
    generator = _prepare(cfg.build_generator(), device)
    return FommModel(kp_detector=kp_detector, generator=generator, config=cfg)


def load_fomm(
    checkpoint: str | Path | Mapping[str, Mapping[str, Tensor]],
    config: str | Path | Mapping[str, Any] | FommConfig,
    device: torch.device | str = "cpu",
) -> FommModel:
    """Load a FOMM checkpoint strictly.

    ``checkpoint``: a ``.pth.tar`` / slim ``.safetensors`` path (read safely with
    :func:`avatarcam.weights.checkpoint.read_fomm_state`) or an already-read
    ``{"kp_detector": state_dict, "generator": state_dict}``. ``config``: YAML path, parsed YAML
    dict or :class:`FommConfig`. Raises :class:`WeightsError` for unreadable files and for any
    missing key, unexpected key or shape mismatch; :class:`avatarcam.errors.ConfigError` for a
    bad config.
    """
    cfg = config if isinstance(config, FommConfig) else FommConfig.load(config)
    if isinstance(checkpoint, Mapping):
        state, origin = checkpoint, "checkpoint"
    else:
        state, origin = read_fomm_state(checkpoint), str(checkpoint)
    kp_detector = cfg.build_kp_detector()
    generator = cfg.build_generator()
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        sd = state.get(name)
        if not isinstance(sd, Mapping):
            raise WeightsError(f"{origin} has no {name!r} weights; it is not a FOMM checkpoint.")
        check_state_dict(module, sd, name, origin)
        for key, tensor in sd.items():
            if not torch.is_floating_point(tensor) and not key.endswith(".num_batches_tracked"):
                raise WeightsError(f"{origin}: {name}.{key} has dtype {tensor.dtype}, expected a float tensor.")
            if torch.is_floating_point(tensor) and not torch.isfinite(tensor).all():
                raise WeightsError(f"{origin}: {name}.{key} contains NaN or infinite values; the file is damaged.")
        # Slim copies may store fp16; load_state_dict copies (and upcasts) into the fp32 parameters.
        module.load_state_dict(sd, strict=True)
    return FommModel(
        kp_detector=_prepare(kp_detector, device),
        generator=_prepare(generator, device),
        config=cfg,
    )
