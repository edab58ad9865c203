"""Task attention: MTAN soft masks, the cross-task attention encoder (CTAE) and bottleneck (CTAB).

MTAN follows Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019
(github.com/lorenmt/mtan). CTAE and CTAB are this project's reconstruction of the Cross-Task
Attention Network (Kim et al., 2023) from its abstract: the paper names a cross-task attention
encoder and bottleneck but its full text was not available to us.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ctan.models.layers import downsample, make_act, make_conv, make_norm


def _opacus_attention() -> type[nn.Module]:
    """Opacus's ``DPMultiheadAttention``, imported without the root logging handler Opacus
    installs on import (``logging.basicConfig`` in ``opacus.utils.module_utils``): with it, every
    library's debug records, Flower's included, reach the console of a site or a simulation."""
    root = logging.getLogger()
    before = list(root.handlers)
    from opacus.layers import DPMultiheadAttention

    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    return DPMultiheadAttention


DPMultiheadAttention = _opacus_attention()


class AttentionMask(nn.Module):
    """One task's soft mask at one encoder stage.

    ``m = sigmoid(conv1x1(norm(act(conv1x1(inputs)))))``

    Shapes:
        ``(B, in_channels, *S) -> (B, out_channels, *S)`` with values in ``(0, 1)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str,
        act: str,
        norm_groups: int,
    ) -> None:
        super().__init__()
        self.conv_in = make_conv(spatial_dims, in_channels, out_channels, kernel_size=1)
        self.act = make_act(act)
        self.norm = make_norm(norm, spatial_dims, out_channels, norm_groups)
        self.conv_out = make_conv(spatial_dims, out_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv_out(self.norm(self.act(self.conv_in(x)))))


class TaskMasks(nn.ModuleDict):
    """All stage masks of one task, keyed ``stage<s>``.

    Stages before ``first_stage`` are not masked: the task uses the shared feature there, as
    MTAN's ResNet variant leaves the stem shared; masking the full-resolution stage costs more
    than it gives on a CPU. At the first masked stage the mask sees the shared feature; at later
    stages ``s`` it also sees the task's own attended feature of stage ``s-1`` (pooled to stage
    ``s``) and, with ``cross_tasks > 0`` (CTAE), the attended stage ``s-1`` features of the
    other ``cross_tasks`` tasks, so information flows between task branches inside the encoder.

    Args:
        spatial_dims: 2 or 3.
        widths: encoder widths per stage.
        cross_tasks: number of other tasks whose features the masks see (0 = MTAN).
        first_stage: first encoder stage that gets a mask.
        norm, act, norm_groups: as the encoder.
    """

    def __init__(
        self,
        spatial_dims: int,
        widths: list[int],
        cross_tasks: int,
        first_stage: int,
        norm: str,
        act: str,
        norm_groups: int,
    ) -> None:
        masks = {}
        for stage in range(first_stage, len(widths)):
            extra = 0 if stage == first_stage else widths[stage - 1] * (1 + cross_tasks)
            width = widths[stage]
            masks[f"stage{stage}"] = AttentionMask(
                spatial_dims, width + extra, width, norm, act, norm_groups
            )
        super().__init__(masks)
        self.spatial_dims = spatial_dims
        self.first_stage = first_stage

    def attend(
        self, stage: int, shared: Tensor, own: Tensor | None, others: list[Tensor]
    ) -> Tensor:
        """The task's attended feature at ``stage``.

        Args:
            stage: encoder stage index.
            shared: shared feature ``(B, widths[stage], *S_stage)``.
            own: this task's attended feature of the previous stage ``(B, widths[stage-1],
                *2S_stage)``, ``None`` at stage 0.
            others: the other tasks' previous-stage attended features (CTAE), or ``[]``.

        Returns:
            ``mask * shared`` (``shared`` itself before ``first_stage``), shape of ``shared``.
        """
        if stage < self.first_stage:
            return shared
        inputs = [shared]
        if stage > self.first_stage:
            inputs += [downsample(f, self.spatial_dims) for f in [own, *others]]
        return self[f"stage{stage}"](torch.cat(inputs, dim=1)) * shared


class CrossTaskBottleneck(nn.Module):
    """CTAB: one task's bottleneck tokens query the other tasks' bottleneck tokens.

    ``y = LN(q + MHA(q, kv, kv))``, ``out = LN(y + FFN(y))``, where ``q`` are this task's
    bottleneck positions as tokens and ``kv`` the tokens of the other tasks (its own when it is
    the only task). Learned position embeddings are added to the task's tokens once, so the same
    tokens serve as this task's queries and as keys for the other tasks. Multi-head attention is
    Opacus' ``DPMultiheadAttention(batch_first=True)`` so per-sample gradients are exact.

    Args:
        channels: bottleneck width ``C``.
        tokens: bottleneck positions ``N = prod(S_bottleneck)``.
        heads: attention heads (divide ``channels``).
        act: feed-forward activation.
        dropout: attention and feed-forward dropout.

    Shapes:
        :meth:`tokens_of`: ``(B, C, *S) -> (B, N, C)``;
        :meth:`forward`: queries ``(B, N, C)``, keys ``(B, M, C)`` -> ``(B, N, C)``.
    """

    def __init__(
        self, channels: int, tokens: int, heads: int, act: str, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.position = nn.Embedding(tokens, channels)
        self.attention = DPMultiheadAttention(channels, heads, dropout=dropout, batch_first=True)
        self.norm_attention = nn.LayerNorm(channels)
        self.feed_forward = nn.Sequential(
            nn.Linear(channels, 2 * channels),
            make_act(act),
            nn.Dropout(dropout),
            nn.Linear(2 * channels, channels),
        )
        self.norm_output = nn.LayerNorm(channels)

    def tokens_of(self, feature: Tensor) -> Tensor:
        """Bottleneck feature map to position-embedded tokens."""
        tokens = feature.flatten(2).transpose(1, 2)
        index = torch.arange(tokens.shape[1], device=feature.device)
        return tokens + self.position(index.expand(tokens.shape[0], -1))

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        attended, _ = self.attention(queries, keys, keys, need_weights=False)
        hidden = self.norm_attention(queries + attended)
        return self.norm_output(hidden + self.feed_forward(hidden))


def tokens_to_map(tokens: Tensor, like: Tensor) -> Tensor:
    """``(B, N, C)`` tokens back to the layout of ``like`` ``(B, C, *S)``."""
    return tokens.transpose(1, 2).reshape(like.shape)
