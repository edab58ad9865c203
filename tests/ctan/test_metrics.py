"""Metrics pinned on hand-computed cases; Δm and its confidence interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctan.metrics import (
    MetricSuite,
    TaskMetrics,
    _t_quantile_975,
    _t_quantile_975_table,
    auc_score,
    balanced_accuracy,
    delta_m,
    delta_m_summary,
    dose_score,
    dvh_metrics,
    dvh_score,
    macro_auc,
    severity_auc,
)
from ctan.tasks import TaskSpec

BIG = 10.0  # a logit that is confidently positive


def _logits(binary: list) -> torch.Tensor:
    return (torch.tensor(binary, dtype=torch.float32) * 2 - 1) * BIG


def test_dice_and_iou_hand_values_and_empty_convention() -> None:
    spec = TaskSpec(
        name="organs", kind="segmentation", classes=2, exclusive=False, metrics=["dice", "iou"]
    )
    metrics = TaskMetrics(spec)
    # sample 0: channel 0 predicts 2 pixels, 1 correct -> Dice 2/3, IoU 1/2;
    #           channel 1 empty vs empty -> 1 (convention), masked out in sample 1.
    # sample 1: channel 0 predicts 1 pixel on an empty reference -> 0.
    prediction = _logits(
        [[[[1, 1], [0, 0]], [[0, 0], [0, 0]]], [[[1, 0], [0, 0]], [[1, 1], [1, 1]]]]
    )
    target = torch.tensor(
        [[[[1, 0], [0, 0]], [[0, 0], [0, 0]]], [[[0, 0], [0, 0]], [[0, 0], [0, 0]]]],
        dtype=torch.float32,
    )
    metrics.update(prediction, target, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    result = metrics.compute()
    assert result["dice"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["iou"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metrics.count == 2


def test_exclusive_dice_leaves_the_background_channel_out() -> None:
    """Channel 0 of softmax classes is the background: a network that predicts background
    everywhere has found no structure, Dice 0, not the background's overlap."""
    spec = TaskSpec(name="tissue", kind="segmentation", classes=3, metrics=["dice"])
    target = torch.zeros(1, 3, 4, 4)
    target[0, 0] = 1.0
    target[0, 0, :2, :2], target[0, 1, :2, :2] = 0.0, 1.0
    target[0, 0, 2:, 2:], target[0, 2, 2:, 2:] = 0.0, 1.0
    everywhere_background = torch.zeros(1, 3, 4, 4)
    everywhere_background[0, 0] = 5.0
    for prediction, expected in ((target * 5.0, 1.0), (everywhere_background, 0.0)):
        metrics = TaskMetrics(spec)
        metrics.update(prediction, target, torch.ones(1, 3))
        assert metrics.compute()["dice"] == pytest.approx(expected)


def test_exclusive_segmentation_uses_argmax() -> None:
    spec = TaskSpec(name="tissue", kind="segmentation", classes=2, exclusive=True)
    metrics = TaskMetrics(spec)
    prediction = torch.tensor([[[[2.0, 2.0]], [[1.0, 3.0]]]])  # argmax: class 0, class 1
    target = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    metrics.update(prediction, target, torch.ones(1, 2))
    assert metrics.compute() == {"dice": pytest.approx(1.0)}


def test_balanced_accuracy_hand_value() -> None:
    assert balanced_accuracy([0, 0, 1, 1], [0, 0, 0, 1], classes=3) == pytest.approx(5 / 6)
    assert math.isnan(balanced_accuracy([], [], classes=2))


def test_auc_with_ties_and_single_class() -> None:
    # pairs (pos, neg): (0.4, 0.1)=1, (0.4, 0.4)=1/2, (0.8, 0.1)=1, (0.8, 0.4)=1 -> 3.5 / 4
    assert auc_score([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert auc_score([0.5, 0.5, 0.5], [0, 1, 1]) == pytest.approx(0.5)
    assert math.isnan(auc_score([0.1, 0.2], [1, 1]))


def test_macro_auc_one_vs_rest_and_binary() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = np.array([0, 1, 2, 2])
    # class 0: pos 0.7 vs (0.2, 0.3, 0.5) -> 1; class 1: 0.5 vs (0.2, 0.3, 0.1) -> 1;
    # class 2: (0.4, 0.4) vs (0.1, 0.3) -> 1
    assert macro_auc(scores, labels, exclusive=True) == pytest.approx(1.0)
    labels = np.array([0, 1, 2, 0])  # class 0: (0.7, 0.5) vs (0.2, 0.3) -> 1;
    # class 1: 0.5 vs (0.2, 0.3, 0.1) -> 1; class 2: 0.4 vs (0.1, 0.3, 0.4) -> 2.5 / 3
    assert macro_auc(scores, labels, exclusive=True) == pytest.approx((1 + 1 + 2.5 / 3) / 3)
    two = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    assert macro_auc(two, np.array([0, 1, 0]), exclusive=True) == pytest.approx(1.0)


def test_classification_accumulator_over_batches_with_masks() -> None:
    spec = TaskSpec(
        name="dx", kind="classification", classes=3, metrics=["balanced_accuracy", "accuracy"]
    )
    metrics = TaskMetrics(spec)
    eye = torch.eye(3) * BIG
    metrics.update(eye[[0, 0]], torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))
    metrics.update(eye[[1, 2]], torch.tensor([1, 0]), torch.tensor([1.0, 0.0]))
    # kept: (pred 0, true 0), (0, 1), (1, 1) -> recall 1, 1/2 -> 3/4; accuracy 2/3
    assert metrics.compute() == pytest.approx({"balanced_accuracy": 0.75, "accuracy": 2 / 3})
    assert list(metrics.compute()) == ["balanced_accuracy", "accuracy"]
    metrics.reset()
    assert all(math.isnan(v) for v in metrics.compute().values())


def test_sigmoid_classification_binary_auc_and_balanced_accuracy() -> None:
    spec = TaskSpec(name="covid", kind="classification", classes=1)
    metrics = TaskMetrics(spec)
    logits = torch.tensor([[-2.0], [1.0], [0.5], [3.0]])
    metrics.update(logits, torch.tensor([[0.0], [0.0], [1.0], [1.0]]), torch.ones(4))
    # thresholded: [0, 1, 1, 1]: TNR 1/2, TPR 1 -> 3/4; AUC: (1 + 0 + 1 + 1) / 4
    assert metrics.compute() == pytest.approx({"balanced_accuracy": 0.75, "auc": 0.75})


def test_regression_mae_mse_inside_roi() -> None:
    spec = TaskSpec(name="dose", kind="regression", classes=1, metrics=["mae", "mse"])
    metrics = TaskMetrics(spec)
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    roi = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    metrics.update(torch.zeros(2, 1, 2, 2), target, torch.tensor([[1.0], [0.0]]), roi)
    assert metrics.compute() == pytest.approx({"mae": 3.0, "mse": 29 / 3})


def test_dose_score_hand_value() -> None:
    reference = np.array([1.0, 2.0, 0.0, 0.0])
    prediction = np.array([2.0, 2.0, 5.0, 1.0])
    mask = np.array([1, 1, 1, 0])
    # prediction masked -> [2, 2, 5, 0]; |diff| = [1, 0, 5, 0]; 6 / 3
    assert dose_score(reference, prediction, mask) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="empty"):
        dose_score(reference, prediction, np.zeros(4))


def test_dvh_metrics_hand_values() -> None:
    dose = np.arange(1.0, 11.0).reshape(2, 5, 1)
    structures = {"Brainstem": np.ones((2, 5, 1)), "PTV70": np.ones((2, 5, 1))}
    structures["Larynx"] = np.zeros((2, 5, 1))  # empty: skipped
    # 10 x 10 x 1 mm = 100 mm^3 = 0.1 cc per voxel: D_0.1cc = 90th percentile of 1..10
    result = dvh_metrics(dose, structures, (10.0, 10.0, 1.0))
    assert set(result) == {"Brainstem", "PTV70"}
    assert result["Brainstem"] == pytest.approx({"D_0.1_cc": 9.1, "mean": 5.5})
    assert result["PTV70"] == pytest.approx({"D_99": 1.09, "D_95": 1.45, "D_1": 9.91})
    # 50 mm^3 voxels: 2 voxels in 0.1 cc -> 80th percentile = 8.2
    half = dvh_metrics(dose, structures, (5.0, 5.0, 2.0))
    assert half["Brainstem"]["D_0.1_cc"] == pytest.approx(8.2)


def test_dvh_score_masks_prediction_and_averages_errors() -> None:
    reference = np.arange(1.0, 11.0).reshape(2, 5, 1)
    structures = {"Brainstem": np.ones((2, 5, 1)), "PTV56": np.ones((2, 5, 1))}
    shifted = reference + 1.0
    assert dvh_score(reference, shifted, structures, (10.0, 10.0, 1.0)) == pytest.approx(1.0)
    possible = np.ones((2, 5, 1))
    possible[0, 0, 0] = 0  # prediction zeroed at the voxel with dose 1
    organ_only = {"Brainstem": structures["Brainstem"]}
    # predicted [0, 3, 4, ..., 11]: mean 6.3 vs 5.5; D_0.1cc 10.1 vs 9.1
    expected = (abs(6.3 - 5.5) + abs(10.1 - 9.1)) / 2
    assert dvh_score(reference, shifted, organ_only, (10.0, 10.0, 1.0), possible) == (
        pytest.approx(expected)
    )


def test_dvh_accumulator_pools_errors_over_patients() -> None:
    spec = TaskSpec(
        name="dose",
        kind="regression",
        classes=1,
        metrics=["dose_score", "dvh_score"],
        companion="structures",
    )
    metrics = TaskMetrics(spec, structure_names=["Brainstem", "PTV70"])
    reference = torch.arange(1.0, 11.0).reshape(1, 1, 2, 5).repeat(2, 1, 1, 1)
    prediction = reference.clone()
    prediction[0] += 1.0  # patient 0: every DVH error 1, dose score 1
    prediction[1] += 4.0  # patient 1: only Brainstem present: two errors of 4
    structures = torch.ones(2, 2, 2, 5)
    available = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    metrics.update(
        prediction,
        reference,
        torch.ones(2, 1),
        companion=structures,
        companion_mask=available,
        voxel_dimensions=torch.tensor([[10.0, 10.0, 1.0]] * 2),
    )
    result = metrics.compute()
    assert result["dose_score"] == pytest.approx((1.0 + 4.0) / 2)
    assert result["dvh_score"] == pytest.approx((5 * 1.0 + 2 * 4.0) / 7)  # pooled, not per patient
    with pytest.raises(ValueError, match="voxel_dimensions"):
        metrics.update(prediction, reference, torch.ones(2, 1), companion=structures)


def test_severity_auc_restricted_to_covid_positive() -> None:
    scores = np.array([0.2, 0.9, 0.6, 0.1, 0.95])
    severe = np.array([0, 1, 1, 1, 0])
    covid = np.array([1, 1, 1, 0, 0])
    assert severity_auc(scores, severe, covid) == pytest.approx(1.0)
    assert auc_score(scores, severe) < 1.0

    spec = TaskSpec(
        name="severity",
        kind="classification",
        classes=1,
        metrics=["severity_auc"],
        companion="covid",
    )
    suite = MetricSuite([spec], companions={"severity": "covid"})
    logits = torch.logit(torch.tensor(scores, dtype=torch.float32)).unsqueeze(1)
    batch = {
        "targets": {
            "severity": torch.tensor(severe).float().unsqueeze(1),
            "covid": torch.tensor(covid),
        },
        "target_masks": {"severity": torch.ones(5), "covid": torch.tensor([1.0, 1, 1, 1, 0])},
    }
    suite.update({"severity": logits}, batch)
    assert suite.compute() == {"severity": {"severity_auc": pytest.approx(1.0)}}
    assert suite.counts() == {"severity": 5}

    from_case_labels = MetricSuite([spec], companions={"severity": "covid"})
    covid_values = torch.tensor(covid, dtype=torch.float32)
    covid_values[4] = float("nan")
    only_case_labels = {
        "targets": {"severity": batch["targets"]["severity"]},
        "target_masks": {"severity": torch.ones(5)},
        "case_labels": {"covid": covid_values},
    }
    from_case_labels.update({"severity": logits}, only_case_labels)
    assert from_case_labels.compute() == suite.compute()


def test_suite_requires_companion_where_a_metric_needs_one() -> None:
    spec = TaskSpec(
        name="severity",
        kind="classification",
        classes=1,
        metrics=["severity_auc"],
        companion="covid",
    )
    with pytest.raises(ValueError, match="companion"):
        MetricSuite([spec])
    with pytest.raises(ValueError, match="unknown tasks"):
        MetricSuite([spec], companions={"severity": "covid", "other": "x"})


def test_suite_over_two_tasks_3d() -> None:
    tasks = [
        TaskSpec(name="organs", kind="segmentation", classes=2, exclusive=False),
        TaskSpec(name="dose", kind="regression", classes=1),
    ]
    suite = MetricSuite(tasks)
    target = (torch.rand(2, 2, 4, 4, 4) > 0.5).float()
    dose = torch.rand(2, 1, 4, 4, 4)
    batch = {
        "targets": {"organs": target, "dose": dose},
        "target_masks": {"organs": torch.ones(2, 2), "dose": torch.ones(2, 1)},
        "roi": {"dose": torch.ones(2, 1, 4, 4, 4)},
    }
    suite.update({"organs": (target * 2 - 1) * BIG, "dose": dose + 0.5}, batch)
    assert suite.compute() == {
        "organs": {"dice": pytest.approx(1.0)},
        "dose": {"mae": pytest.approx(0.5)},
    }


def test_delta_m_signs_and_errors() -> None:
    tasks = [
        TaskSpec(name="seg", kind="segmentation", classes=1),
        TaskSpec(
            name="dose",
            kind="regression",
            classes=1,
            metrics=["mae", "dvh_score"],
            companion="structures",
        ),
    ]
    stl = {"seg": {"dice": 0.8}, "dose": {"mae": 2.5, "dvh_score": 4.0}}
    results = {"seg": {"dice": 0.9}, "dose": {"mae": 2.0, "dvh_score": 5.0}}
    # seg: +12.5; dose: mean(-(2 - 2.5)/2.5, -(5 - 4)/4) * 100 = mean(20, -25) = -2.5
    assert delta_m(results, stl, tasks) == pytest.approx((12.5 - 2.5) / 2)
    assert delta_m(stl, stl, tasks) == 0.0
    with pytest.raises(ValueError, match=r"results\['seg'\]\['dice'\]"):
        delta_m({"seg": {}, "dose": results["dose"]}, stl, tasks)


def test_delta_m_summary_half_width() -> None:
    mean, half = delta_m_summary([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(delta_m_summary([3.0])[1])
    with pytest.raises(ValueError, match="at least one"):
        delta_m_summary([])


@pytest.mark.parametrize("dof", [1, 2, 5, 10, 30, 31, 45, 100])
def test_t_table_agrees_with_scipy(dof: int) -> None:
    pytest.importorskip("scipy")
    assert _t_quantile_975_table(dof) == pytest.approx(_t_quantile_975(dof), abs=2e-3)
