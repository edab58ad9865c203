from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from factories import derm_config
from PIL import Image

from ctan.cli import main
from ctan.training import prepare_splits, train_centralised


@pytest.fixture(scope="module")
def trained_run(ham_phantom: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("train")
    config = derm_config(ham_phantom, tmp)
    return config, train_centralised(config, folder=tmp / "run", tensorboard=True)


def test_run_folder_has_everything(trained_run):
    config, result = trained_run
    names = {p.name for p in result.folder.iterdir()}
    assert {
        "config.yaml",
        "best.pt",
        "last.pt",
        "metrics.csv",
        "metrics.jsonl",
        "tensorboard",
        "learning_curves.png",
        "test_metrics.json",
    } <= names
    summary = json.loads((result.folder / "test_metrics.json").read_text())
    assert set(summary["test"]) == {"lesion", "diagnosis"}
    assert len(result.epoch_seconds) == config.train.epochs
    rows = (result.folder / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,split,name,value" and any(",validation,lesion/dice," in r for r in rows)


def test_evaluate_command_scores_the_checkpoint(trained_run, capsys):
    _, result = trained_run
    assert main(["evaluate", "--checkpoint", str(result.best_checkpoint), "--split", "test"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["split"] == "test"
    for task, metrics in result.test.metrics.items():
        assert scores["metrics"][task] == pytest.approx(metrics)


def test_predict_command_writes_masks_and_probabilities(trained_run, ham_phantom: Path, tmp_path):
    _, result = trained_run
    images = sorted((ham_phantom / "HAM10000_images_part_1").glob("*.jpg"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(result.best_checkpoint),
                "--input",
                str(folder),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    masks = sorted((out / "lesion").glob("*.png"))
    assert [m.stem for m in masks] == [i.stem for i in images]
    with Image.open(masks[0]) as mask, Image.open(images[0]) as image:
        assert mask.size == image.size, "a mask lies over its image"
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,diagnosis_class,diagnosis_p0") and len(rows) == 4


def test_predict_refuses_wrong_dimensionality(trained_run, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    _, result = trained_run
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), volume)
    code = main(
        [
            "predict",
            "--checkpoint",
            str(result.best_checkpoint),
            "--input",
            str(volume),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "a 3D image, but this 2D ham10000 model expects 2D inputs" in capsys.readouterr().err


def test_task_without_labels_anywhere_is_refused(ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path)
    tasks = [*config.tasks, config.tasks[1].model_copy(update={"name": "other", "label": "dose"})]
    unlabelled = config.model_copy(update={"tasks": tasks})
    with pytest.raises(ValueError, match=r"tasks \['other'\] have no labels anywhere"):
        prepare_splits(unlabelled)


def test_empty_validation_split_is_refused(ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path)
    data = config.data.model_copy(
        update={"split": config.data.split.model_copy(update={"validation": 0.0})}
    )
    with pytest.raises(ValueError, match="validation split is empty"):
        train_centralised(config.model_copy(update={"data": data}), folder=tmp_path / "r")


def test_a_validation_split_without_any_label_is_refused_before_training(
    ham_phantom: Path, tmp_path
):
    config = derm_config(ham_phantom, tmp_path)
    splits = prepare_splits(config)
    unlabelled = [replace(c, available={}) for c in splits["validation"]]
    with pytest.raises(ValueError, match="no epoch can be chosen as best"):
        train_centralised(config, tmp_path / "r", splits | {"validation": unlabelled})
    assert not (tmp_path / "r").exists()


def test_train_command_with_epoch_override(ham_phantom: Path, tmp_path, capsys):
    config = derm_config(ham_phantom, tmp_path, arch="hps")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert (
        main(
            [
                "train",
                "--config",
                str(path),
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert "best checkpoint" in capsys.readouterr().out
    assert (
        len(json.loads((tmp_path / "run" / "test_metrics.json").read_text())["epoch_seconds"]) == 1
    )
    argv = ["train", "--config", str(path), "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "already holds a run (config.yaml, metrics.csv" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "zero"), "--epochs", "0"]) == 2
    assert "train.epochs" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    (tmp_path / "a-file").write_text("")
    assert main([*argv, str(tmp_path / "a-file"), "--epochs", "1"]) == 2
    assert "a-file" in capsys.readouterr().err


def test_runs_started_within_one_second_get_folders_of_their_own(tmp_path: Path):
    from ctan.training import new_folder

    folders = [new_folder(tmp_path / "federation", "run") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)
