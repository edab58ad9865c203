"""Task specifications: what each task predicts and how it is scored.

A task is one output of the multi-task model. Pixel-level tasks (``segmentation``,
``regression``) predict a map with ``classes`` channels at the input resolution; image-level
tasks (``classification``) predict ``classes`` logits per image.

Example:
    >>> spec = TaskSpec(name="lesion", kind="segmentation", classes=1)
    >>> spec.metrics, spec.exclusive, spec.is_pixel_task
    (['dice'], False, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskKind = Literal["segmentation", "regression", "classification"]
TASK_KINDS: tuple[str, ...] = ("segmentation", "regression", "classification")
PIXEL_KINDS: tuple[str, ...] = ("segmentation", "regression")

TASK_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class MetricInfo:
    """What the project knows about a metric before computing it.

    Attributes:
        kinds: task kinds the metric applies to.
        higher_is_better: direction used by Δm (sign − where lower is better).
        per_batch: computed from batches on the model grid; ``False`` for metrics that the data
            format computes on the native grid after mapping predictions back (OpenKBP DVH).
    """

    kinds: tuple[str, ...]
    higher_is_better: bool
    per_batch: bool = True


METRICS: dict[str, MetricInfo] = {
    "dice": MetricInfo(("segmentation",), True),
    "iou": MetricInfo(("segmentation",), True),
    "mae": MetricInfo(("regression",), False),
    "mse": MetricInfo(("regression",), False),
    "dose_score": MetricInfo(("regression",), False),
    "dvh_score": MetricInfo(("regression",), False, per_batch=False),
    "accuracy": MetricInfo(("classification",), True),
    "balanced_accuracy": MetricInfo(("classification",), True),
    "auc": MetricInfo(("classification",), True),
    "severity_auc": MetricInfo(("classification",), True),
}

COMPANION_METRICS: tuple[str, ...] = ("severity_auc",)

DEFAULT_METRICS: dict[str, list[str]] = {
    "segmentation": ["dice"],
    "regression": ["mae"],
    "classification": ["balanced_accuracy", "auc"],
}


class TaskSpec(BaseModel):
    """One task of the multi-task model.

    Attributes:
        name: identifier used in parameter names (``heads.<name>``) and outputs; letters, digits
            and underscores, starting with a letter.
        kind: ``segmentation``, ``regression`` or ``classification``.
        classes: output channels for pixel tasks, number of classes for classification.
        exclusive: ``True`` for mutually exclusive classes (softmax), ``False`` for independent
            labels (sigmoid). Defaults to ``True`` when ``classes > 1``; must be ``False`` for a
            single channel and for regression. Exclusive segmentation classes cover every pixel:
            channel 0 is the background, counted in ``classes`` and left out of Dice and IoU.
        metrics: metric names, the primary one first (defaults depend on ``kind``).
        label: the data field this task is trained on; defaults to ``name``.
        companion: the label key a metric needs besides the task's own: the COVID label whose
            positive cases ``severity_auc`` is restricted to. Required by that metric.
        class_weights: classification only. A list of one non-negative weight per class (for
            ``exclusive`` tasks the weight of a sample's true class, otherwise the weight of each
            label's positive examples), or ``"balanced"``: computed from the training labels
            each party holds (:func:`ctan.losses.class_weights_from_cases`), so that rare
            classes count as much as common ones, which is what balanced accuracy rewards.
        logit_adjustment: classification only; ``tau >= 0`` of the logit-adjusted loss (Menon et
            al. 2021, arXiv:2007.07314), 0 for off. The loss sees ``logits + tau * log(prior)``
            (independent labels: ``+ tau * log(prior / (1 - prior))``), the prior taken from
            the training labels each party holds (:func:`ctan.losses.logit_adjustments_from_cases`),
            so that with ``tau = 1`` the raw logits rank classes by ``p(x | class)``: their
            argmax is the decision balanced accuracy rewards, without the large, noisy loss
            weights ``class_weights: balanced`` puts on classes with few examples. Sites with
            skewed class mixes each correct for their own prior. Exclusive with
            ``class_weights``: both correct for imbalance.
        scale: regression only. The typical size of the target in its own units (OpenKBP dose:
            the 70 Gy prescription). The head predicts ``value / scale`` and multiplies back, so
            outputs, metrics and predictions stay in the target's units, while the network works
            on values near 1 and the L1 loss (divided by ``scale``) is comparable with the other
            tasks' losses. Without it a dose head starts near 0 Gy and spends its first epochs
            growing its output, and a loss measured in Gy outweighs every other task.
        prior: sigmoid segmentation (``exclusive=False``) only; the probability each output
            channel starts at, its log-odds being the output bias at initialisation (Lin et al.
            2017, arXiv:1708.02002); left out, the bias keeps PyTorch's initialisation (about
            0.5). For small structures such as OpenKBP's organs (0.01): from 0.5 training first
            spends its steps pushing every pixel's logit down to the background rate before the
            Dice term shapes the structures.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: TaskKind
    classes: int = Field(ge=1)
    exclusive: bool | None = None
    metrics: list[str] = Field(default_factory=list)
    label: str | None = None
    companion: str | None = None
    class_weights: list[float] | Literal["balanced"] | None = None
    logit_adjustment: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    prior: float | None = Field(default=None, gt=0, lt=1)

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not TASK_NAME_PATTERN.match(name):
            raise ValueError(
                f"task name {name!r} must start with a letter and hold only letters, digits and "
                "underscores (it becomes part of parameter names such as heads.<name>)"
            )
        return name

    @model_validator(mode="after")
    def _resolve_defaults(self) -> TaskSpec:
        if self.kind == "regression" or self.classes == 1:
            if self.exclusive:
                why = "regression" if self.kind == "regression" else "a single output channel"
                raise ValueError(
                    f"exclusive=True (softmax) is not possible for {why}; use exclusive: false "
                    "or more classes"
                )
            exclusive = False
        else:
            exclusive = True if self.exclusive is None else self.exclusive
        object.__setattr__(self, "exclusive", exclusive)
        metrics = list(self.metrics) or list(DEFAULT_METRICS[self.kind])
        for metric in metrics:
            info = METRICS.get(metric)
            allowed = sorted(m for m, i in METRICS.items() if self.kind in i.kinds)
            if info is None or self.kind not in info.kinds:
                raise ValueError(
                    f"metric {metric!r} does not apply to a {self.kind} task; allowed: {allowed}"
                )
        needs = [m for m in metrics if m in COMPANION_METRICS]
        if needs and self.companion is None:
            raise ValueError(
                f"metrics {needs} need a companion label (the COVID label whose positive cases "
                "severity_auc is restricted to); set companion: <label key>"
            )
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics {metrics} lists a metric twice")
        object.__setattr__(self, "metrics", metrics)
        if self.label is None:
            object.__setattr__(self, "label", self.name)
        if self.class_weights is not None:
            if self.kind != "classification":
                raise ValueError(
                    f"class_weights apply to classification tasks only, not to a {self.kind} task"
                )
            if isinstance(self.class_weights, list) and (
                len(self.class_weights) != self.classes or min(self.class_weights) < 0
            ):
                raise ValueError(
                    f"class_weights must be {self.classes} non-negative numbers (one per class) "
                    f'or "balanced", got {self.class_weights}'
                )
        if self.logit_adjustment:
            if self.kind != "classification":
                raise ValueError(
                    f"logit_adjustment applies to classification tasks only, not to a {self.kind} "
                    "task"
                )
            if self.class_weights is not None:
                raise ValueError(
                    "logit_adjustment and class_weights both correct for class imbalance; set one"
                )
        if self.scale != 1.0 and self.kind != "regression":
            raise ValueError(f"scale applies to regression tasks only, not to a {self.kind} task")
        if self.prior is not None and (self.kind != "segmentation" or self.exclusive):
            raise ValueError(
                "prior applies to sigmoid segmentation tasks only (kind: segmentation, "
                f"exclusive: false), not to this {self.kind} task"
            )
        return self

    @property
    def is_pixel_task(self) -> bool:
        """Whether the task predicts a map at input resolution."""
        return self.kind in PIXEL_KINDS

    @property
    def primary_metric(self) -> str:
        """The metric that ranks models on this task."""
        return self.metrics[0]
