"""Model summaries: parameters per group, multiply-accumulates and output shapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from ctan.config import Config
from ctan.models import ARCHITECTURES, build_model, parameter_groups


@dataclass(frozen=True)
class ModelSummary:
    """What one architecture costs for one config.

    Attributes:
        arch: architecture name.
        parameters: parameter count per group (buffers excluded).
        macs: multiply-accumulates of one forward pass on one input.
        outputs: output shape per task for a batch of one.
    """

    arch: str
    parameters: dict[str, int]
    macs: int
    outputs: dict[str, tuple[int, ...]]

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())


def summarize(config: Config, arch: str) -> ModelSummary:
    """Build ``arch`` for ``config`` and measure it on one zero input ``(1, C, *image_size)``."""
    model = build_model(config, arch).eval()
    named = dict(model.named_parameters())
    parameters = {
        group: sum(named[k].numel() for k in keys if k in named)
        for group, keys in parameter_groups(model).items()
    }
    x = torch.zeros(1, config.model.in_channels, *config.model.image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        outputs = model(x)
    return ModelSummary(
        arch=arch,
        parameters=parameters,
        macs=counter.get_total_flops() // 2,
        outputs={name: tuple(out.shape) for name, out in outputs.items()},
    )


def print_summaries(config: Config, archs: Sequence[str] | None = None) -> list[ModelSummary]:
    """Print one table per architecture (all registered ones by default) and return them."""
    console = Console()
    summaries = [summarize(config, arch) for arch in (archs or list(ARCHITECTURES))]
    m = config.model
    console.print(
        f"input (1, {m.in_channels}, {', '.join(map(str, m.image_size))}), "
        f"spatial_dims {m.spatial_dims}, widths {m.widths}, norm {m.norm}, "
        f"tasks: {', '.join(f'{t.name} ({t.kind}, {t.classes})' for t in config.tasks)}"
    )
    for summary in summaries:
        console.print(
            f"\n[bold]{summary.arch.upper()}[/bold]: {summary.total_parameters:,} parameters, "
            f"{summary.macs / 1e6:,.1f} M multiply-accumulates per input"
        )
        table = Table()
        table.add_column("group")
        table.add_column("parameters", justify="right")
        for group, count in summary.parameters.items():
            table.add_row(group, f"{count:,}")
        for task, shape in summary.outputs.items():
            table.add_row(f"output {task}", str(shape))
        console.print(table)
    return summaries
