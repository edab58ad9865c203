"""The model family STL, HPS, MTAN and CTAN, built from independent parts (HPS ⊂ MTAN ⊂ CTAN).

Top-level modules carry the parameter-group contract in their names:

- ``encoder``: the shared encoder (group ``encoder``; absent in STL);
- ``attention.<task>``: what the sites holding the task share (MTAN masks, CTAE masks, CTAB);
- ``task_encoders.<task>``: STL's whole encoder of a task;
- ``heads.<task>``: the task's head (group ``heads.<task>``).

Every architecture's ``forward(x)`` maps ``(B, in_channels, *image_size)`` to
``{task: output}``: ``(B, classes)`` logits for classification, ``(B, classes, *image_size)``
for pixel tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ctan.config import ModelConfig
from ctan.models.attention import CrossTaskBottleneck, TaskMasks, tokens_to_map
from ctan.models.encoder import ResidualEncoder
from ctan.models.heads import build_head
from ctan.tasks import TaskSpec

ARCHITECTURES: dict[str, type[MultiTaskNet]] = {}


def register_architecture(name: str) -> Callable[[type[MultiTaskNet]], type[MultiTaskNet]]:
    """Class decorator adding an architecture to :data:`ARCHITECTURES` under ``name``."""

    def add(cls: type[MultiTaskNet]) -> type[MultiTaskNet]:
        ARCHITECTURES[name] = cls
        cls.arch_name = name
        return cls

    return add


class MultiTaskNet(nn.Module):
    """Base of every architecture: task heads over per-task stage features.

    Subclasses build their trunk in :meth:`build_trunk` and say how each task's stage features
    are made in :meth:`task_features`.

    Args:
        config: the model section of the experiment config.
        tasks: the tasks, in config order.
    """

    arch_name = "base"

    def __init__(self, config: ModelConfig, tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.config = config
        self.tasks = list(tasks)
        self.task_names = [t.name for t in tasks]
        self.build_trunk()
        self.heads = nn.ModuleDict({t.name: build_head(config, t) for t in tasks})

    def build_trunk(self) -> None:
        """Create the modules shared by tasks or specific to them (not the heads)."""
        raise NotImplementedError

    def task_features(self, x: Tensor) -> dict[str, list[Tensor]]:
        """Per task, its stage features ``[(B, widths[s], *S / 2**s)]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.task_features(x)
        return {name: self.heads[name](features[name]) for name in self.task_names}


@register_architecture("stl")
class SingleTaskNets(MultiTaskNet):
    """STL: one encoder and one head per task, nothing shared (the Δm reference)."""

    def build_trunk(self) -> None:
        self.task_encoders = nn.ModuleDict(
            {name: ResidualEncoder.from_config(self.config) for name in self.task_names}
        )

    def task_features(self, x: Tensor) -> dict[str, list[Tensor]]:
        return {name: self.task_encoders[name](x) for name in self.task_names}


@register_architecture("hps")
class HardParameterSharing(MultiTaskNet):
    """HPS: one shared encoder, one head per task on the same features."""

    def build_trunk(self) -> None:
        self.encoder = ResidualEncoder.from_config(self.config)

    def task_features(self, x: Tensor) -> dict[str, list[Tensor]]:
        shared = self.encoder(x)
        return {name: shared for name in self.task_names}


@register_architecture("mtan")
class MultiTaskAttentionNet(HardParameterSharing):
    """MTAN: per-task soft attention masks over every stage of the shared encoder.

    Liu et al., CVPR 2019. A task's branch sees only the shared features and its own previous
    stage, so tasks never read each other's branches.
    """

    cross_task = False

    def build_trunk(self) -> None:
        super().build_trunk()
        others = len(self.task_names) - 1 if self.cross_task else 0
        self.attention = nn.ModuleDict(
            {name: self.build_task_attention(others) for name in self.task_names}
        )

    def build_task_attention(self, other_tasks: int) -> nn.Module:
        """The modules of ``attention.<task>`` for one task."""
        c = self.config
        module = nn.Module()
        module.masks = TaskMasks(
            c.spatial_dims,
            c.widths,
            other_tasks,
            c.attention_from_stage,
            c.norm,
            c.act,
            c.norm_groups,
        )
        return module

    def task_features(self, x: Tensor) -> dict[str, list[Tensor]]:
        shared = self.encoder(x)
        features: dict[str, list[Tensor]] = {name: [] for name in self.task_names}
        for stage, shared_feature in enumerate(shared):
            previous = {name: (f[-1] if f else None) for name, f in features.items()}
            for name in self.task_names:
                others = [previous[o] for o in self.task_names if o != name and self.cross_task]
                masks = self.attention[name].masks
                features[name].append(masks.attend(stage, shared_feature, previous[name], others))
        return self.refine_bottleneck(features)

    def refine_bottleneck(self, features: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        """Hook for cross-task work at the bottleneck; MTAN leaves features unchanged."""
        return features


@register_architecture("ctan")
class CrossTaskAttentionNet(MultiTaskAttentionNet):
    """CTAN: MTAN whose masks see the other tasks' branches (CTAE), plus a cross-task bottleneck.

    Our reconstruction of Kim et al., "Cross-Task Attention Network: Improving Multi-Task
    Learning for Medical Imaging Applications" (MICCAI workshop 2023), from its abstract.
    """

    cross_task = True

    def build_task_attention(self, other_tasks: int) -> nn.Module:
        module = super().build_task_attention(other_tasks)
        c = self.config
        tokens = math.prod(s // 2 ** (len(c.widths) - 1) for s in c.image_size)
        module.bottleneck = CrossTaskBottleneck(
            c.widths[-1], tokens, c.attention_heads, c.act, c.dropout
        )
        return module

    def refine_bottleneck(self, features: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        tokens = {
            name: self.attention[name].bottleneck.tokens_of(features[name][-1])
            for name in self.task_names
        }
        refined = {}
        for name in self.task_names:
            others = [tokens[o] for o in self.task_names if o != name] or [tokens[name]]
            keys = torch.cat(others, dim=1)
            out = self.attention[name].bottleneck(tokens[name], keys)
            refined[name] = [*features[name][:-1], tokens_to_map(out, features[name][-1])]
        return refined
