"""The dense motion network: from sparse key-point motions to a dense deformation field and an
occlusion map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarcam.models.fomm.blocks import (
    AntiAliasInterpolation2d,
    Hourglass,
    inverse_2x2,
    kp2gaussian,
    make_coordinate_grid,
)
from avatarcam.models.fomm.keypoints import Keypoints
from avatarcam.precision import fp32_region


class DenseMotionNetwork(nn.Module):
    """Predicts how every pixel of the driving frame maps into the source image.

    Works at ``scale_factor`` of the input resolution (vox-256: 64 x 64). Key points are
    :data:`Keypoints` mappings; ``kp_variance`` is the reference default (not in the YAML).
    """

    def __init__(
        self,
        *,
        block_expansion: int,
        num_blocks: int,
        max_features: int,
        num_kp: int,
        num_channels: int,
        estimate_occlusion_map: bool = False,
        scale_factor: float = 1,
        kp_variance: float = 0.01,
    ) -> None:
        super().__init__()
        in_features = (num_kp + 1) * (num_channels + 1)
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = (
            nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3) if estimate_occlusion_map else None
        )
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def downsample(self, source: Tensor) -> Tensor:
        """The source at the network's working resolution (depends on the source only: cacheable)."""
        return self.down(source) if self.scale_factor != 1 else source

    def heatmap_representation(self, height: int, width: int, kp_driving: Keypoints, kp_source: Keypoints) -> Tensor:
        """``B x (K+1) x 1 x h x w``: Gaussian(driving) - Gaussian(source), zero background slot first. fp32."""
        heat = kp2gaussian(kp_driving["value"].float(), height, width, self.kp_variance) - kp2gaussian(
            kp_source["value"].float(), height, width, self.kp_variance
        )
        zeros = heat.new_zeros(heat.shape[0], 1, height, width)
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    def sparse_motions(self, height: int, width: int, kp_driving: Keypoints, kp_source: Keypoints) -> Tensor:
        """``B x (K+1) x h x w x 2`` sampling grids, slot 0 the identity, slot k+1 the affine motion
        ``z -> ks_k + J_s,k J_d,k^-1 (z - kd_k)`` around key point k. fp32."""
        kd = kp_driving["value"].float()
        ks = kp_source["value"].float()
        b, k = kd.shape[:2]
        identity = make_coordinate_grid(height, width, dtype=torch.float32, device=kd.device)
        rel = identity.view(1, 1, height, width, 2) - kd.view(b, k, 1, 1, 2)
        if "jacobian" in kp_driving:
            affine = torch.matmul(kp_source["jacobian"].float(), inverse_2x2(kp_driving["jacobian"].float()))
            # Per-pixel 2x2 matrix-vector product, written as a broadcast so no B*K*h*w batch of
            # tiny matmuls is materialised.
            rel = (affine.view(b, k, 1, 1, 2, 2) * rel.unsqueeze(-2)).sum(-1)
        moved = rel + ks.view(b, k, 1, 1, 2)
        return torch.cat([identity.expand(b, 1, height, width, 2), moved], dim=1)

    def forward(
        self,
        source: Tensor | None = None,
        kp_driving: Keypoints | None = None,
        kp_source: Keypoints | None = None,
        *,
        source_down: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Give either ``source`` (``B x C x H x W``) or its :meth:`downsample` as ``source_down``.

        Returns ``sparse_deformed`` (``B x K+1 x C x h x w``), ``mask`` (``B x K+1 x h x w``,
        softmax over slots), ``deformation`` (``B x h x w x 2``, a grid_sample grid) and, when
        configured, ``occlusion_map`` (``B x 1 x h x w`` in (0, 1)).
        """
        if source_down is None:
            source_down = self.downsample(source)
        b, c, h, w = source_down.shape
        slots = self.num_kp + 1
        with fp32_region(source_down.device.type):
            heatmap = self.heatmap_representation(h, w, kp_driving, kp_source)
            motions = self.sparse_motions(h, w, kp_driving, kp_source)
            repeated = source_down.float().unsqueeze(1).expand(b, slots, c, h, w).reshape(b * slots, c, h, w)
            deformed = F.grid_sample(
                repeated,
                motions.reshape(b * slots, h, w, 2),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            ).view(b, slots, c, h, w)
            # Interleaved per slot: [heat_0, rgb_0, heat_1, rgb_1, ...], as the checkpoints expect.
            hourglass_in = torch.cat([heatmap, deformed], dim=2).view(b, slots * (c + 1), h, w)
        features = self.hourglass(hourglass_in)
        mask_logits = self.mask(features)
        occlusion_logits = self.occlusion(features) if self.occlusion is not None else None
        with fp32_region(features.device.type):
            mask = F.softmax(mask_logits.float(), dim=1)
            # The deformation is a blend of the slot grids; it becomes sampling coordinates, so fp32.
            deformation = (mask.unsqueeze(-1) * motions).sum(dim=1)
            out = {"sparse_deformed": deformed, "mask": mask, "deformation": deformation}
            if occlusion_logits is not None:
                out["occlusion_map"] = torch.sigmoid(occlusion_logits.float())
        return out
