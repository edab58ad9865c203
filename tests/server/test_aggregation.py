"""Task-aware partial aggregation: weighting, validation, untrained groups, heads, robustness."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from server.aggregation import (
    RobustOptions,
    SiteUpdate,
    aggregate_groups,
    aggregate_metrics,
    flatten_groups,
    split_groups,
    travelling_groups,
)

F32 = np.float32


def previous_groups() -> dict[str, dict[str, np.ndarray]]:
    """Encoder, three task groups (c trained by nobody) and two heads, all zeros."""
    return {
        "encoder": {"encoder.w": np.zeros((2, 2), F32), "encoder.b": np.zeros(2, F32)},
        "task.a": {"attention.a.w": np.zeros(3, F32)},
        "task.b": {"attention.b.w": np.zeros(3, F32)},
        "task.c": {"attention.c.w": np.full(3, 7.0, F32)},
        "heads.a": {"heads.a.w": np.zeros(2, F32)},
        "heads.b": {"heads.b.w": np.zeros(2, F32)},
    }


def site(
    node: int, tasks: set[str], value: float, counts: dict[str, float], heads: bool = False
) -> SiteUpdate:
    """A site that trained the encoder and its tasks' groups, every array filled with value."""
    prev = previous_groups()
    trained = ["encoder", *(f"task.{t}" for t in sorted(tasks))]
    if heads:
        trained += [f"heads.{t}" for t in sorted(tasks)]
    groups = {g: {k: np.full_like(v, value) for k, v in prev[g].items()} for g in trained}
    return SiteUpdate(node, groups, counts, frozenset(tasks))


def three_sites() -> list[SiteUpdate]:
    return [
        site(1, {"a", "b"}, 1.0, {"encoder": 10, "task.a": 10, "task.b": 4}),
        site(2, {"a"}, 2.0, {"encoder": 20, "task.a": 20}),
        site(3, {"b"}, 4.0, {"encoder": 5, "task.b": 5}),
    ]


def test_task_aware_weighting_matches_hand_computation() -> None:
    result = aggregate_groups(previous_groups(), three_sites())
    groups = result.groups
    # encoder: all three sites, by their encoder counts: (10*1 + 20*2 + 5*4) / 35 = 2.0
    np.testing.assert_allclose(groups["encoder"]["encoder.w"], np.full((2, 2), 2.0))
    np.testing.assert_allclose(groups["encoder"]["encoder.b"], np.full(2, 2.0))
    # task.a: sites 1 and 2 only: (10*1 + 20*2) / 30 = 5/3
    np.testing.assert_allclose(groups["task.a"]["attention.a.w"], np.full(3, 5 / 3), rtol=1e-6)
    # task.b: sites 1 and 3, by their task-b counts: (4*1 + 5*4) / 9 = 24/9
    np.testing.assert_allclose(groups["task.b"]["attention.b.w"], np.full(3, 24 / 9), rtol=1e-6)
    assert result.contributors == {"encoder": [1, 2, 3], "task.a": [1, 2], "task.b": [1, 3]}
    assert result.rejected == {}
    assert all(v.dtype == F32 for v in flatten_groups(groups).values())


def test_untrained_groups_keep_previous_values_as_copies() -> None:
    prev = previous_groups()
    result = aggregate_groups(prev, three_sites())
    np.testing.assert_array_equal(result.groups["task.c"]["attention.c.w"], np.full(3, 7.0))
    assert result.groups["task.c"]["attention.c.w"] is not prev["task.c"]["attention.c.w"]
    assert list(result.groups) == list(prev)
    assert "task.c" not in result.contributors


def test_arguments_are_not_modified() -> None:
    prev = previous_groups()
    updates = three_sites()
    before = {k: v.copy() for k, v in flatten_groups(prev).items()}
    aggregate_groups(prev, updates, robust=RobustOptions(norm_bound=0.1, trim_beta=0.2))
    for key, value in flatten_groups(prev).items():
        np.testing.assert_array_equal(value, before[key])
    np.testing.assert_array_equal(updates[1].groups["encoder"]["encoder.w"], np.full((2, 2), 2))


def test_nan_reply_is_rejected_and_round_completes(caplog: pytest.LogCaptureFixture) -> None:
    bad = site(9, {"a"}, 1.0, {"encoder": 100, "task.a": 100})
    bad.groups["task.a"]["attention.a.w"][1] = np.nan
    with caplog.at_level(logging.WARNING, logger="server.aggregation"):
        result = aggregate_groups(previous_groups(), [*three_sites(), bad])
    assert list(result.rejected) == [9]
    assert result.rejected[9][0].key == "attention.a.w"
    assert "NaN" in result.rejected[9][0].reason
    assert "node 9" in caplog.text and "attention.a.w" in caplog.text
    np.testing.assert_allclose(result.groups["encoder"]["encoder.w"], np.full((2, 2), 2.0))
    assert 9 not in result.contributors["encoder"]


def test_inf_reply_is_rejected() -> None:
    bad = site(9, {"b"}, 1.0, {"encoder": 1, "task.b": 1})
    bad.groups["encoder"]["encoder.b"][0] = np.inf
    assert 9 in aggregate_groups(previous_groups(), [bad]).rejected


@pytest.mark.parametrize(
    ("corrupt", "key", "reason"),
    [
        (
            lambda g: g["encoder"].update({"encoder.extra": np.zeros(1, F32)}),
            "encoder.extra",
            "unknown",
        ),
        (
            lambda g: g.update({"task.zzz": {"attention.zzz.w": np.zeros(3, F32)}}),
            "attention.zzz.w",
            "unknown",
        ),
        (
            lambda g: g["task.a"].update({"attention.a.w": np.zeros(4, F32)}),
            "attention.a.w",
            "shape",
        ),
        (
            lambda g: g["task.a"].update({"attention.a.w": np.zeros(3, np.float64)}),
            "attention.a.w",
            "dtype",
        ),
        (lambda g: g["encoder"].pop("encoder.b"), "encoder.b", "missing"),
    ],
    ids=["unknown-key", "unknown-group", "shape", "dtype", "missing-key"],
)
def test_malformed_replies_are_rejected(corrupt, key: str, reason: str) -> None:
    bad = site(7, {"a"}, 3.0, {"encoder": 50, "task.a": 50})
    corrupt(bad.groups)
    result = aggregate_groups(previous_groups(), [*three_sites(), bad])
    assert [(p.key, reason in p.reason) for p in result.rejected[7]] == [(key, True)]
    np.testing.assert_allclose(
        result.groups["task.a"]["attention.a.w"], np.full(3, 5 / 3), rtol=1e-6
    )


def test_missing_count_and_foreign_task_are_rejected() -> None:
    no_count = site(5, {"a"}, 1.0, {"encoder": 3})
    foreign = SiteUpdate(
        6, site(6, {"b"}, 1.0, {}).groups, {"encoder": 1, "task.b": 1}, frozenset({"a"})
    )
    result = aggregate_groups(previous_groups(), [no_count, foreign])
    assert [p.key for p in result.rejected[5]] == ["task.a"]
    assert "count" in result.rejected[5][0].reason
    reasons = {p.key: p.reason for p in result.rejected[6]}
    assert set(reasons) == {"task.a", "task.b"}
    assert "does not hold task 'b'" in reasons["task.b"]
    assert "holds its task but did not send it" in reasons["task.a"]
    assert result.contributors == {}


def test_a_reply_without_a_group_its_site_trains_is_rejected() -> None:
    full = site(1, {"a"}, 1.0, {"encoder": 10, "task.a": 10})
    empty = SiteUpdate(2, {}, {}, frozenset({"a"}))
    no_task_group = SiteUpdate(
        3, {"encoder": full.groups["encoder"]}, {"encoder": 10}, frozenset({"a"})
    )
    no_encoder = SiteUpdate(4, {"task.a": full.groups["task.a"]}, {"task.a": 10}, frozenset({"a"}))
    result = aggregate_groups(previous_groups(), [full, empty, no_task_group, no_encoder])
    assert {p.key for p in result.rejected[2]} == {"encoder", "task.a"}
    assert [p.key for p in result.rejected[3]] == ["task.a"]
    assert [p.key for p in result.rejected[4]] == ["encoder"]
    assert "every site trains it" in result.rejected[4][0].reason
    assert result.contributors == {"encoder": [1], "task.a": [1]}


def test_heads_local_rejects_head_replies() -> None:
    with_head = site(4, {"a"}, 1.0, {"encoder": 1, "task.a": 1, "heads.a": 1}, heads=True)
    result = aggregate_groups(previous_groups(), [with_head], heads="local")
    assert {p.key for p in result.rejected[4]} == {"heads.a.w"}
    np.testing.assert_array_equal(result.groups["heads.a"]["heads.a.w"], np.zeros(2))


def test_heads_federated_averages_per_task_among_holders() -> None:
    updates = [
        site(
            1,
            {"a", "b"},
            1.0,
            {"encoder": 1, "task.a": 1, "task.b": 3, "heads.a": 1, "heads.b": 3},
            heads=True,
        ),
        site(2, {"a"}, 3.0, {"encoder": 1, "task.a": 3, "heads.a": 3}, heads=True),
    ]
    result = aggregate_groups(previous_groups(), updates, heads="federated")
    assert result.rejected == {}
    np.testing.assert_allclose(result.groups["heads.a"]["heads.a.w"], np.full(2, 2.5))
    np.testing.assert_allclose(result.groups["heads.b"]["heads.b.w"], np.full(2, 1.0))
    assert result.contributors["heads.a"] == [1, 2]
    assert result.contributors["heads.b"] == [1]


def test_travelling_groups_and_bad_heads_mode() -> None:
    names = list(previous_groups())
    assert travelling_groups(names, "local") == ["encoder", "task.a", "task.b", "task.c"]
    assert travelling_groups(names, "federated") == names
    with pytest.raises(ValueError, match="heads must be one of"):
        aggregate_groups(previous_groups(), [], heads="shared")  # type: ignore[arg-type]


def test_norm_bound_clips_each_site_update_per_group() -> None:
    # encoder update of site 2 is 2.0 on 6 coordinates: norm 2*sqrt(6); bound 1 scales it down.
    update = site(2, {"a"}, 2.0, {"encoder": 1, "task.a": 1})
    result = aggregate_groups(previous_groups(), [update], robust=RobustOptions(norm_bound=1.0))
    encoder = flatten_groups({"e": result.groups["encoder"]})
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in encoder.values()))
    assert norm == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(
        result.groups["encoder"]["encoder.b"], np.full(2, 2 / (2 * np.sqrt(6))), rtol=1e-6
    )
    # task.a: 3 coordinates of 2.0, norm 2*sqrt(3) > 1, clipped to 1/sqrt(3) each.
    np.testing.assert_allclose(
        result.groups["task.a"]["attention.a.w"], np.full(3, 1 / np.sqrt(3)), rtol=1e-6
    )


def test_trimmed_mean_ignores_an_outlier_and_counts() -> None:
    counts = {"encoder": 1, "task.a": 1}
    updates = [
        site(i, {"a"}, v, counts | {"encoder": i}) for i, v in enumerate([1.0, 2.0, 3.0, 1000.0], 1)
    ]
    result = aggregate_groups(previous_groups(), updates, robust=RobustOptions(trim_beta=0.25))
    # one value cut at each end: mean of 2 and 3, unweighted
    np.testing.assert_allclose(result.groups["encoder"]["encoder.w"], np.full((2, 2), 2.5))


@pytest.mark.parametrize(
    "kwargs",
    [{"norm_bound": 0.0}, {"norm_bound": float("inf")}, {"trim_beta": 0.5}, {"trim_beta": -0.1}],
)
def test_robust_options_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"norm_bound|trim_beta"):
        RobustOptions(**kwargs)


def test_split_and_flatten_round_trip() -> None:
    flat = flatten_groups(previous_groups())
    assert split_groups(flat).keys() == previous_groups().keys()
    with pytest.raises(ValueError, match="no parameter group"):
        split_groups({"stray.w": np.zeros(1)})


def test_integer_arrays_stay_integer() -> None:
    prev = {"encoder": {"encoder.count": np.array([0, 0], np.int64)}}
    ups = [
        SiteUpdate(
            i,
            {"encoder": {"encoder.count": np.array([i, 3 * i], np.int64)}},
            {"encoder": 1},
            frozenset({"a"}),
        )
        for i in (1, 2)
    ]
    out = aggregate_groups(prev, ups).groups["encoder"]["encoder.count"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [2, 4])  # rint(1.5)=2, rint(4.5)=4


def test_metrics_with_different_keys_per_site() -> None:
    metrics = [
        {
            "num-examples": 10,
            "num-examples.task.a": 10,
            "num-examples.task.b": 2,
            "a.dice": 0.5,
            "b.auc": 1.0,
            "loss": 1.0,
        },
        {"num-examples": 30, "num-examples.task.a": 30, "a.dice": 0.9, "loss": 2.0},
        {
            "num-examples": 8,
            "num-examples.task.b": 8,
            "b.auc": 0.5,
            "loss": 3.0,
            "curve": [1.0, 2.0],
        },
    ]
    out = aggregate_metrics(metrics)
    assert out["num-examples"] == 48
    assert out["num-examples.task.b"] == 10
    assert out["a.dice"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert out["b.auc"] == pytest.approx((2 * 1.0 + 8 * 0.5) / 10)
    assert out["loss"] == pytest.approx((10 + 60 + 24) / 48)
    assert out["curve"] == [1.0, 2.0]


def test_undefined_site_metric_is_left_out_of_the_mean():
    combined = aggregate_metrics(
        [
            {"num-examples.task.dx": 10, "dx.auc": float("nan")},
            {"num-examples.task.dx": 30, "dx.auc": 0.8},
            {"num-examples.task.dx": 10, "dx.auc": 0.6},
        ]
    )
    assert combined["dx.auc"] == pytest.approx((30 * 0.8 + 10 * 0.6) / 40)
    assert np.isnan(aggregate_metrics([{"dx.auc": float("nan")}])["dx.auc"])
