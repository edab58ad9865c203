"""Does CTAN beat STL, HPS and MTAN? Centralised training on three multi-task suites.

For every suite, seed and architecture (STL, HPS, MTAN, CTAN) one model is trained with
:func:`ctan.training.train_centralised` on a split computed once per seed, so the four
architectures of a seed see the same cases; the seed sets initialisation and data order, and for
OpenKBP also the patient split (36 patients are too few for one split to say much). The best
checkpoint (lowest validation loss) is scored on the held-out test split with
:func:`ctan.prediction.evaluate_cases`, which gives OpenKBP's dose and DVH scores on the native
128^3 grid. Δm against STL (``ctan.metrics.delta_m``) is taken per seed against STL's run on the
same split, then reported as mean and 95% CI over seeds; epoch time is a ratio to HPS's on the
same seed.

Suites and full-mode sizes (chosen to fit 4 hours on 2 CPU cores; measured times and the
estimate are in ``docs/benchmarks.md``):

* ``openkbp`` (``configs/openkbp.yaml``): 36 real patients, 2D axial slices at 64x64 (about
  1,800 training slices), widths 16-128, batch 32, 6 epochs, 3 seeds = 3 patient splits.
* ``derm`` (``configs/derm.yaml``): 600 HAM10000-layout phantoms, 2D 64x64, batch 32, 15 epochs,
  3 seeds on one lesion-grouped split.
* ``chest`` (``configs/chest.yaml``): 400 STOIC-layout phantoms, 3D 32^3, batch 8, 12 epochs,
  3 seeds on one split.

OpenKBP is 2D because a 3D model sees one sample per patient (about 22 training volumes) and a
64^3 volume step costs tens of slice batches on 2 CPU cores; slices give ~1,800 samples an epoch.

``--quick`` (about 4 minutes on 2 busy cores) shrinks images (32x32, 16^3) and widths (8-32),
keeps 8 patients / 120 lesions / 80 volumes, trains 1-2 epochs with 2 seeds and writes
``docs/results/bench_mtl_quick.json`` and its own section of ``docs/benchmarks.md``, so a smoke
check never overwrites full results. Results of suites not run now are kept from the file, and
the file is rewritten after every run, so an interrupted run keeps what it finished. The device
is ``train.device`` of each config (``auto``: CUDA where available).

    python scripts/bench_mtl.py                       # full run, all suites
    python scripts/bench_mtl.py --quick               # smoke check, under 5 minutes
    python scripts/bench_mtl.py --suite derm --seeds 0 1 2 --epochs 5
    python scripts/bench_mtl.py --suite derm --variant uncertainty

``--variant`` trains every architecture with one change to the suite's config (see
``VARIANTS``: uncertainty or DWA loss weighting, class-balanced classification losses) and
writes ``docs/results/bench_mtl_<variant>.json`` and its own section, so an ablation sits beside
the main table without replacing it; Δm is still against STL trained with the same change.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from bench_common import (
    code_revision,
    mean_sd,
    number_text,
    render_stored,
    revision_lines,
    with_balanced_classes,
    write_sections,
    write_text,
)

from ctan.checkpoint import load_checkpoint
from ctan.config import Config, load_config
from ctan.data.base import Case
from ctan.data.dataset import build_cases, split_cases
from ctan.metrics import delta_m, delta_m_summary
from ctan.models import build_model
from ctan.prediction import evaluate_cases, trainer_for
from ctan.report import json_safe
from ctan.tasks import METRICS, TaskSpec
from ctan.training import train_centralised

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
ARCHS = ("stl", "hps", "mtan", "ctan")
SECTION = "bench_mtl"


@dataclass(frozen=True)
class Suite:
    """One benchmark suite: a config and how long to train it.

    Attributes:
        config: the YAML file, relative to the repository root.
        epochs: training epochs in full mode.
        resplit: draw a new train/validation/test split for every seed (folds of few patients).
        quick_model: model fields replaced in ``--quick`` mode.
        quick_epochs: training epochs in ``--quick`` mode.
        quick_groups: in ``--quick`` mode, keep the cases of this many groups (patients).
    """

    config: str
    epochs: int
    resplit: bool
    quick_model: dict[str, Any] = field(default_factory=dict)
    quick_epochs: int = 1
    quick_groups: int | None = None


QUICK_2D = {"image_size": [32, 32], "widths": [8, 16, 32]}
SUITES: dict[str, Suite] = {
    "openkbp": Suite("configs/openkbp.yaml", 6, True, QUICK_2D, 1, 8),
    "derm": Suite("configs/derm.yaml", 15, False, QUICK_2D, 2, 120),
    "chest": Suite(
        "configs/chest.yaml", 12, False, {"image_size": [16, 16, 16], "widths": [8, 16, 32]}, 2, 80
    ),
}
FULL_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0, 1)
#: ablations: what ``--variant`` changes in every suite's config, in words and as a function
VARIANTS: dict[str, str] = {
    "uncertainty": "loss weighting by homoscedastic uncertainty (train.weighting: uncertainty)",
    "dwa": "dynamic weight average (train.weighting: dwa)",
    "balanced": "class-balanced classification losses (class_weights: balanced on every "
    "classification task)",
}


# --------------------------------------------------------------------------- aggregation


def seed_delta_m(
    metrics: Mapping[str, Mapping[str, float | None]],
    stl: Mapping[str, Mapping[str, float | None]],
    tasks: Sequence[TaskSpec],
) -> float:
    """Δm (%) of one run against STL on the same seed; NaN where a metric is undefined.

    A test split can leave a metric undefined (an AUC over one class), which ``delta_m``
    refuses; the seed then drops out of the interval instead of stopping the benchmark.
    """
    try:
        return delta_m(metrics, stl, tasks)
    except ValueError:
        return math.nan


def summarise(runs: Sequence[Mapping[str, Any]], tasks: Sequence[TaskSpec]) -> dict[str, Any]:
    """Per architecture: metric mean ± sd, Δm per seed with mean and 95% CI, epoch-time ratio.

    Args:
        runs: records with ``arch``, ``seed``, ``metrics`` ``{task: {metric: value}}`` and
            ``epoch_seconds``.
        tasks: the suite's tasks (their ``metrics`` and directions).

    Returns:
        ``{arch: {"metrics": {task: {metric: {mean, sd, n}}}, "delta_m": {seeds, values, mean,
        ci95}, "epoch_seconds": float, "epoch_ratio_to_hps": float}}`` for the architectures
        present, in :data:`ARCHS` order. Δm needs STL's run of the same seed; the epoch ratio
        HPS's.
    """
    by_key = {(r["arch"], r["seed"]): r for r in runs}
    summary: dict[str, Any] = {}
    for arch in [a for a in ARCHS if any(r["arch"] == a for r in runs)]:
        mine = sorted((r for r in runs if r["arch"] == arch), key=lambda r: r["seed"])
        seeds, values, ratios = [], [], []
        for run in mine:
            stl = by_key.get(("stl", run["seed"]))
            if stl is not None:
                value = seed_delta_m(run["metrics"], stl["metrics"], tasks)
                if math.isfinite(value):
                    seeds.append(run["seed"])
                    values.append(value)
            hps = by_key.get(("hps", run["seed"]))
            if hps is not None and run["epoch_seconds"] and hps["epoch_seconds"]:
                own = min(run["epoch_seconds"])
                ratios.append(own / min(hps["epoch_seconds"]))
        mean, ci95 = delta_m_summary(values) if values else (math.nan, math.nan)
        summary[arch] = {
            "metrics": {
                t.name: {m: mean_sd([r["metrics"][t.name][m] for r in mine]) for m in t.metrics}
                for t in tasks
            },
            "delta_m": {"seeds": seeds, "values": values, "mean": mean, "ci95": ci95},
            "epoch_seconds": mean_sd([min(r["epoch_seconds"]) for r in mine])["mean"],
            "epoch_ratio_to_hps": statistics.fmean(ratios) if ratios else math.nan,
        }
    return summary


# --------------------------------------------------------------------------- rendering


def _arrow(metric: str) -> str:
    return "↑" if METRICS[metric].higher_is_better else "↓"


def render_table(summary: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table: metric mean ± sd per task, Δm vs STL ± 95% CI, epoch time / HPS.

    Args:
        summary: the output of :func:`summarise` (after a JSON round trip: NaN may be ``None``).
        tasks: ``[{"name", "metrics"}]``, the suite's tasks.
    """
    columns = [(t["name"], m) for t in tasks for m in t["metrics"]]
    header = ["arch", *[f"{t} {m} {_arrow(m)}" for t, m in columns], "Δm vs STL % (95% CI)"]
    header.append("epoch time / HPS")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch, row in summary.items():
        cells = [arch.upper()]
        for task, metric in columns:
            stats = row["metrics"][task][metric]
            sd = stats["sd"]
            spread = "" if sd is None or not math.isfinite(sd) else f" ± {number_text(sd, 2)}"
            cells.append(f"{number_text(stats['mean'])}{spread}")
        if arch == "stl":
            cells.append("0 (reference)")
        else:
            delta = row["delta_m"]
            mean, ci = delta["mean"], delta["ci95"]
            if mean is None or not math.isfinite(mean):
                cells.append("n/a")
            else:
                ci_text = "n/a" if ci is None or not math.isfinite(ci) else f"{ci:.2f}"
                cells.append(f"{mean:+.2f} ± {ci_text} (n={len(delta['values'])})")
        cells.append(number_text(row["epoch_ratio_to_hps"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """The distinct ``train/validation/test`` case counts of the runs, in seed order."""
    texts: list[str] = []
    for run in sorted(runs, key=lambda r: r["seed"]):
        sizes = run["split_sizes"]
        text = f"{sizes['train']}/{sizes['validation']}/{sizes['test']}"
        if text not in texts:
            texts.append(text)
    return ", ".join(texts)


def render_section(report: Mapping[str, Any], plot_name: str | None) -> str:
    """The markdown of all suites in ``report`` (what goes between the markers)."""
    machine = report["machine"]
    mode = "quick (smoke check, tiny sizes)" if report["quick"] else "full"
    variant = report.get("variant")
    change = f" Variant: {VARIANTS[variant]}, for every architecture." if variant else ""
    lines = [
        f"Mode: {mode}.{change} Updated {report['date']} on {machine['device']} "
        f"({machine['device_name']}, {machine['cpu_count']} CPU cores, torch "
        f"{machine['torch']}). Raw figures: `docs/results/{report['file']}`. Metrics are on the "
        "held-out test split (mean ± sd over seeds); Δm is against STL per seed on the same "
        "split, mean ± 95% CI half-width (Student's t) over seeds.",
        "",
    ]
    for name, suite in report["suites"].items():
        sizes = suite["sizes"]
        lines += [
            f"#### {name}",
            "",
            f"`{suite['config']}`: {sizes['spatial_dims']}D {sizes['image_size']}, widths "
            f"{sizes['widths']}, batch {sizes['batch_size']}, epochs {suite['epochs']}, seeds "
            f"{suite['seeds']}{' (one patient split per seed)' if suite['resplit'] else ''}; "
            f"cases train/validation/test {split_text(suite['runs'])}; "
            f"{suite['wall_seconds'] / 60:.1f} min.",
            "",
            render_table(suite["summary"], suite["tasks"]),
            "",
            *revision_lines(suite.get("runs", []), "arch"),
        ]
    if plot_name:
        lines.append(f"![Δm against STL per architecture and suite]({plot_name})")
    return "\n".join(lines)


def plot_delta_m(suites: Mapping[str, Any], path: Path, target: float | None = None) -> Path:
    """Bars of Δm against STL per suite and architecture, with 95% CI error bars."""
    archs = [a for a in ARCHS if a != "stl"]
    names = list(suites)
    figure, axes = plt.subplots(figsize=(1.8 + 1.9 * len(names), 3.6))
    width = 0.8 / len(archs)
    for index, arch in enumerate(archs):
        means, errors = [], []
        for name in names:
            delta = suites[name]["summary"].get(arch, {}).get("delta_m", {})
            mean, ci = delta.get("mean"), delta.get("ci95")
            means.append(mean if mean is not None and math.isfinite(mean) else math.nan)
            errors.append(ci if ci is not None and math.isfinite(ci) else 0.0)
        positions = [i + (index - (len(archs) - 1) / 2) * width for i in range(len(names))]
        axes.bar(positions, means, width, yerr=errors, capsize=3, label=arch.upper())
    axes.axhline(0.0, color="black", linewidth=0.8)
    if target is not None:
        axes.axhline(target, color="grey", linestyle="--", linewidth=0.8, label="CTAN target")
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("Δm against STL (%)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------- training


def suite_config(
    suite: Suite, quick: bool, epochs: int | None, variant: str | None = None
) -> Config:
    """The suite's config with quick sizes, the epoch count and a ``VARIANTS`` change applied."""
    config = load_config(ROOT / suite.config)
    model = config.model.model_copy(update=suite.quick_model) if quick else config.model
    count = epochs or (suite.quick_epochs if quick else suite.epochs)
    train = config.train.model_copy(update={"epochs": count})
    tasks = config.tasks
    if variant in ("uncertainty", "dwa"):
        train = train.model_copy(update={"weighting": variant})
    elif variant == "balanced":
        tasks = with_balanced_classes(tasks)
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return config.model_copy(update={"model": model, "train": train, "tasks": tasks})


def seed_splits(
    config: Config, seed: int, resplit: bool, groups: int | None = None
) -> dict[str, list[Case]]:
    """The split every architecture of ``seed`` trains on: per seed, or the config's own.

    ``groups`` keeps only the cases of the first that many groups (patients, lesions), in
    name order, for quick runs.
    """
    cases = list(build_cases(config))
    if groups is not None:
        kept = set(sorted({c.group for c in cases})[:groups])
        cases = [c for c in cases if c.group in kept]
    split = config.data.split
    fixed = split.seed if split.seed is not None else config.experiment.seed
    return split_cases(cases, split, seed if resplit else fixed)


def run_one(
    config: Config, arch: str, seed: int, splits: dict[str, list[Case]], folder: Path
) -> dict[str, Any]:
    """Train ``arch`` with ``seed`` on ``splits`` and score it on the test split."""
    chosen = config.model_copy(
        update={
            "model": config.model.model_copy(update={"arch": arch}),
            "experiment": config.experiment.model_copy(update={"seed": seed}),
        }
    )
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    fitting = {part: splits[part] for part in ("train", "validation")}
    result = train_centralised(
        chosen, folder=folder, splits=fitting, show_progress=False, tensorboard=False
    )
    best = load_checkpoint(result.best_checkpoint)
    test = evaluate_cases(trainer_for(best, chosen), chosen, splits["test"])
    return {
        "arch": arch,
        "seed": seed,
        "metrics": {
            t.name: {m: test.metrics[t.name].get(m, math.nan) for m in t.metrics}
            for t in chosen.tasks
        },
        "best_epoch": best.extra["epoch"],
        "epoch_seconds": result.epoch_seconds,
        "wall_seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in build_model(chosen).parameters()),
        "test_labelled": test.labelled,
        "split_sizes": {part: len(cases) for part, cases in splits.items()},
    }


def suite_record(
    suite: Suite, config: Config, seeds: Sequence[int], runs: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """What the JSON keeps of one suite: sizes, every run with its Δm, and the summary."""
    for run in runs:
        stl = next((r for r in runs if r["arch"] == "stl" and r["seed"] == run["seed"]), None)
        run["delta_m"] = seed_delta_m(run["metrics"], stl["metrics"], config.tasks) if stl else None
    return {
        "config": suite.config,
        "tasks": [{"name": t.name, "metrics": t.metrics} for t in config.tasks],
        "sizes": {
            "spatial_dims": config.model.spatial_dims,
            "image_size": config.model.image_size,
            "widths": config.model.widths,
            "batch_size": config.train.batch_size,
            "phantom_cases": config.data.phantom.cases if config.data.phantom else None,
        },
        "epochs": config.train.epochs,
        "seeds": list(seeds),
        "resplit": suite.resplit,
        "wall_seconds": seconds,
        "complete": False,
        "runs": runs,
        "summary": summarise(runs, config.tasks),
    }


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    cuda = torch.cuda.is_available()
    return {
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name()
        if cuda
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_report(path: Path) -> dict[str, Any]:
    """Earlier results in ``path`` (kept for suites not run now), or an empty report."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            logging.warning("%s is not valid JSON; starting a new report", path)
    return {"suites": {}}


def stored_section(docs: Path, report: Mapping[str, Any], tag: str) -> str:
    """:func:`render_section` of a stored report, with its plot where one lies beside ``docs``."""
    plot = docs.parent / f"{tag}.png"
    return render_section(report, plot.name if plot.is_file() else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke checks")
    parser.add_argument("--suite", choices=list(SUITES), action="append", help="repeatable")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (quick: 0 1)")
    parser.add_argument("--epochs", type=int, help="override every suite's epoch count")
    parser.add_argument("--out", type=Path, help="JSON file (default docs/results/...)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench", help="run folders")
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        help="ablation: one change to every config, written beside the main results",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="train nothing: rewrite the docs section of every stored results file "
        "(docs/results/bench_mtl*.json) from its JSON",
    )
    args = parser.parse_args(argv)
    if args.render:
        written = render_stored(RESULTS, args.docs, "bench_mtl", partial(stored_section, args.docs))
        print(f"rewrote the sections {', '.join(written)} of {args.docs}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    tag = "bench_mtl_quick" if args.quick else "bench_mtl"
    if args.variant:
        tag += f"_{args.variant}"
    out = args.out or RESULTS / f"{tag}.json"
    seeds = args.seeds or list(QUICK_SEEDS if args.quick else FULL_SEEDS)
    report = load_report(out)
    code = code_revision()
    report |= {
        "benchmark": "mtl",
        "quick": args.quick,
        "file": out.name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "variant": args.variant,
        "targets": {"ctan_delta_m_min": 4.67},
    }
    for name in args.suite or list(SUITES):
        suite = SUITES[name]
        config = suite_config(suite, args.quick, args.epochs, args.variant)
        runs: list[dict[str, Any]] = []
        start = time.perf_counter()
        for seed in seeds:
            groups = suite.quick_groups if args.quick else None
            splits = seed_splits(config, seed, suite.resplit, groups)
            for arch in ARCHS:
                folder = args.runs / tag / name / f"seed{seed}" / arch
                run = run_one(config, arch, seed, splits, folder) | {"code": code}
                runs.append(run)
                print(
                    f"{name} seed {seed} {arch:4}: {json.dumps(json_safe(run['metrics']))} "
                    f"epoch {min(run['epoch_seconds']):.1f}s "
                    f"run {run['wall_seconds']:.0f}s",
                    flush=True,
                )
                record = suite_record(suite, config, seeds, runs, time.perf_counter() - start)
                report["suites"][name] = record
                write_text(out, json.dumps(json_safe(report), indent=1) + "\n")
        report["suites"][name]["complete"] = True
        write_text(out, json.dumps(json_safe(report), indent=1) + "\n")
        record = json_safe(report["suites"][name])
        print(f"\n{name}\n{render_table(record['summary'], record['tasks'])}\n", flush=True)
        plot = args.docs.parent / f"{tag}.png"
        plot_delta_m(json_safe(report["suites"]), plot, report["targets"]["ctan_delta_m_min"])
        write_sections(args.docs, {tag: render_section(json_safe(report), plot.name)})
    print(f"wrote {out} and {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
