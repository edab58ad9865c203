"""HAM10000 reader: Dataverse and Kaggle layouts, site assignment, masks, bad input, real data."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datahelpers import HAM_TASKS, make_config, real_data, write_jpeg, write_mask

from ctan.data.dataset import CaseDataset, build_cases
from ctan.data.ham10000 import CLASSES, lesion_sites, read_metadata
from ctan.engine import make_loader

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"
ROWS = [
    ("HAM_1", "ISIC_0000001", "mel", "histo", "50.0", "male", "back", "rosendahl"),
    ("HAM_1", "ISIC_0000002", "mel", "histo", "50.0", "male", "back", "vidir_modern"),
    ("HAM_1", "ISIC_0000003", "mel", "histo", "50.0", "male", "back", "vidir_modern"),
    ("HAM_2", "ISIC_0000004", "nv", "follow_up", "30.0", "female", "face", "rosendahl"),
    ("HAM_3", "ISIC_0000005", "bkl", "consensus", "", "unknown", "", "vienna_dias"),
]


def write_dataverse(
    root: Path, metadata_name: str = "HAM10000_metadata.csv", sep: str = ",", kaggle: bool = False
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = HEADER.split(",")[:7] if kaggle else HEADER.split(",")
    with (root / metadata_name).open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=sep)
        writer.writerow(header)
        for row in ROWS:
            writer.writerow(row[: len(header)])
    for i, (_, image_id, *_rest) in enumerate(ROWS):
        part = "HAM10000_images_part_1" if i < 3 else "HAM10000_images_part_2"
        if kaggle:
            part = part.lower()
        write_jpeg(root / part / f"{image_id}.jpg", seed=i)
        if not kaggle and i != 4:
            write_mask(
                root / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png"
            )
    return root


def test_dataverse_layout_lists_cases_sites_and_masks(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    cases = build_cases(make_config("ham10000", root, HAM_TASKS, tmp_path / "cache"))
    assert [c.case_id for c in cases] == [r[1] for r in ROWS]
    by_id = {c.case_id: c for c in cases}
    # HAM_1 has 2 images at vidir_modern and 1 at rosendahl: all go to vidir_modern
    assert {by_id[f"ISIC_000000{i}"].site for i in (1, 2, 3)} == {"vidir_modern"}
    assert by_id["ISIC_0000001"].group == "HAM_1"
    assert by_id["ISIC_0000001"].labels["diagnosis"] == CLASSES.index("mel")
    assert by_id["ISIC_0000005"].available["lesion"] == (False,)
    assert "mask" not in by_id["ISIC_0000005"].files


def test_lesion_site_tie_goes_to_smallest_image_id() -> None:
    rows = [
        {"lesion_id": "L", "image_id": "ISIC_2", "dataset": "a"},
        {"lesion_id": "L", "image_id": "ISIC_1", "dataset": "b"},
    ]
    assert lesion_sites(rows) == {"L": "b"}


@pytest.mark.parametrize(
    ("name", "sep"), [("HAM10000_metadata.tab", "\t"), ("HAM10000_metadata", ",")]
)
def test_metadata_variants_and_nested_folder(tmp_path: Path, name: str, sep: str) -> None:
    write_dataverse(tmp_path / "ham" / "dataverse_files", metadata_name=name, sep=sep)
    cases = build_cases(make_config("ham10000", tmp_path / "ham", HAM_TASKS, tmp_path / "c"))
    assert len(cases) == len(ROWS)
    assert sum(c.has_label("lesion") for c in cases) == 4


def test_kaggle_layout_has_no_site_and_no_masks(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "kaggle", kaggle=True)
    cases = build_cases(make_config("ham10000", root, HAM_TASKS, tmp_path / "c"))
    assert len(cases) == len(ROWS)
    assert all(c.site is None and not c.has_label("lesion") for c in cases)
    assert all(c.has_label("diagnosis") for c in cases)


def test_samples_follow_the_contract(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    config = make_config("ham10000", root, HAM_TASKS, tmp_path / "c")
    cases = build_cases(config)
    sample = CaseDataset(cases, config, train=True)[0]
    assert sample["image"].shape == (3, 32, 32)
    assert sample["targets"]["lesion"].shape == (1, 32, 32)
    assert set(np.unique(sample["targets"]["lesion"].numpy())) <= {0.0, 1.0}
    assert sample["targets"]["diagnosis"].dtype.is_floating_point is False
    assert sample["target_masks"]["lesion"].shape == (1,)
    assert sample["target_masks"]["diagnosis"].shape == ()
    unlabelled = CaseDataset(cases, config, train=False)[4]
    assert unlabelled["target_masks"]["lesion"].tolist() == [0.0]
    assert float(unlabelled["targets"]["lesion"].sum()) == 0.0


def test_wrong_header_names_the_file(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    (root / "HAM10000_metadata.csv").write_text("image,label\nISIC_0000001,mel\n")
    with pytest.raises(ValueError, match=r"HAM10000_metadata\.csv"):
        build_cases(make_config("ham10000", root, HAM_TASKS, tmp_path / "c"))


def test_a_repeated_image_names_the_file_and_both_rows(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    metadata = root / "HAM10000_metadata.csv"
    first = metadata.read_text().splitlines()[1].split(",")
    again = ",".join(["HAM_other", first[1], "mel", *first[3:]])
    metadata.write_text(metadata.read_text() + again + "\n")
    with pytest.raises(ValueError, match=rf"row {len(ROWS) + 2} lists image '{first[1]}' again"):
        build_cases(make_config("ham10000", root, HAM_TASKS, tmp_path / "c"))


def test_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_cases(make_config("ham10000", tmp_path / "nowhere", HAM_TASKS, tmp_path / "c"))


def test_missing_image_is_an_error_or_skipped(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    (root / "HAM10000_images_part_2" / "ISIC_0000004.jpg").unlink()
    config = make_config("ham10000", root, HAM_TASKS, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="ISIC_0000004"):
        build_cases(config)
    cases = build_cases(config, skip_bad=True)
    assert len(cases) == len(ROWS) - 1
    assert [b.name for b in cases.skipped] == ["ISIC_0000004"]


def test_corrupt_jpeg_names_the_file(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    (root / "HAM10000_images_part_1" / "ISIC_0000002.jpg").write_bytes(b"\xff\xd8\xff garbage")
    config = make_config("ham10000", root, HAM_TASKS, tmp_path / "c")
    dataset = CaseDataset(build_cases(config), config, train=False)
    with pytest.raises(ValueError, match=r"ISIC_0000002\.jpg"):
        dataset[1]


def test_real_sample(tmp_path: Path) -> None:
    root = real_data("ham10000-real-sample")
    config = make_config("ham10000", root, HAM_TASKS, tmp_path / "c", image_size=[64, 64])
    cases = build_cases(config)
    assert len(cases) == 5 and all(c.has_label("lesion") for c in cases)
    assert {c.site for c in cases} == {"vidir_modern", "rosendahl", "vidir_molemax", "vienna_dias"}
    sample = CaseDataset(cases, config, train=False)[0]
    lesion = sample["targets"]["lesion"]
    assert 0.02 < float(lesion.mean()) < 0.98  # a real lesion covers part of the image
    assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0


def test_real_metadata_has_nine_two_site_lesions_resolved() -> None:
    rows = read_metadata(real_data("HAM10000_metadata_full.csv"))
    assert len(rows) == 10015
    sites: dict[str, set[str]] = {}
    for row in rows:
        sites.setdefault(row["lesion_id"], set()).add(row["dataset"])
    two = [lesion for lesion, s in sites.items() if len(s) > 1]
    assert len(two) == 9
    assigned = lesion_sites(rows)
    assert all(assigned[lesion] in sites[lesion] for lesion in two)


def test_real_sample_copied_nested_with_tab_metadata(tmp_path: Path) -> None:
    source = real_data("ham10000-real-sample")
    root = tmp_path / "release" / "inner"
    shutil.copytree(source, root)
    rows = (root / "HAM10000_metadata.csv").read_text().replace(",", "\t")
    (root / "HAM10000_metadata.csv").unlink()
    (root / "HAM10000_metadata.tab").write_text(rows)
    cases = build_cases(make_config("ham10000", tmp_path / "release", HAM_TASKS, tmp_path / "c"))
    assert len(cases) == 5


def augmented_images(dataset: CaseDataset, workers: int) -> list[torch.Tensor]:
    loader = make_loader(dataset, batch_size=1, shuffle=False, seed=3, num_workers=workers)
    return [batch["image"][0] for batch in loader]


def test_loader_workers_and_site_rounds_draw_their_own_augmentations(tmp_path: Path) -> None:
    root = write_dataverse(tmp_path / "ham")
    config = make_config("ham10000", root, HAM_TASKS, tmp_path / "c")
    case = build_cases(config)[0]
    dataset = CaseDataset([case] * 8, config, train=True)
    images = augmented_images(dataset, workers=2)
    first_worker, second_worker = images[0::2], images[1::2]
    assert not all(torch.equal(a, b) for a, b in zip(first_worker, second_worker, strict=True))
    again = augmented_images(CaseDataset([case] * 8, config, train=True), workers=2)
    assert all(torch.equal(a, b) for a, b in zip(images, again, strict=True)), "not seeded"
    rounds = [
        augmented_images(CaseDataset([case] * 4, config, train=True, augment_seed=s), 0)
        for s in (1, 2)
    ]
    assert not all(torch.equal(a, b) for a, b in zip(*rounds, strict=True))
