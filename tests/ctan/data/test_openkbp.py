"""OpenKBP reader: sparse CSV parsing, crop/resample, partial structures, round trip, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datahelpers import KBP_TASKS, make_config, real_data, write_kbp_patient

from ctan.config import AugmentationConfig
from ctan.data.dataset import CaseDataset, build_cases
from ctan.data.openkbp import (
    ORGANS,
    OpenKBPReader,
    read_patient,
    read_sparse,
    read_voxel_dimensions,
    to_native,
    write_dose_csv,
)
from ctan.data.phantoms import write_phantoms


def kbp_config(root: Path, tmp: Path, dims: int = 2):
    size = [32, 32] if dims == 2 else [16, 16, 16]
    return make_config(
        "openkbp",
        root,
        KBP_TASKS,
        tmp / "cache",
        spatial_dims=dims,
        in_channels=4,
        image_size=size,
        widths=[8, 16],
    )


@pytest.fixture
def provided(tmp_path: Path) -> Path:
    root = tmp_path / "provided-data"
    write_kbp_patient(root / "train-pats" / "pt_1", (*ORGANS, "PTV70"))
    write_kbp_patient(root / "train-pats" / "pt_2", ("Brainstem", "PTV56"))
    write_kbp_patient(root / "test-pats" / "pt_3", (), dose=False)
    return root


def test_layout_lists_slices_with_partial_labels(provided: Path, tmp_path: Path) -> None:
    cases = build_cases(kbp_config(provided, tmp_path))
    patients = {c.group for c in cases}
    assert patients == {"pt_1", "pt_2", "pt_3"}
    first = next(c for c in cases if c.group == "pt_2")
    assert first.available["organs"] == (True,) + (False,) * 6
    assert next(c for c in cases if c.group == "pt_3").available["dose"] == (False,)
    assert len([c for c in cases if c.group == "pt_1"]) == 14  # 10 slices + 2 margin each side
    levels = {c.group: c.meta["dose_levels"] for c in cases}
    assert levels == {"pt_1": "70", "pt_2": "56", "pt_3": "none"}


@pytest.mark.parametrize("dims", [2, 3])
def test_samples_follow_the_contract(provided: Path, tmp_path: Path, dims: int) -> None:
    config = kbp_config(provided, tmp_path, dims)
    cases = build_cases(config)
    size = tuple(config.model.image_size)
    sample = CaseDataset(cases, config, train=True)[len(cases) // 2]
    assert sample["image"].shape == (4, *size)
    assert sample["targets"]["dose"].shape == (1, *size)
    assert sample["targets"]["organs"].shape == (7, *size)
    assert sample["roi"]["dose"].shape == (1, *size)
    assert sample["target_masks"]["organs"].shape == (7,)


def test_a_left_right_mirror_moves_a_parotid_to_the_other_side(tmp_path: Path) -> None:
    root = tmp_path / "provided-data"
    write_kbp_patient(root / "train-pats" / "pt_1", ("LeftParotid",))
    config = kbp_config(root, tmp_path)
    mirror_only = AugmentationConfig(flip_axes=[1], affine=False, intensity=False)
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"augmentation": mirror_only})}
    )
    case = build_cases(config)[7]
    plain = CaseDataset([case], config, train=False)[0]
    mirrored = CaseDataset([case], config, train=True)
    right, left = ORGANS.index("RightParotid"), ORGANS.index("LeftParotid")
    assert plain["target_masks"]["organs"][[right, left]].tolist() == [0.0, 1.0]
    assert plain["targets"]["organs"][left].sum() > 0
    seen = set()
    for _ in range(20):
        sample = mirrored[0]
        organs, masks = sample["targets"]["organs"], sample["target_masks"]["organs"]
        if torch.equal(sample["targets"]["dose"], plain["targets"]["dose"]):
            assert torch.equal(organs, plain["targets"]["organs"])
            assert torch.equal(masks, plain["target_masks"]["organs"])
            seen.add("kept")
        else:
            assert torch.equal(sample["targets"]["dose"], plain["targets"]["dose"].flip(2))
            assert torch.equal(organs[right], plain["targets"]["organs"][left].flip(1))
            assert organs[left].sum() == 0
            assert masks[[right, left]].tolist() == [1.0, 0.0]
            seen.add("mirrored")
    assert seen == {"kept", "mirrored"}


def test_real_patients_have_their_left_where_the_reader_says() -> None:
    """The reader's left-right axis, checked on real patients: the left parotid lies at higher
    indices along it than the right one."""
    root = real_data("openkbp", "train-pats")
    axis = OpenKBPReader.left_right_axis
    checked = 0
    for patient in sorted(root.glob("pt_*"))[:6]:
        volumes = read_patient(patient)
        if "LeftParotid" in volumes and "RightParotid" in volumes:
            left = np.argwhere(volumes["LeftParotid"] > 0)[:, axis].mean()
            right = np.argwhere(volumes["RightParotid"] > 0)[:, axis].mean()
            assert left > right + 10, patient.name
            checked += 1
    assert checked >= 3


def test_to_native_restores_the_grid(provided: Path, tmp_path: Path) -> None:
    config = kbp_config(provided, tmp_path, 3)
    case = build_cases(config)[0]
    arrays = CaseDataset([case], config, train=False).arrays(case)
    native = to_native(arrays["possible_dose_mask"][0], case.meta["crop_box"])
    truth = read_patient(provided / "train-pats" / "pt_1")["possible_dose_mask"]
    assert native.shape == (128, 128, 128)
    assert ((native > 0.5) == (truth > 0.5)).mean() > 0.999


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("index,value\n1,2\n", "header"),
        (",data\n2097152,1.0\n", "outside"),
        (",data\n1,x\n", "parse"),
    ],
)
def test_bad_csv_names_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "dose.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as info:
        read_sparse(path, values=True)
    assert "dose.csv" in str(info.value)


def test_files_saved_with_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    """Spreadsheet programs save CSVs with one; it is no reason to refuse a patient."""
    dose, spacing = tmp_path / "dose.csv", tmp_path / "voxel_dimensions.csv"
    dose.write_text(",data\n5,1.5\n", encoding="utf-8-sig")
    spacing.write_text("3.906 3.906 2.5\n", encoding="utf-8-sig")
    index, values = read_sparse(dose, values=True)
    assert index.tolist() == [5] and values.tolist() == [1.5]
    assert read_voxel_dimensions(spacing).tolist() == [3.906, 3.906, 2.5]


def test_bad_patient_is_an_error_or_skipped(provided: Path, tmp_path: Path) -> None:
    (provided / "train-pats" / "pt_2" / "possible_dose_mask.csv").write_text(",data\n-5,\n")
    config = kbp_config(provided, tmp_path)
    with pytest.raises(ValueError, match=r"possible_dose_mask\.csv"):
        build_cases(config)
    cases = build_cases(config, skip_bad=True)
    assert {c.group for c in cases} == {"pt_1", "pt_3"}
    assert [b.name for b in cases.skipped] == ["pt_2"]


def test_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        build_cases(kbp_config(tmp_path / "absent", tmp_path))


def test_sites_csv_sets_sites_by_patient(provided: Path, tmp_path: Path) -> None:
    config = kbp_config(provided, tmp_path)
    assert {c.site for c in build_cases(config)} == {None}
    (provided / "sites.csv").write_text("case_id,site\npt_1,north\npt_3,south\n")
    sites = {c.group: c.site for c in build_cases(config)}
    assert sites == {"pt_1": "north", "pt_2": None, "pt_3": "south"}


def test_sites_csv_unknown_patient_warns(
    provided: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (provided / "sites.csv").write_text("case_id,site\npt_1,north\npt_9,east\n")
    with caplog.at_level(logging.WARNING, logger="ctan.data.reader"):
        cases = build_cases(kbp_config(provided, tmp_path))
    assert {c.site for c in cases} == {"north", None}
    assert "pt_9" in caplog.text and "sites.csv" in caplog.text


@pytest.mark.parametrize(
    ("text", "problem"),
    [("patient,site\npt_1,north\n", "header"), ("case_id,site\npt_1\n", "row 2")],
)
def test_malformed_sites_csv_names_the_file(
    provided: Path, tmp_path: Path, text: str, problem: str
) -> None:
    (provided / "sites.csv").write_text(text)
    with pytest.raises(ValueError, match=problem) as info:
        build_cases(kbp_config(provided, tmp_path))
    assert "sites.csv" in str(info.value)


def test_phantom_sites_read_back(tmp_path: Path) -> None:
    root = write_phantoms("openkbp", tmp_path / "kbp", cases=2, sites=2, seed=0)
    cases = build_cases(kbp_config(root, tmp_path))
    assert {c.group for c in cases} == {"pt_1", "pt_2"}
    assert {c.site for c in cases} == {"hn_site_1", "hn_site_2"}


def test_real_patients_parse_and_round_trip(tmp_path: Path) -> None:
    root = real_data("openkbp", "train-pats")
    patient = root / "pt_100"
    volumes = read_patient(patient)
    assert volumes["ct"].max() <= 4095 and volumes["dose"].max() > 50
    assert (volumes["dose"][volumes["possible_dose_mask"] == 0] == 0).all()
    written = write_dose_csv(volumes["dose"], tmp_path / "pt_100.csv")
    index, values = read_sparse(written, values=True)
    back = np.zeros(128**3, np.float32)
    back[index] = values
    np.testing.assert_array_equal(back.reshape((128,) * 3), volumes["dose"])


def test_real_patient_with_missing_structures(tmp_path: Path) -> None:
    root = real_data("openkbp", "train-pats")
    config = kbp_config(root.parent, tmp_path, 3)
    cases = {c.group: c for c in build_cases(config)}
    assert len(cases) == 36
    sparse = cases["pt_143"]
    assert not all(sparse.available["organs"])
    sample = CaseDataset([sparse], config, train=False)[0]
    off = [i for i, ok in enumerate(sparse.available["organs"]) if not ok]
    assert sample["target_masks"]["organs"][off].sum() == 0
    assert float(sample["targets"]["organs"][off].sum()) == 0.0


def test_real_patients_split_by_prescription_levels(capsys: pytest.CaptureFixture[str]) -> None:
    real_data("openkbp", "train-pats")
    from ctan.cli import main

    config = Path(__file__).resolve().parents[3] / "configs/federated/openkbp-dirichlet.yaml"
    assert main(["data", "partition", "--config", str(config)]) == 0
    rows = {
        line.split()[0]: [int(cell) for cell in line.split()[1:]]
        for line in capsys.readouterr().out.splitlines()
        if line.strip().startswith(("site_", "total"))
    }
    # columns: cases, groups, dose and organs labelled, then 56+63+70, 56+70, 70 (slices)
    assert sorted(rows) == ["site_1", "site_2", "site_3", "total"]
    assert rows["total"][1] == 36
    assert sum(rows[site][1] for site in ("site_1", "site_2", "site_3")) == 36
    mixes = [np.array(rows[site][4:]) / rows[site][0] for site in ("site_1", "site_2", "site_3")]
    assert max(np.abs(a - b).sum() / 2 for a in mixes for b in mixes) > 0.3
