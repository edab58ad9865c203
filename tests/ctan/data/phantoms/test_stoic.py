"""STOIC2021 phantoms: layout, determinism, COVID-like geometry, decoys and severity."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ctan.data.phantoms import write_phantoms
from ctan.data.phantoms.stoic import SHAPE


def folder_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_reference(root: Path) -> list[dict[str, str]]:
    with (root / "metadata" / "reference.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(
        "stoic", tmp_path_factory.mktemp("stoic") / "stoic", cases=100, sites=4, seed=0
    )


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = write_phantoms("stoic", tmp_path / "a", cases=3, sites=2, seed=2)
    again = write_phantoms("stoic", tmp_path / "b", cases=3, sites=2, seed=2)
    other = write_phantoms("stoic", tmp_path / "c", cases=3, sites=2, seed=3)
    assert folder_digest(first) == folder_digest(again)
    assert folder_digest(first) != folder_digest(other)


def test_layout_is_stoic2021(chest: Path) -> None:
    rows = read_reference(chest)
    with (chest / "metadata" / "reference.csv").open() as handle:
        assert handle.readline().strip() == "PatientID,probCOVID,probSevere"
    ids = [row["PatientID"] for row in rows]
    assert sorted(p.stem for p in (chest / "data" / "mha").iterdir()) == sorted(ids)
    assert all(row["probSevere"] == "0" for row in rows if row["probCOVID"] == "0")
    with (chest / "sites.csv").open(newline="") as handle:
        sites = {row["case_id"]: row["site"] for row in csv.DictReader(handle)}
    assert sorted(sites) == sorted(ids) and len(set(sites.values())) == 4
    for patient_id in ids[:5]:
        image = sitk.ReadImage(str(chest / "data" / "mha" / f"{patient_id}.mha"))
        assert re.fullmatch(r"\d{3}Y", image.GetMetaData("PatientAge"))
        assert image.GetMetaData("PatientSex") in ("M", "F")
        assert image.GetSize() == SHAPE and image.GetPixelID() == sitk.sitkInt16
        assert all(4.0 < s < 7.0 for s in image.GetSpacing())


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        eroded = mask.copy()
        for axis in range(3):
            for shift in (1, -1):
                eroded &= np.roll(mask, shift, axis)
        mask = eroded
    return mask


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def test_covid_opacity_geometry_decoys_and_severity(chest: Path) -> None:
    volume, lateral, covid, severe = [], [], [], []
    for row in read_reference(chest):
        image = sitk.ReadImage(str(chest / "data" / "mha" / f"{row['PatientID']}.mha"))
        hu = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
        solid = hu > -200
        in_body = (
            np.maximum.accumulate(solid, axis=2)
            & np.maximum.accumulate(solid[:, :, ::-1], axis=2)[:, :, ::-1]
        )
        lung_field = _erode((hu < -300) & _erode(in_body, 2), 2)
        ground_glass = (hu > -750) & (hu < -350) & lung_field
        x_mm = (np.nonzero(ground_glass)[2] - hu.shape[2] / 2) * image.GetSpacing()[0]
        volume.append(ground_glass.sum())
        lateral.append((np.abs(x_mm) > 90).mean() if x_mm.size else 0.0)
        covid.append(int(row["probCOVID"]))
        severe.append(int(row["probSevere"]))
    volume_, lateral_ = np.asarray(volume, float), np.asarray(lateral)
    covid_, severe_ = np.asarray(covid), np.asarray(severe)

    assert 0.45 < covid_.mean() < 0.75
    assert 0.08 < severe_[covid_ == 1].mean() < 0.4
    any_opacity, geometry = _auc(volume_, covid_), _auc(lateral_, covid_)
    assert geometry > 0.75 and geometry > any_opacity, "peripheral opacities mark COVID"
    positives_low = np.percentile(volume_[covid_ == 1], 25)
    assert (volume_[covid_ == 0] > positives_low).mean() > 0.25, "negatives carry decoys"
    positive = covid_ == 1
    assert _auc(volume_[positive], severe_[positive]) > 0.65, "extent predicts severity"


def test_reader_lists_the_phantoms(chest: Path) -> None:
    from ctan.config import Config
    from ctan.data.dataset import make_reader
    from ctan.data.reader import ListingProblems

    config = Config.model_validate(
        {
            "model": {"arch": "hps", "spatial_dims": 3, "in_channels": 1, "image_size": [32] * 3},
            "tasks": [{"name": "covid", "kind": "classification", "classes": 2}],
            "data": {"format": "stoic", "root": str(chest)},
        }
    )
    cases = make_reader(config).list_cases(chest, ListingProblems(skip_bad=False))
    reference = {row["PatientID"]: int(row["probCOVID"]) for row in read_reference(chest)}
    assert {case.case_id: case.labels["covid"] for case in cases} == reference
