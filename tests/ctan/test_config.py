from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctan.config import ConfigError, load_config

CONTRACT_YAML = """
model:
  arch: ctan            # stl | hps | mtan | ctan
  spatial_dims: 2
  in_channels: 3
  image_size: [64, 64]
tasks:
  - {name: lesion, kind: segmentation, classes: 1}
  - {name: diagnosis, kind: classification, classes: 7}
"""


def _base() -> dict:
    return yaml.safe_load(CONTRACT_YAML)


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return str(info.value)


def test_contract_yaml_loads_and_builds(tmp_path: Path):
    from ctan.models import build_model

    path = tmp_path / "exp.yaml"
    path.write_text(CONTRACT_YAML)
    config = load_config(path)
    assert config.model.arch == "ctan"
    assert [t.name for t in config.tasks] == ["lesion", "diagnosis"]
    assert config.tasks[1].metrics == ["balanced_accuracy", "auc"]
    assert set(build_model(config)(__import__("torch").zeros(1, 3, 64, 64))) == {
        "lesion",
        "diagnosis",
    }


def test_design_example_config_loads(tmp_path: Path):
    design = _base()
    design |= {
        "experiment": {"name": "derm-ctan", "seed": 0, "output_dir": "runs"},
        "data": {
            "format": "ham10000",
            "root": "../data/ham",
            "split": {"validation": 0.2, "test": 0.2, "by": "lesion_id"},
        },
        "train": {
            "epochs": 10,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 1.0e-3,
            "weighting": "equal",
            "device": "auto",
        },
        "federation": {
            "id": "derm-demo",
            "rounds": 20,
            "local_epochs": 1,
            "strategy": "fedavg",
            "min_sites": 2,
            "heads": "local",
            "sites": [
                {"name": "vidir_modern", "tasks": ["lesion", "diagnosis"]},
                {"name": "rosendahl", "tasks": ["lesion"]},
                {
                    "name": "vidir_molemax",
                    "tasks": ["lesion", "diagnosis"],
                    "privacy": {"target_epsilon": 8.0},
                },
            ],
        },
    }
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "derm.yaml"
    path.write_text(yaml.safe_dump(design))
    config = load_config(path)
    assert config.data.root == (tmp_path / "data" / "ham").resolve()
    assert config.experiment.output_dir == folder / "runs"
    assert config.federation.sites[2].privacy.target_epsilon == 8.0


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("model", "arch", "unet", "allowed: 'stl', 'hps', 'mtan' or 'ctan'"),
        ("model", "arch", "ctna", "did you mean 'ctan'"),
        ("model", "norm", "batch", "allowed: 'group', 'instance'"),
        ("model", "norm", "layer", "allowed: 'group' or 'instance'"),
        ("model", "spatial_dims", 4, "model.spatial_dims: got 4"),
        ("model", "in_channels", "three", "model.in_channels"),
        ("model", "image_size", [60, 64], "multiple of 8; for example image_size [64, 64]"),
        ("model", "image_size", [64, 64, 64], "spatial_dims is 2"),
        ("model", "widths", [12, 32, 64, 128], "not divisible by norm_groups 8"),
        ("model", "image_size", [-32, 64], "must be positive on every side"),
        ("model", "in_channels", True, "model.in_channels: a number is needed, not the boolean"),
        ("train", "epochs", True, "train.epochs: a number is needed, not the boolean True"),
        ("train", "lr", False, "train.lr: a number is needed"),
        ("experiment", "name", "../escape", "experiment.name: it names a folder"),
        ("data", "phantom", {}, "phantom applies to formats 'ham10000', 'openkbp' and 'stoic'"),
    ],
)
def test_bad_values_name_field_and_allowed_values(section, key, value, expected):
    raw = _base() | {"data": {"format": "manifest", "root": "cases.csv"}}
    raw.setdefault(section, {})[key] = value
    message = _error(raw)
    assert expected in message
    assert f"{section}" in message


def test_unknown_keys_are_refused_with_allowed_keys():
    raw = _base()
    raw["model"]["widht"] = [8, 16]
    raw["trian"] = {}
    message = _error(raw)
    assert "model.widht: unknown key" in message and "did you mean 'widths'" in message
    assert "trian: unknown key" in message and "did you mean 'train'" in message


def test_bad_task_kind_and_duplicate_task():
    raw = _base()
    raw["tasks"][0]["kind"] = "detection"
    assert "tasks[0].kind: got 'detection'; allowed: 'segmentation'" in _error(raw)
    raw = _base()
    raw["tasks"].append({"name": "lesion", "kind": "regression", "classes": 1})
    assert "tasks ['lesion'] are listed more than once" in _error(raw)


def test_task_rules():
    raw = _base()
    raw["tasks"][0]["name"] = "lesion.mask"
    assert "must start with a letter" in _error(raw)
    raw = _base()
    raw["tasks"][1]["metrics"] = ["dice"]
    assert "does not apply to a classification task" in _error(raw)
    raw = _base()
    raw["tasks"][0]["exclusive"] = True
    assert "single output channel" in _error(raw)


def test_federation_sites_must_hold_known_tasks():
    raw = _base()
    raw["federation"] = {"id": "f", "sites": [{"name": "a", "tasks": ["dose"]}]}
    assert "unknown tasks ['dose']" in _error(raw)


def test_server_optimizer_belongs_to_adaptive_strategies():
    raw = _base()
    raw["federation"] = {"id": "f", "strategy": "fedadam", "server_optimizer": {"lr": 0.003}}
    server = load_config(raw).federation.server_optimizer
    assert (server.lr, server.beta_1, server.beta_2, server.tau) == (0.003, 0.9, 0.99, 1e-3)
    raw["federation"]["strategy"] = "fedavg"
    message = _error(raw)
    assert "server_optimizer applies to strategy fedadam | fedyogi only, not 'fedavg'" in message
    raw["federation"] |= {"strategy": "fedyogi", "server_optimizer": {"lr": 0, "tau": 1e-3}}
    assert "federation.server_optimizer.lr" in _error(raw)


def test_server_sgd_belongs_to_fedavgm():
    raw = _base()
    raw["federation"] = {"id": "f", "strategy": "fedavgm", "server_sgd": {"lr": 3.0}}
    sgd = load_config(raw).federation.server_sgd
    assert (sgd.lr, sgd.momentum) == (3.0, 0.0)
    raw["federation"]["strategy"] = "fedprox"
    assert "server_sgd applies to strategy fedavgm only, not 'fedprox'" in _error(raw)
    raw["federation"] |= {"strategy": "fedavgm", "server_sgd": {"momentum": 1.0}}
    assert "federation.server_sgd.momentum" in _error(raw)


def test_yaml_file_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a folder; give the YAML file"):
        load_config(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)
    twice = tmp_path / "twice.yaml"
    twice.write_text(CONTRACT_YAML + "train:\n  epochs: 5\ntrain:\n  epochs: 1\n")
    with pytest.raises(
        ConfigError, match=r"twice\.yaml: .*'train' is given twice \(lines 10 and 12"
    ):
        load_config(twice)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_fingerprint_changes_with_shapes_only():
    config = load_config(_base())
    same = load_config(_base())
    raw = _base()
    raw["tasks"][1]["classes"] = 5
    assert config.model.fingerprint(config.tasks) == same.model.fingerprint(same.tasks)
    changed = load_config(raw)
    assert config.model.fingerprint(config.tasks) != changed.model.fingerprint(changed.tasks)


def test_augmentation_axes_must_exist_and_be_distinct():
    raw = _base()
    raw["train"] = {"augmentation": {"flip_axes": [1, 2]}}
    assert "train.augmentation.flip_axes [2] do not exist" in _error(raw)
    assert "allowed: [0, 1]" in _error(raw)
    raw["train"] = {"augmentation": {"flip_axes": [1, 1]}}
    assert "must be distinct" in _error(raw)
    raw["train"] = {"augmentation": {"flip_axes": [1], "affine": False}}
    augmentation = load_config(raw).train.augmentation
    assert (augmentation.flip_axes, augmentation.affine, augmentation.intensity) == (
        [1],
        False,
        True,
    )


def test_manifest_laterality_names_what_is_wrong(tmp_path: Path):
    raw = _base()
    raw["tasks"][0] = {"name": "parotids", "kind": "segmentation", "classes": 2}
    raw["data"] = {
        "format": "manifest",
        "root": str(tmp_path),
        "laterality": {"axis": 1, "pairs": {"parotids": [[0, 1]]}},
    }
    laterality = load_config(raw).data.laterality
    assert (laterality.axis, laterality.pairs) == (1, {"parotids": [(0, 1)]})
    raw["data"]["laterality"]["axis"] = 2
    assert "data.laterality.axis 2 does not exist for spatial_dims 2" in _error(raw)
    raw["data"]["laterality"] = {"axis": 0, "pairs": {"diagnosis": [[0, 1]]}}
    assert "names 'diagnosis', not the label of a pixel task; allowed: ['parotids']" in _error(raw)
    raw["data"]["laterality"] = {"axis": 0, "pairs": {"parotids": [[1, 2]]}}
    assert "pair [1, 2] must be two distinct channels 0..1" in _error(raw)
    raw["data"]["laterality"] = {"axis": 0, "pairs": {"parotids": [[1, 1]]}}
    assert "must be two distinct channels" in _error(raw)
    raw["tasks"][0]["classes"] = 3
    raw["data"]["laterality"] = {"axis": 0, "pairs": {"parotids": [[0, 1], [1, 2]]}}
    assert "name a channel twice" in _error(raw)
    raw["data"] = {"format": "openkbp", "root": str(tmp_path), "laterality": {"axis": 0}}
    assert "laterality applies to format 'manifest' only" in _error(raw)
