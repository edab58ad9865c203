"""Prediction and scoring: image predictions written back on the input's own grid, OpenKBP on
the native 128^3 grid (phantom patients)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ctan.checkpoint import save_checkpoint
from ctan.config import Config, load_config
from ctan.data.base import Case
from ctan.data.dataset import CaseDataset, build_cases
from ctan.data.openkbp import ORGANS, crop_box, read_patient, read_sparse, read_voxel_dimensions
from ctan.data.phantoms import write_phantoms
from ctan.engine import TaskTrainer
from ctan.models import build_model
from ctan.prediction import (
    evaluate_cases,
    evaluate_checkpoint,
    organ_overlaps,
    predict_to_folder,
)
from ctan.training import train_centralised


def kbp_config(root: Path, cache: Path, **extra: Any) -> Config:
    """A tiny HPS for dose + organs on OpenKBP-layout data at ``root``."""
    return load_config(
        {
            "model": {
                "arch": "hps",
                "spatial_dims": 2,
                "in_channels": 4,
                "image_size": [16, 16],
                "widths": [8, 16],
            },
            "tasks": [
                {
                    "name": "dose",
                    "kind": "regression",
                    "classes": 1,
                    "metrics": ["dose_score", "dvh_score"],
                },
                {
                    "name": "organs",
                    "kind": "segmentation",
                    "classes": 7,
                    "exclusive": False,
                    "metrics": ["dice", "iou"],
                },
            ],
            "data": {"format": "openkbp", "root": str(root), "cache_dir": str(cache)},
            "train": {"batch_size": 16},
        }
        | extra
    )


@pytest.fixture(scope="module")
def kbp(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("kbp")
    root = write_phantoms("openkbp", tmp / "provided-data", cases=2, sites=1, seed=0)
    return kbp_config(root, tmp / "cache"), root, tmp


def test_native_scores_replace_model_grid_values(kbp):
    config, _, _ = kbp
    cases = list(build_cases(config))
    trainer = TaskTrainer(build_model(config), config.tasks, config.train)
    evaluation = evaluate_cases(trainer, config, cases)
    dose = evaluation.metrics["dose"]
    assert list(dose)[:2] == ["dose_score", "dvh_score"]
    assert np.isfinite(dose["dose_score"]) and dose["dose_score"] > 0
    assert np.isfinite(dose["dvh_score"]) and dose["dvh_score"] > 0


def test_centralised_training_scores_patients_as_evaluate_does(tmp_path: Path):
    root = write_phantoms("openkbp", tmp_path / "provided-data", cases=3, sites=1, seed=1)
    config = kbp_config(
        root,
        tmp_path / "cache",
        data={
            "format": "openkbp",
            "root": str(root),
            "cache_dir": str(tmp_path / "cache"),
            "split": {"validation": 0.34, "test": 0.34, "by": "patient_id"},
        },
        train={"batch_size": 16, "epochs": 1},
    )
    result = train_centralised(config, folder=tmp_path / "run", tensorboard=False)
    summary = json.loads((result.folder / "test_metrics.json").read_text())
    rows = (result.folder / "metrics.csv").read_text()
    assert ",validation,dose/dvh_score," in rows, "per-epoch validation is the per-patient scoring"
    assert set(summary["validation"]["dose"]) == {"dose_score", "dvh_score"}
    scored = evaluate_checkpoint(result.best_checkpoint, split="test")
    for task, metrics in summary["test"].items():
        assert scored["metrics"][task] == pytest.approx(metrics, nan_ok=True)


def test_predict_writes_submission_csvs_on_the_native_grid(kbp):
    config, root, tmp = kbp
    checkpoint = save_checkpoint(tmp / "model.pt", build_model(config), config)
    written = predict_to_folder(checkpoint, root, tmp / "out")
    files = sorted((tmp / "out" / "dose").glob("*.csv"))
    assert [f.stem for f in files] == ["pt_1", "pt_2"] and set(files) <= set(written)
    assert files[0].read_text().startswith(",data\n")
    index, values = read_sparse(files[0], values=True)
    assert index.max() < 128**3 and np.all(values != 0)
    mask_index, _ = read_sparse(root / "train-pats" / "pt_1" / "possible_dose_mask.csv", False)
    assert set(index.tolist()) <= set(mask_index.tolist())


def test_predict_refuses_a_missing_input(kbp):
    config, _, tmp = kbp
    checkpoint = save_checkpoint(tmp / "m2.pt", build_model(config), config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict_to_folder(checkpoint, tmp / "nowhere", tmp / "o")


def test_a_global_model_with_local_heads_is_refused(kbp):
    config, root, tmp = kbp
    extra = {"heads": "local", "rounds": 2}
    checkpoint = save_checkpoint(tmp / "global.pt", build_model(config), config, {}, extra)
    with pytest.raises(ValueError, match=r"heads stayed local.*best\.pt"):
        evaluate_checkpoint(checkpoint, split="all")
    with pytest.raises(ValueError, match="heads stayed local"):
        predict_to_folder(checkpoint, root, tmp / "refused")
    assert not (tmp / "refused").exists()
    federated = save_checkpoint(
        tmp / "global-heads.pt", build_model(config), config, {}, extra | {"heads": "federated"}
    )
    assert predict_to_folder(federated, root, tmp / "predicted")


def test_native_organ_dice_is_per_patient_and_contoured_organs_only(kbp):
    config, root, _ = kbp
    reference = read_patient(root / "train-pats" / "pt_1")
    box = ((10, 90), (20, 100), (30, 70))
    window = tuple(slice(lo, hi) for lo, hi in box)
    organs = config.tasks[1]
    contoured = [o for o in ORGANS if o in reference and reference[o][window].any()]
    assert contoured, "the phantom patient has no organ inside the box"
    # logits over the box at full resolution: +20 on the reference, -20 elsewhere
    truth = np.stack([reference.get(o, np.zeros((128,) * 3))[window] for o in ORGANS])
    perfect = np.where(truth > 0.5, 20.0, -20.0).astype(np.float32)
    scores = organ_overlaps(organs, perfect, reference, box)
    assert set(scores) == {o for o in ORGANS if o in reference}
    assert all(scores[o]["dice"] == 1.0 and scores[o]["iou"] == 1.0 for o in contoured)
    # an all-empty prediction scores 0 on every organ present in the box (not ~0.7 as on slices)
    empty = organ_overlaps(organs, np.full_like(perfect, -20.0), reference, box)
    assert all(empty[o]["dice"] == 0.0 for o in contoured)
    # half of one organ's voxels: Dice 2/3 by hand
    organ = contoured[0]
    channel = ORGANS.index(organ)
    half = np.full_like(perfect, -20.0)
    voxels = np.argwhere(truth[channel] > 0.5)
    kept = voxels[: len(voxels) // 2]
    half[channel][tuple(kept.T)] = 20.0
    expected = 2 * len(kept) / (len(kept) + len(voxels))
    assert organ_overlaps(organs, half, reference, box)[organ]["dice"] == pytest.approx(expected)


def test_evaluate_reports_native_organ_scores(kbp):
    config, _, _ = kbp
    cases = list(build_cases(config))
    trainer = TaskTrainer(build_model(config), config.tasks, config.train)
    organs = evaluate_cases(trainer, config, cases).metrics["organs"]
    assert set(organs) == {"dice", "iou"}
    assert 0.0 <= organs["iou"] <= organs["dice"] <= 1.0


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def test_predict_writes_organ_masks_on_the_native_grid_and_nothing_into_the_input(kbp):
    config, root, tmp = kbp
    checkpoint = save_checkpoint(tmp / "organs.pt", build_model(config), config)
    before = files_under(root)
    written = predict_to_folder(checkpoint, root, tmp / "organs-out")
    assert files_under(root) == before, "predicting wrote into the input folder"
    path = tmp / "organs-out" / "organs" / "pt_1.nii.gz"
    assert path in written and path.read_bytes()[:2] == b"\x1f\x8b"
    image = nib.load(path)
    masks = np.asarray(image.dataobj)
    assert masks.shape == (128, 128, 128, len(ORGANS)) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    patient = root / "train-pats" / "pt_1"
    assert image.header.get_zooms()[:3] == pytest.approx(
        read_voxel_dimensions(patient / "voxel_dimensions.csv")
    )
    mask_index, _ = read_sparse(patient / "possible_dose_mask.csv", values=False)
    outside = np.ones((128,) * 3, dtype=bool)
    outside[tuple(slice(lo, hi) for lo, hi in crop_box(mask_index))] = False
    assert not masks[outside].any(), "organ voxels outside the crop box the model saw"


def test_a_checkpoint_trained_on_cuda_is_scored_on_the_device_asked_for(kbp):
    config, _, tmp = kbp
    data = config.data.model_copy(
        update={"split": config.data.split.model_copy(update={"validation": 0.0, "test": 0.5})}
    )
    train = config.train.model_copy(update={"device": "cuda"})
    on_cuda = config.model_copy(update={"train": train, "data": data})
    checkpoint = save_checkpoint(tmp / "cuda.pt", build_model(on_cuda), on_cuda)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            evaluate_checkpoint(checkpoint, split="all")
    scored = evaluate_checkpoint(checkpoint, split="all", device="cpu")
    assert np.isfinite(scored["metrics"]["dose"]["dose_score"])
    with pytest.raises(ValueError, match=r"'gpu'.*allowed: 'auto', 'cpu', 'cuda'"):
        evaluate_checkpoint(checkpoint, split="all", device="gpu")


def image_config(spatial_dims: int, size: Sequence[int], tasks: list[dict], **data: Any) -> Config:
    """A tiny single-channel HPS for predictions from image files (no data section: manifest)."""
    return load_config(
        {
            "model": {
                "arch": "hps",
                "spatial_dims": spatial_dims,
                "in_channels": data.pop("in_channels", 1),
                "image_size": list(size),
                "widths": [8, 16],
            },
            "tasks": tasks,
        }
        | ({"data": data} if data else {})
    )


LESION = {"name": "lesion", "kind": "segmentation", "classes": 1}


@pytest.fixture
def bright_segmenter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for a perfect model: segments the bright part of each preprocessed image (for
    an exclusive task, class 1 there and 0 elsewhere; a second multi-label channel is its
    complement) and regresses the image intensity, so written files can be checked against the
    input images."""

    def predictions(
        trainer: TaskTrainer, config: Config, cases: Sequence[Case]
    ) -> dict[str, dict[str, np.ndarray]]:
        dataset = CaseDataset(list(cases), config, train=False, cache=False)
        out = {}
        for index, case in enumerate(cases):
            image = dataset[index]["image"].numpy().mean(axis=0, keepdims=True)
            bright = np.where(image > 0.5, 20.0, -20.0).astype(np.float32)
            outputs = {}
            for task in config.tasks:
                if task.kind == "regression":
                    outputs[task.name] = image
                elif task.kind == "classification":
                    outputs[task.name] = np.zeros(task.classes, dtype=np.float32)
                elif task.exclusive:
                    outputs[task.name] = np.concatenate(
                        [-bright, bright, np.full_like(bright, -40)]
                    )
                else:
                    outputs[task.name] = np.concatenate([bright, -bright])[: task.classes]
            out[case.case_id] = outputs
        return out

    monkeypatch.setattr("ctan.prediction.collect_predictions", predictions)


def test_a_3d_prediction_is_gzipped_nifti_on_the_input_grid(tmp_path: Path, bright_segmenter):
    tasks = [
        LESION,
        {"name": "organs", "kind": "segmentation", "classes": 2, "exclusive": False},
        {"name": "zones", "kind": "segmentation", "classes": 3, "exclusive": True},
        {"name": "dose", "kind": "regression", "classes": 1},
    ]
    config = image_config(3, [8, 8, 8], tasks)
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    truth = np.zeros((16, 24, 8), dtype=np.uint8)
    truth[4:12, 6:18, 2:6] = 1
    affine = np.array([[0, 0, -2.5, 40], [0.8, 0, 0, -7], [0, 1.2, 0, 3], [0, 0, 0, 1]])
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(truth.astype(np.float32) * 300, affine), tmp_path / "in" / "ct.nii.gz")
    written = predict_to_folder(checkpoint, tmp_path / "in", tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "dose/ct.nii.gz",
        "lesion/ct.nii.gz",
        "organs/ct.nii.gz",
        "zones/ct.nii.gz",
    ]
    assert all(p.read_bytes()[:2] == b"\x1f\x8b" for p in written), "not gzipped"
    images = {p.parent.name: nib.load(p) for p in written}
    assert all(np.allclose(image.affine, affine) for image in images.values())
    assert np.array_equal(np.asarray(images["lesion"].dataobj), truth)
    assert np.array_equal(np.asarray(images["zones"].dataobj), truth), "class indices"
    organs = np.asarray(images["organs"].dataobj)
    assert organs.shape == (16, 24, 8, 2)
    assert np.array_equal(organs[..., 0], truth) and np.array_equal(organs[..., 1], 1 - truth)
    dose = np.asarray(images["dose"].dataobj)
    assert dose.shape == truth.shape and dose.dtype == np.float32
    assert dose[8, 12, 4] == pytest.approx(1.0) and dose[0, 0, 0] == pytest.approx(0.0)
    with gzip.open(written[0]) as file:
        assert len(file.read()) > 352, "a whole NIfTI inside the gzip stream"


def test_a_2d_mask_keeps_the_input_orientation_and_size(tmp_path: Path, bright_segmenter):
    config = image_config(2, [64, 32], [LESION])
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    truth = np.zeros((64, 128), dtype=np.uint8)  # 128 wide, 64 high
    truth[16:48, 0:32] = 1
    (tmp_path / "in").mkdir()
    Image.fromarray(truth * 200).save(tmp_path / "in" / "wide.png")
    predict_to_folder(checkpoint, tmp_path / "in", tmp_path / "out")
    with Image.open(tmp_path / "out" / "lesion" / "wide.png") as mask:
        assert mask.size == (128, 64)
        assert np.array_equal(np.asarray(mask), truth * 255), "a 0/255 mask over the input"


def test_a_2d_nifti_with_a_trailing_singleton_axis_is_predicted(tmp_path: Path, bright_segmenter):
    config = image_config(2, [64, 32], [LESION])
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    truth = np.zeros((128, 64, 1), dtype=np.float32)  # (x, y, 1)
    truth[0:32, 16:48] = 1.0
    nib.save(nib.Nifti1Image(truth, np.eye(4)), tmp_path / "slice.nii.gz")
    predict_to_folder(checkpoint, tmp_path / "slice.nii.gz", tmp_path / "out")
    with Image.open(tmp_path / "out" / "lesion" / "slice.png") as mask:
        assert np.array_equal(np.asarray(mask), truth[..., 0].T.astype(np.uint8) * 255)


def test_ham10000_masks_have_the_size_of_their_images(tmp_path: Path, bright_segmenter):
    tasks = [LESION, {"name": "diagnosis", "kind": "classification", "classes": 7}]
    config = image_config(2, [32, 32], tasks, format="ham10000", root=str(tmp_path), in_channels=3)
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    truth = np.zeros((120, 160), dtype=np.uint8)  # 160 wide, 120 high
    truth[30:90, 10:70] = 1
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.repeat(truth[..., None] * 220, 3, axis=-1)).save(
        images / "ISIC_0000001.jpg", quality=95
    )
    before = files_under(images)
    predict_to_folder(checkpoint, images, tmp_path / "out")
    assert files_under(images) == before, "predicting wrote into the input folder"
    with Image.open(tmp_path / "out" / "lesion" / "ISIC_0000001.png") as mask:
        values = np.asarray(mask)
    assert values.shape == truth.shape and set(np.unique(values)) == {0, 255}
    assert np.mean((values == 255) != truth) < 0.02
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_images_of_one_name_are_refused_before_anything_is_written(tmp_path: Path):
    config = image_config(2, [32, 32], [LESION])
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    (tmp_path / "in").mkdir()
    for name in ("a.png", "a.jpg", "b.png"):
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "in" / name)
    with pytest.raises(
        ValueError, match=r"a\.jpg and .*a\.png would both be predicted as case 'a'"
    ):
        predict_to_folder(checkpoint, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_named(tmp_path: Path):
    config = image_config(2, [32, 32], [LESION])
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.png: cannot read image"):
        predict_to_folder(checkpoint, tmp_path / "broken.png", tmp_path / "out")


def test_predict_runs_on_the_device_asked_for(tmp_path: Path):
    config = image_config(2, [32, 32], [LESION])
    config = config.model_copy(update={"train": config.train.model_copy(update={"device": "cuda"})})
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model(config), config)
    Image.fromarray(np.zeros((40, 30), dtype=np.uint8)).save(tmp_path / "x.png")
    written = predict_to_folder(checkpoint, tmp_path / "x.png", tmp_path / "out", device="cpu")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["lesion/x.png"]
    with pytest.raises(ValueError, match="allowed"):
        predict_to_folder(checkpoint, tmp_path / "x.png", tmp_path / "o", device="cuda:x")
    from ctan.cli import main

    command = ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "x.png")]
    assert main([*command, "--out", str(tmp_path / "cli")]) == 0, "auto, whatever it trained on"
    assert (tmp_path / "cli" / "lesion" / "x.png").is_file()
