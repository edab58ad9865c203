"""Does federated CTAN match centralised CTAN? Federated against centralised and site-alone runs.

For every suite and seed, five variants are trained on the same cases and scored on the same
per-site test splits:

* ``centralised-ctan``: :func:`ctan.training.train_centralised` on the union of the sites' train
  splits (validated on the union of their validation splits);
* ``federated-ctan``, ``federated-hps``, ``federated-mtan``: real Flower simulations
  (:func:`server.simulate.simulate`), each site scored with its personalised checkpoint
  ``<state dir>/<federation id>/<site>/model.pt`` (shared groups + its own heads);
* ``alone-ctan``: every site trains CTAN on its own train split only.

All variants train ``rounds x local_epochs`` epochs and are scored after the last one (no
best-epoch selection, which federated runs do not have). The site splits are those of
``SiteRunner(config, site, simulated_site_cases(config, site)).splits()``; the seed sets the
partition, the splits inside each site, initialisation and data order. A variant's score is the
mean over sites of each site's test metric, weighted by the site's labelled test cases for the
task.

Also measured: **bytes** (a site's train reply, built by the real ``client.client_app.train``
handler and serialised with Flower's protobuf serde and as the inflatable objects the SuperNode
uploads, against the raw ``nbytes`` of its arrays), **no head bytes** (every site's
``payloads.jsonl`` of every federated run), and **overhead** (``train-wall-seconds`` over
``site-train-seconds`` of the ``round`` rows of the round log; in full mode a dedicated derm run
with at least 30 s of local training per round, once in simulation and once deployed: a real
SuperLink and two real SuperNodes over TLS on 127.0.0.1, started through the deployment scripts
by ``scripts/local_federation.py``).

Suites and full-mode sizes (4 hours on 2 CPU cores; estimate in ``docs/benchmarks.md``):

* ``derm`` (``configs/federated/derm-natural.yaml``): 600 HAM10000-layout phantoms, 4 natural
  sites, 2D 64x64, widths 16-128, 10 rounds x 1 local epoch.
* ``openkbp`` (``configs/federated/openkbp-iid.yaml``): the 36 real OpenKBP patients, IID over 3
  sites, 2D 64x64 slices, batch 8, 10 rounds x 1 local epoch (slices make it the costliest suite).
* ``chest`` (``configs/federated/chest-natural.yaml``): 640 STOIC-layout phantoms, 4 natural
  sites of 160 (half of each its test split), 3D 32^3, batch 8, Adam 3e-4, image heads on the
  deepest stage, intensity jitter only, 48 rounds x 1 local epoch.

``--quick`` shrinks models (32x32 or 16^3, widths 8-32), trains 1 round on one seed, keeps 12
OpenKBP patients, runs only CTAN federated (each simulation costs 20-40 s of start-up) and writes
``docs/results/bench_federated_quick.json`` and its own section of ``docs/benchmarks.md``.

``--ablation`` reruns the suites with one config change from ``ABLATIONS`` (class-balanced or
logit-adjusted classification losses, heads averaged too, a quarter of the batch size, twice the
rounds, or no mirroring) applied to every variant, and writes
``docs/results/bench_federated_<ablation>.json`` and its own section, beside the main results; no
overhead runs, and the targets stay those of the main run. Runs are not trained twice: every suite
record carries digests of its training and federation settings, and a run of another results file
whose suite has the same digests (the training digest alone for the centralised and site-alone
runs, which never read the federation) is taken over, marked with the file it came from. So heads
averaged takes the centralised and site-alone rows from the main results, and the main results take
every row of an ablation whose change was later shipped in the suite's config.

    python scripts/bench_federated.py                 # full run, all suites
    python scripts/bench_federated.py --quick         # smoke check, under 5 minutes
    python scripts/bench_federated.py --suite derm --seeds 0
    python scripts/bench_federated.py --suite derm --variants federated-ctan   # keep the others
    python scripts/bench_federated.py --only-overhead deployment
    python scripts/bench_federated.py --suite derm --ablation federated-heads
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_common import (
    code_revision,
    finite,
    mean_sd,
    number_text,
    render_stored,
    revision_lines,
    with_balanced_classes,
    with_logit_adjustment,
    write_sections,
    write_text,
)

from ctan.report import json_safe

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
FEDERATED_ARCHS = ("ctan", "hps", "mtan")
VARIANTS = ("centralised-ctan", "federated-ctan", "alone-ctan", "federated-hps", "federated-mtan")
FULL_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
RATIO_TO_CENTRAL_MIN = 0.97
BYTES_TOLERANCE = 0.05
OVERHEAD_MAX = 1.10
OVERHEAD_MIN_TRAIN_SECONDS = 30.0
QUICK_2D = {"image_size": [32, 32], "widths": [8, 16, 32]}


@dataclass(frozen=True)
class Suite:
    """One benchmark suite: a federated config (its rounds are full mode's) and its quick sizes.

    Attributes:
        config: the YAML file, relative to the repository root.
        quick_model: model fields replaced in ``--quick`` mode.
        quick_rounds: rounds in ``--quick`` mode.
        quick_patients: in ``--quick`` mode, read only the first this many patients of an
            OpenKBP root (through a folder of links).
    """

    config: str
    quick_model: dict[str, Any] = field(default_factory=dict)
    quick_rounds: int = 1
    quick_patients: int | None = None


SUITES: dict[str, Suite] = {
    "derm": Suite("configs/federated/derm-natural.yaml", QUICK_2D),
    "openkbp": Suite("configs/federated/openkbp-iid.yaml", QUICK_2D, 1, 12),
    "chest": Suite(
        "configs/federated/chest-natural.yaml",
        {"image_size": [16, 16, 16], "widths": [8, 16, 32]},
    ),
}
#: ablations: one config change applied to every variant of a suite
ABLATIONS: dict[str, str] = {
    "balanced": "class-balanced classification losses (class_weights: balanced on every "
    "classification task, weights from each party's own training labels)",
    "federated-heads": "task heads averaged too (federation.heads: federated), per task among "
    "the sites that hold it",
    "quarter-batch": "a quarter of the batch size (train.batch_size / 4: four times the optimiser "
    "steps over the same epochs)",
    "logit-adjusted": "logit-adjusted classification losses (logit_adjustment: 1 on every "
    "classification task, priors from each party's own training labels)",
    "double-rounds": "twice the rounds (and so twice the epochs of the centralised and site-alone "
    "runs): how the gap changes with the training budget",
    "no-mirroring": "no mirroring in the training augmentation (train.augmentation.flip_axes: "
    "[]), against the default that mirrors every axis (exchanging the left and right parotid "
    "labels across the patient's left-right axis)",
}
UNFEDERATED_VARIANTS = ("centralised-ctan", "alone-ctan")
#: the dedicated overhead run (full mode): enough local epochs for >= 30 s of training per round
OVERHEAD_RUN = {"suite": "derm", "rounds": 2, "local_epochs": 5}
#: the deployed overhead run: that setting on two sites, each with its own phantom data
DEPLOYMENT_SITES = 2
DEPLOYMENT_CASES_PER_SITE = 150


# --------------------------------------------------------------------------- pure parts


def oriented_ratio(value: float | None, reference: float | None, higher_is_better: bool) -> float:
    """How ``value`` compares with ``reference``: above 1 is better, whatever the direction.

    ``value / reference`` for higher-is-better metrics, ``reference / value`` for
    lower-is-better ones; NaN where either is missing or the denominator is not positive.
    """
    if not (finite(value) and finite(reference)):
        return math.nan
    numerator, denominator = (value, reference) if higher_is_better else (reference, value)
    return numerator / denominator if denominator > 0 else math.nan


def weighted_site_mean(
    sites: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, float]]:
    """Per task and metric, the mean over sites weighted by each site's labelled test cases.

    Args:
        sites: ``{site: {"metrics": {task: {metric: value}}, "labelled": {task: cases}}}``.

    Returns:
        ``{task: {metric: mean}}``; a site with a missing or non-finite value, or no labelled
        case of the task, is left out of that mean (NaN when no site is left).
    """
    totals: dict[str, dict[str, list[float]]] = {}
    for score in sites.values():
        for task, metrics in score["metrics"].items():
            weight = float(score["labelled"].get(task, 0))
            for metric, value in metrics.items():
                sums = totals.setdefault(task, {}).setdefault(metric, [0.0, 0.0])
                if weight > 0 and finite(value):
                    sums[0] += weight * float(value)
                    sums[1] += weight
    return {
        task: {m: (s / w if w > 0 else math.nan) for m, (s, w) in metrics.items()}
        for task, metrics in totals.items()
    }


def summarise(
    runs: Sequence[Mapping[str, Any]], tasks: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per variant (in :data:`VARIANTS` order): every task metric's mean and sd over seeds.

    Args:
        runs: records with ``variant``, ``seed`` and weighted ``metrics`` ``{task: {metric}}``.
        tasks: ``[{"name", "metrics"}]``.
    """
    summary: dict[str, Any] = {}
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in runs)]:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            t["name"]: {
                m: mean_sd([r["metrics"].get(t["name"], {}).get(m) for r in mine])
                for m in t["metrics"]
            }
            for t in tasks
        }
    return summary


def suite_checks(summary: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Federated CTAN against centralised CTAN and against sites alone, on primary metrics.

    Args:
        summary: the output of :func:`summarise`.
        tasks: ``[{"name", "metrics", "higher_is_better": [bool per metric]}]``; the first
            metric of a task is its primary one.

    Returns:
        ``{"fed_over_central": min over tasks, "fed_over_alone": min over tasks, "per_task":
        {task: {"metric", "fed_over_central", "fed_over_alone"}}}``, ratios oriented by
        :func:`oriented_ratio` and taken on the means over seeds (NaN where a variant is absent).
    """

    def mean(variant: str, task: str, metric: str) -> float | None:
        return summary.get(variant, {}).get(task, {}).get(metric, {}).get("mean")

    per_task = {}
    for task in tasks:
        name, metric, higher = task["name"], task["metrics"][0], task["higher_is_better"][0]
        federated = mean("federated-ctan", name, metric)
        per_task[name] = {
            "metric": metric,
            "fed_over_central": oriented_ratio(
                federated, mean("centralised-ctan", name, metric), higher
            ),
            "fed_over_alone": oriented_ratio(federated, mean("alone-ctan", name, metric), higher),
        }

    def worst(key: str) -> float:
        values = [p[key] for p in per_task.values()]
        return min(values) if values and all(finite(v) for v in values) else math.nan

    return {
        "fed_over_central": worst("fed_over_central"),
        "fed_over_alone": worst("fed_over_alone"),
        "per_task": per_task,
    }


def round_overheads(rows: Sequence[Mapping[str, str]]) -> list[dict[str, float]]:
    """Per round of a round log (``metrics.csv`` rows), train wall time against site training.

    ``ratio`` is the target's measure: train wall time over the *sum* of the sites' local
    training times. Sites train at the same time (simulation workers, SuperNodes), so that sum
    can exceed the wall time; ``critical_ratio`` sets the wall time against the *slowest*
    site, which shows the start-up, transfer and aggregation time a round adds.

    Returns:
        ``[{"round", "train_wall_seconds", "site_train_seconds", "slowest_site_seconds",
        "ratio", "critical_ratio"}]`` in round order.
    """
    rounds: dict[int, dict[str, float]] = {}
    slowest: dict[int, float] = {}
    for row in rows:
        step = int(row["step"])
        if row["split"] == "round":
            rounds.setdefault(step, {})[row["name"]] = float(row["value"])
        elif row["split"].startswith("train/") and row["name"] == "train-seconds":
            slowest[step] = max(slowest.get(step, 0.0), float(row["value"]))
    out = []
    for number in sorted(rounds):
        values = rounds[number]
        wall = values.get("train-wall-seconds", math.nan)
        sites = values.get("site-train-seconds", math.nan)
        longest = slowest.get(number, math.nan)
        out.append(
            {
                "round": number,
                "train_wall_seconds": wall,
                "site_train_seconds": sites,
                "slowest_site_seconds": longest,
                "ratio": _ratio(wall, sites),
                "critical_ratio": _ratio(wall, longest),
            }
        )
    return out


def _ratio(numerator: float, denominator: float) -> float:
    good = finite(numerator) and finite(denominator) and denominator > 0
    return numerator / denominator if good else math.nan


def overhead_summary(
    runs: Sequence[Mapping[str, Any]], min_train_seconds: float = OVERHEAD_MIN_TRAIN_SECONDS
) -> dict[str, Any]:
    """The overhead ratios over the rounds of ``runs`` with enough local training.

    Args:
        runs: ``[{"name", "rounds": round_overheads(...)}]``.
        min_train_seconds: rounds whose sites trained less in total are not counted.

    Returns:
        ``{"ratio": mean ratio of qualifying rounds (NaN if none), "critical_ratio": the same
        for the ratio to the slowest site, "rounds": how many, "all_rounds_ratio": mean over
        every round, "min_train_seconds": ...}``.
    """
    every = [r for run in runs for r in run["rounds"] if finite(r["ratio"])]
    kept = [r for r in every if r["site_train_seconds"] >= min_train_seconds]
    critical = [r["critical_ratio"] for r in kept if finite(r.get("critical_ratio"))]
    return {
        "ratio": statistics.fmean(r["ratio"] for r in kept) if kept else math.nan,
        "critical_ratio": statistics.fmean(critical) if critical else math.nan,
        "rounds": len(kept),
        "all_rounds_ratio": statistics.fmean(r["ratio"] for r in every) if every else math.nan,
        "min_train_seconds": min_train_seconds,
    }


def head_payloads(payload_lines: Sequence[str]) -> dict[str, Any]:
    """What a site's ``payloads.jsonl`` lines say left it of the heads.

    Returns:
        ``{"groups": sorted heads.* groups named, "bytes": bytes of the payloads naming one}``;
        ``{"groups": [], "bytes": 0}`` when the heads stayed at the site.
    """
    groups: set[str] = set()
    sent = 0
    for line in payload_lines:
        if line.strip():
            record = json.loads(line)
            heads = {g for g in record["groups"] if g.startswith("heads.")}
            groups |= heads
            sent += int(record["bytes"]) if heads else 0
    return {"groups": sorted(groups), "bytes": sent}


def byte_excess(serialized: int, raw: int) -> float:
    """``|serialized / raw - 1|``: how far a serialised payload is from its raw array bytes."""
    return abs(serialized / raw - 1.0) if raw > 0 else math.nan


def render_table(suite: Mapping[str, Any]) -> str:
    """A markdown table of one suite: every variant's task metrics (mean ± sd over seeds); a
    variant run on fewer of the suite's seeds than the others says so.

    Args:
        suite: a suite record (``tasks`` with ``higher_is_better``, ``summary``).
    """
    columns = [
        (t["name"], m, "↑" if up else "↓")
        for t in suite["tasks"]
        for m, up in zip(t["metrics"], t["higher_is_better"], strict=True)
    ]
    header = ["variant", *[f"{t} {m} {arrow}" for t, m, arrow in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seeds = len(suite.get("seeds", []))
    for variant, scores in suite["summary"].items():
        runs = max((scores[t][m].get("n", seeds) for t, m, _ in columns), default=seeds)
        cells = [variant if runs >= seeds else f"{variant} (seeds run: {runs} of {seeds})"]
        for task, metric, _ in columns:
            stats = scores[task][metric]
            spread = f" ± {number_text(stats['sd'], 2)}" if finite(stats["sd"]) else ""
            cells.append(f"{number_text(stats['mean'])}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_section(report: Mapping[str, Any], stale: Mapping[str, str] | None = None) -> str:
    """The markdown of the whole report (what goes between the markers).

    Args:
        report: the results file's JSON.
        stale: per suite, why its table no longer measures its config (:func:`stale_suites`);
            each such suite gets a warning and the command that measures it again.
    """
    machine = report["machine"]
    mode = "quick (smoke check, tiny sizes)" if report["quick"] else "full"
    change = report.get("ablation")
    change_text = f" Change: {change}, applied to every row below." if change else ""
    lines = [
        f"Mode: {mode}.{change_text} Updated {report['date']} on {machine['device']} "
        f"({machine['cpu_count']} CPU cores, torch {machine['torch']}, flwr {machine['flwr']}). "
        "Raw figures: "
        f"`docs/results/{report['file']}`. Each variant is scored on the same per-site test "
        "splits, each site's metric weighted by its labelled test cases; mean ± sd over seeds. "
        "Every variant trains rounds × local epochs epochs and is scored after the last.",
        "",
    ]
    for name, suite in report["suites"].items():
        sizes, checks = suite["sizes"], suite.get("checks", {})
        sites = ", ".join(f"{s} {n}" for s, n in suite["site_sizes"].items())
        strategy = f" ({suite['strategy']})" if suite.get("strategy") else ""
        lines += [
            f"#### {name}",
            "",
            f"`{suite['config']}`: {sizes['spatial_dims']}D {sizes['image_size']}, widths "
            f"{sizes['widths']}, batch {sizes['batch_size']}, {suite['rounds']} rounds × "
            f"{suite['local_epochs']} local epochs{strategy}, seeds {suite['seeds']}; sites "
            f"train/validation/test (seed {suite['seeds'][0]}): {sites}; "
            f"{suite['wall_seconds'] / 60:.1f} min{'' if suite['complete'] else ' (incomplete)'}.",
            "",
            *_stale_text((stale or {}).get(name)),
            render_table(suite),
            "",
            *_reused_text(suite),
            *revision_lines(suite.get("runs", []), "variant"),
            f"Federated / centralised CTAN (primary metrics, worst task): "
            f"{ratio_text(checks.get('fed_over_central'))} (target ≥ {RATIO_TO_CENTRAL_MIN}); "
            f"federated CTAN / sites alone: {ratio_text(checks.get('fed_over_alone'))} "
            f"(target > 1). {_per_task_text(checks.get('per_task', {}))}",
            "",
        ]
    if not report.get("ablation"):
        lines += render_measurements(report)
    return "\n".join(lines)


def _stale_text(reason: str | None) -> list[str]:
    """A warning line for a suite whose table is not today's (see :func:`stale_suites`)."""
    return [] if reason is None else [f"**Not current:** {reason}.", ""]


def _reused_text(suite: Mapping[str, Any]) -> list[str]:
    """A line naming the rows taken from other results files, if any (see
    :func:`reusable_runs`)."""
    reused = {r["variant"]: r["reused_from"] for r in suite.get("runs", []) if r.get("reused_from")}
    if not reused:
        return []
    rows = ", ".join(f"`{v}`" for v in sorted(reused))
    files = ", ".join(f"`{f}`" for f in sorted(set(reused.values())))
    return [
        f"Rows {rows}: runs of {files}, measured there with the same settings for these rows "
        "(the training digest; for federated rows the federation digest too), so not trained "
        "again; the minutes above count them as measured there.",
        "",
    ]


def ratio_text(value: float | None) -> str:
    """A target ratio with 3 decimals, so that 1.003 against "> 1" does not print as 1."""
    return "n/a" if not finite(value) else f"{value:.3f}"


def _per_task_text(per_task: Mapping[str, Mapping[str, Any]]) -> str:
    """Each task's two ratios, so that a task whose ratio is undefined (a metric of 0 for the
    reference) does not hide the others behind the worst task's n/a."""
    parts = [
        f"{task} ({ratios['metric']}) {ratio_text(ratios['fed_over_central'])} and "
        f"{ratio_text(ratios['fed_over_alone'])}"
        for task, ratios in per_task.items()
    ]
    return f"Per task, the same two ratios: {'; '.join(parts)}." if parts else ""


def _overhead_text(summary: Mapping[str, Any]) -> str:
    """An :func:`overhead_summary` in words: the target ratio, all rounds, the slowest site."""
    return (
        f"{number_text(summary['ratio'])} over {summary['rounds']} rounds with ≥ "
        f"{summary['min_train_seconds']:.0f} s of local training (target ≤ {OVERHEAD_MAX}); "
        f"{number_text(summary['all_rounds_ratio'])} over all rounds; against the slowest site "
        f"instead of the sum: {number_text(summary.get('critical_ratio'))}"
    )


def _federated_heads_text(runs: int) -> str:
    """The end of the head-check line: runs with federated heads are left out of it."""
    if not runs:
        return "."
    return f"; {runs} runs with federated heads, which send them by design, not counted."


def render_measurements(report: Mapping[str, Any]) -> list[str]:
    """Markdown lines for bytes, head bytes and round overhead."""
    lines = ["#### Bytes, heads and overhead", ""]
    for name, entry in report.get("bytes", {}).items():
        lines.append(
            f"- bytes, {name} ({entry['site']}, groups {', '.join(entry['groups'])}): raw arrays "
            f"{entry['raw_bytes']:,} B; protobuf RecordDict {entry['recorddict_bytes']:,} B; "
            f"uploaded objects {entry['object_bytes']:,} B; worst excess "
            f"{100 * entry['excess']:.2f}% (target ≤ {100 * BYTES_TOLERANCE:.0f}%)."
        )
    heads = report.get("heads", {})
    if heads:
        lines.append(
            f"- head groups sent: {heads['head_groups'] or 'none'} over {heads['sites_checked']} "
            f"site logs of {heads['runs_checked']} federated runs (heads local)"
            + _federated_heads_text(heads["runs_with_federated_heads"])
        )
    overhead = report.get("overhead", {})
    if overhead:
        lines.append(
            f"- overhead: train wall time / sum of sites' local training = "
            f"{_overhead_text(overhead)}. The simulation runs "
            f"{overhead['concurrency']} sites at once on {report['machine']['cpu_count']} cores, "
            "so sites train in parallel and the ratio can fall below 1; each site's own "
            "training time is stretched by sharing the cores."
        )
    deployed = report.get("deployment_overhead", {})
    if deployed:
        lines.append(
            f"- overhead deployed over TLS on 127.0.0.1 (a real SuperLink and "
            f"{deployed['sites']} SuperNodes, {deployed['cases_per_site']} phantom cases each, "
            f"{deployed['local_epochs']} local epochs a round): {_overhead_text(deployed)} "
            f"(the SuperNodes share the {report['machine']['cpu_count']} cores)."
        )
    else:
        lines.append("- overhead deployed over TLS: not measured (`--only-overhead deployment`).")
    return [*lines, ""]


# --------------------------------------------------------------------------- training


def subset_root(source: Path, patients: int, folder: Path) -> Path:
    """A folder of links to the first ``patients`` OpenKBP patients of ``source`` (read-only)."""
    found = sorted(
        (p for p in source.rglob("pt_*") if p.is_dir()),
        key=lambda p: int(p.name.split("_")[-1]),
    )[:patients]
    if not found:
        raise FileNotFoundError(
            f"{source}: no OpenKBP patients (pt_N folders) to take {patients} from; point the "
            "suite config's data.root (relative to the config's folder) at the OpenKBP data"
        )
    target = folder / f"openkbp-{patients}" / "train-pats"
    target.mkdir(parents=True, exist_ok=True)
    for patient in found:
        link = target / patient.name
        if not link.exists():
            link.symlink_to(patient.resolve(), target_is_directory=True)
    return target.parent


class AblationInConfig(ValueError):
    """An ablation's change is already the suite config's own setting."""


def bench_config(
    suite: Suite, quick: bool, seed: int, work: Path, ablation: str | None = None
) -> Any:
    """The suite's config for ``seed``: quick sizes, rounds, epochs = rounds x local, and an
    ``ABLATIONS`` change."""
    from ctan.config import load_config

    config = load_config(ROOT / suite.config)
    rounds = suite.quick_rounds if quick else config.federation.rounds
    plain = federation = config.federation.model_copy(update={"rounds": rounds})
    tasks, batch_size = config.tasks, config.train.batch_size
    augmentation = config.train.augmentation
    if ablation == "balanced":
        tasks = with_balanced_classes(tasks)
    elif ablation == "logit-adjusted":
        tasks = with_logit_adjustment(tasks)
    elif ablation == "federated-heads":
        federation = federation.model_copy(update={"heads": "federated"})
    elif ablation == "quarter-batch":
        batch_size = max(1, batch_size // 4)
    elif ablation == "double-rounds":
        rounds *= 2
        federation = federation.model_copy(update={"rounds": rounds})
    elif ablation == "no-mirroring":
        augmentation = augmentation.model_copy(update={"flip_axes": []})
    elif ablation is not None:
        raise ValueError(f"unknown ablation {ablation!r}; expected one of {sorted(ABLATIONS)}")
    unchanged = (tasks, federation, batch_size, augmentation) == (
        config.tasks,
        plain,
        config.train.batch_size,
        config.train.augmentation,
    )
    if ablation is not None and unchanged:
        raise AblationInConfig(
            f"ablation {ablation!r} changes nothing in {suite.config}; it already has it"
        )
    updates: dict[str, Any] = {
        "experiment": config.experiment.model_copy(update={"seed": seed}),
        "federation": federation,
        "tasks": tasks,
        "train": config.train.model_copy(
            update={
                "epochs": rounds * federation.local_epochs,
                "batch_size": batch_size,
                "augmentation": augmentation,
            }
        ),
    }
    if quick:
        updates["model"] = config.model.model_copy(update=suite.quick_model)
        if suite.quick_patients is not None:
            root = subset_root(config.data.root, suite.quick_patients, work / "data")
            updates["data"] = config.data.model_copy(update={"root": root})
    return config.model_copy(update=updates)


def with_arch(config: Any, arch: str) -> Any:
    """``config`` with another architecture."""
    return config.model_copy(update={"model": config.model.model_copy(update={"arch": arch})})


def site_splits(config: Any) -> dict[str, dict[str, list]]:
    """Each simulated site's train/validation/test cases, exactly as its SiteRunner sees them."""
    from ctan.federation import simulated_site_cases
    from ctan.site import SiteRunner, SiteSettings

    out = {}
    for site in config.federation.sites:
        settings = SiteSettings(site.name, tuple(site.tasks), Path(tempfile.gettempdir()))
        out[site.name] = SiteRunner(
            config, settings, simulated_site_cases(config, site.name)
        ).splits()
    return out


def score(checkpoint: Path, config: Any, cases: list) -> dict[str, Any]:
    """Test metrics of a checkpoint on ``cases``: ``{"metrics", "labelled"}``."""
    from ctan.checkpoint import load_checkpoint
    from ctan.prediction import evaluate_cases, trainer_for

    evaluation = evaluate_cases(trainer_for(load_checkpoint(checkpoint), config), config, cases)
    return {
        "metrics": {
            t.name: {m: evaluation.metrics[t.name].get(m, math.nan) for m in t.metrics}
            for t in config.tasks
        },
        "labelled": dict(evaluation.labelled),
    }


def train_last(config: Any, train: list, validation: list, folder: Path) -> Path:
    """Train centrally on ``train`` for ``train.epochs`` epochs; the last checkpoint."""
    from ctan.training import train_centralised

    shutil.rmtree(folder, ignore_errors=True)
    splits = {"train": train, "validation": validation}
    train_centralised(config, folder=folder, splits=splits, show_progress=False, tensorboard=False)
    return folder / "last.pt"


def run_centralised(config: Any, splits: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """CTAN on the union of the sites' train splits, scored on every site's test split."""
    train = [c for s in splits.values() for c in s["train"]]
    validation = [c for s in splits.values() for c in s["validation"]]
    last = train_last(config, train, validation, folder)
    return {site: score(last, config, s["test"]) for site, s in splits.items()}


def run_alone(config: Any, splits: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """CTAN trained by each site on its own data, scored on its own test split."""
    return {
        site: score(
            train_last(config, s["train"], s["validation"], folder / site), config, s["test"]
        )
        for site, s in splits.items()
    }


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr file descriptors (and its children's) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def write_config(config: Any, path: Path) -> Path:
    """Write ``config`` as YAML (absolute paths) for ``server.simulate``."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def run_federated(config: Any, splits: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """A real Flower simulation; every site's personalised model scored on its test split.

    Returns:
        ``{"sites": {site: score}, "rounds": round_overheads, "heads": {site: heads groups},
        "heads_mode": federation.heads, "config": YAML path, "output": folder}``.

    Raises:
        RuntimeError: the simulation did not complete (its log is named).
    """
    from server.simulate import simulate

    shutil.rmtree(folder, ignore_errors=True)
    path = write_config(config, folder / "federation.yaml")
    output, state = folder / "out", folder / "state"
    log = folder / "simulation.log"
    with output_to(log):
        code = simulate(path, 0, output, state, resume=False, keep_home=False)
    if code != 0:
        raise RuntimeError(f"simulation of {path} failed with code {code}; see {log}")
    federation = config.federation.id
    sites_state = state / federation
    run = max((output / federation).glob("run-*"))
    with (run / "metrics.csv").open() as file:
        rounds = round_overheads(list(csv.DictReader(file)))
    return {
        "sites": {
            site: score(sites_state / site / "model.pt", config, s["test"])
            for site, s in splits.items()
        },
        "rounds": rounds,
        "heads": {
            site: head_payloads((sites_state / site / "payloads.jsonl").read_text().splitlines())
            for site in splits
        },
        "heads_mode": config.federation.heads,
        "config": path,
        "output": output,
    }


def measure_bytes(config_path: Path, config: Any, output: Path, partition_id: int = 0) -> dict:
    """Serialised size of a real train reply against the raw bytes of its arrays.

    The reply comes from ``client.client_app.train`` called with the server's last global
    arrays (as the strategy sends them) and a fresh state folder, then is serialised with
    Flower's ``recorddict_to_proto`` and as the inflatable objects a SuperNode uploads.
    """
    from flwr.app import ConfigRecord, Context, MessageType, Metadata, RecordDict
    from flwr.app.message import make_message
    from flwr.common.serde import recorddict_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from client.client_app import train
    from ctan.models.groups import group_of
    from server.aggregation import split_groups
    from server.rounds import STATE_NAME, load_state
    from server.strategy import groups_to_arrayrecord

    saved = load_state(output / config.federation.id / STATE_NAME)
    content = RecordDict(
        {
            "arrays": groups_to_arrayrecord(split_groups(saved["arrays"])),
            "config": ConfigRecord({"server-round": int(saved["round"]) + 1}),
        }
    )
    sites = config.federation.sites
    with tempfile.TemporaryDirectory(prefix="bench-bytes-") as state:
        context = Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": partition_id, "num-partitions": len(sites)},
            state=RecordDict(),
            run_config={"config": str(config_path), "state-dir": state},
        )
        metadata = Metadata(
            run_id=1,
            message_id="bench",
            src_node_id=0,
            dst_node_id=1,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=3600.0,
            message_type=MessageType.TRAIN,
        )
        message = make_message(metadata, content)
        reply = train(message, context)
    arrays = reply.content.array_records["arrays"]
    raw = sum(array.numpy().nbytes for array in arrays.values())
    recorddict = len(recorddict_to_proto(reply.content).SerializeToString())
    objects = sum(len(o.deflate()) for o in get_all_nested_objects(reply).values())
    groups = sorted({group_of(k) for k in arrays})
    return {
        "site": sites[partition_id].name,
        "groups": groups,
        "arrays": len(arrays),
        "raw_bytes": int(raw),
        "recorddict_bytes": recorddict,
        "object_bytes": objects,
        "recorddict_ratio": recorddict / raw,
        "object_ratio": objects / raw,
        "excess": max(byte_excess(recorddict, raw), byte_excess(objects, raw)),
        "head_groups": [g for g in groups if g.startswith("heads.")],
        "heads_mode": config.federation.heads,
    }


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    import flwr
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "python": platform.python_version(),
    }


def suite_settings(suite: Suite, config: Any) -> dict[str, Any]:
    """What a suite's results depend on apart from the seed (the ``SETTINGS_KEYS`` of its
    record): config file, tasks, sizes, rounds, strategy and the settings digests."""
    from ctan.tasks import METRICS

    return {
        "config": suite.config,
        "tasks": [
            {
                "name": t.name,
                "metrics": list(t.metrics),
                "higher_is_better": [METRICS[m].higher_is_better for m in t.metrics],
                "spec": t.model_dump(mode="json"),
            }
            for t in config.tasks
        ],
        "sizes": {
            "spatial_dims": config.model.spatial_dims,
            "image_size": config.model.image_size,
            "widths": config.model.widths,
            "batch_size": config.train.batch_size,
            "data_root": repository_text(str(config.data.root)),
        },
        "rounds": config.federation.rounds,
        "local_epochs": config.federation.local_epochs,
        "strategy": config.federation.strategy,
        "digests": config_digests(config),
    }


def suite_record(suite: Suite, config: Any, seeds: Sequence[int], splits: Mapping) -> dict:
    """The JSON skeleton of one suite: its :func:`suite_settings` and site split sizes."""
    return suite_settings(suite, config) | {
        "seeds": list(seeds),
        "site_sizes": {
            site: "/".join(str(len(s[p])) for p in ("train", "validation", "test"))
            for site, s in splits.items()
        },
        "complete": False,
        "wall_seconds": 0.0,
        "runs": [],
    }


def repository_text(text: str) -> str:
    """``text`` with this checkout's root taken off the paths in it, so that records and
    digests of a second checkout (another clone, a CI runner) compare equal to this one's."""
    return text.replace(f"{ROOT}/", "")


def config_digests(config: Any) -> dict[str, str]:
    """SHA-256 digests of what a run's results depend on, apart from the seed: ``training``
    (every section but the experiment's names and folders, the federation and the data cache,
    plus the label channels a left-right mirror exchanges, which the data format decides) and
    ``federation``. Paths inside the repository count relative to it, so a second checkout
    digests alike. Settings at their defaults are left out, so a config field added later
    leaves the digests of earlier records alone; a changed default is a code change, which no
    digest sees."""
    dumped = config.model_dump(mode="json", exclude={"experiment": True}, exclude_defaults=True)
    dumped["data"].pop("cache_dir", None)
    federation = dumped.pop("federation")
    swaps = left_right_swaps(config)
    if swaps:
        train = dumped.setdefault("train", {})
        train.setdefault("augmentation", {})["left_right_swaps"] = swaps

    def digest(value: Any) -> str:
        text = repository_text(json.dumps(value, sort_keys=True))
        return hashlib.sha256(text.encode()).hexdigest()

    return {"training": digest(dumped), "federation": digest(federation)}


def left_right_swaps(config: Any) -> dict[str, list[list[int]]]:
    """The channel pairs of each task label that training mirrors exchange (see
    :func:`ctan.data.dataset.left_right_swaps`), as JSON lists."""
    from ctan.data.dataset import left_right_swaps as swaps_of
    from ctan.data.dataset import make_reader

    swaps = swaps_of(config, make_reader(config))
    return {label: [list(pair) for pair in pairs] for label, pairs in swaps.items()}


SETTINGS_KEYS = ("config", "tasks", "sizes", "rounds", "local_epochs", "strategy", "digests")


NOT_RECORDED = object()
SCALAR_SETTINGS = ("config", "rounds", "local_epochs", "strategy")


def settings_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How a stored suite record's settings differ from ``current`` (a :func:`suite_settings`),
    in words: ``batch_size 32 → 8``, ``diagnosis.class_weights None → balanced``, and last
    ``not recorded then: strategy, lesion`` for the fields a record older than them lacks (it
    cannot be shown to match). The digests are named only when nothing visible explains them.
    Empty when the record measures the current settings."""
    stored_tasks = {t["name"]: t.get("spec", NOT_RECORDED) for t in stored.get("tasks", [])}
    current_tasks = {t["name"]: t["spec"] for t in current["tasks"]}
    sizes = stored.get("sizes", {})
    pairs = [
        *((key, stored.get(key, NOT_RECORDED), current[key]) for key in SCALAR_SETTINGS),
        *((key, sizes.get(key, NOT_RECORDED), value) for key, value in current["sizes"].items()),
    ]
    for task, spec in current_tasks.items():
        old = stored_tasks.get(task, {})
        if old is NOT_RECORDED:
            pairs.append((f"{task} task settings", NOT_RECORDED, spec))
        else:
            pairs += [(f"{task}.{key}", old.get(key, NOT_RECORDED), v) for key, v in spec.items()]
    changed = [(name, old, new) for name, old, new in pairs if old != new]
    changes = [
        *(f"task {task} dropped" for task in stored_tasks.keys() - current_tasks.keys()),
        *(f"task {task} added" for task in current_tasks.keys() - stored_tasks.keys()),
        *(f"{name} {old} → {new}" for name, old, new in changed if old is not NOT_RECORDED),
    ]
    unknown = [name for name, old, _ in changed if old is NOT_RECORDED]
    if not changes and not unknown:
        digests = stored.get("digests") or {}
        changes = [
            f"other {kind} settings (digest)"
            for kind, value in current["digests"].items()
            if digests.get(kind) != value
        ]
    return changes + ([f"not recorded then: {', '.join(unknown)}"] if unknown else [])


def current_settings(name: str, ablation: str | None) -> dict[str, Any]:
    """The :func:`suite_settings` a full-mode run of suite ``name`` would record now.

    Raises:
        AblationInConfig: the suite's config already has the ``ablation``'s change.
        ValueError: the config is invalid.
        OSError: the suite's data cannot be read.
    """
    config = bench_config(SUITES[name], False, 0, ROOT / "runs" / "bench", ablation)
    return suite_settings(SUITES[name], config)


def stale_suites(
    report: Mapping[str, Any],
    ablation: str | None,
    settings_of: Callable[[str, str | None], dict[str, Any]] = current_settings,
) -> dict[str, str]:
    """The suites of a full-mode ``report`` that do not measure what their configs give now,
    each with the reason and what to do, in words, so that a table is not read as today's
    after a config or the code changed. Quick reports (a smoke check) are not compared."""
    if report.get("quick"):
        return {}
    reasons: dict[str, str] = {}
    for name, record in report.get("suites", {}).items():
        if name not in SUITES:
            continue
        rerun = f"`python scripts/bench_federated.py --suite {name}"
        rerun += f" --ablation {ablation}` measures it again" if ablation else "` measures it again"
        try:
            changes = settings_changes(record, settings_of(name, ablation))
        except AblationInConfig as err:
            reasons[name] = f"{err}, so the main results measure it"
            continue
        except (ValueError, OSError) as err:
            reasons[name] = f"not compared with the current config ({err})"
            continue
        if changes:
            reasons[name] = (
                f"measured with settings that `{SUITES[name].config}` no longer gives "
                f"({'; '.join(changes)}); {rerun}"
            )
    return reasons


def ablation_of(stem: str) -> str | None:
    """The ablation of a results file stem (see :func:`report_tag`), ``None`` for the main one."""
    rest = stem.removeprefix("bench_federated").removeprefix("_quick")
    return rest.removeprefix("_") or None


def merge_earlier_seeds(
    stored: Mapping[str, Any] | None,
    fresh: dict[str, Any],
    variants: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``fresh`` (a new suite skeleton) with the runs of ``stored`` not run now: those of other
    seeds and, when only some ``variants`` run, the other variants' runs of these seeds.

    A suite takes hours, so it can be run a few seeds (``--seeds``) or variants
    (``--variants``) at a time; stored runs are kept only when every setting matches, so a
    table never mixes configurations.

    Returns:
        ``fresh`` itself, its ``runs``, ``seeds``, ``wall_seconds`` and ``site_sizes`` (those of
        the lowest seed) extended by the stored ones.
    """
    if not stored or any(stored.get(k) != fresh[k] for k in SETTINGS_KEYS):
        return fresh
    rerun = set(VARIANTS if variants is None else variants)
    kept = [
        r
        for r in stored.get("runs", [])
        if r["seed"] not in fresh["seeds"] or r["variant"] not in rerun
    ]
    if not kept:
        return fresh
    earlier = sorted({r["seed"] for r in kept})
    if earlier[0] < min(fresh["seeds"]):
        fresh["site_sizes"] = stored["site_sizes"]
    fresh["seeds"] = sorted({*earlier, *fresh["seeds"]})
    fresh["runs"] = kept
    fresh["wall_seconds"] = sum(r["wall_seconds"] for r in kept)
    return fresh


def reusable_runs(
    source: Mapping[str, Any] | None, record: Mapping[str, Any], file: str
) -> dict[tuple[str, int], dict[str, Any]]:
    """The runs of ``source`` (a suite of the results file ``file``) that the suite ``record``
    would repeat, by ``(variant, seed)``: where the settings and the training digest match, the
    centralised and site-alone runs (they never read the federation), and where the federation
    digest matches too, the federated runs as well. Each keeps the file it was measured in."""
    if not source or any(source.get(k) != record[k] for k in SETTINGS_KEYS if k != "digests"):
        return {}
    digests, wanted = source.get("digests") or {}, record["digests"]
    if digests.get("training") != wanted["training"]:
        return {}
    federated = digests.get("federation") == wanted["federation"]
    return {
        (r["variant"], r["seed"]): r | {"reused_from": r.get("reused_from", file)}
        for r in source.get("runs", [])
        if federated or r["variant"] in UNFEDERATED_VARIANTS
    }


def is_complete(record: Mapping[str, Any], variants: Sequence[str], seeds: Sequence[int]) -> bool:
    """Whether ``record`` holds a run of every variant for every one of ``seeds``."""
    done = {(r["variant"], r["seed"]) for r in record["runs"]}
    return all((v, s) in done for v in variants for s in seeds)


class Report:
    """The JSON report and the markdown section, rewritten after every run."""

    def __init__(self, path: Path, docs: Path, quick: bool, ablation: str | None = None) -> None:
        self.path, self.docs, self.quick, self.ablation = path, docs, quick, ablation
        self.data: dict[str, Any] = {"suites": {}, "bytes": {}}
        if path.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                self.data |= json.loads(path.read_text())
        self.data |= {
            "benchmark": "federated",
            "quick": quick,
            "ablation": ABLATIONS[ablation] if ablation else None,
            "file": path.name,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "thresholds": {
                "fed_over_central_min": RATIO_TO_CENTRAL_MIN,
                "fed_over_alone_above": 1.0,
                "bytes_excess_max": BYTES_TOLERANCE,
                "overhead_max": OVERHEAD_MAX,
                "overhead_min_train_seconds": OVERHEAD_MIN_TRAIN_SECONDS,
            },
        }
        self.sources = other_reports(path, quick, ablation)
        self.code = code_revision()
        self.federated_runs: dict[str, dict[str, Any]] = {
            run["name"]: run for run in self.data.get("federated_runs", [])
        }
        self.current_settings = functools.cache(current_settings)

    def reusable(self, suite: str, record: Mapping[str, Any]) -> dict[tuple[str, int], dict]:
        """:func:`reusable_runs` of ``suite`` over the other results files; where two files
        hold the same run, the main results' copy wins. Runs another file took over from this
        report's own file are left out: they are copies of the runs being measured again."""
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for file, data in reversed(self.sources.items()):
            found |= reusable_runs(data.get("suites", {}).get(suite), record, file)
        return {key: run for key, run in found.items() if run["reused_from"] != self.path.name}

    def take_over(self, run: Mapping[str, Any], name: str, sites: int) -> None:
        """Keep a reused federated run's round overheads and head check from its file."""
        source = self.sources.get(run["reused_from"], {})
        measured = {r["name"]: r for r in source.get("federated_runs", [])}.get(name)
        if measured is not None:
            self.add_federated(name, measured, concurrency(sites))

    def add_federated(self, name: str, result: Mapping[str, Any], concurrency: int) -> None:
        """Keep a federated run's round overheads and head check, with those of earlier
        invocations (a rerun of the same run replaces it).

        The head check counts the runs with local heads only: with ``federation.heads:
        federated`` the heads leave the sites by design."""
        self.federated_runs[name] = {
            "name": name,
            "rounds": result["rounds"],
            "heads": result["heads"],
            "heads_mode": result["heads_mode"],
        }
        self.data["federated_runs"] = list(self.federated_runs.values())
        runs = self.data["federated_runs"]
        local = [run for run in runs if run["heads_mode"] == "local"]
        logs = [h for run in local for h in run["heads"].values()]
        replies = [
            e
            for e in self.data["bytes"].values()
            if e["heads_mode"] == "local" and e["head_groups"]
        ]
        self.data["heads"] = {
            "head_groups": sorted({g for h in logs for g in h["groups"]}),
            "head_bytes_sent": sum(h["bytes"] for h in logs) + sum(e["raw_bytes"] for e in replies),
            "sites_checked": len(logs),
            "runs_checked": len(local),
            "runs_with_federated_heads": len(runs) - len(local),
        }
        self.data["overhead"] = overhead_summary(runs) | {
            "concurrency": concurrency,
            "runs": [{"name": r["name"], "rounds": r["rounds"]} for r in runs],
        }

    def write(self) -> None:
        """Write the JSON and replace this benchmark's section of the markdown file."""
        self.data["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        excess = [e["excess"] for e in self.data["bytes"].values()]
        self.data["bytes_excess"] = max(excess) if excess else math.nan
        safe = json_safe(self.data)
        write_text(self.path, json.dumps(safe, indent=1) + "\n")
        section = report_tag(self.quick, self.ablation)
        stale = stale_suites(safe, self.ablation, self.current_settings)
        write_sections(self.docs, {section: render_section(safe, stale)})


def other_reports(path: Path, quick: bool, ablation: str | None) -> dict[str, dict[str, Any]]:
    """The results files beside ``path`` of the same mode (the main one first), by file name."""
    found: dict[str, dict[str, Any]] = {}
    for other in (None, *ABLATIONS):
        file = path.with_name(f"{report_tag(quick, other)}.json")
        if other != ablation and file.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                found[file.name] = json.loads(file.read_text())
    return found


def report_tag(quick: bool, ablation: str | None) -> str:
    """The results file stem and docs section name of a run's report."""
    return "bench_federated" + ("_quick" if quick else "") + (f"_{ablation}" if ablation else "")


def concurrency(sites: int) -> int:
    """Sites trained at once by ``server.simulate`` (its CPUs per client on this machine)."""
    cpus = os.cpu_count() or 1
    return min(sites, cpus // max(1, cpus // sites))


def primary_scores(record: Mapping[str, Any], metrics: Mapping[str, Mapping[str, float]]) -> str:
    """``task=value`` of every task's primary metric, for progress lines."""
    return " ".join(
        f"{t['name']}.{t['metrics'][0]}={number_text(metrics[t['name']][t['metrics'][0]], 4)}"
        for t in record["tasks"]
    )


def run_variant(
    variant: str,
    suite_seed: tuple[str, int],
    config: Any,
    splits: Mapping[str, Any],
    folder: Path,
    report: Report,
) -> dict[str, Any]:
    """Train and score one variant of one suite and seed; its per-site test metrics.

    A federated run's round overheads and head check go into ``report``; the main report's
    first federated CTAN run of a suite also measures the reply bytes.
    """
    name, seed = suite_seed
    if variant == "centralised-ctan":
        return run_centralised(config, splits, folder)
    if variant == "alone-ctan":
        return run_alone(config, splits, folder)
    arch = variant.removeprefix("federated-")
    result = run_federated(with_arch(config, arch), splits, folder)
    report.add_federated(f"{name}/seed{seed}/{arch}", result, concurrency(len(splits)))
    if arch == "ctan" and report.ablation is None and name not in report.data["bytes"]:
        report.data["bytes"][name] = measure_bytes(result["config"], config, result["output"])
    return result["sites"]


def run_suite(
    name: str,
    seeds: Sequence[int],
    quick: bool,
    work: Path,
    report: Report,
    only: Sequence[str] | None = None,
) -> None:
    """Every variant of one suite (or the ``only`` ones, keeping the stored runs of the others)
    for every seed; the report is rewritten after each run."""
    suite = SUITES[name]
    archs = ("ctan",) if quick else FEDERATED_ARCHS
    variants = ("centralised-ctan", "alone-ctan", *(f"federated-{a}" for a in archs))
    record: dict[str, Any] = {}
    reusable: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in seeds:
        base = work / name / f"seed{seed}"
        config = bench_config(suite, quick, seed, work, report.ablation)
        splits = site_splits(config)
        if not record:
            fresh = suite_record(suite, config, seeds, splits)
            record = merge_earlier_seeds(report.data["suites"].get(name), fresh, only)
            if record["runs"]:
                kept = sorted({(r["variant"], r["seed"]) for r in record["runs"]})
                print(f"{name}: keeping the stored runs {kept}", flush=True)
            start = time.perf_counter() - record["wall_seconds"]
            report.data["suites"][name] = record
            reusable = report.reusable(name, record)
        for variant in variants:
            if only is not None and variant not in only:
                continue
            reused = reusable.get((variant, seed))
            if reused is not None:
                run, took = reused, f"from {reused['reused_from']}"
                start -= run["wall_seconds"]
                if variant.startswith("federated-"):
                    arch = variant.removeprefix("federated-")
                    report.take_over(run, f"{name}/seed{seed}/{arch}", len(splits))
            else:
                began = time.perf_counter()
                per_site = run_variant(
                    variant, (name, seed), config, splits, base / variant, report
                )
                run = {
                    "variant": variant,
                    "seed": seed,
                    "metrics": weighted_site_mean(per_site),
                    "per_site": per_site,
                    "wall_seconds": time.perf_counter() - began,
                    "code": report.code,
                }
                took = f"{run['wall_seconds']:.0f}s"
            record["runs"].append(run)
            record["summary"] = summarise(record["runs"], record["tasks"])
            record["wall_seconds"] = time.perf_counter() - start
            report.write()
            print(
                f"{name} seed {seed} {variant:16} {primary_scores(record, run['metrics'])} {took}",
                flush=True,
            )
    wanted = QUICK_SEEDS if quick else FULL_SEEDS
    record["complete"] = is_complete(record, variants, sorted({*wanted, *record["seeds"]}))
    record["checks"] = suite_checks(record["summary"], record["tasks"])
    report.write()


def run_overhead(work: Path, report: Report) -> None:
    """The dedicated overhead run: full-size derm CTAN with many local epochs per round."""
    suite = SUITES[OVERHEAD_RUN["suite"]]
    config = bench_config(suite, quick=False, seed=0, work=work)
    federation = config.federation.model_copy(
        update={"rounds": OVERHEAD_RUN["rounds"], "local_epochs": OVERHEAD_RUN["local_epochs"]}
    )
    config = config.model_copy(update={"federation": federation})
    splits = site_splits(config)
    result = run_federated(config, splits, work / "overhead")
    report.add_federated(
        f"overhead/{OVERHEAD_RUN['suite']}/{OVERHEAD_RUN['local_epochs']}-local-epochs",
        result,
        concurrency(len(splits)),
    )
    report.write()
    print(f"overhead: {json.dumps(json_safe(report.data['overhead']['ratio']))}", flush=True)


def run_deployment_overhead(work: Path, report: Report) -> None:
    """The overhead run deployed: SuperLink and SuperNodes over TLS on 127.0.0.1.

    Same model, rounds and local epochs as :func:`run_overhead`, on the first
    ``DEPLOYMENT_SITES`` derm sites, each joining with its own phantom HAM10000 data through
    ``join_federation.sh``; the run is launched with ``launch_run.sh``.
    """
    from local_federation import run_local_federation

    config = bench_config(SUITES[OVERHEAD_RUN["suite"]], quick=False, seed=0, work=work)
    settings = config.model_dump(mode="json")
    settings["federation"] |= {
        "id": "overhead-deployed",
        "rounds": OVERHEAD_RUN["rounds"],
        "local_epochs": OVERHEAD_RUN["local_epochs"],
        "min_sites": DEPLOYMENT_SITES,
        "sites": settings["federation"]["sites"][:DEPLOYMENT_SITES],
    }
    settings["federation"].pop("partition", None)
    settings["train"]["epochs"] = OVERHEAD_RUN["rounds"] * OVERHEAD_RUN["local_epochs"]
    folder = work / "overhead-deployed"
    shutil.rmtree(folder, ignore_errors=True)
    result = run_local_federation(settings, folder, DEPLOYMENT_CASES_PER_SITE)
    with (result["run"] / "metrics.csv").open() as file:
        rounds = round_overheads(list(csv.DictReader(file)))
    report.data["deployment_overhead"] = overhead_summary([{"rounds": rounds}]) | {
        "sites": DEPLOYMENT_SITES,
        "cases_per_site": DEPLOYMENT_CASES_PER_SITE,
        "local_epochs": OVERHEAD_RUN["local_epochs"],
        "round_rows": rounds,
    }
    report.write()
    print(f"deployment overhead: {json.dumps(json_safe(rounds))}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke checks")
    parser.add_argument("--suite", choices=list(SUITES), action="append", help="repeatable")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="default 0 1 2 (quick: 0); the stored runs of other seeds are kept when the "
        "suite's settings are unchanged",
    )
    parser.add_argument(
        "--variants",
        choices=VARIANTS,
        nargs="+",
        help="run only these variants; the stored runs of the others are kept when the suite's "
        "settings are unchanged",
    )
    parser.add_argument("--no-overhead", action="store_true", help="skip the overhead runs")
    parser.add_argument(
        "--only-overhead",
        nargs="?",
        const="both",
        choices=("simulation", "deployment", "both"),
        help="run only the overhead runs (default both), no suites",
    )
    parser.add_argument(
        "--ablation",
        choices=sorted(ABLATIONS),
        help="apply one config change to every variant, written beside the main results: "
        + "; ".join(f"{k}: {v}" for k, v in ABLATIONS.items()),
    )
    parser.add_argument("--out", type=Path, help="JSON file (default docs/results/...)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench", help="run folders")
    parser.add_argument(
        "--render",
        action="store_true",
        help="train nothing: rewrite the docs section of every stored results file "
        "(docs/results/bench_federated*.json) from its JSON",
    )
    args = parser.parse_args(argv)
    if args.ablation and args.only_overhead:
        parser.error("--ablation compares models only; it takes no overhead runs")
    if args.render:
        written = render_stored(
            RESULTS,
            args.docs,
            "bench_federated",
            lambda report, stem: render_section(report, stale_suites(report, ablation_of(stem))),
        )
        print(f"rewrote the sections {', '.join(written)} of {args.docs}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tag = report_tag(args.quick, args.ablation)
    report = Report(args.out or RESULTS / f"{tag}.json", args.docs, args.quick, args.ablation)
    work = args.work / tag
    seeds = args.seeds or list(QUICK_SEEDS if args.quick else FULL_SEEDS)
    if args.only_overhead is None:
        for name in args.suite or list(SUITES):
            run_suite(name, seeds, args.quick, work, report, args.variants)
    skip = args.quick or args.no_overhead or args.ablation
    overhead = "none" if skip else (args.only_overhead or "both")
    if overhead in ("simulation", "both"):
        run_overhead(work, report)
    if overhead in ("deployment", "both"):
        run_deployment_overhead(work, report)
    print(f"wrote {report.path} and {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
