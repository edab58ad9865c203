"""``ctan data synth`` and ``ctan data check`` through the ``ctan`` entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctan.cli import main

MODEL = {
    "arch": "ctan",
    "spatial_dims": 2,
    "in_channels": 3,
    "image_size": [32, 32],
    "widths": [8, 16, 32],
}
TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": 1},
    {"name": "diagnosis", "kind": "classification", "classes": 7},
]


def write_config(folder: Path, root: Path) -> Path:
    """A HAM10000 config YAML reading ``root``."""
    path = folder / "config.yaml"
    config = {"model": MODEL, "tasks": TASKS, "data": {"format": "ham10000", "root": str(root)}}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def ham(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "ham"
    args = ["data", "synth", "ham10000", "--out", str(out), "--cases", "16", "--sites", "2"]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    return out


def test_synth_then_check_exits_0(ham: Path, tmp_path: Path, capsys) -> None:
    assert (ham / "HAM10000_metadata.csv").is_file()
    assert len(list(ham.rglob("ISIC_*.jpg"))) == 16
    assert main(["data", "check", "--config", str(write_config(tmp_path, ham))]) == 0
    out = capsys.readouterr().out
    assert "lesion" in out and "diagnosis" in out and "cases: 16" in out
    assert out.rstrip().endswith("OK") and "NOT OK" not in out


def test_check_of_a_corrupt_image_exits_1(ham: Path, tmp_path: Path, capsys) -> None:
    bad = sorted(ham.rglob("ISIC_*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    config = str(write_config(tmp_path, ham))
    assert main(["data", "check", "--config", config]) == 1
    assert bad.name in capsys.readouterr().out
    assert main(["data", "check", "--config", config, "--skip-bad"]) == 1
    out = capsys.readouterr().out
    assert "skipped 1 bad cases" in out and "cases: 15" in out


def test_check_of_a_missing_root_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(["data", "check", "--config", str(write_config(tmp_path, missing))]) == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.err and "data.root" in captured.err
    assert not captured.out


def test_synth_into_a_full_folder_exits_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["data", "synth", "ham10000", "--out", str(out), "--sites", "1"]) == 2
    assert str(out) in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
