"""Loss weightings: equal, DWA on hand numbers, uncertainty gradients and weights."""

from __future__ import annotations

import math

import pytest
import torch

from ctan.weighting import (
    WEIGHTINGS,
    DynamicWeightAverage,
    EqualWeighting,
    UncertaintyWeighting,
    build_weighting,
)

TASKS = ["seg", "cls"]


def _losses(seg: float, cls: float) -> dict[str, torch.Tensor]:
    return {"seg": torch.tensor(seg, requires_grad=True), "cls": torch.tensor(cls)}


def test_registry_builds_every_configured_name() -> None:
    assert set(WEIGHTINGS) == {"equal", "dwa", "uncertainty"}
    assert isinstance(build_weighting("equal", TASKS), EqualWeighting)
    assert isinstance(build_weighting("dwa", TASKS), DynamicWeightAverage)
    assert isinstance(build_weighting("uncertainty", TASKS), UncertaintyWeighting)


def test_unknown_name_lists_allowed_names_with_hint() -> None:
    with pytest.raises(ValueError, match=r"'dwaa'.*allowed.*did you mean 'dwa'"):
        build_weighting("dwaa", TASKS)


def test_bad_task_names_and_loss_keys() -> None:
    with pytest.raises(ValueError, match="task_names"):
        build_weighting("equal", [])
    with pytest.raises(ValueError, match="twice"):
        build_weighting("equal", ["a", "a"])
    with pytest.raises(ValueError, match="exactly the tasks"):
        build_weighting("equal", TASKS).combine({"seg": torch.tensor(1.0)})


def test_equal_weights_are_ones() -> None:
    total, weights = build_weighting("equal", TASKS).combine(_losses(0.5, 2.0))
    assert weights == {"seg": 1.0, "cls": 1.0}
    assert total.item() == pytest.approx(2.5)
    assert list(build_weighting("equal", TASKS).parameters()) == []


def test_dwa_matches_formula_on_hand_numbers() -> None:
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    assert dwa.combine(_losses(1.0, 1.0))[1] == {"seg": 1.0, "cls": 1.0}
    dwa.end_epoch({"seg": 1.0, "cls": 1.0})
    assert dwa.combine(_losses(1.0, 1.0))[1] == {"seg": 1.0, "cls": 1.0}
    dwa.end_epoch({"seg": 0.5, "cls": 1.0})
    # ratios w = (0.5, 1.0); lambda_k = 2 exp(w_k / 2) / (exp(0.25) + exp(0.5))
    expected_seg = 2 * math.exp(0.25) / (math.exp(0.25) + math.exp(0.5))
    total, weights = dwa.combine(_losses(2.0, 3.0))
    assert weights["seg"] == pytest.approx(expected_seg, rel=1e-6)
    assert weights["cls"] == pytest.approx(2 - expected_seg, rel=1e-6)
    assert total.item() == pytest.approx(2.0 * weights["seg"] + 3.0 * weights["cls"], rel=1e-6)

    restored = DynamicWeightAverage(TASKS)
    restored.load_state_dict(dwa.state_dict())
    assert restored.combine(_losses(2.0, 3.0))[1] == pytest.approx(weights)


def test_dwa_weights_a_site_s_own_tasks_among_themselves() -> None:
    """A site without labels for ``cls`` trains ``seg`` alone: DWA over one task is 1, as it
    would be for a site holding that task only."""
    dwa = DynamicWeightAverage(TASKS)
    dwa.end_epoch({"seg": 1.0, "cls": math.nan})
    dwa.end_epoch({"seg": 0.5, "cls": math.nan})
    assert dwa.weights().tolist() == [1.0, 1.0]


def test_dwa_zero_denominator_counts_as_ratio_one() -> None:
    dwa = DynamicWeightAverage(TASKS)
    dwa.end_epoch({"seg": 0.0, "cls": 1.0})
    dwa.end_epoch({"seg": 0.7, "cls": 1.0})
    assert dwa.combine(_losses(1.0, 1.0))[1] == pytest.approx({"seg": 1.0, "cls": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(TASKS, temperature=0.0)
    with pytest.raises(ValueError, match="lacks"):
        dwa.end_epoch({"seg": 1.0})


def test_uncertainty_weights_are_exp_minus_log_var_and_get_gradients() -> None:
    uw = UncertaintyWeighting(TASKS)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = _losses(2.0, 3.0)
    total, weights = uw.combine(losses)
    assert weights == pytest.approx({"seg": math.exp(-0.5), "cls": math.exp(1.0)})
    expected = math.exp(-0.5) * 2.0 + 0.5 + math.exp(1.0) * 3.0 - 1.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    torch.testing.assert_close(
        uw.log_vars.grad, torch.tensor([1 - math.exp(-0.5) * 2.0, 1 - math.exp(1.0) * 3.0])
    )
    assert losses["seg"].grad.item() == pytest.approx(math.exp(-0.5))


def test_uncertainty_leaves_out_regulariser_of_unlabelled_task() -> None:
    uw = UncertaintyWeighting(TASKS)
    total, _ = uw.combine(
        {"seg": torch.tensor(2.0), "cls": torch.tensor(0.0)}, {"seg": 4, "cls": 0}
    )
    total.backward()
    torch.testing.assert_close(uw.log_vars.grad, torch.tensor([1 - 2.0, 0.0]))
