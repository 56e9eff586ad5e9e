"""Building blocks of the First Order Motion Model: conv blocks, the hourglass, anti-aliased
downsampling, coordinate grids and key-point Gaussians.

Module and attribute names follow the public checkpoints' state_dict keys exactly
(``conv``, ``norm``, ``encoder.down_blocks.N``, ``down.weight`` ...): renaming anything here
breaks loading of ``vox-cpk.pth.tar``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def channels(block_expansion: int, max_features: int, level: int) -> int:
    """Feature count at hourglass/generator ``level``: ``min(max_features, block_expansion * 2**level)``."""
    return min(max_features, block_expansion * (2**level))


class DownBlock2d(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU -> 2x2 average pool. ``B x in x H x W`` -> ``B x out x H/2 x W/2``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class UpBlock2d(nn.Module):
    """Nearest 2x upsample -> conv 3x3 -> BatchNorm -> ReLU. ``B x in x H x W`` -> ``B x out x 2H x 2W``.

    Nearest, not bilinear: the checkpoints were trained with ``F.interpolate``'s default mode.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class SameBlock2d(nn.Module):
    """conv (7x7 by default, same padding) -> BatchNorm -> ReLU; keeps the spatial size."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 7, padding: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x)))))), 3x3 convs.

    Attributes are registered conv1, conv2, norm1, norm2 to match the checkpoint key order.
    """

    def __init__(self, features: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(features, affine=True)
        self.norm2 = nn.BatchNorm2d(features, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` DownBlock2d. Returns ``[x, d0, ..., d_{N-1}]``."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                in_features if i == 0 else channels(block_expansion, max_features, i),
                channels(block_expansion, max_features, i + 1),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: UpBlock2d per level, each output concatenated with the matching skip
    (upsampled first, skip second). Output channels ``block_expansion + in_features``."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            top = channels(block_expansion, max_features, i + 1)
            blocks.append(
                UpBlock2d(top if i == num_blocks - 1 else 2 * top, channels(block_expansion, max_features, i))
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[Tensor]) -> Tensor:
        out = skips[-1]
        for j, block in enumerate(self.up_blocks):
            out = torch.cat([block(out), skips[-2 - j]], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style hourglass. ``B x in x H x W`` -> ``B x (block_expansion + in) x H x W``;
    H and W must be divisible by ``2**num_blocks``."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256) -> None:
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def gaussian_kernel_size(scale: float) -> tuple[float, int]:
    """(sigma, odd kernel size) of the anti-alias Gaussian for downscaling by ``scale`` (< 1)."""
    sigma = (1.0 / scale - 1.0) / 2.0
    return sigma, 2 * round(sigma * 4) + 1


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur then subsample by ``int(1/scale)``: ``B x C x H x W`` -> ``B x C x ceil(H*s) x ceil(W*s)``.

    The kernel is a buffer (``weight``, ``channels x 1 x k x k``) because the checkpoints store it.
    Blur-then-take-every-n-th equals one strided depthwise conv with the same zero padding, which
    is what runs here (n times fewer multiply-adds in each direction).
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        sigma, ksize = gaussian_kernel_size(scale)
        coords = torch.arange(ksize, dtype=torch.float32)
        g = torch.exp(-((coords - (ksize - 1) / 2) ** 2) / (2 * sigma**2))
        kernel = torch.outer(g, g)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, ksize, ksize).contiguous())
        self.groups = channels
        self.stride = int(1 / scale)
        self.padding = ksize // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.stride, padding=self.padding, groups=self.groups)


def make_coordinate_grid(height: int, width: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``height x width x 2`` grid of (x, y) with pixel centres from -1 to +1 inclusive.

    ``grid[i, j] = (2 * j / (width - 1) - 1, 2 * i / (height - 1) - 1)``. Computed in the same
    operation order as the reference so fp32 results match it bit for bit.
    """
    x = torch.arange(width, dtype=dtype, device=device)
    y = torch.arange(height, dtype=dtype, device=device)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    xx = x.view(1, -1).expand(height, width)
    yy = y.view(-1, 1).expand(height, width)
    return torch.stack([xx, yy], dim=2)


def kp2gaussian(kp_value: Tensor, height: int, width: int, kp_variance: float) -> Tensor:
    """Unnormalised Gaussians at the key points: ``B x K x 2`` (x, y) -> ``B x K x H x W`` in (0, 1]."""
    grid = make_coordinate_grid(height, width, dtype=kp_value.dtype, device=kp_value.device)
    diff = grid.view(1, 1, height, width, 2) - kp_value.view(*kp_value.shape[:2], 1, 1, 2)
    return torch.exp(-0.5 * (diff**2).sum(-1) / kp_variance)


def inverse_2x2(m: Tensor) -> Tensor:
    """Closed-form inverse of ``... x 2 x 2`` matrices.

    Unlike ``torch.inverse`` it launches no solver and never synchronises the GPU (so it can be
    captured in a CUDA graph); for well-conditioned 2x2 jacobians it agrees to float rounding.
    """
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    row0 = torch.stack([d, -b], dim=-1)
    row1 = torch.stack([-c, a], dim=-1)
    return torch.stack([row0, row1], dim=-2) / det[..., None, None]
