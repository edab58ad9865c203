"""HAM10000 phantoms: Dataverse layout, determinism, and labels tied to lesion geometry."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctan.data.phantoms import write_phantoms
from ctan.data.phantoms.ham10000 import (
    DIAGNOSES,
    IMAGE_SIZE,
    MASK_FOLDER,
    SITE_DX_PROPORTIONS,
    SITES,
)

HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]


def folder_digest(root: Path) -> str:
    """One hash over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_metadata(root: Path) -> list[dict[str, str]]:
    with (root / "HAM10000_metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def image_path(root: Path, image_id: str) -> Path:
    return next(root.glob(f"HAM10000_images_part_*/{image_id}.jpg"))


@pytest.fixture(scope="module")
def ham(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(
        "ham10000", tmp_path_factory.mktemp("ham") / "ham", cases=450, sites=3, seed=0
    )


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = write_phantoms("ham10000", tmp_path / "a", cases=12, sites=2, seed=3)
    again = write_phantoms("ham10000", tmp_path / "b", cases=12, sites=2, seed=3)
    other = write_phantoms("ham10000", tmp_path / "c", cases=12, sites=2, seed=4)
    assert folder_digest(first) == folder_digest(again)
    assert folder_digest(first) != folder_digest(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp folders left


def test_layout_is_the_dataverse_release(ham: Path) -> None:
    rows = read_metadata(ham)
    with (ham / "HAM10000_metadata.csv").open() as handle:
        assert handle.readline().strip() == ",".join(HEADER)
    assert len(rows) == 450
    assert {row["dx"] for row in rows} <= set(DIAGNOSES)
    assert {row["dataset"] for row in rows} == set(SITES[:3])
    part_1 = sorted(p.stem for p in (ham / "HAM10000_images_part_1").iterdir())
    part_2 = sorted(p.stem for p in (ham / "HAM10000_images_part_2").iterdir())
    assert len(part_1) == len(part_2) == 225
    assert part_1[-1] < part_2[0]
    assert sorted(part_1 + part_2) == sorted(row["image_id"] for row in rows)
    assert all(re.fullmatch(r"ISIC_\d{7}", name) for name in part_1 + part_2)
    assert all(re.fullmatch(r"HAM_\d{7}", row["lesion_id"]) for row in rows)
    assert all(row["age"] == "" or float(row["age"]) % 5 == 0 for row in rows)

    masks = sorted((ham / MASK_FOLDER).iterdir())
    assert 0 < 450 - len(masks) < 40, "a few images, not many, have no mask"
    for mask_path in masks[:20]:
        image_id = mask_path.name.removesuffix("_segmentation.png")
        mask = Image.open(mask_path)
        image = Image.open(image_path(ham, image_id))
        assert (mask.mode, image.mode) == ("L", "RGB")
        assert mask.size == image.size == IMAGE_SIZE
        assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_lesions_have_several_images_of_one_site_and_diagnosis(ham: Path) -> None:
    by_lesion: dict[str, list[dict[str, str]]] = {}
    for row in read_metadata(ham):
        by_lesion.setdefault(row["lesion_id"], []).append(row)
    sizes = [len(images) for images in by_lesion.values()]
    assert max(sizes) == 3 and 1 in sizes and 2 in sizes
    for images in by_lesion.values():
        assert len({(row["dx"], row["dataset"], row["age"], row["sex"]) for row in images}) == 1


def test_site_label_mix_follows_the_real_table(ham: Path) -> None:
    rows = read_metadata(ham)
    molemax = [row["dx"] for row in rows if row["dataset"] == "vidir_molemax"]
    modern = [row["dx"] for row in rows if row["dataset"] == "vidir_modern"]
    assert "akiec" not in molemax and SITE_DX_PROPORTIONS["vidir_molemax"][0] == 0.0
    assert molemax.count("nv") / len(molemax) > 0.85
    assert modern.count("nv") / len(modern) < 0.7
    assert modern.count("mel") > 5 * max(molemax.count("mel"), 1)


def test_more_sites_than_the_real_four_get_new_names(tmp_path: Path) -> None:
    root = write_phantoms("ham10000", tmp_path / "ham", cases=12, sites=6, seed=0)
    names = {row["dataset"] for row in read_metadata(root)}
    assert names == {*SITES, "derm_site_5", "derm_site_6"}


def _balanced_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Five-fold nearest-centroid balanced accuracy over classes with at least 5 examples."""
    keep = np.isin(labels, [c for c in np.unique(labels) if (labels == c).sum() >= 5])
    x, y = features[keep], labels[keep]
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    folds = np.random.default_rng(0).permutation(len(y)) % 5
    predicted = np.empty_like(y)
    for fold in range(5):
        train, test = folds != fold, folds == fold
        classes = np.unique(y[train])
        centroids = np.stack([x[train][y[train] == c].mean(0) for c in classes])
        distance = ((x[test][:, None] - centroids[None]) ** 2).sum(-1)
        predicted[test] = classes[distance.argmin(1)]
    return float(np.mean([(predicted[y == c] == c).mean() for c in np.unique(y)]))


def test_diagnosis_follows_lesion_geometry_more_than_global_appearance(ham: Path) -> None:
    mask_features, global_colour, labels = [], [], []
    for row in read_metadata(ham):
        mask_path = ham / MASK_FOLDER / f"{row['image_id']}_segmentation.png"
        if not mask_path.exists():
            continue
        image = np.asarray(Image.open(image_path(ham, row["image_id"])), dtype=float)
        mask = np.asarray(Image.open(mask_path)) > 0
        interior = mask.copy()
        for axis in (0, 1):
            for shift in (1, -1):
                interior &= np.roll(mask, shift, axis)
        area, border = mask.sum(), (mask & ~interior).sum()
        rows, cols = np.nonzero(mask)
        small, large = np.linalg.eigvalsh(np.cov(np.stack([rows, cols])))
        inside, outside = image[mask].mean(0), image[~mask].mean(0)
        mottle = image[mask].std(0).mean() / inside.mean()
        mask_features.append(
            [
                np.log(area),
                border**2 / area,
                np.log(large / small),
                *np.log(inside / outside),
                mottle,
            ]
        )
        global_colour.append(image.reshape(-1, 3).mean(0))
        labels.append(DIAGNOSES.index(row["dx"]))
    y = np.asarray(labels)
    from_mask = _balanced_accuracy(np.asarray(mask_features), y)
    from_global = _balanced_accuracy(np.asarray(global_colour), y)
    chance = 1.0 / len(np.unique(y))
    assert from_mask > 2.0 * chance
    assert from_mask > from_global + 0.1


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowed"):
        write_phantoms("ham", tmp_path / "x", cases=4, sites=2, seed=0)
    with pytest.raises(ValueError, match="at least sites"):
        write_phantoms("ham10000", tmp_path / "x", cases=1, sites=2, seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        write_phantoms("ham10000", tmp_path / "full", cases=4, sites=2, seed=0)


def test_reader_lists_the_phantoms(ham: Path) -> None:
    from ctan.config import Config
    from ctan.data.dataset import make_reader
    from ctan.data.reader import ListingProblems

    config = Config.model_validate(
        {
            "model": {"arch": "hps", "spatial_dims": 2, "in_channels": 3, "image_size": [32, 32]},
            "tasks": [
                {"name": "lesion", "kind": "segmentation", "classes": 1},
                {"name": "diagnosis", "kind": "classification", "classes": 7},
            ],
            "data": {"format": "ham10000", "root": str(ham)},
        }
    )
    cases = make_reader(config).list_cases(ham, ListingProblems(skip_bad=False))
    rows = {row["image_id"]: row for row in read_metadata(ham)}
    assert sorted(case.case_id for case in cases) == sorted(rows)
    assert all(case.site == rows[case.case_id]["dataset"] for case in cases)
    masks = {p.name.removesuffix("_segmentation.png") for p in (ham / MASK_FOLDER).iterdir()}
    assert {case.case_id for case in cases if case.has_label("lesion")} == masks


def test_a_writer_that_loses_the_race_keeps_the_winners_folder(tmp_path: Path) -> None:
    from ctan.data.phantoms._common import atomic_dir

    out = tmp_path / "ham"
    with pytest.raises(FileExistsError, match="another writer"), atomic_dir(out) as tmp:
        (tmp / "late.txt").write_text("written by the slower writer")
        write_phantoms("ham10000", out, cases=4, sites=2, seed=0)
    assert not (out / "late.txt").exists()
    assert (out / "HAM10000_metadata.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ham"]
