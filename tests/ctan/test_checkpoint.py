from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch
from factories import make_config

from ctan.checkpoint import FILE_MODE, atomic_write_bytes, load_checkpoint, save_checkpoint
from ctan.models import build_model


def test_saved_and_loaded_model_predicts_identically(tmp_path: Path):
    config = make_config("ctan", size=32, widths=[8, 16, 32])
    model = build_model(config).eval()
    with torch.no_grad():
        model.heads["diagnosis"].mlp[0].weight.add_(1.0)
    path = save_checkpoint(tmp_path / "c.pt", model, config, {"dice": 0.5}, {"epoch": 3})
    loaded = load_checkpoint(path, config)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), loaded.build_model()(x)
    for task in expected:
        assert torch.equal(expected[task], got[task])
    assert loaded.metrics == {"dice": 0.5} and loaded.extra == {"epoch": 3}
    assert loaded.code_version and loaded.created


def test_mismatched_config_is_refused_naming_the_difference(tmp_path: Path):
    config = make_config("ctan", size=32, widths=[8, 16, 32])
    path = save_checkpoint(tmp_path / "c.pt", build_model(config), config)
    with pytest.raises(ValueError, match="architecture is 'ctan' in the checkpoint but 'hps'"):
        load_checkpoint(path, make_config("hps", size=32, widths=[8, 16, 32]))
    with pytest.raises(ValueError, match=r"model\.widths is \[8, 16, 32\] in the checkpoint"):
        load_checkpoint(path, make_config("ctan", size=32, widths=[8, 16, 16]))
    with pytest.raises(ValueError, match="tasks"):
        load_checkpoint(path, make_config("ctan", mix="seg+reg", size=32, widths=[8, 16, 32]))


def test_missing_and_foreign_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format_version": 99, "code_version": "9.0"}, future)
    with pytest.raises(ValueError, match=r"future\.pt.*format 99 \(written by ctan 9\.0\)"):
        load_checkpoint(future)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(garbage)


def test_write_is_atomic(tmp_path: Path, monkeypatch):
    config = make_config("hps", size=32, widths=[8, 16, 32])
    path = save_checkpoint(tmp_path / "c.pt", build_model(config), config)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_model(config), config)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_checkpoint_with_settings_this_version_lacks_names_the_file_and_setting(tmp_path: Path):
    config = make_config("hps", size=32, widths=[8, 16, 32])
    path = save_checkpoint(tmp_path / "newer.pt", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    payload["config"]["train"]["setting_of_a_later_version"] = 1
    payload["code_version"] = "9.0"
    torch.save(payload, path)
    with pytest.raises(ValueError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert "newer.pt" in message and "written by ctan 9.0" in message
    assert "setting_of_a_later_version" in message


def test_weights_that_do_not_fit_their_own_config_are_refused_naming_the_file(tmp_path: Path):
    config = make_config("hps", size=32, widths=[8, 16, 32])
    path = save_checkpoint(tmp_path / "edited.pt", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"edited\.pt.*do not fit.*{first} \(1,\) instead of"):
        load_checkpoint(path)
    del payload["state_dict"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"edited\.pt' holds no model weights"):
        load_checkpoint(path)


def test_written_files_get_the_mode_of_the_umask(tmp_path: Path):
    """Temporary files are owner-only; a report or model others may read must not stay so."""
    path = atomic_write_bytes(tmp_path / "report.md", lambda f: f.write(b"x"))
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
