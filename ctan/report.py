"""Run logs (CSV, JSON lines, TensorBoard) and plots of learning curves."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


class RunLog:
    """Scalars of a run written as long-format CSV, JSON lines and TensorBoard events.

    Each record is ``(step, split, name, value)`` with names such as ``lesion/dice`` or
    ``diagnosis/loss``; files are appended and flushed per step so a crash keeps what was
    logged.

    Args:
        folder: the run folder (created).
        tensorboard: also write TensorBoard events under ``folder/tensorboard``.
    """

    def __init__(self, folder: Path, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "metrics.csv"
        self.jsonl_path = self.folder / "metrics.jsonl"
        new = not self.csv_path.exists()
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(["step", "split", "name", "value"])
        self._jsonl = self.jsonl_path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder / "tensorboard"))

    def log(self, step: int, split: str, scalars: Mapping[str, float], **context: Any) -> None:
        """Record ``scalars`` of one ``split`` (train, validation, test) at ``step``."""
        for name, value in scalars.items():
            self._csv.writerow([step, split, name, value])
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(f"{split}/{name}", value, step)
        record = {"step": step, "split": split, **context, **dict(scalars)}
        self._jsonl.write(json.dumps(record) + "\n")
        self._csv_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()


def read_log(csv_path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{split: {name: [(step, value), ...]}}`` from a :class:`RunLog` CSV."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    with Path(csv_path).open() as file:
        for row in csv.DictReader(file):
            curves[row["split"]][row["name"]].append((int(row["step"]), float(row["value"])))
    return {split: dict(names) for split, names in curves.items()}


def plot_learning_curves(
    csv_path: Path, out: Path, tasks: list[str], primary: Mapping[str, str]
) -> Path:
    """One row per task: training and validation loss, and the validation primary metric.

    Args:
        csv_path: a :class:`RunLog` CSV.
        out: the PNG to write.
        tasks: task names, in order.
        primary: the primary metric of each task.
    """
    curves = read_log(csv_path)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 2.8 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        loss_ax, metric_ax = axes[row]
        for split, style in (("train", "-"), ("validation", "--")):
            points = curves.get(split, {}).get(f"{task}/loss", [])
            if points:
                loss_ax.plot(*zip(*points, strict=True), style, label=split)
        loss_ax.set_title(f"{task}: loss")
        loss_ax.set_xlabel("epoch")
        loss_ax.legend()
        metric = primary[task]
        points = curves.get("validation", {}).get(f"{task}/{metric}", [])
        if points:
            metric_ax.plot(*zip(*points, strict=True), "o-")
        metric_ax.set_title(f"{task}: validation {metric}")
        metric_ax.set_xlabel("epoch")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
