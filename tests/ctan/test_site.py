"""A site's rounds without Flower: what it trains, sends, keeps and restores."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import derm_config, make_config, with_scale

from ctan.checkpoint import load_checkpoint
from ctan.config import load_config
from ctan.federation import (
    config_from_run_config,
    resume_from_run_config,
    simulated_site,
    simulated_site_cases,
    site_from_node_config,
)
from ctan.models import build_model, parameter_groups
from ctan.site import SiteRunner, model_signature, signature_difference


def federated_config(root: Path, tmp: Path, arch: str = "ctan"):
    config = derm_config(root, tmp, arch)
    raw = config.model_dump(mode="json")
    raw["train"]["epochs"] = 1
    raw["federation"] = {
        "id": "test-fed",
        "rounds": 2,
        "min_sites": 2,
        "partition": {"method": "iid", "num_sites": 3},
        "sites": [
            {"name": "a", "tasks": ["lesion", "diagnosis"]},
            {"name": "b", "tasks": ["lesion"]},
            {"name": "c", "tasks": ["diagnosis"]},
        ],
    }
    return load_config(raw)


def travelling(config) -> dict[str, np.ndarray]:
    model = build_model(config)
    state = model.state_dict()
    groups = parameter_groups(model)
    return {
        k: state[k].numpy() for g, ks in groups.items() if not g.startswith("heads.") for k in ks
    }


@pytest.fixture
def fed(ham_phantom: Path, tmp_path: Path):
    return federated_config(ham_phantom, tmp_path)


def runner(config, index: int, tmp: Path) -> SiteRunner:
    site = simulated_site(config, index, tmp / "state")
    return SiteRunner(config, site, simulated_site_cases(config, site.name))


def test_simulated_sites_hold_only_their_labels(fed, tmp_path):
    b = simulated_site_cases(fed, "b")
    assert b and not any(c.has_label("diagnosis") for c in b)
    assert any(c.has_label("lesion") for c in b)
    with pytest.raises(ValueError, match="partition-id 3 has no site"):
        simulated_site(fed, 3, tmp_path)


def test_site_sends_exactly_the_groups_it_trained(fed, tmp_path):
    site = runner(fed, 1, tmp_path)
    arrays = travelling(fed)
    output = site.train_round(1, arrays)
    assert output.groups == ["encoder", "task.lesion"]
    model = build_model(fed)
    groups = parameter_groups(model)
    assert sorted(output.arrays) == sorted(groups["encoder"] + groups["task.lesion"])
    assert not any(k.startswith("heads.") for k in output.arrays)
    assert output.counts["task.diagnosis"] == 0 and output.counts["task.lesion"] > 0
    assert output.counts["task.lesion"] == site.describe()["labelled"]["lesion"]
    changed = [k for k in output.arrays if not np.array_equal(output.arrays[k], arrays[k])]
    assert changed


def test_site_state_is_versioned_by_round_and_restored(fed, tmp_path):
    site = runner(fed, 0, tmp_path)
    arrays = travelling(fed)
    site.train_round(1, arrays)
    first = torch.load(site.folder / "round-0001.pt", weights_only=True)
    site.train_round(2, arrays)
    second = torch.load(site.folder / "round-0002.pt", weights_only=True)
    key = next(k for k in first["local"] if k.startswith("heads.lesion"))
    assert not torch.equal(first["local"][key], second["local"][key])
    restarted = runner(fed, 0, tmp_path)
    round_, state = restarted.latest_state(before=2)
    assert round_ == 1 and torch.equal(state["local"][key], first["local"][key])
    metrics, counts = restarted.evaluate_round(2, arrays)
    assert "lesion.dice" in metrics and counts["lesion"] > 0
    assert (site.folder / "model.pt").is_file()


def test_a_new_run_does_not_restore_the_states_of_an_earlier_longer_run(fed, tmp_path):
    site = runner(fed, 0, tmp_path)
    arrays = travelling(fed)
    site.train_round(1, arrays)
    earlier = site.folder / "round-0001.pt"
    for old_round in (18, 19, 20):
        (site.folder / f"round-{old_round:04d}.pt").write_bytes(earlier.read_bytes())
    rerun = runner(fed, 0, tmp_path)
    rerun.train_round(1, arrays)
    assert sorted(p.name for p in site.folder.glob("round-*.pt")) == ["round-0001.pt"]
    new = torch.load(earlier, weights_only=True)
    round_, restored = rerun.latest_state(before=2)
    assert round_ == 1
    assert all(torch.equal(restored["local"][k], v) for k, v in new["local"].items())
    for round_ in (2, 3, 4, 5):
        (site.folder / f"round-{round_:04d}.pt").write_bytes(earlier.read_bytes())
    rerun.train_round(5, arrays)
    assert sorted(p.name for p in site.folder.glob("round-*.pt")) == [
        "round-0003.pt",
        "round-0004.pt",
        "round-0005.pt",
    ]


def two_rounds_of_run_a(fed, tmp: Path) -> tuple[SiteRunner, dict[str, np.ndarray]]:
    """A site that trained and evaluated rounds 1 and 2 of run ``run-a``; the arrays sent."""
    site = runner(fed, 0, tmp)
    arrays = travelling(fed)
    for round_ in (1, 2):
        site.train_round(round_, arrays, run="run-a")
    site.evaluate_round(2, arrays, run="run-a")
    return site, arrays


def test_a_site_first_training_late_in_a_new_run_restores_nothing_of_an_earlier_run(fed, tmp_path):
    site, arrays = two_rounds_of_run_a(fed, tmp_path)
    assert (site.folder / "best.pt").is_file()
    site.evaluate_round(2, arrays, run="run-a")
    assert sorted(p.name for p in site.folder.glob("round-*.pt")) == [
        "round-0001.pt",
        "round-0002.pt",
    ]
    joined = runner(fed, 0, tmp_path)
    joined._join_run("run-b")
    assert not list(site.folder.glob("round-*.pt")) and not (site.folder / "best.pt").exists()
    assert (site.folder / "previous-run" / "best.pt").is_file()
    assert (site.folder / "run").read_text() == "run-b\n"
    joined.train_round(5, arrays, run="run-b")
    assert [p.name for p in site.folder.glob("round-*.pt")] == ["round-0005.pt"]
    joined.evaluate_round(5, arrays, run="run-b")
    assert load_checkpoint(site.folder / "best.pt").extra["round"] == 5


def test_a_run_resumed_after_a_new_run_was_started_finds_its_states(fed, tmp_path):
    site, arrays = two_rounds_of_run_a(fed, tmp_path)
    kept = (site.folder / "round-0002.pt").read_bytes()
    site.train_round(1, arrays, run="run-b")
    assert [p.name for p in site.folder.glob("round-*.pt")] == ["round-0001.pt"]
    assert (site.folder / "previous-run" / "round-0002.pt").read_bytes() == kept
    site.train_round(3, arrays, run="run-a")
    assert (site.folder / "round-0002.pt").read_bytes() == kept
    assert sorted(p.name for p in site.folder.glob("round-*.pt")) == [
        "round-0001.pt",
        "round-0002.pt",
        "round-0003.pt",
    ]
    assert load_checkpoint(site.folder / "best.pt").extra["round"] == 2
    assert [p.name for p in (site.folder / "previous-run").glob("round-*.pt")] == ["round-0001.pt"]
    assert (site.folder / "previous-run" / "run").read_text() == "run-b\n"


def test_best_round_is_kept_by_validation_loss(fed, tmp_path):
    site = runner(fed, 0, tmp_path)
    arrays = travelling(fed)
    site.train_round(1, arrays)
    site.evaluate_round(1, arrays)
    first = load_checkpoint(site.folder / "best.pt").extra
    assert first["round"] == 1 and np.isfinite(first["validation-loss"])
    rng = np.random.default_rng(0)
    spoilt = {k: v + rng.normal(0, 5, v.shape).astype(v.dtype) for k, v in arrays.items()}
    site.evaluate_round(2, spoilt)
    site.evaluate_round(3, spoilt, split="test")
    assert load_checkpoint(site.folder / "model.pt").extra["round"] == 3
    assert load_checkpoint(site.folder / "best.pt").extra == first
    site.evaluate_round(1, spoilt)
    rerun = load_checkpoint(site.folder / "best.pt").extra
    assert rerun["round"] == 1 and rerun["validation-loss"] > first["validation-loss"]


def test_describe_and_signature(fed, tmp_path):
    info = runner(fed, 2, tmp_path).describe()
    assert info["tasks"] == ["diagnosis"] and info["labelled"]["diagnosis"] > 0
    ours = model_signature(build_model(fed))
    assert info["model-keys"] == ours
    other = model_signature(build_model(federated_config(tmp_path, tmp_path, "hps")))
    assert "differ or are missing" in signature_difference(ours, other)
    assert signature_difference(ours, ours) == ""


def test_signature_names_a_different_regression_scale():
    plain = make_config("ctan", mix="seg+reg")
    scaled = with_scale(plain, "dose", 70.0)
    ours, theirs = model_signature(build_model(plain)), model_signature(build_model(scaled))
    assert "heads.dose.output_scale:70" in signature_difference(ours, theirs)


def test_site_with_unknown_tasks_is_refused(fed, tmp_path):
    site = simulated_site(fed, 0, tmp_path)
    wrong = site.__class__(site.name, ("dose",), tmp_path)
    with pytest.raises(ValueError, match="must hold at least one of them and no others"):
        SiteRunner(fed, wrong, [])


def hospital_node(tasks: str, data: Path, state: Path) -> dict[str, str]:
    """A hospital's node config: site h1 with HAM10000-layout data."""
    return {
        "site": "h1",
        "tasks": tasks,
        "data-format": "ham10000",
        "data-root": str(data),
        "state-dir": str(state),
    }


def test_node_config_of_a_hospital(fed, tmp_path):
    node = hospital_node("lesion, diagnosis", tmp_path, tmp_path / "s") | {"target-epsilon": 8.0}
    site = site_from_node_config(node, fed)
    assert site.tasks == ("lesion", "diagnosis") and site.privacy.target_epsilon == 8.0
    assert site.data.root == tmp_path
    with pytest.raises(ValueError, match=r"node config lacks \['data-root'\]"):
        site_from_node_config({k: v for k, v in node.items() if k != "data-root"}, fed)
    with pytest.raises(ValueError, match="unknown node config keys"):
        site_from_node_config({**node, "colour": "red"}, fed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"site": ".."}, r"site '\.\.' is not a site name"),
        ({"site": "a/b"}, r"site 'a/b' is not a site name"),
        ({"device": "gpu"}, r"device 'gpu' must be auto, cpu, cuda or cuda:N"),
        ({"data-root": "data/ham"}, r"data-root 'data/ham' must be an absolute path"),
        ({"state-dir": "state"}, r"state-dir 'state' must be an absolute path"),
        ({"target-epsilon": "abc"}, r"target-epsilon must be a number, got 'abc'"),
        ({"delta": 1e-6}, r"\['delta'\] need target-epsilon"),
        ({"cache-dir": "cache"}, r"cache-dir 'cache' must be an absolute path"),
        ({"skip-bad": "maybe"}, r"skip-bad must be true or false, got 'maybe'"),
    ],
)
def test_a_node_config_value_that_cannot_work_is_named(fed, tmp_path, change, message):
    node = hospital_node("lesion", tmp_path, tmp_path / "s") | change
    with pytest.raises(ValueError, match=message):
        site_from_node_config(node, fed)


def test_a_hospital_of_another_data_format_splits_by_its_own_groups(fed, tmp_path):
    by_lesion = fed.model_copy(
        update={
            "data": fed.data.model_copy(
                update={"split": fed.data.split.model_copy(update={"by": "lesion_id"})}
            )
        }
    )
    same = site_from_node_config(hospital_node("lesion", tmp_path, tmp_path / "s"), by_lesion)
    assert same.data.split.by == "lesion_id"
    node = hospital_node("lesion", tmp_path, tmp_path / "s") | {"data-format": "manifest"}
    other = site_from_node_config(node, by_lesion)
    assert other.data.split.by is None
    assert other.data.split.test == fed.data.split.test


def test_a_hospital_keeps_its_own_cache_and_bad_case_policy(fed, tmp_path):
    node = hospital_node("lesion", tmp_path, tmp_path / "s")
    plain = site_from_node_config(node, fed)
    assert plain.data.cache_dir is None and plain.data.skip_bad is False
    own = node | {"cache-dir": str(tmp_path / "cache"), "skip-bad": "true"}
    site = site_from_node_config(own, fed)
    assert site.data.cache_dir == tmp_path / "cache" and site.data.skip_bad is True
    assert site_from_node_config(node | {"skip-bad": False}, fed).data.skip_bad is False


def test_a_hospital_of_the_coordinators_format_takes_its_laterality(fed, tmp_path):
    from ctan.config import LateralityConfig

    manifest = fed.model_copy(
        update={
            "data": fed.data.model_copy(
                update={"format": "manifest", "laterality": LateralityConfig(axis=1)}
            )
        }
    )
    node = hospital_node("lesion", tmp_path, tmp_path / "s")
    same = site_from_node_config(node | {"data-format": "manifest"}, manifest)
    assert same.data.laterality == LateralityConfig(axis=1)
    assert site_from_node_config(node, manifest).data.laterality is None


def test_run_config_overrides(tmp_path):
    root = Path(__file__).resolve().parents[2]
    config = config_from_run_config(
        {"config": "configs/demo.yaml", "rounds": 7, "output-dir": str(tmp_path)}, root
    )
    assert config.federation.rounds == 7 and config.experiment.output_dir == tmp_path
    with pytest.raises(ValueError, match="unknown run config keys"):
        config_from_run_config({"config": "configs/demo.yaml", "round": 1}, root)
    with pytest.raises(ValueError, match=r"'rounds' must be a whole number >= 1.*-1"):
        config_from_run_config({"config": "configs/demo.yaml", "rounds": -1}, root)


def test_resume_must_be_a_boolean():
    assert resume_from_run_config({}) is False
    assert resume_from_run_config({"resume": True}) is True
    with pytest.raises(ValueError, match=r"'resume' must be true or false, got 'false'"):
        resume_from_run_config({"resume": "false"})


def test_site_without_labels_for_its_tasks_reports_none(fed, tmp_path, caplog):
    site = simulated_site(fed, 2, tmp_path)
    unlabelled = simulated_site_cases(fed, "b")
    with caplog.at_level(logging.WARNING, logger="ctan.site"):
        info = SiteRunner(fed, site, unlabelled).describe()
    assert info["tasks"] == [] and info["tasks-without-labels"] == ["diagnosis"]
    assert "no labels for ['diagnosis']" in caplog.text
    assert "the server will refuse this site" in caplog.text


def test_site_trains_and_reports_only_the_tasks_it_has_labels_for(fed, tmp_path):
    site = SiteRunner(fed, simulated_site(fed, 0, tmp_path), simulated_site_cases(fed, "b"))
    assert site.site.tasks == ("lesion", "diagnosis") and site.held_tasks() == ["lesion"]
    assert site.describe()["tasks"] == ["lesion"]
    output = site.train_round(1, travelling(fed))
    assert output.groups == ["encoder", "task.lesion"]
    assert output.counts["task.diagnosis"] == 0 and output.counts["task.lesion"] > 0
    assert not any(k.startswith("diagnosis.") for k in output.metrics)
    metrics, counts = site.evaluate_round(1, travelling(fed))
    assert list(counts) == ["lesion"] and not any(k.startswith("diagnosis.") for k in metrics)


def test_site_asking_for_privacy_refuses_to_train_without_it(fed, tmp_path):
    from ctan.config import PrivacyConfig

    site = simulated_site(fed, 0, tmp_path)
    private = site.__class__(
        site.name, site.tasks, tmp_path, privacy=PrivacyConfig(target_epsilon=8.0)
    )
    with pytest.raises(ValueError, match="asks for differential privacy"):
        SiteRunner(fed, private, [])


def test_partition_command_prints_sites(fed, tmp_path, capsys):
    import yaml

    from ctan.cli import main

    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(fed.model_dump(mode="json")))
    assert main(["data", "partition", "--config", str(path), "--label", "diagnosis"]) == 0
    out = capsys.readouterr().out
    assert "cases per site" in out and "diagnosis=missing" in out
    for site in ("a", "b", "c"):
        assert f"\n  {site} " in out
    raw = fed.model_dump(mode="json")
    raw["data"]["split"] = {"validation": 0.01, "test": 0.01}
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", "partition", "--config", str(path)]) == 1
    assert "problem: site 'a' cannot split its" in capsys.readouterr().out


def test_a_site_model_is_scored_on_the_split_it_held_out_and_only_for_its_tasks(fed, tmp_path):
    from ctan.checkpoint import save_checkpoint
    from ctan.prediction import evaluate_checkpoint, predict_to_folder

    site = runner(fed, 1, tmp_path)
    arrays = travelling(fed)
    site.train_round(1, arrays)
    held_out, _ = site.evaluate_round(1, arrays, split="test")
    path = site.folder / "model.pt"
    scored = evaluate_checkpoint(path, split="test")
    assert scored["cases"] == len(site.splits()["test"])
    assert scored["metrics"]["lesion"]["dice"] == pytest.approx(held_out["lesion.dice"])
    assert list(scored["metrics"]) == ["lesion"] and scored["untrained-tasks"] == ["diagnosis"]
    assert evaluate_checkpoint(path, split="all")["cases"] == len(simulated_site_cases(fed, "b"))
    images = next(fed.data.root.glob("HAM10000_images_part_1"))
    written = predict_to_folder(path, images, tmp_path / "predicted")
    assert written and all(p.parent.name == "lesion" for p in written)
    assert not (tmp_path / "predicted" / "predictions.csv").exists()

    saved = load_checkpoint(path)
    saved.extra["split"]["digests"]["test"] = "0" * 64
    moved = save_checkpoint(tmp_path / "moved.pt", saved.build_model(), fed, {}, saved.extra)
    with pytest.raises(ValueError, match=r"moved\.pt.*site 'b'.*no longer splits into the test"):
        evaluate_checkpoint(moved)


def test_a_hospital_model_is_scored_on_the_split_it_held_out(fed, ham_phantom, tmp_path):
    from ctan.prediction import evaluate_checkpoint

    node = hospital_node("lesion", ham_phantom, tmp_path / "s")
    site = SiteRunner(fed, site_from_node_config(node, fed))
    arrays = travelling(fed)
    site.train_round(1, arrays)
    held_out, _ = site.evaluate_round(1, arrays, split="test")
    scored = evaluate_checkpoint(site.folder / "model.pt", split="test")
    assert scored["cases"] == len(site.splits()["test"]) and list(scored["metrics"]) == ["lesion"]
    assert scored["metrics"]["lesion"]["dice"] == pytest.approx(held_out["lesion.dice"])


def test_a_hospital_trains_only_the_tasks_it_joined_for_whatever_its_data_holds(
    fed, ham_phantom, tmp_path
):
    site = SiteRunner(
        fed, site_from_node_config(hospital_node("lesion", ham_phantom, tmp_path), fed)
    )
    assert list(site.labelled_counts()) == ["lesion"] and site.held_tasks() == ["lesion"]
    diagnosis = fed.task("diagnosis").label
    assert not any(c.available[diagnosis] for c in site.splits()["train"])
    output = site.train_round(1, travelling(fed))
    assert output.groups == ["encoder", "task.lesion"]
    assert output.counts["task.diagnosis"] == 0
    assert not any(k.startswith("diagnosis.") for k in output.metrics)


def test_a_site_saves_no_model_before_its_heads_are_trained(fed, tmp_path, caplog):
    site = runner(fed, 0, tmp_path)
    arrays = travelling(fed)
    with caplog.at_level(logging.WARNING, logger="ctan.site"):
        metrics, _ = site.evaluate_round(1, arrays)
    assert "lesion.dice" in metrics and "heads are untrained" in caplog.text
    assert not (site.folder / "model.pt").exists() and not (site.folder / "best.pt").exists()
    site.train_round(2, arrays)
    site.evaluate_round(2, arrays)
    assert (site.folder / "model.pt").is_file() and (site.folder / "best.pt").is_file()


def test_a_site_whose_tasks_changed_trains_on_with_a_fresh_optimiser(
    fed, ham_phantom, tmp_path, caplog
):
    arrays = travelling(fed)
    state = tmp_path / "state"
    lesion = hospital_node("lesion", ham_phantom, state)
    SiteRunner(fed, site_from_node_config(lesion, fed)).train_round(1, arrays)
    both = hospital_node("lesion,diagnosis", ham_phantom, state)
    with caplog.at_level(logging.WARNING, logger="ctan.site"):
        output = SiteRunner(fed, site_from_node_config(both, fed)).train_round(2, arrays)
    assert sorted(output.groups) == ["encoder", "task.diagnosis", "task.lesion"]
    assert "it trained ['lesion'] until round 1 and trains ['lesion', 'diagnosis'] now" in (
        caplog.text
    )


def test_a_site_state_of_other_heads_is_refused_naming_the_file(fed, tmp_path):
    runner(fed, 0, tmp_path).train_round(1, travelling(fed))
    raw = fed.model_dump(mode="json")
    raw["model"]["head_hidden"] = 32
    wider = load_config(raw)
    with pytest.raises(ValueError) as refused:
        runner(wider, 0, tmp_path).train_round(2, travelling(wider))
    message = str(refused.value)
    assert "round-0001.pt was saved by a model with other heads" in message
    assert "128 saved, " in message and "the model config changed" in message


def test_a_hospital_whose_data_changes_during_a_run_is_stopped(fed, ham_phantom, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(ham_phantom, data)
    node = hospital_node("lesion", data, tmp_path / "state")
    arrays = travelling(fed)
    SiteRunner(fed, site_from_node_config(node, fed)).train_round(1, arrays, run="run-a")
    metadata = data / "HAM10000_metadata.csv"
    rows = metadata.read_text().splitlines()
    metadata.write_text("\n".join(rows[:-5]) + "\n")
    with pytest.raises(ValueError, match=r"'h1': the data changed during run run-a: its \["):
        SiteRunner(fed, site_from_node_config(node, fed)).train_round(2, arrays, run="run-a")
    SiteRunner(fed, site_from_node_config(node, fed)).train_round(1, arrays, run="run-b")


def test_an_optimiser_state_of_another_layout_starts_afresh_with_a_warning(
    ham_phantom, tmp_path, caplog
):
    """A site that saved its state before uncertainty weighting's log-variances got their own
    parameter group resumes its run with a fresh optimiser rather than failing each round."""
    raw = federated_config(ham_phantom, tmp_path).model_dump(mode="json")
    raw["train"]["weighting"] = "uncertainty"
    fed = load_config(raw)
    site = runner(fed, 0, tmp_path)
    site.train_round(1, travelling(fed))
    path = site.folder / "round-0001.pt"
    state = torch.load(path, weights_only=True)
    groups = state["trainer"]["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop()["params"]
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="ctan.site"):
        runner(fed, 0, tmp_path).train_round(2, travelling(fed))
    assert "optimiser state of round 1 does not fit this version's optimiser" in caplog.text
