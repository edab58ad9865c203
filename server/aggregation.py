"""Task-aware partial aggregation of parameter groups, as pure functions.

Sites train different subsets of the parameter groups (``encoder``, ``task.<t>``, ``heads.<t>``,
see :mod:`ctan.models.groups`), so a plain key-by-key FedAvg over all replies is wrong: a site
without labels for task ``t`` must neither pull ``task.<t>`` towards its stale copy nor be
counted in its weights. The functions here work on plain numpy groups,
``{group: {state_dict key: array}}``; :mod:`server.strategy` converts Flower records at the edge.

Rules (one round):

- ``encoder`` is averaged over every accepted site that sent it, ``task.<t>`` over the accepted
  sites holding labels for ``t``, each weighted by that site's labelled-example count *for that
  group*;
- ``heads.<t>`` travel only with ``heads="federated"`` (then per task among the sites holding
  ``t``); with ``heads="local"`` a reply carrying a head is rejected;
- a group nobody trained keeps its previous value, so the result always has the same groups,
  keys, shapes and dtypes as ``previous`` (FedAdam/FedYogi need this);
- a reply with a non-finite value, an unknown or missing key, a wrong shape or dtype, a missing
  or non-positive count, or a task group for a task the site does not hold is rejected as a
  whole, logged with its node id, key and reason, and left out; the round completes from the
  others;
- optional robustness (off by default): each site's update of a group is clipped to an L2 norm
  bound, and a coordinate-wise trimmed mean replaces the weighted mean.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ctan.models.groups import ENCODER_GROUP, group_of

logger = logging.getLogger(__name__)

Groups = dict[str, dict[str, np.ndarray]]
HeadsMode = Literal["local", "federated"]
HEADS_MODES: tuple[str, ...] = ("local", "federated")


@dataclass(frozen=True)
class SiteUpdate:
    """What one site sent back after local training.

    Attributes:
        node_id: the Flower node id (for logs and reports).
        groups: ``{group: {state_dict key: array}}``, the groups the site trained.
        counts: ``{group: labelled examples}`` used as that group's aggregation weight.
        tasks: the tasks whose labels the site holds.
    """

    node_id: int
    groups: Mapping[str, Mapping[str, np.ndarray]]
    counts: Mapping[str, float]
    tasks: frozenset[str]


@dataclass(frozen=True)
class Problem:
    """Why one reply was rejected: the offending key (or group) and a reason."""

    key: str
    reason: str


@dataclass(frozen=True)
class RobustOptions:
    """Optional protection against outlying updates; both off by default.

    Attributes:
        norm_bound: clip each site's update of a group (new minus previous, all keys of the
            group together) to this L2 norm; ``None`` disables clipping.
        trim_beta: fraction of the contributing sites trimmed at each end, coordinate by
            coordinate, before an unweighted mean (as Flower's FedTrimmedAvg); ``0`` keeps the
            weighted mean. ``floor(trim_beta * n)`` sites are cut per end, so with few sites
            nothing may be cut.

    Raises:
        ValueError: ``norm_bound`` is not positive or ``trim_beta`` is outside ``[0, 0.5)``.
    """

    norm_bound: float | None = None
    trim_beta: float = 0.0

    def __post_init__(self) -> None:
        if self.norm_bound is not None and not (
            math.isfinite(self.norm_bound) and self.norm_bound > 0
        ):
            raise ValueError(f"norm_bound must be a positive number or None, got {self.norm_bound}")
        if not 0.0 <= self.trim_beta < 0.5:
            raise ValueError(f"trim_beta must be in [0, 0.5), got {self.trim_beta}")


@dataclass(frozen=True)
class RoundAggregate:
    """The outcome of one round's aggregation.

    Attributes:
        groups: every group of ``previous``, aggregated or kept.
        contributors: ``{group: [node ids]}`` for the groups somebody trained.
        rejected: ``{node id: [problems]}`` for the replies left out.
    """

    groups: Groups
    contributors: dict[str, list[int]] = field(default_factory=dict)
    rejected: dict[int, list[Problem]] = field(default_factory=dict)


def split_groups(arrays: Mapping[str, np.ndarray]) -> Groups:
    """Sort flat ``{state_dict key: array}`` into ``{group: {key: array}}`` (insertion order).

    Raises:
        ValueError: a key belongs to no parameter group.
    """
    groups: Groups = {}
    for key, value in arrays.items():
        groups.setdefault(group_of(key), {})[key] = value
    return groups


def flatten_groups(groups: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The inverse of :func:`split_groups`: one flat ``{key: array}``."""
    return {key: value for members in groups.values() for key, value in members.items()}


def group_task(group: str) -> str | None:
    """The task a ``task.<t>`` or ``heads.<t>`` group belongs to; ``None`` for ``encoder``."""
    return None if group == ENCODER_GROUP else group.split(".", 1)[1]


def is_travelling(group: str, heads: HeadsMode) -> bool:
    """Whether a group leaves the site: everything but heads, and heads when federated."""
    return not group.startswith("heads.") or heads == "federated"


def travelling_groups(group_names: Iterable[str], heads: HeadsMode) -> list[str]:
    """The groups that are sent and aggregated under the given heads mode, in order.

    Raises:
        ValueError: ``heads`` is not ``"local"`` or ``"federated"``.
    """
    if heads not in HEADS_MODES:
        raise ValueError(f"heads must be one of {HEADS_MODES}, got {heads!r}")
    return [g for g in group_names if is_travelling(g, heads)]


def validate_update(
    update: SiteUpdate, reference: Mapping[str, Mapping[str, np.ndarray]], heads: HeadsMode
) -> list[Problem]:
    """Everything wrong with one reply, checked against the groups that were sent.

    A reply carries exactly the groups its site trained: the encoder, and the travelling groups
    of the tasks it reports; a reply without one of them (an empty reply among them) would
    otherwise count towards the quorum while adding nothing.

    Args:
        update: the site's reply.
        reference: the previous global groups (keys, shapes and dtypes to match).
        heads: the federation's heads mode; heads replies are refused when ``"local"``.

    Returns:
        The problems found; an empty list means the reply is acceptable.
    """
    problems = [
        Problem(group, "missing group: the site holds its task but did not send it")
        if group_task(group) is not None
        else Problem(group, "missing group: every site trains it")
        for group in reference
        if group not in update.groups
        and is_travelling(group, heads)
        and group_task(group) in {None, *update.tasks}
    ]
    for group, members in update.groups.items():
        expected = reference.get(group)
        if expected is None or not is_travelling(group, heads):
            problems.extend(
                Problem(key, f"unknown key: group {group!r} is not aggregated") for key in members
            )
            continue
        task = group_task(group)
        if task is not None and task not in update.tasks:
            problems.append(
                Problem(group, f"site does not hold task {task!r} (holds {sorted(update.tasks)})")
            )
        count = update.counts.get(group)
        if not _is_number(count) or not math.isfinite(count) or count <= 0:
            problems.append(Problem(group, f"labelled-example count must be > 0, got {count!r}"))
        problems.extend(
            Problem(key, "unknown key: not in the group's key set")
            for key in members
            if key not in expected
        )
        problems.extend(Problem(key, "missing key") for key in expected if key not in members)
        for key, value in members.items():
            if key in expected:
                problems.extend(_array_problems(key, value, expected[key]))
    return problems


def _array_problems(key: str, value: object, expected: np.ndarray) -> list[Problem]:
    if not isinstance(value, np.ndarray):
        return [Problem(key, f"expected a numpy array, got {type(value).__name__}")]
    if value.shape != expected.shape:
        return [Problem(key, f"wrong shape {value.shape}, expected {expected.shape}")]
    if value.dtype != expected.dtype:
        return [Problem(key, f"wrong dtype {value.dtype}, expected {expected.dtype}")]
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        return [Problem(key, "contains NaN or Inf")]
    return []


def aggregate_groups(
    previous: Mapping[str, Mapping[str, np.ndarray]],
    updates: Sequence[SiteUpdate],
    *,
    heads: HeadsMode = "local",
    robust: RobustOptions | None = None,
) -> RoundAggregate:
    """Aggregate one round of replies group by group; see the module docstring for the rules.

    Args:
        previous: the current global groups, ``{group: {key: array}}`` (not modified).
        updates: the replies of the round, in any order.
        heads: ``"local"`` (heads never aggregated) or ``"federated"``.
        robust: optional norm bound / trimmed mean; ``None`` means neither.

    Returns:
        The new groups (fresh arrays, same groups, keys, shapes and dtypes as ``previous``),
        who contributed to each group, and the rejected replies with their problems.

    Raises:
        ValueError: ``heads`` is not a known mode.

    Example:
        >>> prev = {"encoder": {"encoder.w": np.zeros(2, np.float32)}}
        >>> up = SiteUpdate(1, {"encoder": {"encoder.w": np.ones(2, np.float32)}},
        ...                 {"encoder": 3}, frozenset({"a"}))
        >>> aggregate_groups(prev, [up]).groups["encoder"]["encoder.w"]
        array([1., 1.], dtype=float32)
    """
    if heads not in HEADS_MODES:
        raise ValueError(f"heads must be one of {HEADS_MODES}, got {heads!r}")
    robust = robust or RobustOptions()
    accepted: list[SiteUpdate] = []
    rejected: dict[int, list[Problem]] = {}
    for update in updates:
        problems = validate_update(update, previous, heads)
        if problems:
            rejected[update.node_id] = problems
            for problem in problems:
                logger.warning(
                    "rejected reply from node %d: key %s: %s",
                    update.node_id,
                    problem.key,
                    problem.reason,
                )
        else:
            accepted.append(update)

    new_groups: Groups = {}
    contributors: dict[str, list[int]] = {}
    for group, members in previous.items():
        sites = [u for u in accepted if group in u.groups]
        if not sites:
            new_groups[group] = {key: np.array(value, copy=True) for key, value in members.items()}
            continue
        contributors[group] = [u.node_id for u in sites]
        deltas = [_group_delta(u.groups[group], members, robust.norm_bound) for u in sites]
        weights = np.array([float(u.counts[group]) for u in sites])
        new_groups[group] = {
            key: _cast_like(
                np.asarray(base, dtype=np.float64)
                + _combine([d[key] for d in deltas], weights, robust.trim_beta),
                base,
            )
            for key, base in members.items()
        }
    return RoundAggregate(groups=new_groups, contributors=contributors, rejected=rejected)


def _group_delta(
    new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], norm_bound: float | None
) -> dict[str, np.ndarray]:
    """A site's update of one group in float64, clipped to ``norm_bound`` over the group."""
    delta = {key: new[key].astype(np.float64) - base[key].astype(np.float64) for key in base}
    if norm_bound is None:
        return delta
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
    if norm <= norm_bound:
        return delta
    scale = norm_bound / norm
    return {key: d * scale for key, d in delta.items()}


def _combine(values: list[np.ndarray], weights: np.ndarray, trim_beta: float) -> np.ndarray:
    """Weighted mean of the sites' values, or their coordinate-wise trimmed mean."""
    stacked = np.stack(values)
    if trim_beta == 0.0:
        return np.tensordot(weights / weights.sum(), stacked, axes=1)
    cut = int(trim_beta * len(values))
    ordered = np.sort(stacked, axis=0)
    return ordered[cut : len(values) - cut].mean(axis=0)


def _cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    if like.dtype.kind in "iub":
        value = np.rint(value)
    return value.astype(like.dtype)


def aggregate_metrics(
    metrics: Sequence[Mapping[str, float | int | list[float] | list[int]]],
    count_key: str = "num-examples",
) -> dict[str, float | list[float]]:
    """Combine per-site metrics whose key sets may differ (sites hold different tasks).

    Count keys (``count_key`` and ``count_key.<group>``) are summed. A metric named
    ``<task>.<name>`` is averaged over the sites reporting it, weighted by their
    ``count_key.task.<task>`` when every one of them reports it, otherwise by ``count_key``
    (or equally if that is missing too); a site whose value is NaN (e.g. an AUC on a split
    holding one class) is left out of that metric's mean. List-valued metrics are averaged
    element-wise when the lengths agree and dropped otherwise (logged).

    Args:
        metrics: one mapping per accepted reply.
        count_key: the weighting key, ``"num-examples"`` by default.

    Returns:
        The combined metrics.
    """
    combined: dict[str, float | list[float]] = {}
    keys = list(dict.fromkeys(key for m in metrics for key in m))
    for key in keys:
        reporting = [m for m in metrics if key in m]
        if key == count_key or key.startswith(f"{count_key}."):
            combined[key] = float(sum(_as_number(m[key]) for m in reporting))
            continue
        try:
            stacked = np.array([m[key] for m in reporting], dtype=np.float64)
        except ValueError:
            logger.warning("metric %s dropped: list lengths differ between sites", key)
            continue
        if stacked.ndim == 1:
            defined = ~np.isnan(stacked)
            if not defined.any():
                combined[key] = float("nan")
                continue
            reporting = [m for m, ok in zip(reporting, defined, strict=True) if ok]
            stacked = stacked[defined]
        weights = _metric_weights(reporting, key, count_key)
        mean = np.tensordot(weights / weights.sum(), stacked, axes=1)
        combined[key] = mean.tolist() if stacked.ndim > 1 else float(mean)
    return combined


def _metric_weights(
    reporting: Sequence[Mapping[str, object]], key: str, count_key: str
) -> np.ndarray:
    """The per-task count if every reporting site has it, else the total count, else equal."""
    candidates = [f"{count_key}.task.{key.split('.', 1)[0]}"] if "." in key else []
    for weight_key in [*candidates, count_key]:
        weights = np.array([_as_number(m.get(weight_key)) for m in reporting])
        if all(weight_key in m for m in reporting) and weights.sum() > 0:
            return weights
    return np.ones(len(reporting))


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_number(value: object) -> float:
    return float(value) if _is_number(value) else 0.0
