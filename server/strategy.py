"""Flower strategies with task-aware partial aggregation (FedAvg(M), FedProx, FedAdam, FedYogi).

Flower's ``FedAvg.aggregate_train`` declares replies with different array keys inconsistent, but
our sites train different parameter groups. The classes here keep Flower's strategies (sampling
parameters, record keys, FedProx's ``proximal-mu``, FedAvgM's and FedOpt's server optimisers)
and replace only what must change: replies are grouped and averaged by
:func:`server.aggregation.aggregate_groups`, node sampling is seeded by ``(seed, round)`` and
waits for a quorum with a timeout, and the caller's config is never modified.

Messages (record names follow Flower's ``arrayrecord_key``/``configrecord_key``, default
``"arrays"``/``"config"``, and ``weighted_by_key``, default ``"num-examples"``):

- sent (train and evaluate): ``"arrays"`` = every travelling group (``encoder``, ``task.*``, and
  ``heads.*`` only with federated heads), keyed by ``state_dict`` key; ``"config"`` = the caller's
  config plus ``server-round`` (FedProx adds ``proximal-mu``). Every sampled site gets
  ``encoder`` and every ``task.*`` group: in CTAN a site runs the other tasks' attention branches
  too, frozen. ``heads.<t>`` goes only to the sites that declared task t (:meth:`declare`).
- train reply: one ArrayRecord ``"arrays"`` with exactly the groups the site trained (all keys
  of each); one MetricRecord (any name) with ``num-examples.<group>`` (labelled examples used for
  that group, e.g. ``num-examples.encoder``, ``num-examples.task.lesion``) for every group sent,
  ``num-examples`` (total) and any training metrics (``<task>.<metric>`` names are weighted by
  ``num-examples.task.<task>``); ConfigRecord ``"config"`` with ``tasks`` (list of str, the
  tasks whose labels the site holds).
- evaluate reply: one MetricRecord as above (metrics plus counts); key sets may differ per site.

How a resumable round loop calls a strategy (it never calls ``start``)::

    strategy = build_strategy(config.federation, seed=config.experiment.seed)
    arrays = travelling_arrays(global_arrays, config.federation.heads)
    if resuming:
        strategy.load_state_dict(saved["strategy"])
        arrays, first = saved["arrays"], saved["round"] + 1
    for rnd in range(first, config.federation.rounds + 1):
        messages = strategy.configure_train(rnd, arrays, train_config, grid)
        replies = grid.send_and_receive(messages, timeout=config.federation.round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        arrays = new_arrays if new_arrays is not None else arrays
        report = strategy.last_round  # contributors per group, rejected nodes and reasons
        messages = strategy.configure_evaluate(rnd, arrays, evaluate_config, grid)
        eval_metrics = strategy.aggregate_evaluate(rnd, grid.send_and_receive(messages, ...))
        save_checkpoint(arrays=arrays, round=rnd, strategy=strategy.state_dict())

``configure_train`` and ``aggregate_train`` of one round must be called on the same object, in
that order (the sent groups are the reference for validation and FedOpt's update).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from ctan.config import (
    ADAPTIVE_STRATEGIES,
    FederationConfig,
    ServerOptimizerConfig,
    ServerSGDConfig,
)
from ctan.models.groups import ENCODER_GROUP, group_of
from server.aggregation import (
    Groups,
    HeadsMode,
    Problem,
    RobustOptions,
    SiteUpdate,
    aggregate_groups,
    aggregate_metrics,
    flatten_groups,
    is_travelling,
    split_groups,
    travelling_groups,
)

logger = logging.getLogger(__name__)

TASKS_KEY = "tasks"
SITE_KEY = "site"
SEED_STATE_KEY = "seed"
_SAMPLE_STREAM = {MessageType.TRAIN: 0, MessageType.EVALUATE: 1}


class QuorumTimeoutError(TimeoutError):
    """Fewer sites than the quorum stayed connected for longer than the wait timeout."""


@dataclass(frozen=True)
class RoundReport:
    """What happened in the last ``aggregate_train``: for round logs and the final report.

    Attributes:
        server_round: the round aggregated.
        contributors: ``{group: [node ids]}`` for the groups that were updated.
        rejected: ``{node id: [problems]}`` for the replies left out (errors included).
    """

    server_round: int
    contributors: dict[str, list[int]] = field(default_factory=dict)
    rejected: dict[int, list[Problem]] = field(default_factory=dict)


def arrayrecord_to_groups(record: ArrayRecord) -> Groups:
    """``ArrayRecord`` -> ``{group: {key: ndarray}}``.

    Raises:
        ValueError: a key belongs to no parameter group.
    """
    return split_groups({key: array.numpy() for key, array in record.items()})


def groups_to_arrayrecord(groups: Mapping[str, Mapping[str, np.ndarray]]) -> ArrayRecord:
    """``{group: {key: ndarray}}`` -> ``ArrayRecord``, keys in group order."""
    return ArrayRecord({key: Array(value) for key, value in flatten_groups(groups).items()})


def travelling_arrays(record: ArrayRecord, heads: HeadsMode) -> ArrayRecord:
    """The part of a full model record that is sent to sites (drops heads unless federated).

    Raises:
        ValueError: ``heads`` is unknown, or a key belongs to no parameter group.
    """
    keep = set(travelling_groups(dict.fromkeys(group_of(k) for k in record), heads))
    return ArrayRecord({k: v for k, v in record.items() if group_of(k) in keep})


def aggregate_reply_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower-style metric aggregator for replies whose metric keys differ per site.

    Same signature as ``flwr.serverapp.strategy.strategy_utils.aggregate_metricrecords``, so it
    can be injected as ``train_metrics_aggr_fn``/``evaluate_metrics_aggr_fn``; the rules are
    :func:`server.aggregation.aggregate_metrics`.
    """
    metrics = [dict(next(iter(r.metric_records.values()))) for r in records]
    return MetricRecord(aggregate_metrics(metrics, weighted_by_key))


class TaskAwareFedAvg(FedAvg):
    """FedAvg over parameter groups: ``encoder`` over all sites, ``task.<t>`` over sites with t.

    Args:
        heads: ``"local"`` (heads never leave a site) or ``"federated"``.
        robust: optional norm bound / trimmed mean (:class:`server.aggregation.RobustOptions`).
        seed: seeds node sampling; round ``r`` samples with ``default_rng([seed, r, stream])``,
            so a resumed run samples the same nodes (given the same connected nodes).
        node_wait_timeout: seconds to wait for ``min_available_nodes`` before
            :class:`QuorumTimeoutError` (Flower's ``sample_nodes`` would wait forever).
        **kwargs: ``flwr.serverapp.strategy.FedAvg`` arguments (``min_train_nodes``,
            ``weighted_by_key``, ...). Metric aggregators default to
            :func:`aggregate_reply_metrics`.
    """

    def __init__(
        self,
        *,
        heads: HeadsMode = "local",
        robust: RobustOptions | None = None,
        seed: int = 0,
        node_wait_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        kwargs["train_metrics_aggr_fn"] = kwargs.get("train_metrics_aggr_fn") or (
            aggregate_reply_metrics
        )
        kwargs["evaluate_metrics_aggr_fn"] = kwargs.get("evaluate_metrics_aggr_fn") or (
            aggregate_reply_metrics
        )
        super().__init__(**kwargs)
        self._init_task_aware(heads, robust, seed, node_wait_timeout)

    def _init_task_aware(
        self, heads: HeadsMode, robust: RobustOptions | None, seed: int, node_wait_timeout: float
    ) -> None:
        travelling_groups([], heads)  # validates the mode
        self.heads: HeadsMode = heads
        self.robust = robust or RobustOptions()
        self.seed = int(seed)
        self.node_wait_timeout = float(node_wait_timeout)
        self._sent: Groups | None = None
        self.last_round: RoundReport | None = None
        self.declared: dict[int, dict[str, int]] = {}
        self.declared_cases: dict[int, int] = {}

    def declare(
        self, node_id: int, labelled: Mapping[str, int], train_cases: int | None = None
    ) -> None:
        """What an admitted site said it holds at the ``query``: labelled training examples per
        task, and training cases. Its train replies are then held to it: a reply that claims
        another task, more labelled examples for a task than declared, or more encoder examples
        than training cases (either would weigh it up in the average) is rejected. Nodes never
        declared are not checked."""
        self.declared[node_id] = dict(labelled)
        if train_cases is not None:
            self.declared_cases[node_id] = int(train_cases)

    def summary(self) -> None:
        """Log the grouping settings, then Flower's summary."""
        logger.info(
            "task-aware aggregation: heads %s, norm bound %s, trim beta %s, seed %d",
            self.heads,
            self.robust.norm_bound,
            self.robust.trim_beta,
            self.seed,
        )
        super().summary()

    # --- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Strategy state as flat numpy arrays (``np.savez``-able): here the sampling seed."""
        return {SEED_STATE_KEY: np.array(self.seed, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (the argument is not modified).

        Raises:
            KeyError: the seed is missing.
        """
        if SEED_STATE_KEY not in state:
            raise KeyError(f"strategy state has no {SEED_STATE_KEY!r}; keys: {sorted(state)}")
        self.seed = int(state[SEED_STATE_KEY])

    # --- sampling and configure ------------------------------------------------------------

    def _sample(
        self, grid: Grid, server_round: int, fraction: float, min_nodes: int, kind: str
    ) -> list[int]:
        """Seeded sample of connected nodes; waits at most ``node_wait_timeout`` for a quorum."""
        deadline = time.monotonic() + self.node_wait_timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            size = max(int(len(nodes) * fraction), min_nodes)
            needed = max(self.min_available_nodes, size)
            if len(nodes) >= needed:
                break
            if time.monotonic() >= deadline:
                raise QuorumTimeoutError(
                    f"round {server_round}: {len(nodes)} nodes connected, {needed} needed, after "
                    f"waiting {self.node_wait_timeout:.0f} s"
                )
            logger.info("waiting for nodes: %d connected, %d needed", len(nodes), needed)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        rng = np.random.default_rng([self.seed, server_round, _SAMPLE_STREAM[kind]])
        picked = sorted(rng.choice(len(nodes), size=size, replace=False).tolist())
        logger.info("%s round %d: sampled %d of %d nodes", kind, server_round, size, len(nodes))
        return [nodes[i] for i in picked]

    def _messages(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        kind: str,
    ) -> Iterable[Message]:
        fraction, min_nodes = (
            (self.fraction_train, self.min_train_nodes)
            if kind == MessageType.TRAIN
            else (self.fraction_evaluate, self.min_evaluate_nodes)
        )
        if fraction == 0.0:
            return []
        node_ids = self._sample(grid, server_round, fraction, min_nodes, kind)
        sent_config = ConfigRecord({**dict(config), "server-round": server_round})
        messages: list[Message] = []
        for node in node_ids:
            sent_arrays = self._arrays_for(node, arrays)
            record = RecordDict(
                {self.arrayrecord_key: sent_arrays, self.configrecord_key: sent_config}
            )
            messages += self._construct_messages(record, [node], kind)
        return messages

    def _arrays_for(self, node: int, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` without the heads of tasks ``node`` did not declare (see :meth:`declare`):
        a federated head travels only to the sites that hold its task."""
        tasks = self.declared.get(node)
        if tasks is None or self.heads != "federated":
            return arrays
        foreign = [
            key
            for key in arrays
            if (group := group_of(key)).startswith("heads.") and group.split(".", 1)[1] not in tasks
        ]
        if not foreign:
            return arrays
        return ArrayRecord({k: a for k, a in arrays.items() if k not in foreign})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the travelling groups to a seeded sample of nodes; remember them for validation.

        Raises:
            ValueError: ``arrays`` holds a group that does not travel (a head with local heads;
                filter with :func:`travelling_arrays`) or a key outside every group.
            QuorumTimeoutError: too few nodes connected within ``node_wait_timeout``.
        """
        sent = arrayrecord_to_groups(arrays)
        local = [g for g in sent if not is_travelling(g, self.heads)]
        if local:
            raise ValueError(
                f"groups {local} must not be sent with heads={self.heads!r}; pass "
                "travelling_arrays(arrays, heads)"
            )
        self._sent = sent
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current groups for evaluation to a seeded sample of nodes."""
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    # --- aggregate -------------------------------------------------------------------------

    def _site_order(self, message: Message) -> tuple[str, int]:
        """Sort key of a reply: its site's name, then its node id.

        Aggregation sums the sites' arrays in reply order, and floating-point sums depend on
        order: in arrival order a few weights per million come out one float32 ulp apart, and
        training carries two runs with the same seed further apart every round.
        """
        site = ""
        if not message.has_error():
            config = message.content.config_records.get(self.configrecord_key, ConfigRecord())
            site = str(config.get(SITE_KEY, ""))
        return site, message.metadata.src_node_id

    def _parse_reply(self, message: Message) -> SiteUpdate | list[Problem]:
        """A reply as a :class:`SiteUpdate`, or the problems that make it unusable."""
        if message.has_error():
            return [Problem("-", f"error reply: {message.error.reason}")]
        content = message.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return [
                Problem(
                    "-",
                    f"expected one ArrayRecord and one MetricRecord, got "
                    f"{len(content.array_records)} and {len(content.metric_records)}",
                )
            ]
        config = content.config_records.get(self.configrecord_key, ConfigRecord())
        tasks = config.get(TASKS_KEY)
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            return [Problem(TASKS_KEY, f"config {self.configrecord_key!r} needs a list of tasks")]
        groups: Groups = {}
        problems: list[Problem] = []
        for key, array in next(iter(content.array_records.values())).items():
            try:
                groups.setdefault(group_of(key), {})[key] = array.numpy()
            except (ValueError, TypeError) as error:
                problems.append(Problem(key, f"unknown key or unreadable array: {error}"))
        if problems:
            return problems
        metrics = next(iter(content.metric_records.values()))
        counts = {
            group: metrics[f"{self.weighted_by_key}.{group}"]
            for group in groups
            if f"{self.weighted_by_key}.{group}" in metrics
        }
        node = message.metadata.src_node_id
        problems = self._beyond_declared(node, tasks, counts)
        return problems or SiteUpdate(node, groups, counts, frozenset(tasks))

    def _beyond_declared(
        self, node: int, tasks: list[str], counts: Mapping[str, Any]
    ) -> list[Problem]:
        """Where a reply claims more than its site declared at admission (see :meth:`declare`)."""
        declared = self.declared.get(node)
        if declared is None:
            return []
        problems = [
            Problem(TASKS_KEY, f"claims task {task!r}, which the site did not declare")
            for task in tasks
            if task not in declared
        ]
        limits = {f"task.{t}": n for t, n in declared.items()}
        limits |= {f"heads.{t}": n for t, n in declared.items()}
        if node in self.declared_cases:
            limits[ENCODER_GROUP] = self.declared_cases[node]
        for group, count in counts.items():
            limit = limits.get(group)
            if limit is not None and isinstance(count, int | float) and count > limit:
                problems.append(
                    Problem(
                        f"{self.weighted_by_key}.{group}",
                        f"{count} examples, more than the {limit} the site declared",
                    )
                )
        return problems

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, aggregate group by group, fill in untrained groups.

        Returns:
            Every group sent in ``configure_train`` (same keys, shapes, dtypes) and the combined
            metrics of the accepted replies; ``(None, None)`` when no reply was accepted.

        Raises:
            AggregationError: ``configure_train`` was not called first.
        """
        if self._sent is None:
            raise AggregationError("configure_train must be called before aggregate_train")
        replies = sorted(replies, key=self._site_order)
        updates: list[SiteUpdate] = []
        records: dict[int, RecordDict] = {}
        unusable: dict[int, list[Problem]] = {}
        for message in replies:
            parsed = self._parse_reply(message)
            node = message.metadata.src_node_id
            if isinstance(parsed, SiteUpdate):
                updates.append(parsed)
                records[node] = message.content
                continue
            unusable[node] = parsed
            for problem in parsed:
                logger.warning(
                    "rejected reply from node %d: key %s: %s", node, problem.key, problem.reason
                )
        result = aggregate_groups(self._sent, updates, heads=self.heads, robust=self.robust)
        rejected = {**unusable, **result.rejected}
        self.last_round = RoundReport(server_round, result.contributors, rejected)
        accepted = [records[u.node_id] for u in updates if u.node_id not in rejected]
        logger.info(
            "aggregate_train round %d: %d replies, %d accepted, groups updated: %s",
            server_round,
            len(replies),
            len(accepted),
            sorted(result.contributors),
        )
        if not accepted:
            return None, None
        metrics = self.train_metrics_aggr_fn(accepted, self.weighted_by_key)
        return groups_to_arrayrecord(result.groups), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Combine evaluation metrics whose keys differ per site; error replies are logged."""
        usable: list[RecordDict] = []
        for message in replies:
            if message.has_error() or len(message.content.metric_records) != 1:
                logger.warning(
                    "evaluate round %d: reply from node %d left out: %s",
                    server_round,
                    message.metadata.src_node_id,
                    message.error.reason if message.has_error() else "needs one MetricRecord",
                )
                continue
            usable.append(message.content)
        if not usable:
            return None
        return self.evaluate_metrics_aggr_fn(usable, self.weighted_by_key)


class _TaskAwareOptions:
    """Takes the task-aware arguments ahead of a Flower strategy whose ``__init__`` does not
    know them (FedAvgM, FedProx, FedAdam, FedYogi), then sets them after it has run."""

    def __init__(
        self,
        *,
        heads: HeadsMode = "local",
        robust: RobustOptions | None = None,
        seed: int = 0,
        node_wait_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_task_aware(heads, robust, seed, node_wait_timeout)


class TaskAwareFedProx(_TaskAwareOptions, FedProx, TaskAwareFedAvg):
    """FedProx on parameter groups: sends ``proximal-mu``; the client adds the proximal term
    over the travelling groups it trains. Arguments as :class:`TaskAwareFedAvg` plus
    ``proximal_mu``."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As FedProx, but on a copy: FedProx writes ``proximal-mu`` into its argument."""
        return super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)


MOMENTUM_STATE_PREFIX = "momentum/"


def prefixed_copies(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Copies of the arrays of ``state`` whose keys start with ``prefix``, without it."""
    return {
        k.removeprefix(prefix): np.array(v, copy=True)
        for k, v in state.items()
        if k.startswith(prefix)
    }


class TaskAwareFedAvgM(_TaskAwareOptions, FedAvgM, TaskAwareFedAvg):
    """FedAvgM (Hsu et al. 2019, arXiv:1909.06335): a server SGD step with momentum on the
    task-aware average. Arguments as :class:`TaskAwareFedAvg` plus FedAvgM's
    ``server_learning_rate`` and ``server_momentum``.

    Flower's FedAvgM pairs old and new arrays by position and keeps its momentum as a list; here
    both are keyed by array name, a group nobody trained keeps its value *and* its momentum, and
    the new arrays keep the dtypes they were sent with. The momentum is part of
    :meth:`state_dict` (keys ``momentum/<array key>``).
    """

    momentum_vector: dict[str, np.ndarray] | None  # type: ignore[assignment]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the arrays sent this round: the step is taken from them."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The task-aware average, then ``old + lr * (average - old + momentum * previous)``."""
        averaged, metrics = TaskAwareFedAvg.aggregate_train(self, server_round, replies)
        if (
            averaged is None
            or not self.server_opt
            or self.current_arrays is None
            or self.last_round is None
        ):
            return averaged, metrics
        trained = self.last_round.contributors
        old = {k: v.numpy() for k, v in self.current_arrays.items()}
        momentum = dict(self.momentum_vector or {})
        stepped: dict[str, np.ndarray] = {}
        for key, array in averaged.items():
            start = old[key]
            if group_of(key) not in trained:
                stepped[key] = start
                continue
            update = array.numpy().astype(np.float64) - start
            if self.server_momentum > 0.0:
                if key in momentum:
                    update = update + self.server_momentum * momentum[key]
                momentum[key] = update
            stepped[key] = (start + self.server_learning_rate * update).astype(start.dtype)
        self.momentum_vector = momentum or None
        return ArrayRecord({k: Array(v) for k, v in stepped.items()}), metrics

    def state_dict(self) -> dict[str, np.ndarray]:
        """Seed plus the server momentum, as flat numpy arrays."""
        state = super().state_dict()
        for key, value in (self.momentum_vector or {}).items():
            state[MOMENTUM_STATE_PREFIX + key] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore seed and momentum (copies; no momentum keys mean none accumulated yet)."""
        super().load_state_dict(state)
        self.momentum_vector = prefixed_copies(state, MOMENTUM_STATE_PREFIX) or None


class _GroupedFedOpt:
    """FedOpt on parameter groups: a group nobody trained keeps its value *and* its moments.

    FedOpt sees a zero update for such a group, but its momentum would still move it; this
    restores the group's previous arrays and ``m_t``/``v_t`` after Flower's update. Flower's
    update also promotes float32 weights to float64 (its step size is a numpy float64), which
    sites' float32 replies would then fail to match: the new arrays keep the dtypes they were
    sent with. Moments are part of :meth:`state_dict` (keys ``m_t/<array key>``,
    ``v_t/<array key>``).
    """

    m_t: dict[str, np.ndarray] | None
    v_t: dict[str, np.ndarray] | None
    current_arrays: dict[str, np.ndarray] | None
    _sent: Groups | None
    last_round: RoundReport | None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's FedAdam/FedYogi step over the filled-in groups, untrained groups frozen."""
        moments_before = {"m_t": self.m_t, "v_t": self.v_t}
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None or self._sent is None or self.last_round is None:
            return arrays, metrics
        frozen = flatten_groups(
            {
                group: members
                for group, members in self._sent.items()
                if group not in self.last_round.contributors
            }
        )
        restored = {k: v.numpy() for k, v in arrays.items()} | frozen
        for name, before in moments_before.items():
            after = getattr(self, name)
            if frozen and before is not None and after is not None:
                setattr(self, name, after | {k: before[k] for k in frozen if k in before})
        started = self.current_arrays or {}
        return ArrayRecord(
            {
                k: Array(np.asarray(v, dtype=started[k].dtype if k in started else None))
                for k, v in restored.items()
            }
        ), metrics

    def state_dict(self) -> dict[str, np.ndarray]:
        """Seed plus the server optimiser's moments, as flat numpy arrays."""
        state = super().state_dict()  # type: ignore[misc]
        for name in ("m_t", "v_t"):
            for key, value in (getattr(self, name) or {}).items():
                state[f"{name}/{key}"] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore seed and moments (copies; missing moments mean a fresh optimiser)."""
        super().load_state_dict(state)  # type: ignore[misc]
        for name in ("m_t", "v_t"):
            setattr(self, name, prefixed_copies(state, f"{name}/") or None)


class TaskAwareFedAdam(_TaskAwareOptions, _GroupedFedOpt, FedAdam, TaskAwareFedAvg):
    """FedAdam (Reddi et al. 2021, arXiv:2003.00295) on the filled-in travelling groups.
    Arguments as :class:`TaskAwareFedAvg` plus FedAdam's ``eta``, ``eta_l``, ``beta_1``,
    ``beta_2``, ``tau``."""


class TaskAwareFedYogi(_TaskAwareOptions, _GroupedFedOpt, FedYogi, TaskAwareFedAvg):
    """FedYogi (Reddi et al. 2021, arXiv:2003.00295) on the filled-in travelling groups.
    Arguments as :class:`TaskAwareFedAvg` plus FedYogi's ``eta``, ``eta_l``, ``beta_1``,
    ``beta_2``, ``tau``."""


STRATEGIES: dict[str, Callable[..., TaskAwareFedAvg]] = {
    "fedavg": TaskAwareFedAvg,
    "fedavgm": TaskAwareFedAvgM,
    "fedprox": TaskAwareFedProx,
    "fedadam": TaskAwareFedAdam,
    "fedyogi": TaskAwareFedYogi,
}


def build_strategy(
    federation: FederationConfig, *, seed: int, robust: RobustOptions | None = None
) -> TaskAwareFedAvg:
    """The strategy a federation config names, with its quorum, heads mode and timeout.

    ``min_sites`` sets Flower's ``min_train_nodes``, ``min_evaluate_nodes`` and
    ``min_available_nodes``; ``round_timeout`` bounds the wait for a quorum; ``robust`` (norm
    bound, trimmed mean) comes from ``federation.robust`` unless given; FedProx gets
    ``proximal_mu``; FedAvgM gets ``server_sgd`` (its defaults when left out) as Flower's
    ``server_learning_rate`` and ``server_momentum``; FedAdam/FedYogi get ``server_optimizer``
    (its defaults when left out) as Flower's ``eta``, ``beta_1``, ``beta_2``, ``tau``.

    Raises:
        ValueError: the strategy name is unknown (the config normally rules this out).
    """
    if federation.strategy not in STRATEGIES:
        raise ValueError(
            f"federation.strategy {federation.strategy!r} unknown; allowed: {sorted(STRATEGIES)}"
        )
    kwargs: dict[str, Any] = {
        "min_train_nodes": federation.min_sites,
        "min_evaluate_nodes": federation.min_sites,
        "min_available_nodes": federation.min_sites,
        "heads": federation.heads,
        "robust": robust
        or RobustOptions(federation.robust.norm_bound, federation.robust.trim_beta),
        "seed": seed,
        "node_wait_timeout": federation.round_timeout,
    }
    if federation.strategy == "fedprox":
        kwargs["proximal_mu"] = federation.proximal_mu
    if federation.strategy == "fedavgm":
        sgd = federation.server_sgd or ServerSGDConfig()
        kwargs |= {"server_learning_rate": sgd.lr, "server_momentum": sgd.momentum}
    if federation.strategy in ADAPTIVE_STRATEGIES:
        server = federation.server_optimizer or ServerOptimizerConfig()
        kwargs |= {
            "eta": server.lr,
            "beta_1": server.beta_1,
            "beta_2": server.beta_2,
            "tau": server.tau,
        }
    return STRATEGIES[federation.strategy](**kwargs)
