from __future__ import annotations

from pathlib import Path

import yaml

from ctan.cli import main

CONFIG = {
    "model": {
        "arch": "ctan",
        "spatial_dims": 2,
        "in_channels": 3,
        "image_size": [32, 32],
        "widths": [8, 16, 32],
    },
    "tasks": [
        {"name": "lesion", "kind": "segmentation", "classes": 1},
        {"name": "diagnosis", "kind": "classification", "classes": 7},
    ],
}


def test_models_prints_groups_macs_and_shapes(tmp_path: Path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["models", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for arch in ("STL", "HPS", "MTAN", "CTAN"):
        assert f"{arch}:" in out
    assert "multiply-accumulates" in out
    assert "task.diagnosis" in out and "heads.lesion" in out
    assert "(1, 1, 32, 32)" in out and "(1, 7)" in out


def test_bad_config_exits_2_with_message(tmp_path: Path, capsys):
    bad = dict(CONFIG, model=dict(CONFIG["model"], arch="ctna"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["models", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.arch" in err and "did you mean 'ctan'" in err


def test_summary_macs_grow_with_architecture(tmp_path: Path):
    from ctan.config import load_config
    from ctan.models.summary import summarize

    config = load_config(CONFIG)
    macs = {arch: summarize(config, arch).macs for arch in ("hps", "mtan", "ctan", "stl")}
    assert 0 < macs["hps"] < macs["mtan"] < macs["ctan"]
    assert macs["stl"] > macs["hps"]
