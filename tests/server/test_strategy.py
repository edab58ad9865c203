"""Task-aware Flower strategies: messages, reply grouping, server optimisers and state."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from ctan.config import FederationConfig, RobustConfig, ServerOptimizerConfig, ServerSGDConfig
from server.aggregation import RobustOptions
from server.strategy import (
    QuorumTimeoutError,
    TaskAwareFedAdam,
    TaskAwareFedAvg,
    TaskAwareFedAvgM,
    TaskAwareFedProx,
    TaskAwareFedYogi,
    arrayrecord_to_groups,
    build_strategy,
    travelling_arrays,
)

F32 = np.float32
SITE_TASKS = {11: ["a", "b"], 22: ["a"], 33: ["b"]}
COUNTS = {11: {"a": 10, "b": 4}, 22: {"a": 20}, 33: {"b": 5}}


@pytest.fixture(autouse=True)
def server_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take run and node ids from the task identity a ServerApp process sets."""
    for name, value in {"_task_id": 1, "_run_id": 1, "_node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """Only what configure_* needs: the connected node ids."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def global_record(value: float = 0.0, heads: bool = False) -> ArrayRecord:
    arrays = {
        "encoder.w": np.full((2, 2), value, F32),
        "attention.a.w": np.full(3, value, F32),
        "attention.b.w": np.full(3, value, F32),
        "attention.c.w": np.full(3, 7.0, F32),
    }
    if heads:
        arrays["heads.a.w"] = np.zeros(2, F32)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def train_reply(
    instruction: Message,
    shift: float,
    tasks: list[str] | None = None,
    tamper: dict[str, np.ndarray] | None = None,
    counts: dict[str, int] | None = None,
) -> Message:
    """The reply a site would send: its trained groups moved by ``shift``, counts, metrics."""
    node = instruction.metadata.dst_node_id
    tasks = SITE_TASKS[node] if tasks is None else tasks
    counts = COUNTS[node] if counts is None else counts
    sent = {k: v.numpy() for k, v in instruction.content["arrays"].items()}
    keep = ["encoder.w", *(f"attention.{t}.w" for t in tasks)]
    arrays = {k: sent[k] + F32(shift) for k in keep} | (tamper or {})
    total = sum(counts.values())
    metrics = {"num-examples": total, "num-examples.encoder": total, "loss": float(node)}
    metrics |= {f"num-examples.task.{t}": n for t, n in counts.items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
            "config": ConfigRecord({"tasks": tasks}),
        }
    )
    return Message(content, reply_to=instruction)


def run_round(strategy: TaskAwareFedAvg, rnd: int, arrays: ArrayRecord, shifts: dict[int, float]):
    messages = list(
        strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1}), FakeGrid(shifts))
    )
    replies = [train_reply(m, shifts[m.metadata.dst_node_id]) for m in messages]
    return strategy.aggregate_train(rnd, replies)


def test_configure_train_sends_travelling_groups_without_touching_config() -> None:
    strategy = TaskAwareFedAvg(min_train_nodes=3, min_available_nodes=3)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(1, global_record(), config, FakeGrid([33, 11, 22])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 22, 33]
    assert all(m.metadata.message_type == MessageType.TRAIN for m in messages)
    assert dict(messages[0].content["config"]) == {"lr": 0.1, "server-round": 1}
    assert dict(config) == {"lr": 0.1}
    with pytest.raises(ValueError, match="must not be sent with heads='local'"):
        strategy.configure_train(1, global_record(heads=True), config, FakeGrid([11, 22, 33]))


def test_fedprox_sends_mu_on_a_copy_of_the_config() -> None:
    strategy = TaskAwareFedProx(proximal_mu=0.5, min_train_nodes=2, min_available_nodes=2)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(2, global_record(), config, FakeGrid([1, 2])))
    assert messages[0].content["config"]["proximal-mu"] == 0.5
    assert dict(config) == {"lr": 0.1}


def test_sampling_is_seeded_by_round_and_bounded_in_time() -> None:
    grid = FakeGrid(range(1, 11))

    def sample(seed: int, rnd: int) -> list[int]:
        strategy = TaskAwareFedAvg(fraction_train=0.3, min_train_nodes=2, seed=seed)
        messages = strategy.configure_train(rnd, global_record(), ConfigRecord(), grid)
        return [m.metadata.dst_node_id for m in messages]

    assert sample(0, 1) == sample(0, 1)
    assert len(sample(0, 1)) == 3
    assert len({tuple(sample(0, r)) for r in range(1, 8)}) > 1
    lonely = TaskAwareFedAvg(min_available_nodes=2, node_wait_timeout=0.2)
    with pytest.raises(QuorumTimeoutError, match="1 nodes connected, 2 needed"):
        lonely.configure_train(1, global_record(), ConfigRecord(), FakeGrid([1]))


def test_fedavg_groups_replies_and_rejects_bad_ones() -> None:
    strategy = TaskAwareFedAvg(min_train_nodes=4, min_available_nodes=4)
    messages = list(
        strategy.configure_train(1, global_record(), ConfigRecord(), FakeGrid([11, 22, 33, 44]))
    )
    by_node = {m.metadata.dst_node_id: m for m in messages}
    nan = np.full(3, np.nan, F32)
    replies = [
        train_reply(by_node[11], 1.0),
        train_reply(by_node[22], 2.0),
        train_reply(by_node[33], 4.0),
        Message(Error(code=0, reason="out of memory"), reply_to=by_node[44]),
    ]
    bad = train_reply(by_node[44], 9.0, ["a"], tamper={"attention.a.w": nan}, counts={"a": 1000})
    arrays, metrics = strategy.aggregate_train(1, [*replies[:3], bad])
    assert arrays is not None and metrics is not None
    assert list(arrays) == list(global_record())
    # encoder counts are each site's total: (14*1 + 20*2 + 5*4) / 39
    np.testing.assert_allclose(arrays["encoder.w"].numpy(), np.full((2, 2), 74 / 39), rtol=1e-6)
    np.testing.assert_allclose(arrays["attention.a.w"].numpy(), np.full(3, 5 / 3), rtol=1e-6)
    np.testing.assert_allclose(arrays["attention.b.w"].numpy(), np.full(3, 24 / 9), rtol=1e-6)
    np.testing.assert_array_equal(arrays["attention.c.w"].numpy(), np.full(3, 7.0))
    assert metrics["num-examples"] == 14 + 20 + 5
    assert metrics["loss"] == pytest.approx((14 * 11 + 20 * 22 + 5 * 33) / 39)
    assert strategy.last_round is not None
    assert list(strategy.last_round.rejected) == [44]
    assert strategy.last_round.contributors["task.a"] == [11, 22]
    _, _ = strategy.aggregate_train(1, [replies[3], train_reply(by_node[11], 1.0)])
    assert "out of memory" in strategy.last_round.rejected[44][0].reason


def test_a_round_needs_min_sites_usable_updates_not_just_replies() -> None:
    from server.rounds import FederationError, require_usable_quorum

    strategy = TaskAwareFedAvg(min_train_nodes=2, min_available_nodes=2)
    messages = strategy.configure_train(1, global_record(), ConfigRecord(), FakeGrid([11, 22, 33]))
    by_node = {m.metadata.dst_node_id: m for m in messages}
    nan = np.full((2, 2), np.nan, F32)
    replies = [
        train_reply(by_node[11], 1.0),
        train_reply(by_node[22], 2.0, tamper={"encoder.w": nan}),
        train_reply(by_node[33], 4.0),
    ]
    names = {11: "a", 22: "b", 33: "c"}
    strategy.aggregate_train(1, replies)
    rejected = strategy.last_round.rejected
    assert list(rejected) == [22]
    require_usable_quorum(replies, rejected, 3, 2, names, 1)
    with pytest.raises(FederationError, match=r"2 of 3 sites sent a usable update.*\['b'\]"):
        require_usable_quorum(replies, rejected, 3, 3, names, 1)


def test_a_reply_claiming_more_than_its_site_declared_is_rejected() -> None:
    strategy = TaskAwareFedAvg(min_train_nodes=3, min_available_nodes=3)
    messages = strategy.configure_train(1, global_record(), ConfigRecord(), FakeGrid([11, 22, 33]))
    by_node = {m.metadata.dst_node_id: m for m in messages}
    for node in (11, 22, 33):
        strategy.declare(node, COUNTS[node], sum(COUNTS[node].values()))
    honest = train_reply(by_node[11], 1.0)
    inflated = {t: 100 * n for t, n in COUNTS[22].items()}
    heavy = train_reply(by_node[22], 2.0, counts=inflated)
    extra_task = train_reply(by_node[33], 4.0, tasks=["a", "b"], counts={"a": 1, "b": 5})
    strategy.aggregate_train(1, [honest, heavy, extra_task])
    rejected = strategy.last_round.rejected
    assert sorted(rejected) == [22, 33]
    reasons = {p.key: p.reason for p in rejected[22]}
    assert reasons["num-examples.task.a"] == "2000 examples, more than the 20 the site declared"
    assert reasons["num-examples.encoder"] == "2000 examples, more than the 20 the site declared"
    assert "claims task 'a', which the site did not declare" in rejected[33][0].reason
    only_cases = TaskAwareFedAvg(min_train_nodes=1, min_available_nodes=1)
    (message,) = only_cases.configure_train(1, global_record(), ConfigRecord(), FakeGrid([22]))
    only_cases.declare(22, {"a": 1000}, train_cases=20)
    only_cases.aggregate_train(1, [train_reply(message, 1.0, counts={"a": 21})])
    (problem,) = only_cases.last_round.rejected[22]
    assert problem.key == "num-examples.encoder"


def test_a_federated_head_travels_only_to_the_sites_holding_its_task() -> None:
    strategy = TaskAwareFedAvg(heads="federated", min_train_nodes=3, min_available_nodes=3)
    for node, tasks in SITE_TASKS.items():
        strategy.declare(node, dict.fromkeys(tasks, 1))
    messages = strategy.configure_train(
        1, global_record(heads=True), ConfigRecord(), FakeGrid([11, 22, 33])
    )
    sent = {m.metadata.dst_node_id: sorted(m.content["arrays"]) for m in messages}
    assert "heads.a.w" in sent[11] and "heads.a.w" in sent[22] and "heads.a.w" not in sent[33]
    assert all("attention.a.w" in keys and "encoder.w" in keys for keys in sent.values())
    local = TaskAwareFedAvg(min_train_nodes=3, min_available_nodes=3)
    local.declare(33, {"b": 1})
    (message,) = [
        m
        for m in local.configure_train(1, global_record(), ConfigRecord(), FakeGrid([11, 22, 33]))
        if m.metadata.dst_node_id == 33
    ]
    assert sorted(message.content["arrays"]) == sorted(global_record())


def test_all_replies_rejected_keeps_the_model() -> None:
    strategy = TaskAwareFedAvg(min_train_nodes=1, min_available_nodes=1)
    (message,) = strategy.configure_train(1, global_record(), ConfigRecord(), FakeGrid([22]))
    bad = train_reply(message, 1.0, tamper={"encoder.w": np.zeros((3, 3), F32)})
    assert strategy.aggregate_train(1, [bad]) == (None, None)


def test_evaluate_combines_metrics_with_different_keys() -> None:
    strategy = TaskAwareFedAvg(min_evaluate_nodes=2, min_available_nodes=2)
    messages = list(
        strategy.configure_evaluate(3, global_record(), ConfigRecord(), FakeGrid([1, 2]))
    )
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in messages)
    replies = [
        Message(
            RecordDict(
                {"m": MetricRecord({"num-examples": 4, "num-examples.task.a": 4, "a.dice": 0.5})}
            ),
            reply_to=messages[0],
        ),
        Message(
            RecordDict(
                {"m": MetricRecord({"num-examples": 6, "num-examples.task.b": 6, "b.auc": 0.8})}
            ),
            reply_to=messages[1],
        ),
    ]
    metrics = strategy.aggregate_evaluate(3, replies)
    assert metrics is not None
    assert dict(metrics) == pytest.approx(
        {
            "num-examples": 10.0,
            "num-examples.task.a": 4.0,
            "num-examples.task.b": 6.0,
            "a.dice": 0.5,
            "b.auc": 0.8,
        }
    )


@pytest.mark.parametrize("cls", [TaskAwareFedAdam, TaskAwareFedYogi])
def test_fedopt_keeps_key_set_and_freezes_untrained_groups(cls: type[TaskAwareFedAvg]) -> None:
    strategy = cls(min_train_nodes=1, min_available_nodes=1, seed=1)
    arrays = global_record()
    # round 1: everyone; round 2: only site 22 (task a): task.b must not move by momentum
    arrays, _ = run_round(strategy, 1, arrays, {11: 1.0, 22: 2.0, 33: 4.0})
    assert arrays is not None and list(arrays) == list(global_record())
    # sites reply in float32: the server's float64 step must not change the dtype they match
    assert {a.dtype for a in arrays.values()} == {"float32"}
    b_after_1 = arrays["attention.b.w"].numpy().copy()
    m_b = strategy.m_t["attention.b.w"].copy()
    arrays, _ = run_round(strategy, 2, arrays, {22: 1.0})
    assert arrays is not None and list(arrays) == list(global_record())
    np.testing.assert_array_equal(arrays["attention.b.w"].numpy(), b_after_1)
    np.testing.assert_array_equal(strategy.m_t["attention.b.w"], m_b)
    np.testing.assert_array_equal(arrays["attention.c.w"].numpy(), np.full(3, 7.0))
    assert not np.allclose(arrays["attention.a.w"].numpy(), b_after_1)
    assert set(strategy.m_t) == set(strategy.v_t) == set(global_record())


@pytest.mark.parametrize("cls", [TaskAwareFedAdam, TaskAwareFedYogi])
def test_fedopt_state_round_trips(cls: type[TaskAwareFedAvg]) -> None:
    first = cls(min_train_nodes=1, min_available_nodes=1, seed=5)
    arrays = global_record()
    for rnd, shifts in enumerate([{11: 1.0, 22: 2.0}, {33: 3.0, 22: -1.0}], 1):
        arrays, _ = run_round(first, rnd, arrays, shifts)
    state = first.state_dict()
    assert {k.split("/")[0] for k in state} == {"seed", "m_t", "v_t"}
    assert all(isinstance(v, np.ndarray) for v in state.values())
    second = cls(min_train_nodes=1, min_available_nodes=1, seed=0)
    second.load_state_dict(state)
    assert second.seed == 5
    state["m_t/encoder.w"][:] = 123.0  # the loaded copy must not alias the saved state
    third = {11: 0.5, 33: 2.0}
    out_first, _ = run_round(first, 3, arrays, third)
    out_second, _ = run_round(second, 3, arrays, third)
    for key in out_first:
        np.testing.assert_array_equal(out_first[key].numpy(), out_second[key].numpy())


def test_fedavgm_steps_along_the_average_and_freezes_untrained_groups() -> None:
    strategy = TaskAwareFedAvgM(
        min_train_nodes=1, min_available_nodes=1, server_learning_rate=2.0, server_momentum=0.5
    )
    arrays, _ = run_round(strategy, 1, global_record(), {11: 1.0, 22: 2.0, 33: 4.0})
    assert arrays is not None and list(arrays) == list(global_record())
    assert {a.dtype for a in arrays.values()} == {"float32"}
    # by hand: encoder averaged over 14, 20 and 5 examples; task a over 10 and 20; b over 4 and 5
    first = {"encoder.w": (14 + 40 + 20) / 39, "attention.a.w": 50 / 30, "attention.b.w": 24 / 9}
    for key, average in first.items():
        np.testing.assert_allclose(arrays[key].numpy(), 2.0 * average, rtol=1e-6)
    np.testing.assert_array_equal(arrays["attention.c.w"].numpy(), np.full(3, 7.0))
    b_after_1 = arrays["attention.b.w"].numpy().copy()
    a_after_1 = arrays["attention.a.w"].numpy().copy()
    momentum_b = strategy.momentum_vector["attention.b.w"].copy()
    # round 2: only site 22 (task a) trains; b keeps value and momentum, a takes momentum
    arrays, _ = run_round(strategy, 2, arrays, {22: 1.0})
    assert arrays is not None
    np.testing.assert_array_equal(arrays["attention.b.w"].numpy(), b_after_1)
    np.testing.assert_array_equal(strategy.momentum_vector["attention.b.w"], momentum_b)
    np.testing.assert_allclose(
        arrays["attention.a.w"].numpy(), a_after_1 + 2.0 * (1.0 + 0.5 * 50 / 30), rtol=1e-6
    )


def test_fedavgm_without_server_step_is_fedavg_and_its_momentum_round_trips() -> None:
    shifts = [{11: 1.0, 22: 2.0}, {33: 3.0, 22: -1.0}]
    plain, unit = TaskAwareFedAvg(min_train_nodes=1), TaskAwareFedAvgM(min_train_nodes=1)
    first = TaskAwareFedAvgM(min_train_nodes=1, server_learning_rate=1.5, server_momentum=0.9)
    ours = {id(s): global_record() for s in (plain, unit, first)}
    for rnd, shift in enumerate(shifts, 1):
        for strategy in (plain, unit, first):
            ours[id(strategy)], _ = run_round(strategy, rnd, ours[id(strategy)], shift)
    for key in ours[id(plain)]:
        np.testing.assert_array_equal(ours[id(plain)][key].numpy(), ours[id(unit)][key].numpy())
    state = first.state_dict()
    assert {k.split("/")[0] for k in state} == {"seed", "momentum"}
    second = TaskAwareFedAvgM(min_train_nodes=1, server_learning_rate=1.5, server_momentum=0.9)
    second.load_state_dict(state)
    state["momentum/encoder.w"][:] = 123.0  # the loaded copy must not alias the saved state
    third = {11: 0.5, 33: 2.0}
    out_first, _ = run_round(first, 3, ours[id(first)], third)
    out_second, _ = run_round(second, 3, ours[id(first)], third)
    for key in out_first:
        np.testing.assert_array_equal(out_first[key].numpy(), out_second[key].numpy())


def test_travelling_arrays_and_conversion() -> None:
    record = global_record(heads=True)
    assert "heads.a.w" not in travelling_arrays(record, "local")
    assert "heads.a.w" in travelling_arrays(record, "federated")
    assert set(arrayrecord_to_groups(record)) == {
        "encoder",
        "task.a",
        "task.b",
        "task.c",
        "heads.a",
    }


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", TaskAwareFedAvg),
        ("fedavgm", TaskAwareFedAvgM),
        ("fedprox", TaskAwareFedProx),
        ("fedadam", TaskAwareFedAdam),
        ("fedyogi", TaskAwareFedYogi),
    ],
)
def test_build_strategy_from_federation_config(name: str, cls: type) -> None:
    federation = FederationConfig(
        id="t", strategy=name, min_sites=3, heads="federated", proximal_mu=0.2
    )
    strategy = build_strategy(federation, seed=7, robust=RobustOptions(trim_beta=0.1))
    assert type(strategy) is cls
    assert (strategy.min_train_nodes, strategy.min_available_nodes, strategy.seed) == (3, 3, 7)
    assert strategy.heads == "federated" and strategy.robust.trim_beta == 0.1
    assert getattr(strategy, "proximal_mu", 0.2) == 0.2


def test_robust_aggregation_comes_from_the_federation_config() -> None:
    from ctan.config import ConfigError, load_config

    robust = RobustConfig(norm_bound=5.0, trim_beta=0.2)
    strategy = build_strategy(FederationConfig(id="t", robust=robust), seed=0)
    assert strategy.robust == RobustOptions(norm_bound=5.0, trim_beta=0.2)
    assert build_strategy(FederationConfig(id="t"), seed=0).robust == RobustOptions()
    raw = {
        "model": {"arch": "hps", "spatial_dims": 2, "in_channels": 1, "image_size": [16, 16]},
        "tasks": [{"name": "a", "kind": "classification", "classes": 2, "label": "a"}],
        "federation": {"id": "t", "robust": {"trim_beta": 0.5}},
    }
    with pytest.raises(ConfigError, match=r"federation\.robust\.trim_beta"):
        load_config(raw)


def test_adaptive_strategies_take_the_server_optimizer() -> None:
    server = ServerOptimizerConfig(lr=0.003, beta_1=0.5, beta_2=0.9, tau=1e-4)
    tuned = FederationConfig(id="t", strategy="fedyogi", server_optimizer=server)
    strategy = build_strategy(tuned, seed=0)
    assert (strategy.eta, strategy.beta_1, strategy.beta_2, strategy.tau) == (0.003, 0.5, 0.9, 1e-4)
    default = build_strategy(FederationConfig(id="t", strategy="fedadam"), seed=0)
    assert (default.eta, default.beta_1, default.beta_2, default.tau) == (0.01, 0.9, 0.99, 1e-3)


def test_fedavgm_takes_the_server_sgd_step() -> None:
    tuned = FederationConfig(
        id="t", strategy="fedavgm", server_sgd=ServerSGDConfig(lr=3.0, momentum=0.9)
    )
    strategy = build_strategy(tuned, seed=0)
    assert (strategy.server_learning_rate, strategy.server_momentum) == (3.0, 0.9)
    default = build_strategy(FederationConfig(id="t", strategy="fedavgm"), seed=0)
    assert (default.server_learning_rate, default.server_momentum, default.server_opt) == (
        1.0,
        0.0,
        False,
    )


def test_replies_aggregate_to_the_same_bits_whatever_their_arrival_order() -> None:
    """Float sums depend on order, so the strategy aggregates in site order and reruns match."""
    from itertools import permutations

    from server.aggregation import SiteUpdate, aggregate_groups

    base = np.random.default_rng(0).normal(0.0, 0.1, 2_000_000).astype(F32)
    names = {11: "hospital_c", 22: "hospital_a", 33: "hospital_b", 44: "hospital_d"}
    moved = {
        node: base + np.random.default_rng(node).normal(0.0, 1e-3, base.size).astype(F32)
        for node in names
    }
    updates = {
        node: SiteUpdate(
            node, {"encoder": {"encoder.w": moved[node]}}, {"encoder": 50 + node}, {"a"}
        )
        for node in names
    }
    previous = {"encoder": {"encoder.w": base}}
    orders = list(permutations(names))
    plain = [
        aggregate_groups(previous, [updates[n] for n in order]).groups["encoder"]["encoder.w"]
        for order in orders
    ]
    assert any(not np.array_equal(plain[0], other) for other in plain[1:])

    strategy = TaskAwareFedAvg(min_train_nodes=4, min_available_nodes=4)
    record = ArrayRecord({"encoder.w": Array(base)})
    sent = list(strategy.configure_train(1, record, ConfigRecord(), FakeGrid(names)))
    replies = {}
    for message in sent:
        node = message.metadata.dst_node_id
        content = RecordDict(
            {
                "arrays": ArrayRecord({"encoder.w": Array(moved[node])}),
                "metrics": MetricRecord({"num-examples.encoder": 50 + node}),
                "config": ConfigRecord({"tasks": ["a"], "site": names[node]}),
            }
        )
        replies[node] = Message(content, reply_to=message)
    first = None
    for order in orders:
        arrays, _ = strategy.aggregate_train(1, [replies[node] for node in order])
        result = arrays["encoder.w"].numpy()
        first = result if first is None else first
        np.testing.assert_array_equal(result, first, err_msg=str(order))


def test_a_resume_refuses_saved_arrays_the_current_model_does_not_have(tmp_path: Path) -> None:
    from server.rounds import FederationError, require_same_arrays

    current = {"encoder.w": np.zeros((2, 2), F32), "attention.a.w": np.zeros(3, F32)}
    require_same_arrays(dict(current), current, tmp_path / "server-state.pt")
    saved = {"encoder.w": np.zeros((2, 3), F32), "heads.a.w": np.zeros(1, F32)}
    with pytest.raises(FederationError) as err:
        require_same_arrays(saved, current, tmp_path / "server-state.pt")
    message = str(err.value)
    assert "server-state.pt does not fit the model" in message
    assert "missing (1): attention.a.w" in message and "extra (1): heads.a.w" in message
    assert "reshaped (1): encoder.w (2, 3) -> (2, 2)" in message and "--resume" in message
