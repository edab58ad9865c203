"""``check_data`` on HAM10000 phantoms: counts per task and site, corrupt files, the report."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from datahelpers import HAM_TASKS, make_config

from ctan.config import Config
from ctan.data.check import check_data
from ctan.data.phantoms import write_phantoms


@pytest.fixture
def ham(tmp_path: Path) -> Path:
    return write_phantoms("ham10000", tmp_path / "ham", cases=24, sites=2, seed=0)


def ham_config(root: Path, tmp: Path) -> Config:
    return make_config("ham10000", root, HAM_TASKS, tmp / "cache", widths=[8, 16, 32])


def metadata(root: Path) -> list[dict[str, str]]:
    with (root / "HAM10000_metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_counts_per_task_and_site(ham: Path, tmp_path: Path) -> None:
    rows = metadata(ham)
    masks = {p.name.removesuffix("_segmentation.png") for p in ham.rglob("*_segmentation.png")}
    report = check_data(ham_config(ham, tmp_path))
    assert report.ok, report.render()
    assert report.cases == len(rows) == 24
    assert report.groups == len({row["lesion_id"] for row in rows})
    assert report.labelled == {"diagnosis": 24, "lesion": len(masks)}
    assert report.sites == dict(Counter(row["dataset"] for row in rows))
    assert len(report.sites) == 2
    assert set(report.splits) == {"train", "validation", "test"}
    assert sum(report.splits.values()) == 24
    text = report.render()
    assert "lesion" in text and "diagnosis" in text and text.rstrip().endswith("OK")


def test_corrupt_jpeg_stops_the_check_or_is_skipped(ham: Path, tmp_path: Path) -> None:
    bad = sorted(ham.rglob("ISIC_*.jpg"))[3]
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    config = ham_config(ham, tmp_path)

    stopped = check_data(config)
    assert not stopped.ok
    assert len(stopped.problems) == 1 and bad.name in stopped.problems[0]

    skipped = check_data(config, skip_bad=True)
    assert not skipped.ok and not skipped.problems
    assert [case.name for case in skipped.skipped] == [bad.stem]
    assert bad.name in skipped.skipped[0].reason
    assert skipped.cases == 23 and sum(skipped.sites.values()) == 23
    text = skipped.render()
    assert bad.stem in text and "NOT OK" in text
    assert "lesion" in text and "diagnosis" in text


def test_training_data_leaves_a_corrupt_image_out_under_skip_bad(ham: Path, tmp_path: Path) -> None:
    from ctan.training import prepare_splits

    bad = sorted(ham.rglob("ISIC_*.jpg"))[3]
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    config = ham_config(ham, tmp_path)
    skipping = config.model_copy(update={"data": config.data.model_copy(update={"skip_bad": True})})
    splits = prepare_splits(skipping)
    kept = [c.case_id for part in splits.values() for c in part]
    assert len(kept) == 23 and bad.stem not in kept
