"""The unsupervised key-point detector (KPDetector)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarcam.models.fomm.blocks import AntiAliasInterpolation2d, Hourglass, make_coordinate_grid
from avatarcam.precision import fp32_region

Keypoints = dict[str, Tensor]
"""``{"value": B x K x 2 (x, y) in about [-1, 1], "jacobian": B x K x 2 x 2}`` (jacobian optional)."""


class KPDetector(nn.Module):
    """Finds K key points (and a local 2x2 jacobian each) in an image.

    Keyword arguments mirror the public YAML (``kp_detector_params`` + ``common_params``).
    Input ``B x C x H x W`` float in [0, 1]; output :data:`Keypoints`.
    """

    def __init__(
        self,
        *,
        block_expansion: int,
        num_kp: int,
        num_channels: int,
        max_features: int,
        num_blocks: int,
        temperature: float,
        estimate_jacobian: bool = False,
        scale_factor: float = 1,
        single_jacobian_map: bool = False,
        pad: int = 0,
    ) -> None:
        super().__init__()
        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=7, padding=pad)
        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(
                self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size=7, padding=pad
            )
        else:
            self.num_jacobian_maps = 0
            self.jacobian = None
        self.temperature = temperature
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def forward(self, image: Tensor, *, with_heatmap: bool = False) -> Keypoints:
        """``image``: ``B x C x H x W`` in [0, 1]. ``with_heatmap`` adds ``"heatmap"`` (``B x K x h x w``)."""
        x = self.down(image) if self.scale_factor != 1 else image
        features = self.predictor(x)
        # The jacobian conv is bulk work (40 channels, 7x7) and tolerates fp16; its output is
        # upcast before the weighted sum.
        jmap = self.jacobian(features) if self.jacobian is not None else None
        # Softmax-expectations are where fp16 hurts most: the temperature multiplies logit errors
        # by 10 before the softmax, and the sums run over thousands of positions. The kp conv
        # itself is small (K output channels), so it runs in fp32 too.
        with fp32_region(features.device.type):
            logits = self.kp(features.float())
            b, k, h, w = logits.shape
            heatmap = F.softmax(logits.reshape(b, k, h * w) / self.temperature, dim=2)
            grid = make_coordinate_grid(h, w, dtype=torch.float32, device=logits.device).view(h * w, 2)
            out: Keypoints = {"value": torch.matmul(heatmap, grid)}
            if jmap is not None:
                jmap = jmap.float().reshape(b, self.num_jacobian_maps, 4, h * w)
                # Sum over positions of heatmap_k * jacobian-map_m(k), with m(k) = k, or 0 for a single map.
                out["jacobian"] = (heatmap.unsqueeze(2) * jmap).sum(-1).view(b, k, 2, 2)
        if with_heatmap:
            out["heatmap"] = heatmap.view(b, k, h, w)
        return out
