"""OpenKBP phantoms: provided-data layout, determinism, and dose tied to target geometry."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from ctan.data.phantoms import write_phantoms
from ctan.data.phantoms.openkbp import GRID, STRUCTURES

VOXELS = int(np.prod(GRID))


def folder_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_sparse(path: Path) -> tuple[np.ndarray, list[str]]:
    """Indices and raw value strings of one sparse CSV, checking its header."""
    lines = path.read_text().splitlines()
    assert lines[0] == ",data", path
    pairs = [line.split(",") for line in lines[1:]]
    assert all(len(pair) == 2 for pair in pairs), path
    return np.asarray([int(i) for i, _ in pairs], dtype=np.int64), [v for _, v in pairs]


def read_volume(path: Path) -> np.ndarray:
    index, values = read_sparse(path)
    volume = np.zeros(VOXELS, dtype=np.float32)
    volume[index] = [float(v) if v else 1.0 for v in values]
    return volume.reshape(GRID)


@pytest.fixture(scope="module")
def kbp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(
        "openkbp", tmp_path_factory.mktemp("kbp") / "kbp", cases=4, sites=2, seed=0
    )


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = write_phantoms("openkbp", tmp_path / "a", cases=1, sites=1, seed=5)
    again = write_phantoms("openkbp", tmp_path / "b", cases=1, sites=1, seed=5)
    other = write_phantoms("openkbp", tmp_path / "c", cases=1, sites=1, seed=6)
    assert folder_digest(first) == folder_digest(again)
    assert folder_digest(first) != folder_digest(other)


def test_layout_is_provided_data(kbp: Path) -> None:
    patients = sorted(p.name for p in (kbp / "train-pats").iterdir())
    assert patients == ["pt_1", "pt_2", "pt_3", "pt_4"]
    with (kbp / "sites.csv").open(newline="") as handle:
        sites = {row["case_id"]: row["site"] for row in csv.DictReader(handle)}
    assert sorted(sites) == patients and set(sites.values()) == {"hn_site_1", "hn_site_2"}
    for patient in patients:
        folder = kbp / "train-pats" / patient
        names = {p.stem for p in folder.iterdir()}
        assert {"ct", "dose", "possible_dose_mask", "voxel_dimensions", "PTV70"} <= names
        assert names <= {"ct", "dose", "possible_dose_mask", "voxel_dimensions", *STRUCTURES}
        spacing = np.loadtxt(folder / "voxel_dimensions.csv")
        assert spacing.shape == (3,) and np.all((spacing > 1.0) & (spacing < 6.0))
        ct_index, ct_values = read_sparse(folder / "ct.csv")
        ct = np.asarray(ct_values, dtype=float)
        assert np.all((ct > 0) & (ct <= 4095)) and np.all(ct == np.round(ct))
        dose_index, _ = read_sparse(folder / "dose.csv")
        possible_index, possible_values = read_sparse(folder / "possible_dose_mask.csv")
        assert set(possible_values) == {""}
        assert np.array_equal(dose_index, possible_index)
        for index in (ct_index, dose_index):
            assert index.min() >= 0 and index.max() < VOXELS and np.all(np.diff(index) > 0)
        targets = [
            read_volume(folder / f"{n}.csv")
            for n in ("PTV56", "PTV63", "PTV70")
            if (folder / f"{n}.csv").exists()
        ]
        assert np.sum(targets, axis=0).max() == 1.0, "targets do not overlap"


def test_dose_falls_off_with_distance_to_the_targets(kbp: Path) -> None:
    rng = np.random.default_rng(0)
    for folder in sorted((kbp / "train-pats").iterdir()):
        spacing = np.loadtxt(folder / "voxel_dimensions.csv")
        dose = read_volume(folder / "dose.csv")
        targets = {
            n: read_volume(folder / f"{n}.csv") > 0
            for n in ("PTV56", "PTV63", "PTV70")
            if (folder / f"{n}.csv").exists()
        }
        union = np.logical_or.reduce(list(targets.values()))
        possible = read_volume(folder / "possible_dose_mask.csv") > 0
        outside = np.argwhere(possible & ~union)
        sample = outside[rng.choice(len(outside), 1500, replace=False)] * spacing
        target_points = np.argwhere(union) * spacing
        target_points = target_points[
            rng.choice(len(target_points), min(3000, len(target_points)), replace=False)
        ]
        distance = np.sqrt(((sample[:, None] - target_points[None]) ** 2).sum(-1)).min(1)
        values = dose[tuple((sample / spacing).round().astype(int).T)]
        rank_corr = np.corrcoef(np.argsort(np.argsort(distance)), np.argsort(np.argsort(values)))
        assert rank_corr[0, 1] < -0.7, folder.name
        means = [dose[mask].mean() for mask in targets.values()]
        assert means == sorted(means), "higher prescription, higher dose"
        assert 60.0 < dose[targets["PTV70"]].mean() < 78.0
        assert dose[~possible].max() == 0.0


def test_organs_get_plausible_doses(kbp: Path) -> None:
    for folder in sorted((kbp / "train-pats").iterdir()):
        dose = read_volume(folder / "dose.csv")
        for organ, limit in (("SpinalCord", 50.0), ("Brainstem", 56.0)):
            if (folder / f"{organ}.csv").exists():
                assert dose[read_volume(folder / f"{organ}.csv") > 0].max() < limit


def test_reader_lists_the_phantoms(kbp: Path) -> None:
    from ctan.config import Config
    from ctan.data.dataset import make_reader
    from ctan.data.reader import ListingProblems

    config = Config.model_validate(
        {
            "model": {"arch": "hps", "spatial_dims": 3, "in_channels": 1, "image_size": [32] * 3},
            "tasks": [{"name": "dose", "kind": "regression", "classes": 1}],
            "data": {"format": "openkbp", "root": str(kbp)},
        }
    )
    cases = make_reader(config).list_cases(kbp, ListingProblems(skip_bad=False))
    assert sorted(case.case_id for case in cases) == ["pt_1", "pt_2", "pt_3", "pt_4"]
    assert all(case.has_label("dose") for case in cases)
