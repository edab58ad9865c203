"""The shared residual encoder."""

from __future__ import annotations

from torch import Tensor, nn

from ctan.config import ModelConfig
from ctan.models.layers import ConvNormAct, ResidualBlock


class ResidualEncoder(nn.Module):
    """Residual convolution stages; each stage after the first halves the resolution.

    Stage ``s`` has ``widths[s]`` channels at ``image_size / 2**s``: a 3x3 convolution (stride 1
    for the stem, 2 afterwards) followed by ``blocks`` residual blocks.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        widths: channels per stage, e.g. ``[16, 32, 64, 128]``.
        blocks: residual blocks per stage.
        norm: ``"group"`` or ``"instance"``.
        act: activation name.
        norm_groups: GroupNorm groups.

    Shapes:
        ``(B, in_channels, *S)`` -> list of ``(B, widths[s], *S / 2**s)``, one per stage.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: list[int],
        blocks: int = 1,
        norm: str = "group",
        act: str = "relu",
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        self.widths = list(widths)
        stages = []
        previous = in_channels
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers = [ConvNormAct(spatial_dims, previous, width, norm, act, norm_groups, stride)]
            layers += [
                ResidualBlock(spatial_dims, width, norm, act, norm_groups) for _ in range(blocks)
            ]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.ModuleList(stages)

    @classmethod
    def from_config(cls, config: ModelConfig) -> ResidualEncoder:
        """The encoder a model config describes."""
        return cls(
            config.spatial_dims,
            config.in_channels,
            config.widths,
            config.blocks,
            config.norm,
            config.act,
            config.norm_groups,
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
