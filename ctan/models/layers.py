"""Small building blocks made through MONAI's layer factories, for any ``spatial_dims``.

Only layers for which Opacus computes per-sample gradients are used (convolutions, linear layers,
GroupNorm, InstanceNorm with affine parameters, LayerNorm, embeddings); BatchNorm is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import Tensor, nn

NORMS = ("group", "instance")


def make_norm(name: str, spatial_dims: int, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer without running statistics.

    Args:
        name: ``"group"`` or ``"instance"``.
        spatial_dims: 2 or 3.
        channels: feature channels normalised.
        groups: GroupNorm groups (must divide ``channels``).

    Raises:
        ValueError: ``name`` is not an allowed norm (BatchNorm is never allowed).
    """
    if name == "group":
        return get_norm_layer(("group", {"num_groups": groups}), spatial_dims, channels)
    if name == "instance":
        return get_norm_layer(("instance", {"affine": True}), spatial_dims, channels)
    raise ValueError(f"norm {name!r} is not supported; allowed: {list(NORMS)} (never BatchNorm)")


def make_act(name: str) -> nn.Module:
    """An activation without parameters, by MONAI name (``relu``, ``gelu``, ...)."""
    return get_act_layer(name)


def make_conv(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
) -> nn.Module:
    """A convolution with 'same' padding for odd kernels and no bias (a norm follows it)."""
    conv_type = Conv[Conv.CONV, spatial_dims]
    return conv_type(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=kernel_size == 1,
    )


class ConvNormAct(nn.Sequential):
    """``act(norm(conv(x)))``: ``(B, in, *S) -> (B, out, *S / stride)``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str,
        act: str,
        groups: int = 8,
        stride: int = 1,
    ) -> None:
        super().__init__(
            make_conv(spatial_dims, in_channels, out_channels, 3, stride),
            make_norm(norm, spatial_dims, out_channels, groups),
            make_act(act),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip: ``(B, C, *S) -> (B, C, *S)``."""

    def __init__(self, spatial_dims: int, channels: int, norm: str, act: str, groups: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, channels, channels, norm, act, groups)
        self.conv2 = make_conv(spatial_dims, channels, channels)
        self.norm2 = make_norm(norm, spatial_dims, channels, groups)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.norm2(self.conv2(self.conv1(x))))


def downsample(x: Tensor, spatial_dims: int) -> Tensor:
    """Halve every spatial side by average pooling: ``(B, C, *S) -> (B, C, *S / 2)``."""
    pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    return pool(x, kernel_size=2)


def upsample(x: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    """Nearest-neighbour resize to ``size`` (the spatial shape of a skip feature)."""
    return F.interpolate(x, size=tuple(size), mode="nearest")


def global_pool(x: Tensor) -> Tensor:
    """Mean over all spatial positions: ``(B, C, *S) -> (B, C)``."""
    return x.flatten(2).mean(dim=2)


def full_precision(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` in the precision of the layer's own weights (float32 unless the model was
    cast), also under autocast: for a head's last layer, whose outputs are the predictions.
    bfloat16 keeps 8 significant bits, which would put a dose map scaled to 70 Gy on a
    0.25-0.5 Gy grid and tie classification scores that an AUC ranks."""
    weights = next(layer.parameters(), x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return layer(x.to(weights.dtype))
