"""Manifest reader: NIfTI and PNG cases with missing labels, bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datahelpers import HAM_TASKS, make_config, write_jpeg, write_mask
from PIL import Image

from ctan.data.dataset import CaseDataset, build_cases


def test_png_manifest_with_missing_labels(tmp_path: Path) -> None:
    root = tmp_path / "site"
    write_jpeg(root / "img" / "a.png", 0)
    write_jpeg(root / "img" / "b.png", 1)
    write_mask(root / "mask" / "a.png")
    (root / "manifest.csv").write_text(
        "case_id,image,site,group,lesion,diagnosis\n"
        "a,img/a.png,h1,p1,mask/a.png,3\n"
        "b,img/b.png,h1,p1,,\n"
    )
    cfg = make_config("manifest", root, HAM_TASKS, tmp_path / "c")
    cases = build_cases(cfg)
    assert [c.has_label("lesion") for c in cases] == [True, False]
    assert [c.labels["diagnosis"] for c in cases] == [3, None]
    dataset = CaseDataset(cases, cfg, train=False)
    a, b = dataset[0], dataset[1]
    assert a["image"].shape == (3, 32, 32) and a["targets"]["lesion"].sum() > 0
    assert float(b["target_masks"]["diagnosis"]) == 0.0 and b["target_masks"][
        "lesion"
    ].tolist() == [0.0]


def test_nifti_manifest_3d(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "n").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("x", "y"):
        nib.save(
            nib.Nifti1Image(rng.normal(size=(20, 20, 12)).astype(np.float32), np.eye(4)),
            root / "n" / f"{name}.nii.gz",
        )
    seg = np.zeros((20, 20, 12), np.uint8)
    seg[5:15, 5:15, 3:9] = 1
    nib.save(nib.Nifti1Image(seg, np.eye(4)), root / "n" / "x_seg.nii.gz")
    manifest = root / "cases.csv"
    manifest.write_text("case_id,image,organ\nx,n/x.nii.gz,n/x_seg.nii.gz\ny,n/y.nii.gz,\n")
    tasks = [{"name": "organ", "kind": "segmentation", "classes": 1}]
    cfg = make_config(
        "manifest",
        manifest,
        tasks,
        tmp_path / "c",
        spatial_dims=3,
        in_channels=1,
        image_size=[16, 16, 8],
        widths=[8, 16],
    )
    cases = build_cases(cfg)
    sample = CaseDataset(cases, cfg, train=True)[0]
    assert sample["image"].shape == (1, 16, 16, 8)
    assert sample["targets"]["organ"].shape == (1, 16, 16, 8)
    assert not cases[1].has_label("organ")


def test_missing_image_and_bad_class_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "manifest.csv").write_text("case_id,image,diagnosis\na,a.png,9\n")
    with pytest.raises(ValueError, match=r"manifest\.csv row 2"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
    (root / "manifest.csv").write_text("case_id,image,diagnosis\na,gone.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
    (root / "manifest.csv").write_text("id,path\n")
    with pytest.raises(ValueError, match=r"manifest\.csv"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
