"""The occlusion-aware generator: encode the source, warp its features with the dense motion,
mask occluded parts, decode the driven image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarcam.models.fomm.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, channels
from avatarcam.models.fomm.dense_motion import DenseMotionNetwork
from avatarcam.models.fomm.keypoints import Keypoints
from avatarcam.precision import fp32_region


@dataclass(frozen=True, eq=False)
class SourceCache:
    """Everything the generator computes from the source image alone (once per avatar).

    ``source``: ``B x C x H x W`` in [0, 1], only read for the ``deformed`` visualisation (may be
    None, and then no ``deformed`` is produced).
    ``features``: the encoder output, ``B x ch(D) x H/2**D x W/2**D``.
    ``motion_source``: the dense-motion network's downsampled source, ``B x C x h x w``
    (None when the generator has no dense-motion network).
    """

    source: Tensor | None
    features: Tensor
    motion_source: Tensor | None


def warp(image: Tensor, deformation: Tensor) -> Tensor:
    """Sample ``image`` (``B x C x H x W``) at ``deformation`` (``B x h x w x 2``, (x, y) in [-1, 1]).

    The field is resized bilinearly to H x W first when the sizes differ. Zero padding and
    align_corners=False, as the checkpoints were trained with. fp32 in, fp32 out.
    """
    h, w = image.shape[2:]
    if deformation.shape[1:3] != (h, w):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
        deformation = deformation.permute(0, 2, 3, 1)
    return F.grid_sample(image, deformation, mode="bilinear", padding_mode="zeros", align_corners=False)


class OcclusionAwareGenerator(nn.Module):
    """Renders the source image in the pose of the driving key points.

    Keyword arguments mirror the public YAML (``generator_params`` + ``common_params``).
    Attribute registration order (dense_motion_network, first, down_blocks, up_blocks,
    bottleneck, final) matches the checkpoints' state_dict order.
    """

    def __init__(
        self,
        *,
        num_channels: int,
        num_kp: int,
        block_expansion: int,
        max_features: int,
        num_down_blocks: int,
        num_bottleneck_blocks: int,
        estimate_occlusion_map: bool = False,
        dense_motion_params: dict[str, Any] | None = None,
        estimate_jacobian: bool = False,
    ) -> None:
        super().__init__()
        if dense_motion_params is not None:
            self.dense_motion_network: DenseMotionNetwork | None = DenseMotionNetwork(
                num_kp=num_kp,
                num_channels=num_channels,
                estimate_occlusion_map=estimate_occlusion_map,
                **dense_motion_params,
            )
        else:
            self.dense_motion_network = None
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(channels(block_expansion, max_features, i), channels(block_expansion, max_features, i + 1))
            for i in range(num_down_blocks)
        )
        self.up_blocks = nn.ModuleList(
            UpBlock2d(
                channels(block_expansion, max_features, num_down_blocks - i),
                channels(block_expansion, max_features, num_down_blocks - i - 1),
            )
            for i in range(num_down_blocks)
        )
        bottleneck_features = channels(block_expansion, max_features, num_down_blocks)
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(bottleneck_features, kernel_size=3, padding=1))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)
        self.estimate_occlusion_map = estimate_occlusion_map
        self.num_channels = num_channels

    def encode_source(self, source: Tensor) -> SourceCache:
        """Run everything that depends on the source alone. ``source``: ``B x C x H x W`` in [0, 1]."""
        features = self.first(source)
        for block in self.down_blocks:
            features = block(features)
        motion_source = self.dense_motion_network.downsample(source) if self.dense_motion_network is not None else None
        return SourceCache(source=source, features=features, motion_source=motion_source)

    def forward(
        self,
        source: Tensor | None = None,
        kp_source: Keypoints | None = None,
        kp_driving: Keypoints | None = None,
        *,
        source_cache: SourceCache | None = None,
        with_deformed: bool = True,
    ) -> dict[str, Tensor]:
        """Render ``source`` moved from ``kp_source`` to ``kp_driving``.

        Pass either ``source`` (``B x C x H x W`` in [0, 1]) or a :meth:`encode_source` result as
        ``source_cache``; both give the same numbers. Returns ``prediction`` (``B x C x H x W`` in
        [0, 1]) and, with a dense-motion network, ``mask``, ``sparse_deformed``, ``deformation``
        (``B x h x w x 2``), ``occlusion_map`` (when configured) and, if ``with_deformed``,
        ``deformed`` (the source warped by the deformation: a visualisation the prediction does
        not use, so real-time callers switch it off).
        """
        cache = source_cache if source_cache is not None else self.encode_source(source)
        out: dict[str, Tensor] = {}
        features = cache.features
        if self.dense_motion_network is not None:
            motion = self.dense_motion_network(
                kp_driving=kp_driving, kp_source=kp_source, source_down=cache.motion_source
            )
            out.update(motion)
            with fp32_region(features.device.type):
                features = warp(features.float(), motion["deformation"])
                occlusion = motion.get("occlusion_map")
                if occlusion is not None:
                    if occlusion.shape[2:] != features.shape[2:]:
                        occlusion = F.interpolate(
                            occlusion, size=features.shape[2:], mode="bilinear", align_corners=False
                        )
                    features = features * occlusion
                if with_deformed and cache.source is not None:
                    out["deformed"] = warp(cache.source.float(), motion["deformation"])
        x = self.bottleneck(features)
        for block in self.up_blocks:
            x = block(x)
        out["prediction"] = torch.sigmoid(self.final(x))
        return out
