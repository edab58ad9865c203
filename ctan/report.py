"""Run logs (CSV, JSON lines, TensorBoard) and plots of learning curves."""

from __future__ import annotations

import csv
import io
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

from ctan.checkpoint import atomic_write_bytes


class RunLog:
    """Scalars of a run written as long-format CSV, JSON lines and TensorBoard events.

    Each record is ``(step, split, name, value)`` with names such as ``lesion/dice`` or
    ``diagnosis/loss``; files are appended and flushed per step so a crash keeps what was
    logged.

    Args:
        folder: the run folder (created).
        tensorboard: also write TensorBoard events under ``folder/tensorboard``.
        keep_until: for a resumed run, the last step it resumes after: records of later steps
            (logged by a round that never completed) are dropped from every file, so that
            the resumed run does not log them twice.
    """

    def __init__(
        self, folder: Path, tensorboard: bool = True, keep_until: int | None = None
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "metrics.csv"
        self.jsonl_path = self.folder / "metrics.jsonl"
        if keep_until is not None:
            self._drop_after(keep_until)
        new = not self.csv_path.exists()
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(["step", "split", "name", "value"])
        self._jsonl = self.jsonl_path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if keep_until is None else keep_until + 1
            self._writer = SummaryWriter(str(self.folder / "tensorboard"), purge_step=purge)

    def _drop_after(self, step: int) -> None:
        """Rewrite the CSV and JSON lines without the records of steps after ``step``, and
        without a record torn by a crash in the middle of writing it."""
        if self.csv_path.is_file():
            with self.csv_path.open(newline="") as file:
                rows = list(csv.reader(file))
            kept = [rows[0], *(r for r in rows[1:] if _csv_step(r) <= step)] if rows else []
            buffer = io.StringIO()
            csv.writer(buffer).writerows(kept)
            atomic_write_bytes(self.csv_path, lambda f: f.write(buffer.getvalue().encode()))
        if self.jsonl_path.is_file():
            lines = self.jsonl_path.read_text().splitlines()
            kept_lines = [line for line in lines if _jsonl_step(line) <= step]
            text = "".join(f"{line}\n" for line in kept_lines)
            atomic_write_bytes(self.jsonl_path, lambda f: f.write(text.encode()))

    def log(self, step: int, split: str, scalars: Mapping[str, float], **context: Any) -> None:
        """Record ``scalars`` of one ``split`` (train, validation, test) at ``step``."""
        for name, value in scalars.items():
            self._csv.writerow([step, split, name, value])
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(f"{split}/{name}", value, step)
        record = {"step": step, "split": split, **context, **dict(scalars)}
        self._jsonl.write(json.dumps(json_safe(record)) + "\n")
        self._csv_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (strict JSON has no NaN: an AUC over one
    class is undefined, and a JSON reader other than Python's would refuse the file)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _csv_step(row: list[str]) -> float:
    """The step of a CSV record; infinite for a torn or malformed one (so it is dropped)."""
    try:
        float(row[3])
        return int(row[0])
    except (IndexError, ValueError):
        return math.inf


def _jsonl_step(line: str) -> float:
    """The step of a JSON lines record; infinite for a torn or malformed one."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


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
    return _save_figure(fig, out)


def _final_cell(
    curves: Mapping[str, Mapping[str, list[tuple[int, float]]]], split: str, name: str
) -> str:
    """The last logged value as :func:`_cell` writes it, with its round in brackets when that
    is not the run's last round (a site that failed or left: its value is not final)."""
    points = curves.get(split, {}).get(name)
    if not points:
        return _cell(None)
    rounds = curves.get("round", {}).get("wall-seconds", [])
    step, value = points[-1]
    stale = rounds and step < rounds[-1][0]
    return f"{_cell(value)} (round {step})" if stale else _cell(value)


def plot_federated_curves(curves: Mapping, out: Path, tasks: list[Any], sites: list[str]) -> Path:
    """Per task: training loss and validation primary metric of every site across rounds."""
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 2.8 * len(tasks)), squeeze=False)
    colour = {site: f"C{index % 10}" for index, site in enumerate(sites)}
    for row, task in enumerate(tasks):
        loss_ax, metric_ax = axes[row]
        for site in sites:
            loss = curves.get(f"train/{site}", {}).get(f"{task.name}.loss", [])
            if loss:
                loss_ax.plot(*zip(*loss, strict=True), "o-", color=colour[site], label=site)
            metric = curves.get(f"validation/{site}", {}).get(
                f"{task.name}.{task.primary_metric}", []
            )
            if metric:
                metric_ax.plot(*zip(*metric, strict=True), "o-", color=colour[site], label=site)
        overall = curves.get("validation/all", {}).get(f"{task.name}.{task.primary_metric}", [])
        if overall:
            metric_ax.plot(*zip(*overall, strict=True), "k--", label="all sites")
        loss_ax.set_title(f"{task.name}: training loss per site")
        metric_ax.set_title(f"{task.name}: validation {task.primary_metric}")
        for ax in (loss_ax, metric_ax):
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.lines:
                ax.legend(fontsize=7)
    return _save_figure(fig, out)


def _save_figure(fig: Any, out: Path) -> Path:
    """Lay out, write atomically as PNG and close ``fig``."""
    fig.tight_layout()
    try:
        return atomic_write_bytes(out, lambda file: fig.savefig(file, format="png", dpi=100))
    finally:
        plt.close(fig)


def _span(steps: list[int]) -> str:
    """Round numbers as text, runs collapsed: ``[1, 2, 3, 5]`` -> ``1-3, 5``."""
    runs: list[list[int]] = []
    for step in sorted(steps):
        if runs and step == runs[-1][-1] + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _write_text(path: Path, lines: list[str]) -> Path:
    return atomic_write_bytes(path, lambda file: file.write("\n".join(lines).encode()))


def _cell(value: float | None) -> str:
    """A metric for a table or card: 4 decimals, "–" when the run logged none."""
    return "–" if value is None else f"{value:.4f}"


def write_federated_report(
    folder: Path,
    config: Any,
    sites: list[Mapping[str, Any]],
    centralised: Mapping[str, Mapping[str, float]] | None = None,
    best: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.md``, ``model_card.md`` and plots of a federated run folder.

    Args:
        folder: the run folder holding the round log (``metrics.csv``).
        config: the run's :class:`ctan.config.Config`.
        sites: the admitted sites (``name``, ``tasks``, ``labelled``, ``code_version``).
        centralised: test metrics of a centralised run of the same config, if there is one.
        best: the round ``best_global_model.pt`` holds (``round``, ``validation-loss``).

    Returns:
        The report's path.
    """
    folder = Path(folder)
    curves = read_log(folder / "metrics.csv")
    names = [s["name"] for s in sites]
    plot_federated_curves(curves, folder / "federated_curves.png", config.tasks, names)
    federation = config.federation
    rounds = curves.get("round", {}).get("wall-seconds", [])
    lines = [
        f"# Federated run: {federation.id}",
        "",
        f"Architecture **{config.model.arch}** ({config.model.spatial_dims}D, "
        f"{config.model.image_size}), strategy **{federation.strategy}**, "
        f"{len(rounds)} rounds of {federation.local_epochs} local epoch(s), heads "
        f"**{federation.heads}**, {len(sites)} sites.",
        "",
        "## Sites",
        "",
        "| site | tasks | labelled training cases |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s['name']} | {', '.join(s['tasks'])} | "
        f"{', '.join(f'{k}: {v}' for k, v in s['labelled'].items())} |"
        for s in sites
    ]
    header = [f"{t.name} {m}" for t in config.tasks for m in t.metrics]
    lines += [
        "",
        "## Final validation metrics per site",
        "",
        "| site | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]
    for site in [*names, "all"]:
        cells = []
        for task in config.tasks:
            for metric in task.metrics:
                cells.append(_final_cell(curves, f"validation/{site}", f"{task.name}.{metric}"))
        lines.append(
            f"| {'all sites (weighted)' if site == 'all' else site} | " + " | ".join(cells) + " |"
        )
    if centralised:
        lines += [
            "",
            "## Centralised vs federated",
            "",
            "| task | metric | centralised | federated (all sites) |",
            "|---|---|---|---|",
        ]
        for task in config.tasks:
            for metric in task.metrics:
                fed = _final_cell(curves, "validation/all", f"{task.name}.{metric}")
                cen = centralised.get(task.name, {}).get(metric)
                lines.append(f"| {task.name} | {metric} | {_cell(cen)} | {fed} |")
    traffic = [
        "",
        "## Traffic and time per round",
        "",
        "| site | mean bytes sent to site | mean bytes received | mean training s | "
        "updates accepted |",
        "|---|---|---|---|---|",
    ]
    rejected: list[str] = []
    for site in names:
        split = curves.get(f"train/{site}", {})

        def mean(name: str, values: Mapping = split) -> float:
            points = values.get(name, [])
            return sum(v for _, v in points) / len(points) if points else float("nan")

        verdicts = split.get("accepted", [])
        refused = [int(step) for step, value in verdicts if value == 0]
        if refused:
            rejected.append(f"{site} (round{'s' if len(refused) > 1 else ''} {_span(refused)})")
        traffic.append(
            f"| {site} | {mean('bytes-sent'):,.0f} | {mean('bytes-received'):,.0f} | "
            f"{mean('train-seconds'):.1f} | "
            f"{f'{len(verdicts) - len(refused)} of {len(verdicts)}' if verdicts else '-'} |"
        )
    lines += traffic
    if rejected:
        lines += [
            "",
            f"Rejected updates, left out of their rounds: {'; '.join(rejected)}. The reasons "
            "are in `metrics.jsonl` (`rejected` of the site's train record).",
        ]
    if rounds:
        lines += ["", f"Mean round wall time: {sum(v for _, v in rounds) / len(rounds):.1f} s."]
    if best is not None and best.get("round"):
        lines += [
            "",
            f"Best round by validation loss over the sites: {best['round']} (mean task loss "
            f"{best['validation-loss']:.4f}), kept as `best_global_model.pt`.",
        ]
    lines += [
        "",
        "![learning curves](federated_curves.png)",
        "",
        "Round log: `metrics.csv` / `metrics.jsonl` (long format: round, split, name, "
        "value); TensorBoard events: `tensorboard/`. Global model: `global_model.pt` (last "
        "round) and `best_global_model.pt` (the round with the lowest validation loss over the "
        "sites); each site keeps its personalised `model.pt` and `best.pt` in its state folder.",
        "",
    ]
    report = _write_text(folder / "report.md", lines)
    write_model_card(folder / "model_card.md", config, sites, curves)
    return report


def write_model_card(
    path: Path, config: Any, sites: list[Mapping[str, Any]], curves: Mapping
) -> Path:
    """A model card: what the model is, what it was trained on, how it scores, what not to do."""
    federation = config.federation
    data = config.data
    held = {task for site in sites for task in site["tasks"]}
    unheld = [t.name for t in config.tasks if t.name not in held]
    rounds = len(curves.get("round", {}).get("wall-seconds", []))
    lines = [
        f"# Model card: {config.experiment.name} ({federation.id})",
        "",
        "## Model",
        f"- Architecture: {config.model.arch.upper()} ({config.model.spatial_dims}D, input "
        f"{config.model.in_channels} x {config.model.image_size}, widths {config.model.widths}).",
        "- Tasks: "
        + "; ".join(
            f"{t.name} ({t.kind}, {t.classes} classes/channels, metrics {', '.join(t.metrics)})"
            for t in config.tasks
            if t.name in held
        )
        + ".",
        *(
            [f"- Not trained (no site held them): {', '.join(unheld)}; their heads are noise."]
            if unheld
            else []
        ),
        f"- Trained with federated learning ({federation.strategy}, {rounds} rounds); "
        f"heads {federation.heads}.",
        "",
        "## Data",
        f"- Format: {data.format if data else 'site-owned'}; sites: "
        + ", ".join(f"{s['name']} ({', '.join(s['tasks'])})" for s in sites)
        + ".",
        "- No patient data left the sites; only parameter groups, labelled-example counts and "
        "metrics did.",
        "",
        "## Metrics per site (validation, last round)",
    ]
    for site in sites:
        values = []
        for task in config.tasks:
            if task.name in site["tasks"]:
                name = f"{task.name}.{task.primary_metric}"
                value = _final_cell(curves, f"validation/{site['name']}", name)
                values.append(f"{task.name} {task.primary_metric} {value}")
        lines.append(f"- {site['name']}: " + "; ".join(values))
    lines += [
        "",
        "## Intended use",
        "- Research on federated multi-task learning. **Not a medical device**; not validated "
        "for clinical use or diagnosis.",
        "",
        "## Limitations",
        "- Performance is reported on each site's own validation split; other populations, "
        "scanners and label conventions may differ.",
        *(
            [
                f"- Trained on phantoms (synthetic images in the {data.format} layout): the "
                "model says nothing about real patients."
            ]
            if data is not None and data.phantom is not None
            else []
        ),
        "",
    ]
    return _write_text(path, lines)
