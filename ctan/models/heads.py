"""Task heads: a U-Net-style decoder for pixel tasks, pooling + MLP for image-level tasks.

Heads are chosen by task kind through :data:`HEADS`, so pixel-level and image-level tasks mix
freely in one model. Every head takes the task's own list of stage features.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ctan.config import ModelConfig
from ctan.models.layers import (
    ConvNormAct,
    full_precision,
    global_pool,
    make_act,
    make_conv,
    upsample,
)
from ctan.tasks import TaskSpec


class PixelDecoder(nn.Module):
    """U-Net-style decoder fed by the task's own skip features.

    From the bottleneck up, each level upsamples, concatenates the skip feature of that stage and
    applies a 3x3 conv-norm-act; a final 1x1 convolution, in float32 also under mixed precision,
    gives ``out_channels`` maps (logits for segmentation, values for regression), its bias
    starting at ``output_bias`` when given.

    Shapes:
        features ``[(B, widths[s], *S / 2**s)]`` -> ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        widths: list[int],
        out_channels: int,
        norm: str,
        act: str,
        norm_groups: int,
        output_scale: float = 1.0,
        output_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.output_scale = output_scale
        self.levels = nn.ModuleList(
            ConvNormAct(spatial_dims, widths[s + 1] + widths[s], widths[s], norm, act, norm_groups)
            for s in range(len(widths) - 1)
        )
        self.output = make_conv(spatial_dims, widths[0], out_channels, kernel_size=1)
        if output_bias is not None:
            nn.init.constant_(self.output.bias, output_bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for stage in reversed(range(len(self.levels))):
            skip = features[stage]
            x = self.levels[stage](torch.cat([upsample(x, skip.shape[2:]), skip], dim=1))
        return full_precision(self.output, x) * self.output_scale


class ImageHead(nn.Module):
    """Global average pooling of encoder stages, concatenated, then a two-layer MLP.

    Pooling every stage (``stages="all"``) lets a diagnosis use fine texture and coarse shape
    alike. It also hands the MLP the mean of each shallow feature, which is close to a count of
    voxels in an intensity band; where that count nearly answers the task (chest CT: "any
    opacity" against the geometry that separates COVID from other opacities) training can settle
    on it. ``stages="last"`` pools the deepest stage only, as classification networks usually do,
    so the encoder has to build the discriminating features itself.

    Shapes:
        features ``[(B, widths[s], *S_s)]`` -> ``(B, out_channels)`` logits.
    """

    def __init__(
        self,
        widths: list[int],
        out_channels: int,
        hidden: int,
        act: str,
        dropout: float,
        stages: str = "all",
    ) -> None:
        super().__init__()
        self.first_stage = 0 if stages == "all" else len(widths) - 1
        self.mlp = nn.Sequential(
            nn.Linear(sum(widths[self.first_stage :]), hidden),
            make_act(act),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_channels),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        pooled = [global_pool(f) for f in features[self.first_stage :]]
        hidden = self.mlp[:-1](torch.cat(pooled, dim=1))
        return full_precision(self.mlp[-1], hidden)


def _pixel_head(config: ModelConfig, task: TaskSpec) -> nn.Module:
    return PixelDecoder(
        config.spatial_dims,
        config.widths,
        task.classes,
        config.norm,
        config.act,
        config.norm_groups,
        task.scale,
        None if task.prior is None else math.log(task.prior / (1.0 - task.prior)),
    )


def _image_head(config: ModelConfig, task: TaskSpec) -> nn.Module:
    return ImageHead(
        config.widths,
        task.classes,
        config.head_hidden,
        config.act,
        config.dropout,
        config.image_head_stages,
    )


HEADS: dict[str, Callable[[ModelConfig, TaskSpec], nn.Module]] = {
    "segmentation": _pixel_head,
    "regression": _pixel_head,
    "classification": _image_head,
}


def build_head(config: ModelConfig, task: TaskSpec) -> nn.Module:
    """The head for ``task``'s kind.

    Raises:
        ValueError: no head is registered for the task's kind.
    """
    try:
        factory = HEADS[task.kind]
    except KeyError:
        raise ValueError(
            f"no head for task kind {task.kind!r}; registered: {sorted(HEADS)}"
        ) from None
    return factory(config, task)
