"""The model family (STL, HPS, MTAN, CTAN) and its parameter-group contract."""

from __future__ import annotations

import torch

from ctan.config import Config
from ctan.models.architectures import ARCHITECTURES, MultiTaskNet, register_architecture
from ctan.models.groups import group_of, parameter_groups, trainable_groups

__all__ = [
    "ARCHITECTURES",
    "MultiTaskNet",
    "build_model",
    "group_of",
    "parameter_groups",
    "register_architecture",
    "trainable_groups",
]


def build_model(config: Config, arch: str | None = None) -> MultiTaskNet:
    """The model a config describes, on the CPU, initialised from ``experiment.seed``.

    The global random state is left untouched, so the same seed always gives the same initial
    weights whatever ran before.

    Args:
        config: the validated experiment config.
        arch: build this architecture instead of ``config.model.arch`` (for comparisons).

    Returns:
        A :class:`MultiTaskNet`; ``model(x)`` maps ``(B, in_channels, *image_size)`` to
        ``{task: (B, classes)}`` for classification and ``{task: (B, classes, *image_size)}``
        for pixel tasks.

    Raises:
        ValueError: the architecture is not registered.
    """
    name = arch or config.model.arch
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"model.arch {name!r} is not a registered architecture; "
            f"allowed: {sorted(ARCHITECTURES)}"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.experiment.seed)
        return cls(config.model, config.tasks)
