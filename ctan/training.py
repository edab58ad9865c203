"""Centralised training runs: data, model and :class:`ctan.engine.TaskTrainer` put together.

A run folder holds ``config.yaml``, ``best.pt`` and ``last.pt`` checkpoints, ``metrics.csv``
and ``metrics.jsonl`` per epoch, TensorBoard events, ``learning_curves.png`` and the held-out
test scores in ``test_metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ctan.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from ctan.config import Config
from ctan.data.base import Case
from ctan.engine import Evaluation, TaskTrainer, derive_seed, make_loader, seed_everything
from ctan.losses import class_weights_from_cases, logit_adjustments_from_cases
from ctan.models import build_model
from ctan.prediction import evaluate_cases
from ctan.report import RunLog, json_safe, plot_learning_curves

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class RunResult:
    """What a centralised run produced.

    Attributes:
        folder: the run folder.
        best_checkpoint: the checkpoint with the lowest validation loss.
        test: scores of that checkpoint on the test split (``None`` without a test split).
        validation: its validation scores.
        epoch_seconds: wall time of each training epoch.
    """

    folder: Path
    best_checkpoint: Path
    test: Evaluation | None
    validation: Evaluation
    epoch_seconds: list[float]


def companions(config: Config) -> dict[str, str]:
    """Companion label keys by task name, for metrics that need them."""
    return {t.name: t.companion for t in config.tasks if t.companion is not None}


def prepare_splits(config: Config) -> dict[str, list[Case]]:
    """Read the data of ``config`` and split it into train, validation and test.

    Raises:
        ValueError: the config has no data section, a task has no labels anywhere in the data,
            or a split is empty.
    """
    from ctan.data.dataset import build_cases, split_cases

    if config.data is None:
        raise ValueError("the config has no data section; add data: {format: ..., root: ...}")
    cases = build_cases(config)
    unlabelled = [t.name for t in config.tasks if not any(c.has_label(t.label) for c in cases)]
    if unlabelled:
        raise ValueError(
            f"tasks {unlabelled} have no labels anywhere in the {config.data.format} data at "
            f"{config.data.root} ({len(cases)} cases); remove them or point data.root at "
            "labelled data"
        )
    seed = config.data.split.seed if config.data.split.seed is not None else config.experiment.seed
    return split_cases(cases, config.data.split, seed)


RUN_FILES = ("config.yaml", "metrics.csv", "metrics.jsonl", "best.pt", "last.pt")


def new_run_folder(config: Config) -> Path:
    """``<output_dir>/<name>-<UTC time>``, unique."""
    return new_folder(config.experiment.output_dir, config.experiment.name)


def new_folder(parent: Path, prefix: str) -> Path:
    """Create and return ``<parent>/<prefix>-<UTC time>``, with ``-1``, ``-2`` ... appended
    when runs start within the same second (they must not share a log)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    base = parent / f"{prefix}-{stamp}"
    folder, index = base, 1
    while True:
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            folder, index = base.with_name(f"{base.name}-{index}"), index + 1


def train_centralised(
    config: Config,
    folder: Path | None = None,
    splits: dict[str, list[Case]] | None = None,
    show_progress: bool = False,
    tensorboard: bool = True,
) -> RunResult:
    """Train ``config.model`` on ``config.data`` for ``train.epochs`` epochs.

    After each epoch the validation split is scored; the checkpoint with the lowest mean
    validation task loss is kept as ``best.pt`` and scored on the test split at the end. Both
    are scored by :func:`ctan.prediction.evaluate_cases`, as federated sites and ``ctan
    evaluate`` score (OpenKBP: per patient on the native grid).

    Args:
        config: the experiment.
        folder: the run folder (default: a new one under ``experiment.output_dir``).
        splits: precomputed case splits (default: :func:`prepare_splits`).
        show_progress: draw progress bars.
        tensorboard: write TensorBoard events.

    Raises:
        ValueError: bad data (see :func:`prepare_splits`), an empty validation split, or a
            ``folder`` that holds a run already.
    """
    from ctan.data.dataset import CaseDataset

    splits = splits or prepare_splits(config)
    if not splits.get("validation"):
        raise ValueError(
            "the validation split is empty; set data.split.validation above 0 so that the best "
            "epoch can be chosen"
        )
    if not any(c.has_label(t.label) for c in splits["validation"] for t in config.tasks):
        raise ValueError(
            f"none of the {len(splits['validation'])} validation cases has a label for any task "
            f"({', '.join(t.name for t in config.tasks)}), so no epoch can be chosen as best; "
            "use data with labels or another split"
        )
    folder = Path(folder) if folder is not None else new_run_folder(config)
    earlier = [n for n in RUN_FILES if (folder / n).exists()]
    if earlier:
        raise ValueError(
            f"{folder} already holds a run ({', '.join(earlier)}); its logs would mix with this "
            "one's and its checkpoints be replaced: choose another folder or remove it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_bytes(folder / "config.yaml", lambda f: f.write(config_text.encode()))
    seed = config.experiment.seed
    seed_everything(seed)
    train_cfg = config.train
    train_loader = make_loader(
        CaseDataset(splits["train"], config, train=True),
        train_cfg.batch_size,
        shuffle=True,
        seed=derive_seed(seed, "loader", "train"),
        num_workers=train_cfg.num_workers,
    )
    trainer = TaskTrainer(
        build_model(config),
        config.tasks,
        train_cfg,
        companions=companions(config),
        class_weights=class_weights_from_cases(config.tasks, splits["train"]),
        logit_adjustments=logit_adjustments_from_cases(config.tasks, splits["train"]),
        show_progress=show_progress,
    )
    log = RunLog(folder, tensorboard=tensorboard)
    best_loss, best_validation, epoch_seconds = math.inf, None, []
    best_path, last_path = folder / "best.pt", folder / "last.pt"
    logger.info(
        "training %s on %s: %s",
        config.model.arch,
        trainer.device,
        {s: len(c) for s, c in splits.items()},
    )
    try:
        for epoch in range(1, train_cfg.epochs + 1):
            epoch_log = trainer.train_epoch(train_loader)
            epoch_seconds.append(epoch_log.seconds)
            validation = evaluate_cases(trainer, config, splits["validation"])
            train_scalars = {f"{t}/loss": v for t, v in epoch_log.losses.items()}
            train_scalars |= {f"{t}/weight": v for t, v in epoch_log.weights.items()}
            log.log(epoch, "train", train_scalars, seconds=epoch_log.seconds)
            log.log(epoch, "validation", validation.flat())
            score = validation_score(validation.losses)
            metrics = {"epoch": epoch, "validation": validation.metrics}
            save_checkpoint(last_path, trainer.model, config, metrics, {"epoch": epoch})
            if best_validation is None or score < best_loss:
                best_loss, best_validation = score, validation
                save_checkpoint(best_path, trainer.model, config, metrics, {"epoch": epoch})
            logger.info(
                "epoch %d/%d %.1fs train loss %s validation %s",
                epoch,
                train_cfg.epochs,
                epoch_log.seconds,
                _short(epoch_log.losses),
                _short(validation.metrics),
            )
        best = load_checkpoint(best_path)
        trainer.model.load_state_dict(best.state_dict)
        test = evaluate_cases(trainer, config, splits["test"]) if splits.get("test") else None
        if test is not None:
            log.log(int(best.extra["epoch"]), "test", test.flat())
    finally:
        log.close()
    summary = {
        "best_epoch": best.extra["epoch"],
        "validation": best_validation.metrics,
        "test": test.metrics if test is not None else None,
        "test_labelled": test.labelled if test is not None else None,
        "epoch_seconds": epoch_seconds,
    }
    text = json.dumps(json_safe(summary), indent=2)
    atomic_write_bytes(folder / "test_metrics.json", lambda f: f.write(text.encode()))
    plot_learning_curves(
        log.csv_path,
        folder / "learning_curves.png",
        [t.name for t in config.tasks],
        {t.name: t.primary_metric for t in config.tasks},
    )
    return RunResult(folder, best_path, test, best_validation, epoch_seconds)


def validation_score(losses: Mapping[str, float]) -> float:
    """What model selection minimises: the mean of the finite validation task losses.

    Centralised training keeps its ``best.pt`` by it, and so do a federated site (its
    personalised model) and the server (the shared groups); ``inf`` when no loss is finite.
    """
    finite = [v for v in losses.values() if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf


def _short(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fmt(x) for k, x in v.items()}
        return round(v, 4) if isinstance(v, float) else v

    return json.dumps(fmt(values))
