"""Relative key-point motion (``normalize_kp``): transfer the driver's motion, not its face shape."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError
from torch import Tensor

from avatarcam.models.fomm.blocks import inverse_2x2
from avatarcam.precision import fp32_region


def hull_area(points: Tensor | np.ndarray) -> float:
    """Area of the 2-D convex hull of ``K x 2`` points, in float64.

    Raises ValueError when the points are (nearly) collinear, since no movement scale can be
    derived from them.
    """
    pts = points.detach().float().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    try:
        return float(ConvexHull(pts.astype(np.float64)).volume)
    except QhullError as exc:
        raise ValueError(f"key points have no 2-D convex hull (collinear or too few: {len(pts)})") from exc


def movement_scale(kp_source: Mapping[str, Tensor], kp_driving_initial: Mapping[str, Tensor]) -> float:
    """sqrt(hull area of the source key points) / sqrt(hull area of the initial driving key points),
    both from batch element 0 (as the reference does, for every batch element)."""
    return math.sqrt(hull_area(kp_source["value"][0])) / math.sqrt(hull_area(kp_driving_initial["value"][0]))


def normalize_kp(
    kp_source: Mapping[str, Tensor],
    kp_driving: Mapping[str, Tensor],
    kp_driving_initial: Mapping[str, Tensor],
    adapt_movement_scale: bool = False,
    use_relative_movement: bool = False,
    use_relative_jacobian: bool = False,
) -> dict[str, Tensor]:
    """Key points to drive the generator with, from those of the source, the current and the
    initial driving frame (each ``{"value": B x K x 2, "jacobian": B x K x 2 x 2}``).

    Relative movement: ``value = (kd - kd0) * scale + ks``; relative jacobian:
    ``J = J_d J_d0^-1 J_s``. ``scale`` is :func:`movement_scale` when ``adapt_movement_scale``,
    else 1. Without relative movement the driving key points pass through unchanged.
    """
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0
    out = dict(kp_driving)
    if use_relative_movement:
        # Key-point arithmetic stays fp32 even when called under autocast (matmul would go fp16).
        with fp32_region(kp_driving["value"].device.type):
            diff = kp_driving["value"] - kp_driving_initial["value"]
            out["value"] = diff * scale + kp_source["value"]
            if use_relative_jacobian:
                change = torch.matmul(kp_driving["jacobian"], inverse_2x2(kp_driving_initial["jacobian"]))
                out["jacobian"] = torch.matmul(change, kp_source["jacobian"])
    return out
