from __future__ import annotations

import pytest
from pydantic import ValidationError

from ctan.tasks import DEFAULT_METRICS, METRICS, TaskSpec


def test_defaults_per_kind():
    seg = TaskSpec(name="organs", kind="segmentation", classes=3)
    assert seg.exclusive is True and seg.metrics == ["dice"] and seg.label == "organs"
    binary = TaskSpec(name="lesion", kind="segmentation", classes=1)
    assert binary.exclusive is False
    dose = TaskSpec(name="dose", kind="regression", classes=1, metrics=["dose_score", "mae"])
    assert dose.primary_metric == "dose_score" and dose.is_pixel_task
    cls = TaskSpec(name="dx", kind="classification", classes=7, label="diagnosis")
    assert cls.metrics == DEFAULT_METRICS["classification"] and not cls.is_pixel_task
    assert cls.label == "diagnosis"


def test_multi_label_is_explicit():
    organs = TaskSpec(name="organs", kind="segmentation", classes=7, exclusive=False)
    assert organs.exclusive is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "regression", "classes": 1, "exclusive": True}, "not possible for regression"),
        ({"kind": "classification", "classes": 0}, "greater than or equal to 1"),
        ({"kind": "regression", "classes": 1, "metrics": ["auc"]}, r"allowed: \['dose_score'"),
        ({"kind": "segmentation", "classes": 1, "metrics": ["dice", "dice"]}, "twice"),
        ({"kind": "segmentation", "classes": 1, "scale": 70}, "regression tasks only"),
        ({"kind": "regression", "classes": 1, "scale": 0}, "greater than 0"),
        ({"kind": "regression", "classes": 1, "scale": float("inf")}, "finite"),
        ({"kind": "segmentation", "classes": 3, "prior": 0.01}, "sigmoid segmentation tasks only"),
        ({"kind": "classification", "classes": 2, "prior": 0.01}, "sigmoid segmentation"),
        ({"kind": "segmentation", "classes": 1, "prior": 1.0}, "less than 1"),
    ],
)
def test_invalid_specs(fields, message):
    with pytest.raises(ValidationError, match=message):
        TaskSpec(name="t", **fields)


def test_metric_directions():
    assert METRICS["dose_score"].higher_is_better is False
    assert METRICS["dice"].higher_is_better is True
