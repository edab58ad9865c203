"""Per-sample task losses with label masks, ready for DP-SGD.

Every loss here returns one value per sample, shape ``(B,)``, and a missing label multiplies
that sample's (or channel's) loss by zero instead of skipping it. Two things follow:

* Opacus can use the losses unchanged: no sample's loss depends on another sample (Dice is
  computed per sample, never over the batch), and the graph from every prediction to the loss
  exists in every step, so every trainable parameter receives a (possibly zero) gradient.
* A site without labels for a task still runs the task's branch; its loss is an exact zero.

Losses by task kind (``TaskSpec.kind``, ``TaskSpec.exclusive``):

* segmentation, ``exclusive=False`` (structures may overlap): sigmoid per channel,
  binary cross-entropy + MONAI ``DiceLoss`` where the structure is present in the sample, per
  channel, then averaged over the labelled channels of the sample. An empty reference adds no
  Dice: per-sample Dice of an empty reference is near 1 for any non-empty prediction, so on 2D
  slices, where most structures are absent from most slices, it teaches the model to predict
  nothing (cross-entropy still penalises false positives there).
* segmentation, ``exclusive=True``: softmax over channels, MONAI ``DiceLoss`` per labelled
  channel + cross-entropy; the cross-entropy term counts only for samples whose channels are all
  labelled (a one-hot target is not defined when a class was not contoured).
* regression: L1 inside the region of interest (OpenKBP's possible-dose mask), averaged over
  the labelled channels, divided by the task's ``scale``.
* classification: cross-entropy with optional class weights (``exclusive=True``), or binary
  cross-entropy with optional positive-class weights (``exclusive=False``).

Example:
    >>> spec = TaskSpec(name="lesion", kind="segmentation", classes=1)
    >>> loss = build_task_loss(spec)
    >>> loss(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), torch.ones(2, 1)).shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from ctan.tasks import TaskSpec

__all__ = [
    "ClassificationLoss",
    "MaskedL1Loss",
    "SegmentationLoss",
    "TaskLoss",
    "build_task_loss",
    "labelled_counts",
    "labelled_samples",
    "task_losses",
]


def _check_pixel_inputs(
    spec: TaskSpec, prediction: Tensor, target: Tensor, mask: Tensor, roi: Tensor | None
) -> None:
    if prediction.ndim < 3:
        raise ValueError(
            f"task {spec.name!r}: prediction must be (B, C, *spatial) with 1 to 3 spatial dims, "
            f"got shape {tuple(prediction.shape)}"
        )
    if prediction.shape[1] != spec.classes:
        raise ValueError(
            f"task {spec.name!r}: prediction has {prediction.shape[1]} channels, "
            f"the task has classes={spec.classes}"
        )
    if target.shape != prediction.shape:
        raise ValueError(
            f"task {spec.name!r}: target shape {tuple(target.shape)} must equal prediction "
            f"shape {tuple(prediction.shape)}"
        )
    if mask.shape != prediction.shape[:2]:
        raise ValueError(
            f"task {spec.name!r}: mask must be per channel, shape {tuple(prediction.shape[:2])}, "
            f"got {tuple(mask.shape)}"
        )
    if roi is not None and roi.shape != (prediction.shape[0], 1, *prediction.shape[2:]):
        raise ValueError(
            f"task {spec.name!r}: roi must be (B, 1, *spatial) = "
            f"{(prediction.shape[0], 1, *prediction.shape[2:])}, got {tuple(roi.shape)}"
        )


def _spatial_mean(values: Tensor, roi: Tensor | None) -> Tensor:
    """Mean over spatial dims, inside ``roi`` where given: ``(B, C, *spatial) -> (B, C)``."""
    dims = tuple(range(2, values.ndim))
    if roi is None:
        return values.mean(dim=dims)
    return (values * roi).sum(dim=dims) / roi.sum(dim=dims).clamp(min=1.0)


def _channel_mean(per_channel: Tensor, mask: Tensor) -> Tensor:
    """Mean over labelled channels: ``(B, C), (B, C) -> (B,)``; zero where none is labelled."""
    return (per_channel * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class TaskLoss(nn.Module):
    """Base of the per-sample task losses.

    Subclasses implement :meth:`forward` with the signature below; the result is zero (and
    still connected to ``prediction``) for every sample whose mask is zero.

    Args:
        spec: the task this loss trains.
    """

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(
        self, prediction: Tensor, target: Tensor, mask: Tensor, roi: Tensor | None = None
    ) -> Tensor:
        """Per-sample loss.

        Args:
            prediction: raw model output (logits for segmentation and classification),
                ``(B, C, *spatial)`` for pixel tasks, ``(B, C)`` for classification.
            target: as in the sample contract (``ctan.data.base``), batched.
            mask: label availability, ``(B, C)`` for pixel tasks, ``(B,)`` for classification.
            roi: ``(B, 1, *spatial)`` region where a pixel task is scored, or ``None``.

        Returns:
            ``(B,)`` loss per sample.

        Raises:
            ValueError: if the shapes do not match the task.
        """
        raise NotImplementedError


class SegmentationLoss(TaskLoss):
    """Dice + cross-entropy per sample, sigmoid or softmax by ``spec.exclusive``.

    Dice is MONAI's ``DiceLoss`` with ``reduction="none"`` and ``batch=False`` (one value per
    sample and channel). With ``exclusive=False`` each channel is an independent structure:
    sigmoid, binary cross-entropy per channel plus Dice on the channels whose structure is
    present in the sample, averaged over labelled channels. With
    ``exclusive=True`` the channels are one-hot classes: softmax, Dice averaged over labelled
    channels, plus the voxel cross-entropy for samples with every channel labelled. Where
    ``roi`` is given, voxels outside it are ignored by both terms.

    Args:
        spec: a segmentation task.
        smooth: Dice smoothing added to numerator and denominator.
    """

    def __init__(self, spec: TaskSpec, smooth: float = 1e-5) -> None:
        super().__init__(spec)
        self.dice = DiceLoss(reduction="none", smooth_nr=smooth, smooth_dr=smooth)

    def forward(
        self, prediction: Tensor, target: Tensor, mask: Tensor, roi: Tensor | None = None
    ) -> Tensor:
        """See :meth:`TaskLoss.forward`; ``(B, C, *spatial)`` in, ``(B,)`` out."""
        _check_pixel_inputs(self.spec, prediction, target, mask, roi)
        target = target.to(prediction.dtype)
        mask = mask.to(prediction.dtype)
        if self.spec.exclusive:
            probabilities = torch.softmax(prediction, dim=1)
        else:
            probabilities = torch.sigmoid(prediction)
        scored_target = target
        if roi is not None:
            roi = roi.to(prediction.dtype)
            probabilities = probabilities * roi
            scored_target = target * roi
        dice = self.dice(probabilities, scored_target).reshape(mask.shape)
        if self.spec.exclusive:
            voxel_ce = -(target * torch.log_softmax(prediction, dim=1)).sum(dim=1, keepdim=True)
            cross_entropy = _spatial_mean(voxel_ce, roi)[:, 0]
            complete = (mask > 0).all(dim=1).to(prediction.dtype)
            return _channel_mean(dice, mask) + complete * cross_entropy
        bce = F.binary_cross_entropy_with_logits(prediction, target, reduction="none")
        present = (scored_target.flatten(2).sum(dim=2) > 0).to(prediction.dtype)
        return _channel_mean(dice * present + _spatial_mean(bce, roi), mask)


class MaskedL1Loss(TaskLoss):
    """Mean absolute error per sample inside ``roi``, over labelled channels.

    For OpenKBP dose this is the training counterpart of the dose score: L1 inside the
    possible-dose mask. Divided by ``spec.scale`` so that it is measured in units of the
    target's typical size, comparable with the other tasks' losses.
    """

    def forward(
        self, prediction: Tensor, target: Tensor, mask: Tensor, roi: Tensor | None = None
    ) -> Tensor:
        """See :meth:`TaskLoss.forward`; ``(B, C, *spatial)`` in, ``(B,)`` out."""
        _check_pixel_inputs(self.spec, prediction, target, mask, roi)
        error = (prediction - target.to(prediction.dtype)).abs()
        roi = None if roi is None else roi.to(prediction.dtype)
        per_sample = _channel_mean(_spatial_mean(error, roi), mask.to(prediction.dtype))
        return per_sample / self.spec.scale


class ClassificationLoss(TaskLoss):
    """Cross-entropy (``exclusive=True``) or binary cross-entropy (``exclusive=False``).

    Args:
        spec: a classification task.
        class_weights: ``(classes,)`` non-negative. For ``exclusive=True`` the weight of each
            class (a sample's loss is multiplied by the weight of its true class, as
            ``torch.nn.functional.cross_entropy(weight=...)``); for ``exclusive=False`` the
            weight of the positive examples of each label (``pos_weight`` of
            ``binary_cross_entropy_with_logits``), e.g. ``negatives / positives``.
        logit_adjustment: ``(classes,)`` added to the logits inside the loss only (see
            ``TaskSpec.logit_adjustment`` and :func:`logit_adjustments_from_cases`).

    Raises:
        ValueError: if ``class_weights`` has the wrong length or a negative value, or
            ``logit_adjustment`` has the wrong length or a non-finite value.
    """

    def __init__(
        self,
        spec: TaskSpec,
        class_weights: Tensor | None = None,
        logit_adjustment: Tensor | None = None,
    ) -> None:
        super().__init__(spec)
        if logit_adjustment is not None:
            logit_adjustment = torch.as_tensor(logit_adjustment, dtype=torch.float32).flatten()
            if logit_adjustment.numel() != spec.classes or not logit_adjustment.isfinite().all():
                raise ValueError(
                    f"logit_adjustment for task {spec.name!r} must be {spec.classes} finite "
                    f"values (one per class), got {logit_adjustment.tolist()}"
                )
        self.register_buffer("logit_adjustment", logit_adjustment)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if class_weights.numel() != spec.classes:
                raise ValueError(
                    f"class_weights for task {spec.name!r} must have {spec.classes} values "
                    f"(one per class), got {class_weights.numel()}"
                )
            if bool((class_weights < 0).any()):
                raise ValueError(
                    f"class_weights for task {spec.name!r} must be non-negative, "
                    f"got {class_weights.tolist()}"
                )
        self.register_buffer("class_weights", class_weights)

    def forward(
        self, prediction: Tensor, target: Tensor, mask: Tensor, roi: Tensor | None = None
    ) -> Tensor:
        """See :meth:`TaskLoss.forward`; ``(B, C)`` logits in, ``(B,)`` out.

        ``target`` is ``(B,)`` int64 class indices for ``exclusive=True``, ``(B, C)`` float in
        {0, 1} for ``exclusive=False`` (``(B,)`` is accepted when ``C == 1``); ``roi`` is
        ignored.
        """
        batch = prediction.shape[0]
        if prediction.shape != (batch, self.spec.classes):
            raise ValueError(
                f"task {self.spec.name!r}: prediction must be (B, {self.spec.classes}), "
                f"got {tuple(prediction.shape)}"
            )
        if mask.shape != (batch,):
            raise ValueError(
                f"task {self.spec.name!r}: mask must be ({batch},), got {tuple(mask.shape)}"
            )
        weights = None if self.class_weights is None else self.class_weights.to(prediction)
        if self.logit_adjustment is not None:
            prediction = prediction + self.logit_adjustment.to(prediction)
        if self.spec.exclusive:
            if target.shape != (batch,):
                raise ValueError(
                    f"task {self.spec.name!r}: target must be ({batch},) class indices, "
                    f"got {tuple(target.shape)}"
                )
            loss = F.cross_entropy(prediction, target.long(), weight=weights, reduction="none")
        else:
            if self.spec.classes == 1 and target.shape == (batch,):
                target = target.unsqueeze(1)
            if target.shape != prediction.shape:
                raise ValueError(
                    f"task {self.spec.name!r}: target must be (B, C) = {tuple(prediction.shape)}"
                    f", got {tuple(target.shape)}"
                )
            loss = F.binary_cross_entropy_with_logits(
                prediction, target.to(prediction.dtype), pos_weight=weights, reduction="none"
            ).mean(dim=1)
        return loss * mask.to(prediction.dtype)


def build_task_loss(
    spec: TaskSpec, class_weights: Tensor | None = None, logit_adjustment: Tensor | None = None
) -> TaskLoss:
    """The loss for ``spec`` by its kind.

    Args:
        spec: the task.
        class_weights: ``(classes,)`` weights, classification tasks only
            (see :class:`ClassificationLoss`).
        logit_adjustment: ``(classes,)`` logit offsets, classification tasks only.

    Returns:
        a :class:`TaskLoss` mapping ``(prediction, target, mask, roi)`` to ``(B,)``.

    Raises:
        ValueError: if ``class_weights`` or ``logit_adjustment`` is given for a pixel task, or
            is invalid.
    """
    if spec.kind == "classification":
        return ClassificationLoss(spec, class_weights, logit_adjustment)
    for name, value in (("class_weights", class_weights), ("logit_adjustment", logit_adjustment)):
        if value is not None:
            raise ValueError(
                f"{name} applies to classification tasks only; task {spec.name!r} is {spec.kind}"
            )
    if spec.kind == "segmentation":
        return SegmentationLoss(spec)
    return MaskedL1Loss(spec)


def class_weights_from_cases(tasks: Sequence[TaskSpec], cases: Sequence[Any]) -> dict[str, Tensor]:
    """The loss class weights of every task whose spec sets ``class_weights``.

    A list is used as given. ``"balanced"`` is computed from the labelled ``cases`` (objects
    with ``labels`` and ``has_label``, such as :class:`ctan.data.base.Case`): for exclusive
    classes ``n / (K * n_k)`` (scikit-learn's "balanced"; 0 for a class without examples,
    whose weight never applies), for independent labels ``negatives / positives`` per label
    (1 where a label has no positive example).

    Returns:
        ``{task name: (classes,) float32 tensor}`` for the tasks that set weights.
    """
    weights: dict[str, Tensor] = {}
    for spec in tasks:
        if spec.class_weights is None:
            continue
        if spec.class_weights != "balanced":
            weights[spec.name] = torch.tensor(spec.class_weights, dtype=torch.float32)
            continue
        total, counts = _class_counts(spec, cases)
        counts = counts.to(torch.float32)
        if spec.exclusive:
            balanced = total / (spec.classes * counts.clamp(min=1))
            weights[spec.name] = torch.where(counts > 0, balanced, torch.zeros_like(balanced))
        else:
            weights[spec.name] = torch.where(
                counts > 0, (total - counts) / counts.clamp(min=1), torch.ones_like(counts)
            )
    return weights


def _class_counts(spec: TaskSpec, cases: Sequence[Any]) -> tuple[int, Tensor]:
    """Labelled cases of ``spec`` and ``(classes,)`` counts: examples per exclusive class, or
    positive examples (label >= 0.5) per independent label."""
    values = [c.labels[spec.label] for c in cases if c.has_label(spec.label)]
    if spec.exclusive:
        indices = torch.tensor([int(v) for v in values], dtype=torch.long)
        return len(values), torch.bincount(indices, minlength=spec.classes).to(torch.float64)
    labels = torch.tensor(
        [[float(x) for x in torch.as_tensor(v).flatten()] for v in values], dtype=torch.float64
    ).reshape(-1, spec.classes)
    return len(values), (labels >= 0.5).sum(dim=0).to(torch.float64)


def labelled_samples(spec: TaskSpec, mask: Tensor, roi: Tensor | None = None) -> Tensor:
    """Which samples carry any label for the task: ``(B, C)`` or ``(B,)`` -> ``(B,)`` float.

    A pixel task's sample whose region of interest ``(B, 1, *spatial)`` is empty carries none:
    its loss is zero by construction (OpenKBP slices outside every possible-dose voxel), and
    counting it would dilute the loss of the others.
    """
    if not spec.is_pixel_task:
        return (mask > 0).to(torch.float32)
    labelled = (mask > 0).any(dim=1)
    if roi is not None:
        labelled &= roi.flatten(start_dim=1).sum(dim=1) > 0
    return labelled.to(torch.float32)


def _task_fields(batch: Mapping[str, Any], spec: TaskSpec) -> tuple[Tensor, Tensor, Tensor | None]:
    for key in ("targets", "target_masks"):
        if spec.label not in batch.get(key, {}):
            raise ValueError(
                f"batch[{key!r}] has no entry {spec.label!r} for task {spec.name!r}; "
                f"it has {sorted(batch.get(key, {}))}"
            )
    roi = batch.get("roi", {}).get(spec.label)
    return batch["targets"][spec.label], batch["target_masks"][spec.label], roi


def labelled_counts(batch: Mapping[str, Any], tasks: Sequence[TaskSpec]) -> dict[str, int]:
    """Number of samples in ``batch`` with any label for each task, by task name.

    Raises:
        ValueError: if the batch lacks a task's label key.
    """
    return {
        spec.name: int(labelled_samples(spec, *_task_fields(batch, spec)[1:]).sum().item())
        for spec in tasks
    }


def task_losses(
    outputs: Mapping[str, Tensor],
    batch: Mapping[str, Any],
    tasks: Sequence[TaskSpec],
    losses: Mapping[str, TaskLoss] | None = None,
) -> dict[str, Tensor]:
    """One scalar loss per task: the mean per-sample loss over the samples labelled for it.

    When no sample of the batch is labelled for a task the result is an exact zero that still
    depends on the prediction, so every parameter gets a gradient. Dividing by the number of
    labelled samples (not ``B``) scales each sample's gradient by ``B / labelled``; under DP-SGD
    the per-sample clipping bounds it all the same.

    Args:
        outputs: model output by task name, shapes as in :meth:`TaskLoss.forward`.
        batch: a collated batch following the sample contract (``ctan.data.base``).
        tasks: the tasks to compute.
        losses: prebuilt losses by task name (e.g. with class weights); tasks missing here get
            ``build_task_loss(spec)``.

    Returns:
        ``{task name: scalar tensor}``.

    Raises:
        ValueError: if ``outputs`` lacks a task or the batch lacks its label key.
    """
    losses = losses or {}
    result: dict[str, Tensor] = {}
    for spec in tasks:
        if spec.name not in outputs:
            raise ValueError(
                f"outputs have no prediction for task {spec.name!r}; they have {sorted(outputs)}"
            )
        prediction = outputs[spec.name]
        target, mask, roi = _task_fields(batch, spec)
        loss_fn = losses.get(spec.name)
        if loss_fn is None:
            loss_fn = build_task_loss(spec).to(prediction.device)
        per_sample = loss_fn(prediction, target, mask, roi)
        labelled = labelled_samples(spec, mask, roi).to(per_sample)
        result[spec.name] = (per_sample * labelled).sum() / labelled.sum().clamp(min=1.0)
    return result


def logit_adjustments_from_cases(
    tasks: Sequence[TaskSpec], cases: Sequence[Any]
) -> dict[str, Tensor]:
    """The logit offsets of every task whose spec sets ``logit_adjustment``.

    ``tau * log(prior)`` per class for exclusive classes and ``tau * log(prior / (1 - prior))``
    per independent label, the prior counted over the labelled ``cases`` (objects with
    ``labels`` and ``has_label``) with one pseudo-count per outcome (Laplace), so that a class
    without examples gets a large negative but finite offset.

    Returns:
        ``{task name: (classes,) float32 tensor}`` for the tasks that set it.
    """
    offsets: dict[str, Tensor] = {}
    for spec in tasks:
        if not spec.logit_adjustment:
            continue
        total, counts = _class_counts(spec, cases)
        if spec.exclusive:
            log_prior = torch.log((counts + 1) / (total + spec.classes))
        else:
            log_prior = torch.log((counts + 1) / (total - counts + 1))  # log prior odds
        offsets[spec.name] = (spec.logit_adjustment * log_prior).to(torch.float32)
    return offsets
