"""Evaluation metrics, per-task accumulators and the multi-task score Δm.

Metric functions are pure and work on numpy arrays or tensors; accumulators follow MONAI's
habit (``monai/metrics/meandice.py``): update per batch with label masks (samples and channels
without labels are left out as NaN), aggregate once, average the non-NaN items.

Conventions:

* Dice and IoU: an empty reference with an empty prediction scores 1, an empty reference with
  a non-empty prediction scores 0 (MONAI ``ignore_empty=False``). Segmentation logits become
  labels by ``sigmoid > threshold`` (``exclusive=False``) or argmax (``exclusive=True``).
* AUC: Mann-Whitney statistic with mid-ranks for ties; NaN when only one class is present.
  Macro AUC averages one-vs-rest AUCs over the classes where it is defined; two exclusive
  classes or a single sigmoid output give the binary AUC.
* Balanced accuracy: mean recall over the classes present in the reference; for sigmoid
  outputs the mean over labels of the binary balanced accuracy.
* MAE/MSE: per sample and labelled channel inside ``roi``, then averaged.
* OpenKBP dose and DVH scores: the definitions of ``DoseEvaluator`` in the open-kbp repository
  (``provided_code/dose_evaluation_class.py``), see :func:`dose_score` and :func:`dvh_metrics`.
  The DVH score pools the absolute errors of all (patient, structure, metric) items, as the
  official ``nanmean`` over the DVH table does.

Example:
    >>> suite = MetricSuite([TaskSpec(name="lesion", kind="segmentation", classes=1)])
    >>> suite.update({"lesion": logits}, batch)          # once per batch
    >>> suite.compute()                                   # {"lesion": {"dice": 0.83}}
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from torch import Tensor

from ctan.data.openkbp import ORGANS, TARGETS
from ctan.tasks import METRICS, TaskSpec

__all__ = [
    "OPENKBP_STRUCTURES",
    "OPENKBP_TARGETS",
    "MetricSuite",
    "TaskMetrics",
    "auc_score",
    "balanced_accuracy",
    "delta_m",
    "delta_m_summary",
    "dose_score",
    "dvh_errors",
    "dvh_metrics",
    "dvh_score",
    "macro_auc",
    "severity_auc",
]

OPENKBP_STRUCTURES: tuple[str, ...] = ORGANS + TARGETS
"""OpenKBP's structure order (open-kbp ``full_roi_list``): organs at risk, then targets."""

OPENKBP_TARGETS: tuple[str, ...] = TARGETS
"""Structures scored with D99/D95/D1; every other structure is an organ (D_0.1cc, mean)."""

ORGAN_DVH_METRICS: tuple[str, ...] = ("D_0.1_cc", "mean")
TARGET_DVH_METRICS: tuple[str, ...] = ("D_99", "D_95", "D_1")

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975: tuple[float, ...] = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959963984540054


# --------------------------------------------------------------------------- classification


def auc_score(scores: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic with mid-ranks for ties.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the
    positives' ranks; a tie between a positive and a negative counts one half.

    Args:
        scores: ``(N,)`` higher means more likely positive.
        labels: ``(N,)`` truthy for positives.

    Returns:
        the AUC in [0, 1], NaN when only one class is present.

    Raises:
        ValueError: if the shapes differ or are not 1-D.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}"
        )
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts_run = np.r_[True, ordered[1:] != ordered[:-1]]
    run = np.cumsum(starts_run) - 1
    starts = np.flatnonzero(starts_run)
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(ordered.size)
    ranks[order] = ((starts + 1 + ends) / 2.0)[run]
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def macro_auc(scores: np.ndarray | Tensor, labels: np.ndarray | Tensor, exclusive: bool) -> float:
    """One-vs-rest AUC averaged over classes where it is defined.

    Args:
        scores: ``(N, C)`` probabilities (softmax for exclusive, sigmoid otherwise).
        labels: ``(N,)`` class indices when ``exclusive``, else ``(N, C)`` in {0, 1}.
        exclusive: whether the classes are mutually exclusive.

    Returns:
        the binary AUC of class 1 for two exclusive classes or ``C == 1``; otherwise the mean
        of the per-class AUCs that are defined; NaN if none is.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if exclusive:
        if scores.shape[1] == 2:
            return auc_score(scores[:, 1], labels == 1)
        per_class = [auc_score(scores[:, c], labels == c) for c in range(scores.shape[1])]
    else:
        per_class = [auc_score(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    defined = [value for value in per_class if not math.isnan(value)]
    return float(np.mean(defined)) if defined else math.nan


def balanced_accuracy(
    predicted: np.ndarray | Tensor, labels: np.ndarray | Tensor, classes: int
) -> float:
    """Mean recall over the classes present in ``labels``.

    Args:
        predicted: ``(N,)`` predicted class indices.
        labels: ``(N,)`` reference class indices.
        classes: number of classes.

    Returns:
        the balanced accuracy, NaN for ``N == 0``.
    """
    predicted = np.asarray(predicted)
    labels = np.asarray(labels)
    recalls = [
        float((predicted[labels == c] == c).mean()) for c in range(classes) if (labels == c).any()
    ]
    return float(np.mean(recalls)) if recalls else math.nan


def severity_auc(
    severity_scores: np.ndarray | Tensor,
    severe: np.ndarray | Tensor,
    covid: np.ndarray | Tensor,
) -> float:
    """STOIC2021's severity AUC: the AUC of the severity prediction over COVID-positive cases.

    Args:
        severity_scores: ``(N,)`` predicted probability of severe disease.
        severe: ``(N,)`` reference severity (truthy = severe).
        covid: ``(N,)`` reference COVID label (truthy = positive).

    Returns:
        the AUC over the cases with ``covid`` positive; NaN if those hold one class only.
    """
    positive = np.asarray(covid).astype(bool)
    return auc_score(np.asarray(severity_scores)[positive], np.asarray(severe)[positive])


# --------------------------------------------------------------------------- OpenKBP dose


def dose_score(
    reference: np.ndarray, prediction: np.ndarray, possible_dose_mask: np.ndarray
) -> float:
    """OpenKBP dose score of one patient.

    ``sum(|D_ref - D_pred * mask|) / count(mask)``, the prediction zeroed outside the
    possible-dose mask, on the native grid (open-kbp ``DoseEvaluator``).

    Args:
        reference: reference dose in Gy, any shape (``(128, 128, 128)`` natively).
        prediction: predicted dose, same shape.
        possible_dose_mask: same shape, truthy where dose is possible.

    Returns:
        the mean absolute error in Gy.

    Raises:
        ValueError: if the shapes differ or the mask is empty.
    """
    reference = np.asarray(reference, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    mask = np.asarray(possible_dose_mask).astype(bool)
    if reference.shape != prediction.shape or mask.shape != reference.shape:
        raise ValueError(
            f"reference {reference.shape}, prediction {prediction.shape} and possible_dose_mask "
            f"{mask.shape} must have the same shape"
        )
    if not mask.any():
        raise ValueError("possible_dose_mask is empty; the dose score is undefined")
    return float(np.abs(reference - prediction * mask).sum() / mask.sum())


def dvh_metrics(
    dose: np.ndarray,
    structures: Mapping[str, np.ndarray],
    voxel_dimensions: Sequence[float] | np.ndarray,
    targets: Collection[str] = OPENKBP_TARGETS,
) -> dict[str, dict[str, float]]:
    """Dose-volume histogram points as open-kbp's ``DoseEvaluator`` computes them.

    For an organ: ``D_0.1_cc`` = ``np.percentile(dose, 100 - v / n * 100)`` where ``n`` is the
    structure's voxel count and ``v = max(1, round(100 / prod(voxel_dimensions)))`` the voxels
    in 0.1 cc (100 mm^3), i.e. the dose the hottest 0.1 cc receives at least; and ``mean``. For
    a target: ``D_99``, ``D_95``, ``D_1`` = ``np.percentile(dose, 1 / 5 / 99)``, the dose
    received by at least 99 / 95 / 1 % of the volume. Percentiles interpolate linearly
    (numpy's default). A structure smaller than 0.1 cc gets its maximum (the official code
    would ask numpy for a negative percentile). Empty structures are skipped.

    Args:
        dose: dose in Gy, any shape (``(128, 128, 128)`` natively).
        structures: masks of the same shape by structure name.
        voxel_dimensions: voxel size in mm (3 values).
        targets: names scored as targets; all others are organs.

    Returns:
        ``{structure: {metric: value}}`` for the non-empty structures.

    Raises:
        ValueError: if a mask's shape differs from ``dose`` or voxel dimensions are not
            positive.
    """
    dose = np.asarray(dose, dtype=np.float64)
    voxel_volume = float(np.prod(np.asarray(voxel_dimensions, dtype=np.float64)))
    if not voxel_volume > 0:
        raise ValueError(f"voxel_dimensions must be positive, got {voxel_dimensions}")
    voxels_in_tenth_cc = max(1.0, float(np.round(100.0 / voxel_volume)))
    result: dict[str, dict[str, float]] = {}
    for name, mask in structures.items():
        mask = np.asarray(mask).astype(bool)
        if mask.shape != dose.shape:
            raise ValueError(
                f"structure {name!r} has shape {mask.shape}, the dose {dose.shape}; they must match"
            )
        if not mask.any():
            continue
        roi_dose = dose[mask]
        if name in targets:
            result[name] = {
                "D_99": float(np.percentile(roi_dose, 1)),
                "D_95": float(np.percentile(roi_dose, 5)),
                "D_1": float(np.percentile(roi_dose, 99)),
            }
        else:
            hottest = max(0.0, 100.0 - voxels_in_tenth_cc / roi_dose.size * 100.0)
            result[name] = {
                "D_0.1_cc": float(np.percentile(roi_dose, hottest)),
                "mean": float(roi_dose.mean()),
            }
    return result


def dvh_errors(
    reference: np.ndarray,
    prediction: np.ndarray,
    structures: Mapping[str, np.ndarray],
    voxel_dimensions: Sequence[float] | np.ndarray,
    possible_dose_mask: np.ndarray | None = None,
    targets: Collection[str] = OPENKBP_TARGETS,
) -> np.ndarray:
    """Absolute DVH differences of one patient over the structures present in the reference.

    The prediction is zeroed outside ``possible_dose_mask`` first, as in open-kbp.

    Args:
        reference: reference dose, any shape.
        prediction: predicted dose, same shape.
        structures: masks by structure name, same shape.
        voxel_dimensions: voxel size in mm.
        possible_dose_mask: same shape, or ``None`` for no masking.
        targets: names scored as targets.

    Returns:
        ``(K,)`` absolute errors, one per (structure, DVH metric).

    Raises:
        ValueError: as :func:`dvh_metrics`, or if ``prediction`` and ``reference`` differ in
            shape.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    if prediction.shape != np.shape(reference):
        raise ValueError(
            f"prediction {prediction.shape} and reference {np.shape(reference)} must match"
        )
    if possible_dose_mask is not None:
        prediction = prediction * np.asarray(possible_dose_mask).astype(bool)
    ref = dvh_metrics(reference, structures, voxel_dimensions, targets)
    pred = dvh_metrics(prediction, structures, voxel_dimensions, targets)
    return np.array(
        [abs(ref[name][key] - pred[name][key]) for name in ref for key in ref[name]],
        dtype=np.float64,
    )


def dvh_score(
    reference: np.ndarray,
    prediction: np.ndarray,
    structures: Mapping[str, np.ndarray],
    voxel_dimensions: Sequence[float] | np.ndarray,
    possible_dose_mask: np.ndarray | None = None,
    targets: Collection[str] = OPENKBP_TARGETS,
) -> float:
    """OpenKBP DVH score of one patient: the mean of :func:`dvh_errors` (NaN if no structure).

    Over several patients the official score pools all errors (see :class:`TaskMetrics`),
    which is not the mean of the per-patient scores.
    """
    errors = dvh_errors(
        reference, prediction, structures, voxel_dimensions, possible_dose_mask, targets
    )
    return float(errors.mean()) if errors.size else math.nan


# --------------------------------------------------------------------------- accumulators


def _nanmean(values: list[Tensor]) -> float:
    if not values:
        return math.nan
    flat = torch.cat([v.flatten() for v in values]).double()
    flat = flat[~torch.isnan(flat)]
    return float(flat.mean()) if flat.numel() else math.nan


class TaskMetrics:
    """Accumulates one task's metrics (``spec.metrics``) over batches.

    Call :meth:`update` per batch with the raw model output and the batch's labels, then
    :meth:`compute` once. Samples and channels whose mask is 0 are left out.

    ``severity_auc`` needs a companion label: the COVID label of each case (``companion``
    ``(B,)`` or ``(B, 1)``, positive = 1). ``dvh_score`` needs the structure masks
    (``companion`` ``(B, S, *spatial)``, channels named by ``structure_names``, availability
    ``companion_mask`` ``(B, S)``) and voxel dimensions in mm.

    Args:
        spec: the task.
        structure_names: names of the companion channels for ``dvh_score``.
        targets: structures scored as targets by ``dvh_score``.
        voxel_dimensions: default voxel size in mm for ``dvh_score`` when :meth:`update` gets
            none.
        threshold: probability above which a sigmoid output counts as positive.

    Raises:
        ValueError: if a metric does not fit the task (``dose_score``/``dvh_score`` need one
            channel; ``severity_auc`` needs a binary output).

    Example:
        >>> metrics = TaskMetrics(TaskSpec(name="dx", kind="classification", classes=3))
        >>> metrics.update(logits, labels, torch.ones(len(labels)))
        >>> metrics.compute()   # {"balanced_accuracy": ..., "auc": ...}
    """

    def __init__(
        self,
        spec: TaskSpec,
        *,
        structure_names: Sequence[str] = OPENKBP_STRUCTURES,
        targets: Collection[str] = OPENKBP_TARGETS,
        voxel_dimensions: Sequence[float] | None = None,
        threshold: float = 0.5,
    ) -> None:
        if {"dose_score", "dvh_score"} & set(spec.metrics) and spec.classes != 1:
            raise ValueError(
                f"dose_score and dvh_score need a single dose channel; task {spec.name!r} has "
                f"classes={spec.classes}"
            )
        if "severity_auc" in spec.metrics and not (
            spec.classes == 1 or (spec.exclusive and spec.classes == 2)
        ):
            raise ValueError(
                f"severity_auc needs a binary output (classes=1, or 2 exclusive classes); task "
                f"{spec.name!r} has classes={spec.classes}"
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.spec = spec
        self.structure_names = tuple(structure_names)
        self.targets = frozenset(targets)
        self.voxel_dimensions = None if voxel_dimensions is None else tuple(voxel_dimensions)
        self.threshold = float(threshold)
        self.reset()

    @property
    def needs_companion(self) -> bool:
        """Whether a metric of this task needs a companion label (severity or DVH)."""
        return bool({"severity_auc", "dvh_score"} & set(self.spec.metrics))

    @property
    def count(self) -> int:
        """Labelled samples seen since the last :meth:`reset`."""
        return self._count

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._count = 0
        self._items: dict[str, list[Tensor]] = {metric: [] for metric in self.spec.metrics}
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._companion: list[Tensor] = []

    def update(
        self,
        prediction: Tensor,
        target: Tensor,
        mask: Tensor,
        roi: Tensor | None = None,
        companion: Tensor | None = None,
        companion_mask: Tensor | None = None,
        voxel_dimensions: Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            prediction: raw model output, ``(B, C, *spatial)`` (pixel tasks) or ``(B, C)``.
            target: as in the sample contract, batched.
            mask: ``(B, C)`` (pixel tasks) or ``(B,)`` label availability.
            roi: ``(B, 1, *spatial)`` scoring region of a pixel task (possible-dose mask).
            companion: the companion label (see the class docstring).
            companion_mask: its availability, ``(B,)`` or ``(B, S)``; all ones when ``None``.
            voxel_dimensions: ``(B, 3)`` or ``(3,)`` voxel size in mm for ``dvh_score``.

        Raises:
            ValueError: on shapes that do not fit the task, or a missing companion or voxel
                size for a metric that needs it.
        """
        if self.needs_companion and companion is None:
            raise ValueError(
                f"task {self.spec.name!r} scores {self.spec.metrics}: update() needs companion="
                "(the COVID label for severity_auc, structure masks for dvh_score)"
            )
        prediction = prediction.detach().float().cpu()
        target = target.detach().cpu()
        mask = mask.detach().float().cpu()
        roi = None if roi is None else roi.detach().float().cpu()
        if self.spec.kind == "classification":
            self._update_classification(prediction, target, mask, companion, companion_mask)
        else:
            self._update_pixels(
                prediction, target, mask, roi, companion, companion_mask, voxel_dimensions
            )

    def _update_classification(
        self,
        prediction: Tensor,
        target: Tensor,
        mask: Tensor,
        companion: Tensor | None,
        companion_mask: Tensor | None,
    ) -> None:
        batch = prediction.shape[0]
        if prediction.shape != (batch, self.spec.classes) or mask.shape != (batch,):
            raise ValueError(
                f"task {self.spec.name!r}: prediction must be (B, {self.spec.classes}) and mask "
                f"(B,), got {tuple(prediction.shape)} and {tuple(mask.shape)}"
            )
        expected = batch if self.spec.exclusive else batch * self.spec.classes
        if target.numel() != expected:
            raise ValueError(
                f"task {self.spec.name!r}: target must hold {expected} values "
                f"({'class indices (B,)' if self.spec.exclusive else 'labels (B, C)'}), got "
                f"shape {tuple(target.shape)}"
            )
        keep = mask > 0
        if self.spec.exclusive:
            scores = torch.softmax(prediction, dim=1)
            labels = target.reshape(batch).long()
        else:
            scores = torch.sigmoid(prediction)
            labels = target.reshape(batch, self.spec.classes).float()
        self._scores.append(scores[keep])
        self._labels.append(labels[keep])
        if companion is not None:
            covid = companion.detach().cpu().reshape(batch).float()
            known = (
                torch.ones(batch)
                if companion_mask is None
                else companion_mask.detach().cpu().reshape(batch).float()
            )
            positive = torch.where(known > 0, (covid > 0.5).float(), torch.nan)
            self._companion.append(positive[keep])
        self._count += int(keep.sum())

    def _update_pixels(
        self,
        prediction: Tensor,
        target: Tensor,
        mask: Tensor,
        roi: Tensor | None,
        companion: Tensor | None,
        companion_mask: Tensor | None,
        voxel_dimensions: Tensor | None,
    ) -> None:
        if prediction.ndim < 3 or target.shape != prediction.shape:
            raise ValueError(
                f"task {self.spec.name!r}: prediction and target must both be (B, C, *spatial), "
                f"got {tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        if mask.shape != prediction.shape[:2]:
            raise ValueError(
                f"task {self.spec.name!r}: mask must be {tuple(prediction.shape[:2])}, got "
                f"{tuple(mask.shape)}"
            )
        target = target.float()
        missing = torch.where(mask > 0, 0.0, torch.nan)
        self._count += int((mask > 0).any(dim=1).sum())
        if self.spec.kind == "segmentation":
            if self.spec.exclusive:
                labels = prediction.argmax(dim=1, keepdim=True)
                binary = torch.zeros_like(prediction).scatter_(1, labels, 1.0)
            else:
                binary = (torch.sigmoid(prediction) > self.threshold).float()
            if roi is not None:
                binary, target = binary * roi, target * roi
            # exclusive classes cover the background too, in channel 0: it is no structure,
            # and its overlap, large on any image, would lift the mean
            first = 1 if self.spec.exclusive else 0
            for metric, fn in (("dice", compute_dice), ("iou", compute_iou)):
                if metric in self._items:
                    value = fn(binary, target, include_background=not first, ignore_empty=False)
                    self._items[metric].append(value + missing[:, first:])
            return
        weight = torch.ones_like(prediction[:, :1]) if roi is None else roi
        dims = tuple(range(2, prediction.ndim))
        area = weight.sum(dim=dims)
        error = prediction - target
        for metric, power in (("mae", 1), ("mse", 2)):
            if metric in self._items:
                value = (error.abs() ** power * weight).sum(dim=dims) / area
                self._items[metric].append(value + missing)
        if "dose_score" in self._items:
            scores = [
                dose_score(target[b, 0].numpy(), prediction[b, 0].numpy(), weight[b, 0].numpy())
                if mask[b, 0] > 0 and weight[b, 0].any()
                else math.nan
                for b in range(prediction.shape[0])
            ]
            self._items["dose_score"].append(torch.tensor(scores, dtype=torch.float64))
        if "dvh_score" in self._items:
            self._update_dvh(
                prediction, target, mask, roi, companion, companion_mask, voxel_dimensions
            )

    def _update_dvh(
        self,
        prediction: Tensor,
        target: Tensor,
        mask: Tensor,
        roi: Tensor | None,
        companion: Tensor,
        companion_mask: Tensor | None,
        voxel_dimensions: Tensor | None,
    ) -> None:
        batch = prediction.shape[0]
        structures = companion.detach().cpu()
        if (
            structures.ndim != prediction.ndim
            or structures.shape[0] != batch
            or (structures.shape[2:] != prediction.shape[2:])
        ):
            raise ValueError(
                f"task {self.spec.name!r}: dvh_score needs companion structure masks "
                f"(B, S, *spatial) matching {tuple(prediction.shape)}, got "
                f"{tuple(structures.shape)}"
            )
        if structures.shape[1] != len(self.structure_names):
            raise ValueError(
                f"task {self.spec.name!r}: companion has {structures.shape[1]} structures but "
                f"structure_names has {len(self.structure_names)}: {list(self.structure_names)}"
            )
        available = (
            torch.ones(structures.shape[:2])
            if companion_mask is None
            else companion_mask.detach().cpu().float()
        )
        if voxel_dimensions is None:
            if self.voxel_dimensions is None:
                raise ValueError(
                    f"task {self.spec.name!r}: dvh_score needs voxel_dimensions, in update() or "
                    "in the constructor"
                )
            voxel_dimensions = torch.tensor(self.voxel_dimensions)
        spacing = voxel_dimensions.detach().cpu().double().reshape(-1, 3).expand(batch, 3)
        for b in range(batch):
            if mask[b, 0] <= 0:
                continue
            present = {
                name: structures[b, s].numpy() > 0.5
                for s, name in enumerate(self.structure_names)
                if available[b, s] > 0
            }
            errors = dvh_errors(
                target[b, 0].numpy(),
                prediction[b, 0].numpy(),
                present,
                spacing[b].numpy(),
                None if roi is None else roi[b, 0].numpy(),
                self.targets,
            )
            self._items["dvh_score"].append(torch.from_numpy(errors))

    def compute(self) -> dict[str, float]:
        """Each metric of ``spec.metrics`` over everything seen (NaN where undefined)."""
        if self.spec.kind != "classification":
            return {metric: _nanmean(self._items[metric]) for metric in self.spec.metrics}
        if not self._scores:
            return dict.fromkeys(self.spec.metrics, math.nan)
        scores = torch.cat(self._scores).double().numpy()
        labels = torch.cat(self._labels).numpy()
        if scores.shape[0] == 0:
            return dict.fromkeys(self.spec.metrics, math.nan)
        return {
            metric: self._classification(metric, scores, labels) for metric in self.spec.metrics
        }

    def _classification(self, metric: str, scores: np.ndarray, labels: np.ndarray) -> float:
        exclusive = bool(self.spec.exclusive)
        if metric == "auc":
            return macro_auc(scores, labels, exclusive)
        if metric == "severity_auc":
            severe_score = scores[:, -1]
            severe = labels == 1 if exclusive else labels[:, 0] > 0.5
            covid = torch.cat(self._companion).numpy() if self._companion else np.array([])
            known = ~np.isnan(covid)
            return severity_auc(severe_score[known], severe[known], covid[known] > 0.5)
        if exclusive:
            predicted = scores.argmax(axis=1)
            if metric == "accuracy":
                return float((predicted == labels).mean())
            return balanced_accuracy(predicted, labels, self.spec.classes)
        predicted = (scores > self.threshold).astype(np.int64)
        truth = (labels > 0.5).astype(np.int64)
        if metric == "accuracy":
            return float((predicted == truth).mean())
        per_label = [
            balanced_accuracy(predicted[:, c], truth[:, c], 2) for c in range(self.spec.classes)
        ]
        return float(np.nanmean(per_label)) if not np.isnan(per_label).all() else math.nan


class MetricSuite:
    """The :class:`TaskMetrics` of every task of a model, fed from model outputs and batches.

    Args:
        tasks: the model's tasks.
        companions: for tasks whose metrics need a second label, the label key of that label
            by task name: the COVID label for ``severity_auc``, the structure masks for
            ``dvh_score`` (e.g. ``{"severity": "covid", "dose": "structures"}``).
        structure_names: names of the structure channels for ``dvh_score``.
        targets: structures scored as targets by ``dvh_score``.
        voxel_dimensions: voxel size in mm for ``dvh_score`` where batches carry no
            ``batch["voxel_dimensions"]`` ``(B, 3)``.

    Raises:
        ValueError: if a task needing a companion has none, a companion names an unknown task,
            or task names repeat.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        companions: Mapping[str, str] | None = None,
        *,
        structure_names: Sequence[str] = OPENKBP_STRUCTURES,
        targets: Collection[str] = OPENKBP_TARGETS,
        voxel_dimensions: Sequence[float] | None = None,
    ) -> None:
        names = [spec.name for spec in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks {names} repeat a name")
        self.companions = dict(companions or {})
        unknown = sorted(set(self.companions) - set(names))
        if unknown:
            raise ValueError(f"companions name unknown tasks {unknown}; tasks are {names}")
        self.tasks = list(tasks)
        self.metrics = {
            spec.name: TaskMetrics(
                spec,
                structure_names=structure_names,
                targets=targets,
                voxel_dimensions=voxel_dimensions,
            )
            for spec in tasks
        }
        for name, metrics in self.metrics.items():
            if metrics.needs_companion and name not in self.companions:
                raise ValueError(
                    f"task {name!r} scores {metrics.spec.metrics}, which need a companion label; "
                    f"pass companions={{{name!r}: <label key of the COVID label or structures>}}"
                )

    def reset(self) -> None:
        """Forget everything accumulated."""
        for metrics in self.metrics.values():
            metrics.reset()

    def update(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> None:
        """Add one batch: model outputs by task name and the collated batch.

        Raises:
            ValueError: if an output or label key is missing, or shapes do not fit.
        """
        targets, masks = batch.get("targets", {}), batch.get("target_masks", {})
        rois = batch.get("roi", {})
        for spec in self.tasks:
            if spec.name not in outputs:
                raise ValueError(
                    f"outputs have no prediction for task {spec.name!r}; they have "
                    f"{sorted(outputs)}"
                )
            if spec.label not in targets or spec.label not in masks:
                raise ValueError(
                    f"batch has no targets/target_masks entry {spec.label!r} for task {spec.name!r}"
                )
            companion = companion_mask = None
            key = self.companions.get(spec.name)
            if key is not None:
                case_labels = batch.get("case_labels", {})
                if key in targets:
                    companion, companion_mask = targets[key], masks.get(key)
                elif key in case_labels:
                    values = case_labels[key]
                    companion_mask = (~torch.isnan(values)).to(torch.float32)
                    companion = torch.nan_to_num(values).to(torch.int64)
                else:
                    raise ValueError(
                        f"the batch has no companion label {key!r} for task {spec.name!r} in "
                        f"targets {sorted(targets)} or case_labels {sorted(case_labels)}"
                    )
            self.metrics[spec.name].update(
                outputs[spec.name],
                targets[spec.label],
                masks[spec.label],
                rois.get(spec.label),
                companion,
                companion_mask,
                batch.get("voxel_dimensions"),
            )

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` in ``spec.metrics`` order."""
        return {name: metrics.compute() for name, metrics in self.metrics.items()}

    def counts(self) -> dict[str, int]:
        """Labelled samples seen per task, to weight metrics across sites."""
        return {name: metrics.count for name, metrics in self.metrics.items()}


# --------------------------------------------------------------------------- Δm


def delta_m(
    results: Mapping[str, Mapping[str, float]],
    stl: Mapping[str, Mapping[str, float]],
    tasks: Sequence[TaskSpec],
) -> float:
    """Multi-task gain over single-task learning, in percent.

    ``Δm = mean_t mean_{m in t.metrics} s_m (M_t,m - M_STL,t,m) / M_STL,t,m * 100`` with
    ``s_m = +1`` where higher is better and ``-1`` where lower is better (``ctan.tasks.METRICS``).

    Args:
        results: ``{task: {metric: value}}`` of the model.
        stl: the same for the single-task baseline on the same split and seed.
        tasks: the tasks; each task's ``metrics`` are used.

    Returns:
        Δm in percent (positive = better than STL).

    Raises:
        ValueError: if a value is missing or not finite, or a baseline value is zero.
    """
    if not tasks:
        raise ValueError("tasks must hold at least one task, got []")
    per_task = []
    for spec in tasks:
        terms = []
        for metric in spec.metrics:
            values = []
            for source, table in (("results", results), ("stl", stl)):
                value = table.get(spec.name, {}).get(metric)
                if value is None or not math.isfinite(value):
                    raise ValueError(
                        f"{source}[{spec.name!r}][{metric!r}] must be a finite number, got {value}"
                    )
                values.append(float(value))
            model, baseline = values
            if baseline == 0:
                raise ValueError(f"stl[{spec.name!r}][{metric!r}] is 0; Δm divides by it")
            sign = 1.0 if METRICS[metric].higher_is_better else -1.0
            terms.append(sign * (model - baseline) / baseline * 100.0)
        per_task.append(sum(terms) / len(terms))
    return sum(per_task) / len(per_task)


def _t_quantile_975(dof: int) -> float:
    """Two-sided 95% quantile of Student's t: scipy where installed, else a table.

    The table covers 1..30 degrees of freedom; above 30 a Cornish-Fisher expansion around the
    normal quantile is within 1e-3.
    """
    try:
        from scipy.stats import t
    except ImportError:
        return _t_quantile_975_table(dof)
    return float(t.ppf(0.975, dof))


def _t_quantile_975_table(dof: int) -> float:
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def delta_m_summary(per_seed_values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width of Δm over seeds (Student's t).

    ``half_width = t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation.

    Args:
        per_seed_values: Δm of each seed.

    Returns:
        ``(mean, half_width)``; the half-width is NaN for a single seed.

    Raises:
        ValueError: if the sequence is empty or holds a non-finite value.
    """
    values = [float(v) for v in per_seed_values]
    if not values:
        raise ValueError("per_seed_values must hold at least one value, got []")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"per_seed_values must be finite, got {values}")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, _t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
