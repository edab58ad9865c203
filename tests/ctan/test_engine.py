from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import ARCHS, derm_config

from ctan.data.dataset import CaseDataset, build_cases
from ctan.engine import ProximalTerm, TaskTrainer, derive_seed, make_loader, resolve_device
from ctan.losses import class_weights_from_cases
from ctan.models import build_model, parameter_groups, trainable_groups


def _loader(config, cases, shuffle=True):
    return make_loader(CaseDataset(cases, config, train=False), 8, shuffle=shuffle, seed=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_lowers_the_loss_for_every_architecture(arch, ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path, arch)
    cases = list(build_cases(config))[:24]
    loader = _loader(config, cases)
    trainer = TaskTrainer(build_model(config), config.tasks, config.train)
    first = trainer.train_epoch(loader)
    for _ in range(4):
        last = trainer.train_epoch(loader)
    assert last.total_loss < 0.9 * first.total_loss, (first.losses, last.losses)
    assert first.samples == 24 and first.labelled["diagnosis"] == 24


def test_evaluate_reports_every_metric_and_counts(ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path)
    cases = list(build_cases(config))[:16]
    trainer = TaskTrainer(build_model(config), config.tasks, config.train)
    result = trainer.evaluate(_loader(config, cases, shuffle=False))
    assert set(result.metrics) == {"lesion", "diagnosis"}
    assert list(result.metrics["diagnosis"]) == ["balanced_accuracy", "auc"]
    assert result.samples == 16
    assert result.labelled["lesion"] == sum(c.has_label("lesion") for c in cases)
    assert "lesion/dice" in result.flat() and "diagnosis/loss" in result.flat()


def test_empty_split_is_refused(ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path)
    with pytest.raises(ValueError, match="data split is empty"):
        _loader(config, [])


def test_frozen_groups_stay_unchanged_while_site_trains(ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path)
    model = build_model(config)
    trained = trainable_groups(model, ["lesion"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = TaskTrainer(model, config.tasks, config.train)
    trainer.train_epoch(_loader(config, list(build_cases(config))[:16]))
    after = {k: v.cpu() for k, v in model.state_dict().items()}
    for group, keys in parameter_groups(model).items():
        changed = any(not torch.equal(before[k], after[k]) for k in keys)
        assert changed is (group in trained), group


def test_proximal_term_pulls_towards_reference():
    layer = torch.nn.Linear(2, 1)
    reference = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    term = ProximalTerm(mu=2.0, reference=reference)
    expected = sum(p.square().sum() for p in layer.parameters())
    torch.testing.assert_close(term(layer), expected)
    assert ProximalTerm(mu=0.0, reference=reference)(layer) is None


def test_optimiser_state_round_trips(ham_phantom: Path, tmp_path):
    config = derm_config(ham_phantom, tmp_path, weighting="uncertainty")
    loader = _loader(config, list(build_cases(config))[:8])
    trainer = TaskTrainer(build_model(config), config.tasks, config.train)
    trainer.train_epoch(loader)
    state = trainer.state_dict()
    other = TaskTrainer(build_model(config), config.tasks, config.train)
    other.load_state_dict(state)
    assert other.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()
    torch.testing.assert_close(
        other.weighting.state_dict()["log_vars"], trainer.weighting.state_dict()["log_vars"]
    )


def test_epoch_loss_is_a_mean_over_labelled_samples_and_evaluation_is_unweighted(
    ham_phantom: Path, tmp_path
):
    config = derm_config(ham_phantom, tmp_path)
    config = config.model_copy(update={"train": config.train.model_copy(update={"lr": 1e-12})})
    cases = list(build_cases(config))[:9]
    loader = _loader(config, cases, shuffle=False)
    model = build_model(config)
    balanced = [
        t.model_copy(update={"class_weights": "balanced"}) if t.kind == "classification" else t
        for t in config.tasks
    ]
    weights = class_weights_from_cases(balanced, cases)
    assert weights
    weighted = TaskTrainer(model, config.tasks, config.train, class_weights=weights)
    plain = TaskTrainer(model, config.tasks, config.train)
    expected = plain.evaluate(loader).losses
    assert weighted.evaluate(loader).losses == pytest.approx(expected)
    epoch = plain.train_epoch(loader)
    assert epoch.losses == pytest.approx(expected, rel=1e-4), "a batch of 1 weighs as 1 sample"
    assert "scaler" in plain.state_dict()


def test_device_and_seed_helpers():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert derive_seed(0, "site-a", 3) == derive_seed(0, "site-a", 3)
    assert derive_seed(0, "site-a", 3) != derive_seed(0, "site-b", 3)


def test_seeding_makes_cudnn_choose_deterministic_algorithms() -> None:
    from ctan.engine import seed_everything

    torch.backends.cudnn.benchmark = True
    seed_everything(0)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_weight_decay_leaves_the_uncertainty_weights_alone(ham_phantom: Path, tmp_path):
    """Decay would pull every log-variance towards 0, towards equal weights, whatever the
    losses say."""
    config = derm_config(ham_phantom, tmp_path, weighting="uncertainty")
    train = config.train.model_copy(update={"weight_decay": 0.1})
    trainer = TaskTrainer(build_model(config), config.tasks, train)
    groups = trainer.optimizer.param_groups
    weighting = [g for g in groups if any(p is trainer.weighting.log_vars for p in g["params"])]
    assert [g["weight_decay"] for g in weighting] == [0.0]
    assert any(g["weight_decay"] == 0.1 for g in groups)
