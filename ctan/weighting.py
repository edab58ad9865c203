"""Loss weighting: how per-task losses become one training loss.

Weightings are plug-ins independent of the architecture, after LibMTL's ``LibMTL/weighting/``:
a small base (:class:`LossWeighting`) and a few methods over it, chosen by name from
``TrainConfig.weighting`` through :func:`build_weighting`. The engine uses only the base
contract and never branches on a weighting's name:

* ``combine(losses, labelled=None) -> (total, weights)`` every step; ``weights`` are the
  factors applied, for logging;
* ``end_epoch(mean_losses)`` once per local epoch, with each task's mean training loss;
* a weighting is an ``nn.Module``: its parameters (only :class:`UncertaintyWeighting` has any)
  go into the optimiser beside the model's, and its ``state_dict`` (parameters and buffers such
  as DWA's loss history) is site state: it is saved with the site's optimiser state and never
  travels in federated runs.

Under DP-SGD, keep weighting parameters out of the Opacus-wrapped optimiser (they have no
per-sample gradients; give them their own optimiser). Data-dependent weights (DWA, uncertainty)
couple samples through the weights, which the DP-SGD accounting does not cover; ``equal`` does
not.

Example:
    >>> weighting = build_weighting("dwa", ["lesion", "diagnosis"])
    >>> total, weights = weighting.combine({"lesion": torch.tensor(0.5),
    ...                                     "diagnosis": torch.tensor(1.5)})
    >>> weights
    {'lesion': 1.0, 'diagnosis': 1.0}
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import Tensor, nn

__all__ = [
    "WEIGHTINGS",
    "DynamicWeightAverage",
    "EqualWeighting",
    "LossWeighting",
    "UncertaintyWeighting",
    "build_weighting",
]


class LossWeighting(nn.Module):
    """Base of the loss weightings.

    Args:
        task_names: the tasks whose losses are combined, in a fixed order.

    Raises:
        ValueError: if ``task_names`` is empty or repeats a name.
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        names = list(task_names)
        if not names:
            raise ValueError("task_names must name at least one task, got []")
        if len(set(names)) != len(names):
            raise ValueError(f"task_names {names} lists a task twice")
        self.task_names: tuple[str, ...] = tuple(names)

    def weights(self, labelled: Mapping[str, int] | None = None) -> Tensor:
        """The factor for each task, ``(T,)`` in ``task_names`` order."""
        raise NotImplementedError

    def regularizer(self, labelled: Mapping[str, int] | None = None) -> Tensor | None:
        """An extra term added to the total (``None`` for none)."""
        return None

    def combine(
        self, losses: Mapping[str, Tensor], labelled: Mapping[str, int] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted sum of the task losses.

        Args:
            losses: a scalar loss per task name; exactly the names in ``task_names``.
            labelled: optional count of labelled samples per task in this batch; methods with
                per-task terms of their own (uncertainty) switch them off for tasks at zero.

        Returns:
            ``(total, weights)``: the scalar to back-propagate and the factor applied to each
            task's loss.

        Raises:
            ValueError: if ``losses`` does not hold exactly the tasks of this weighting.
        """
        if set(losses) != set(self.task_names):
            raise ValueError(
                f"losses must hold exactly the tasks {list(self.task_names)}, got {sorted(losses)}"
            )
        stacked = torch.stack([losses[name].reshape(()) for name in self.task_names])
        weights = self.weights(labelled).to(stacked)
        total = (weights * stacked).sum()
        extra = self.regularizer(labelled)
        if extra is not None:
            total = total + extra
        applied = weights.detach().cpu().tolist()
        return total, dict(zip(self.task_names, applied, strict=True))

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Record the epoch's mean training loss per task (no-op unless a method needs it)."""


class EqualWeighting(LossWeighting):
    """Every task loss with weight 1; source: LibMTL ``LibMTL/weighting/EW.py``."""

    def weights(self, labelled: Mapping[str, int] | None = None) -> Tensor:
        """Ones, ``(T,)``."""
        return torch.ones(len(self.task_names))


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (DWA).

    Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, eq. 7;
    source: LibMTL ``LibMTL/weighting/DWA.py``. With ``L_k(e)`` the mean training loss of task
    ``k`` in epoch ``e`` and ``K`` tasks, epoch ``t`` uses

    ``w_k = L_k(t-1) / L_k(t-2)``, ``lambda_k = K * exp(w_k / T) / sum_i exp(w_i / T)``,

    and ``lambda_k = 1`` until two epochs have been recorded. A ratio with a zero or
    non-finite denominator (a task without labels in an epoch) counts as 1. The softmax and
    ``K`` span the tasks that had labels in the last epoch, so a site that holds some tasks
    only weights those as the paper weights all (the others keep 1: their loss is zero). The
    last two epochs are kept in the buffer ``history`` so the weights survive a restart through
    ``state_dict``.

    Args:
        task_names: the tasks.
        temperature: ``T``; larger values make the weights more uniform. Default 2.0 (paper).

    Raises:
        ValueError: if ``temperature`` is not positive.
    """

    def __init__(self, task_names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("history", torch.full((2, len(self.task_names)), math.nan))

    def weights(self, labelled: Mapping[str, int] | None = None) -> Tensor:
        """``(T,)`` weights from the last two recorded epochs (ones before that)."""
        previous, latest = self.history[0], self.history[1]
        if bool(torch.isnan(self.history).all(dim=1).any()):
            return torch.ones(len(self.task_names))
        ratio = latest / previous
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        present = torch.isfinite(latest)
        weights = torch.ones(len(self.task_names))
        weights[present] = int(present.sum()) * torch.softmax(
            ratio[present] / self.temperature, dim=0
        )
        return weights

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Push the epoch's mean loss per task into the two-epoch history.

        Raises:
            ValueError: if ``mean_losses`` lacks a task.
        """
        missing = [name for name in self.task_names if name not in mean_losses]
        if missing:
            raise ValueError(
                f"mean_losses lacks the tasks {missing}; it must hold {list(self.task_names)}"
            )
        latest = torch.tensor([float(mean_losses[name]) for name in self.task_names])
        self.history.copy_(torch.stack([self.history[1], latest.to(self.history)]))


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting.

    Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018; source: LibMTL ``LibMTL/weighting/UW.py``. With a
    learnable ``s_k = log sigma_k^2`` per task,

    ``total = sum_k exp(-s_k) * L_k + s_k``,

    twice LibMTL's ``sum_k L_k / (2 exp(s_k)) + s_k / 2`` (same minimiser). The applied weight
    of task ``k`` is ``exp(-s_k)``. For a task with no labelled sample in the batch (``labelled``
    gives 0) the ``s_k`` term is left out, so ``s_k`` does not drift while the task is absent.

    The engine adds ``parameters()`` (``log_vars``, shape ``(T,)``, initialised to
    ``init_log_var``) to the optimiser, without weight decay; they are site state and never
    travel.

    Args:
        task_names: the tasks.
        init_log_var: initial ``s_k``. Default 0.0 (all weights 1).
    """

    def __init__(self, task_names: Sequence[str], init_log_var: float = 0.0) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(init_log_var)))

    def weights(self, labelled: Mapping[str, int] | None = None) -> Tensor:
        """``exp(-log_vars)``, ``(T,)``, differentiable."""
        return torch.exp(-self.log_vars)

    def regularizer(self, labelled: Mapping[str, int] | None = None) -> Tensor:
        """``sum_k s_k`` over the tasks with labels in the batch."""
        if labelled is None:
            return self.log_vars.sum()
        present = torch.tensor(
            [float(labelled.get(name, 0) > 0) for name in self.task_names],
            device=self.log_vars.device,
        )
        return (present * self.log_vars).sum()


WEIGHTINGS: Mapping[str, type[LossWeighting]] = MappingProxyType(
    {
        "equal": EqualWeighting,
        "dwa": DynamicWeightAverage,
        "uncertainty": UncertaintyWeighting,
    }
)


def build_weighting(name: str, task_names: Sequence[str]) -> LossWeighting:
    """The weighting called ``name`` (``TrainConfig.weighting``) with its default settings.

    Args:
        name: one of ``WEIGHTINGS``: ``equal``, ``dwa``, ``uncertainty``.
        task_names: the tasks whose losses are combined.

    Returns:
        a :class:`LossWeighting` on CPU; move it with ``.to(device)`` beside the model.

    Raises:
        ValueError: for an unknown name (with the allowed names and a spelling hint) or bad
            ``task_names``.
    """
    if name not in WEIGHTINGS:
        close = difflib.get_close_matches(name, list(WEIGHTINGS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown weighting {name!r}; allowed: {sorted(WEIGHTINGS)}{hint}")
    return WEIGHTINGS[name](task_names)
