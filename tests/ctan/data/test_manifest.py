"""Manifest reader: NIfTI and PNG cases with missing labels, bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from datahelpers import HAM_TASKS, make_config, write_jpeg, write_mask
from PIL import Image

from ctan.config import load_config
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
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 0.0, 25.0]
    nib.save(nib.Nifti1Image(seg, shifted), root / "n" / "x_seg.nii.gz")
    with pytest.raises(ValueError, match=r"x_seg\.nii\.gz: its voxels lie elsewhere than"):
        CaseDataset(build_cases(cfg), cfg, train=False)[0]


def test_missing_image_and_bad_class_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "manifest.csv").write_text("case_id,image,diagnosis\na,a.png,9\n")
    with pytest.raises(ValueError, match=r"manifest\.csv row 2"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
    (root / "manifest.csv").write_text("case_id,image,diagnosis\na,a.png,inf\n")
    with pytest.raises(ValueError, match=r"manifest\.csv row 2.*'inf' is not a class index"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
    (root / "manifest.csv").write_text("case_id,image,diagnosis\na,gone.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
    (root / "manifest.csv").write_text("id,path\n")
    with pytest.raises(ValueError, match=r"manifest\.csv"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))
    (root / "manifest.csv").write_bytes("case_id,image,note\na,a.png,café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"manifest\.csv: not UTF-8 text .*save it as UTF-8"):
        build_cases(make_config("manifest", root, HAM_TASKS, tmp_path / "c"))


def test_manifest_laterality_exchanges_the_paired_channels(tmp_path: Path) -> None:
    root = tmp_path / "site"
    write_jpeg(root / "img" / "a.png", 0, size=(32, 32))
    labels = np.zeros((32, 32), np.uint8)
    labels[4:12, 2:8] = 1  # label value 1: channel 0, the right parotid, off-centre
    (root / "mask").mkdir()
    Image.fromarray(labels).save(root / "mask" / "a.png")
    (root / "manifest.csv").write_text("case_id,image,parotids\na,img/a.png,mask/a.png\n")
    tasks = [{"name": "parotids", "kind": "segmentation", "classes": 2, "exclusive": False}]
    raw = make_config("manifest", root, tasks, tmp_path / "c").model_dump(mode="json")
    raw["data"]["laterality"] = {"axis": 1, "pairs": {"parotids": [[0, 1]]}}
    raw["train"] = {"augmentation": {"flip_axes": [1], "affine": False, "intensity": False}}
    config = load_config(raw)
    case = build_cases(config)[0]
    plain = CaseDataset([case], config, train=False)[0]["targets"]["parotids"]
    assert plain[0].sum() > 0 and plain[1].sum() == 0
    mirrored = CaseDataset([case], config, train=True)
    seen = set()
    for _ in range(20):
        target = mirrored[0]["targets"]["parotids"]
        if torch.equal(target, plain):
            seen.add("kept")
        else:
            assert torch.equal(target[1], plain[0].flip(1)) and target[0].sum() == 0
            seen.add("mirrored")
    assert seen == {"kept", "mirrored"}


def label_map_site(tmp_path: Path, column: str, second: int) -> Path:
    """A manifest site of one 16x16 image whose label map holds 1 in one square and ``second``
    in another."""
    root = tmp_path / "site"
    write_jpeg(root / "img" / "a.png", 0, size=(16, 16))
    labels = np.zeros((16, 16), np.uint8)
    labels[2:6, 2:6], labels[8:12, 8:12] = 1, second
    (root / "mask").mkdir()
    Image.fromarray(labels).save(root / "mask" / "a.png")
    (root / "manifest.csv").write_text(f"case_id,image,{column}\na,img/a.png,mask/a.png\n")
    return root


def label_target(root: Path, task: dict, cache: Path) -> torch.Tensor:
    """The training target the site's one case gives ``task``."""
    config = make_config("manifest", root, [task], cache)
    return CaseDataset(build_cases(config), config, train=False)[0]["targets"][task["name"]]


def test_cached_masks_follow_a_change_of_the_task_classes(tmp_path: Path) -> None:
    root = label_map_site(tmp_path, "organs", second=3)
    targets = {
        classes: label_target(
            root,
            {"name": "organs", "kind": "segmentation", "classes": classes, "exclusive": False},
            tmp_path / "cache",
        )
        for classes in (1, 3)
    }
    assert targets[1].shape[0] == 1 and targets[3].shape[0] == 3
    assert targets[3][0].sum() > 0 and targets[3][1].sum() == 0 and targets[3][2].sum() > 0


def test_an_exclusive_label_map_has_the_background_in_channel_0(tmp_path: Path) -> None:
    """Softmax classes cover every pixel: without a background channel the background would
    have no class, and no gradient would teach the network to say so."""
    root = label_map_site(tmp_path, "tissue", second=2)
    tissue = {"name": "tissue", "kind": "segmentation", "classes": 3}
    target = label_target(root, tissue, tmp_path / "cache")
    assert torch.equal(target.sum(dim=0), torch.ones_like(target[0])), "one class per pixel"
    assert target[0].sum() > target[1].sum() > 0 and target[1].sum() == target[2].sum()
    target = label_target(root, tissue | {"exclusive": False}, tmp_path / "cache")
    assert target[2].sum() == 0, "value 3 (channel 2) is absent: not the cached one-hot"
    with pytest.raises(ValueError, match=r"a\.png: label values 2 but task 'tissue' has 2 excl"):
        label_target(root, tissue | {"classes": 2}, tmp_path / "cache")
