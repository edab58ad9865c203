"""OpenKBP prediction and scoring on the native 128^3 grid, on phantom patients."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctan.checkpoint import save_checkpoint
from ctan.config import Config, load_config
from ctan.data.dataset import build_cases
from ctan.data.openkbp import ORGANS, read_patient, read_sparse
from ctan.data.phantoms import write_phantoms
from ctan.engine import TaskTrainer
from ctan.models import build_model
from ctan.prediction import evaluate_cases, evaluate_checkpoint, organ_overlaps, predict_to_folder
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
