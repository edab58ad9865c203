"""The one training and evaluation loop, shared by centralised runs and federated sites.

:class:`TaskTrainer` owns the model on its device, the per-task losses, the loss weighting and
the optimiser. A centralised run calls :meth:`TaskTrainer.train_epoch` once per epoch; a site
calls it ``local_epochs`` times per round, optionally with a :class:`ProximalTerm` (FedProx),
after loading the groups the server sent. Nothing here knows which architecture or weighting it
drives: both are plug-ins.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ctan.config import TrainConfig
from ctan.losses import build_task_loss, labelled_counts, task_losses
from ctan.metrics import MetricSuite
from ctan.tasks import METRICS, TaskSpec
from ctan.weighting import build_weighting

logger = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``setting`` names where ``name`` came
    from, for the error.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def derive_seed(seed: int, *parts: object) -> int:
    """A seed derived from ``seed`` and any labels (site, round), stable across processes."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), and make cuDNN pick deterministic
    convolution algorithms (its autotuner may pick others from run to run), so that a run on
    a GPU, and a resumed one, repeats itself as on the CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0
) -> DataLoader:
    """A loader whose shuffling order, and with workers their augmentation seeds, depend only
    on ``seed``.

    Raises:
        ValueError: ``dataset`` is empty.
    """
    if len(dataset) == 0:
        raise ValueError("the data split is empty: there is no case to load")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=_reseed_worker,
    )


def _reseed_worker(worker_id: int) -> None:
    """Give each loader worker's copy of the dataset its own augmentation seed (torch derives
    a distinct ``seed`` per worker from the loader's generator)."""
    info = torch.utils.data.get_worker_info()
    reseed = getattr(info.dataset, "reseed", None)
    if reseed is not None:
        reseed(info.seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch on ``device``; other values unchanged."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


@dataclass
class ProximalTerm:
    """FedProx's ``mu / 2 * ||w - w_global||^2`` over the parameters that travel.

    Attributes:
        mu: the proximal coefficient; 0 disables the term.
        reference: the global values received this round, by parameter name.
    """

    mu: float
    reference: dict[str, Tensor]

    def __call__(self, model: nn.Module) -> Tensor | None:
        if self.mu == 0 or not self.reference:
            return None
        terms = [
            (parameter - self.reference[name].to(parameter)).square().sum()
            for name, parameter in model.named_parameters()
            if parameter.requires_grad and name in self.reference
        ]
        return 0.5 * self.mu * torch.stack(terms).sum() if terms else None


@dataclass
class EpochLog:
    """What one training epoch did.

    Attributes:
        losses: mean loss per task over the batches that had labels for it.
        weights: mean loss weight applied per task.
        labelled: labelled examples seen per task.
        samples: examples seen.
        seconds: wall time.
    """

    losses: dict[str, float]
    weights: dict[str, float]
    labelled: dict[str, int]
    samples: int
    seconds: float

    @property
    def total_loss(self) -> float:
        """Sum of the task losses (unweighted)."""
        return float(sum(self.losses.values()))


@dataclass
class Evaluation:
    """Scores of a model on one data split.

    Attributes:
        metrics: ``{task: {metric: value}}`` in the config's metric order.
        losses: mean loss per task over labelled samples.
        labelled: labelled examples per task (weights for averaging across sites).
        samples: examples scored.
    """

    metrics: dict[str, dict[str, float]]
    losses: dict[str, float]
    labelled: dict[str, int]
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """``{"<prefix><task>/<metric>": value, "<prefix><task>/loss": value}``."""
        out = {f"{prefix}{t}/{m}": v for t, ms in self.metrics.items() for m, v in ms.items()}
        out |= {f"{prefix}{t}/loss": v for t, v in self.losses.items()}
        return out


class TaskTrainer:
    """Trains, evaluates and runs one multi-task model.

    Build it after :func:`ctan.models.trainable_groups` has frozen what the caller must not
    train: only parameters that require gradients go to the optimiser.

    Args:
        model: a model from :func:`ctan.models.build_model` (moved to ``device`` here).
        tasks: the model's tasks.
        train: the training section of the config.
        device: where to run; default ``resolve_device(train.device)``.
        companions: label keys that metrics of a task need besides its own (``severity_auc``:
            the COVID label; see :class:`ctan.metrics.MetricSuite`).
        class_weights: optional per-task class weights for classification losses.
        logit_adjustments: optional per-task logit offsets for classification losses
            (:func:`ctan.losses.logit_adjustments_from_cases`).
        show_progress: draw a progress bar (off for federated sites and tests).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[TaskSpec],
        train: TrainConfig,
        device: torch.device | None = None,
        companions: Mapping[str, str] | None = None,
        class_weights: Mapping[str, Tensor] | None = None,
        logit_adjustments: Mapping[str, Tensor] | None = None,
        show_progress: bool = False,
    ) -> None:
        self.device = device or resolve_device(train.device)
        self.model = model.to(self.device)
        self.tasks = list(tasks)
        self.train_config = train
        self.companions = dict(companions or {})
        self.show_progress = show_progress
        self._batch_metric_tasks = [
            t.model_copy(update={"metrics": [m for m in t.metrics if METRICS[m].per_batch]})
            for t in self.tasks
        ]
        weights, offsets = class_weights or {}, logit_adjustments or {}
        self.losses = {
            t.name: build_task_loss(t, weights.get(t.name), offsets.get(t.name)).to(self.device)
            for t in self.tasks
        }
        self.evaluation_losses = (
            {t.name: build_task_loss(t).to(self.device) for t in self.tasks}
            if weights or offsets
            else self.losses
        )
        self.weighting = build_weighting(train.weighting, [t.name for t in self.tasks])
        self.weighting.to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters; check trainable_groups")
        self.optimizer = _build_optimizer(train, trainable, list(self.weighting.parameters()))
        self._autocast_dtype = _autocast_dtype(self.device) if train.amp else None
        self._scaler = torch.amp.GradScaler("cuda", enabled=self._autocast_dtype == torch.float16)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def _forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        with self._autocast():
            outputs = self.model(batch["image"])
        return {name: out.float() for name, out in outputs.items()}

    def train_epoch(self, loader: DataLoader, proximal: ProximalTerm | None = None) -> EpochLog:
        """One pass over ``loader``: forward, masked per-task losses, weighting, step.

        Returns:
            The epoch's :class:`EpochLog`.
        """
        self.model.train()
        start = time.perf_counter()
        loss_sums = dict.fromkeys(self.losses, 0.0)
        weight_sums = dict.fromkeys(self.losses, 0.0)
        labelled_total = dict.fromkeys(self.losses, 0)
        samples = batches = 0
        for batch in self._iterate(loader, "train"):
            batch = move_to(batch, self.device)
            outputs = self._forward(batch)
            losses = task_losses(outputs, batch, self.tasks, self.losses)
            labelled = labelled_counts(batch, self.tasks)
            total, weights = self.weighting.combine(losses, labelled)
            penalty = proximal(self.model) if proximal is not None else None
            if penalty is not None:
                total = total + penalty
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"training loss became {total.item()} (task losses "
                    f"{ {k: round(v.item(), 4) for k, v in losses.items()} }); lower train.lr"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self._scaler.scale(total).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
            batches += 1
            samples += int(batch["image"].shape[0])
            for name, value in losses.items():
                weight_sums[name] += weights[name]
                labelled_total[name] += labelled[name]
                if labelled[name]:
                    loss_sums[name] += float(value.detach()) * labelled[name]
        mean_losses = {n: _ratio(loss_sums[n], labelled_total[n]) for n in loss_sums}
        self.weighting.end_epoch(mean_losses)
        return EpochLog(
            losses=mean_losses,
            weights={n: w / max(batches, 1) for n, w in weight_sums.items()},
            labelled=labelled_total,
            samples=samples,
            seconds=time.perf_counter() - start,
        )

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> Evaluation:
        """Metrics and losses of the model on ``loader`` (no augmentation, no gradients).

        Losses are plain, without the class weights or logit adjustments training may use, as
        every site and ``ctan evaluate`` score them, so that validation losses (which choose
        ``best.pt`` and a federation's best round) compare across runs and parties.

        Metrics that are not computed per batch (``METRICS[m].per_batch`` false, e.g. the
        OpenKBP DVH score) are left to the caller: see :func:`ctan.prediction.evaluate_cases`.
        """
        self.model.eval()
        suite = MetricSuite(self._batch_metric_tasks, self.companions)
        loss_sums = dict.fromkeys(self.losses, 0.0)
        labelled_total = dict.fromkeys(self.losses, 0)
        samples = 0
        for cpu_batch in self._iterate(loader, "evaluate"):
            batch = move_to(cpu_batch, self.device)
            outputs = self._forward(batch)
            losses = task_losses(outputs, batch, self.tasks, self.evaluation_losses)
            labelled = labelled_counts(batch, self.tasks)
            for name, value in losses.items():
                loss_sums[name] += float(value) * labelled[name]
                labelled_total[name] += labelled[name]
            suite.update(outputs, cpu_batch)
            samples += int(batch["image"].shape[0])
        if samples == 0:
            raise ValueError("evaluation got an empty data split; it needs at least one case")
        return Evaluation(
            metrics=suite.compute(),
            losses={n: _ratio(loss_sums[n], labelled_total[n]) for n in loss_sums},
            labelled=labelled_total,
            samples=samples,
        )

    @torch.no_grad()
    def predict(self, loader: DataLoader) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
        """Yield ``(batch, outputs)`` on the CPU for every batch of ``loader``."""
        self.model.eval()
        for batch in loader:
            outputs = self._forward(move_to(batch, self.device))
            yield batch, {name: out.cpu() for name, out in outputs.items()}

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, weighting and float16 loss-scaler state: what a site keeps between
        rounds (a fresh scaler would start high again and skip a round's first steps)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "scaler": self._scaler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        if state.get("scaler") and self._scaler.is_enabled():
            self._scaler.load_state_dict(state["scaler"])

    def _iterate(self, loader: DataLoader, what: str) -> Iterator[Any]:
        if not self.show_progress:
            yield from loader
            return
        columns = (
            TextColumn(f"{what:>8}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=True) as progress:
            bar = progress.add_task(what, total=len(loader))
            for batch in loader:
                yield batch
                progress.advance(bar)


def _ratio(total: float, count: int) -> float:
    return total / count if count else float("nan")


def _build_optimizer(
    train: TrainConfig, parameters: list[Tensor], weighting: list[Tensor]
) -> torch.optim.Optimizer:
    """The optimiser of the model's ``parameters`` and the loss weighting's own (uncertainty
    weighting's log-variances), which weight decay would pull towards equal weights: they get
    none."""
    cls = OPTIMIZERS[train.optimizer]
    options: dict[str, Any] = {"lr": train.lr, "weight_decay": train.weight_decay}
    if train.optimizer == "sgd":
        options["momentum"] = 0.9
    if not weighting:
        return cls(parameters, **options)
    return cls([{"params": parameters}, {"params": weighting, "weight_decay": 0.0}], **options)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bfloat16 where supported, else float16 with scaling."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
