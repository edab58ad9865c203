"""STOIC2021 reader: reference.csv + MHA headers, resampling, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from datahelpers import STOIC_TASKS, make_config, write_mha

from ctan.data.dataset import CaseDataset, build_cases
from ctan.data.phantoms import write_phantoms


def write_stoic(root: Path) -> Path:
    (root / "metadata").mkdir(parents=True)
    rows = [("1", 1, 1), ("2", 1, 0), ("3", 0, 0)]
    (root / "metadata" / "reference.csv").write_text(
        "PatientID,probCOVID,probSevere\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows)
    )
    for i, (patient, _, _) in enumerate(rows):
        write_mha(
            root / "data" / "mha" / f"{patient}.mha", i, {"PatientAge": "065Y", "PatientSex": "F"}
        )
    return root


def config(root: Path, tmp: Path, dims: int = 3):
    size = [16, 16, 16] if dims == 3 else [16, 16]
    return make_config(
        "stoic",
        root,
        STOIC_TASKS,
        tmp / "c",
        spatial_dims=dims,
        in_channels=1,
        image_size=size,
        widths=[8, 16],
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_cases_headers_and_samples(tmp_path: Path, dims: int) -> None:
    cfg = config(write_stoic(tmp_path / "stoic"), tmp_path, dims)
    cases = build_cases(cfg)
    assert [c.case_id for c in cases] == ["1", "2", "3"]
    assert cases[0].meta["age"] == 65 and cases[0].meta["sex"] == "F"
    sample = CaseDataset(cases, cfg, train=False)[2]
    assert sample["image"].shape == (1, *cfg.model.image_size)
    assert int(sample["targets"]["covid"]) == 0 and int(sample["targets"]["severe"]) == 0
    assert float(sample["case_labels"]["covid"]) == 0.0
    assert sample["case_labels"]["severe"].shape == ()
    assert sample["case_labels"]["severe"].dtype == torch.float32


def test_row_without_image_names_the_file(tmp_path: Path) -> None:
    root = write_stoic(tmp_path / "stoic")
    (root / "data" / "mha" / "2.mha").unlink()
    with pytest.raises(FileNotFoundError, match=r"2\.mha"):
        build_cases(config(root, tmp_path))
    cases = build_cases(config(root, tmp_path), skip_bad=True)
    assert [b.name for b in cases.skipped] == ["2"]


def test_corrupt_mha_names_the_file(tmp_path: Path) -> None:
    root = write_stoic(tmp_path / "stoic")
    (root / "data" / "mha" / "3.mha").write_text("garbage")
    with pytest.raises(ValueError, match=r"3\.mha"):
        build_cases(config(root, tmp_path))


def test_wrong_header_names_the_file(tmp_path: Path) -> None:
    root = write_stoic(tmp_path / "stoic")
    (root / "metadata" / "reference.csv").write_text("id,covid\n1,1\n")
    with pytest.raises(ValueError, match=r"reference\.csv"):
        build_cases(config(root, tmp_path))


def test_a_repeated_patient_or_a_non_utf8_file_names_the_file_and_rows(tmp_path: Path) -> None:
    root = write_stoic(tmp_path / "stoic")
    reference = root / "metadata" / "reference.csv"
    reference.write_text(reference.read_text() + "3,1,0\n")
    with pytest.raises(ValueError, match=r"reference\.csv: row 5 lists patient '3' again .*row 4"):
        build_cases(config(root, tmp_path))
    reference.write_bytes("PatientID,probCOVID,probSevere,note\n1,1,1,café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"reference\.csv: not UTF-8 text"):
        build_cases(config(root, tmp_path))


def test_sites_csv_sets_sites(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_stoic(tmp_path / "stoic")
    assert {c.site for c in build_cases(config(root, tmp_path))} == {None}
    (root / "sites.csv").write_text("case_id,site\n1,north\n2,south\n7,east\n")
    with caplog.at_level(logging.WARNING, logger="ctan.data.reader"):
        cases = build_cases(config(root, tmp_path))
    assert {c.case_id: c.site for c in cases} == {"1": "north", "2": "south", "3": None}
    assert "7" in caplog.text and "sites.csv" in caplog.text


def test_sites_csv_wrong_header_names_the_file(tmp_path: Path) -> None:
    root = write_stoic(tmp_path / "stoic")
    (root / "sites.csv").write_text("PatientID,hospital\n1,north\n")
    with pytest.raises(ValueError, match=r"sites\.csv.*header"):
        build_cases(config(root, tmp_path))


def test_phantom_sites_read_back(tmp_path: Path) -> None:
    root = write_phantoms("stoic", tmp_path / "stoic", cases=4, sites=2, seed=0)
    cases = build_cases(config(root, tmp_path))
    assert len(cases) == 4
    assert sorted({c.site for c in cases}) == ["chest_site_1", "chest_site_2"]
