from __future__ import annotations

import pytest
import torch
from factories import ARCHS, TASK_MIXES, make_config

from ctan.models import build_model, group_of, parameter_groups, trainable_groups

TOP_LEVEL = {"encoder", "attention", "task_encoders", "heads"}


@pytest.mark.parametrize("mix", list(TASK_MIXES))
@pytest.mark.parametrize("arch", ARCHS)
def test_groups_are_disjoint_cover_state_dict_and_follow_naming(arch, mix):
    config = make_config(arch, mix=mix)
    model = build_model(config)
    groups = parameter_groups(model)
    keys = [k for ks in groups.values() for k in ks]
    assert sorted(keys) == sorted(model.state_dict())
    assert len(keys) == len(set(keys))
    assert all(groups.values()), "empty groups must be absent"
    tasks = [t.name for t in config.tasks]
    expected = ["encoder"] if arch != "stl" else []
    expected += [f"task.{t}" for t in tasks] if arch != "hps" else []
    expected += [f"heads.{t}" for t in tasks]
    assert list(groups) == expected
    assert {k.split(".")[0] for k in keys} <= TOP_LEVEL
    for group, group_keys in groups.items():
        if group.startswith(("task.", "heads.")):
            task = group.split(".", 1)[1]
            assert all(k.split(".")[1] == task for k in group_keys)


def test_stl_task_encoders_are_task_groups():
    groups = parameter_groups(build_model(make_config("stl")))
    assert all(k.startswith("task_encoders.lesion.") for k in groups["task.lesion"])
    assert "encoder" not in groups


def test_key_outside_contract_is_refused():
    with pytest.raises(ValueError, match="belongs to no parameter group"):
        group_of("decoder.weight")


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_groups_freezes_other_tasks(arch):
    model = build_model(make_config(arch))
    trained = trainable_groups(model, ["lesion"])
    expected = ["encoder"] if arch != "stl" else []
    expected += ["task.lesion"] if arch != "hps" else []
    expected += ["heads.lesion"]
    assert trained == expected
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad is (group_of(name) in expected), name
    assert trainable_groups(model, ["lesion", "diagnosis"]) == list(parameter_groups(model))
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_branches_still_shape_ctan_output():
    model = build_model(make_config("ctan"))
    trainable_groups(model, ["lesion"])
    outputs = model(torch.randn(2, 3, 64, 64))
    outputs["lesion"].mean().backward()
    frozen = [n for n, p in model.named_parameters() if n.startswith("attention.diagnosis.")]
    assert frozen and all(model.get_parameter(n).grad is None for n in frozen)
    encoder_grads = [p.grad for n, p in model.named_parameters() if n.startswith("encoder.")]
    assert all(g is not None for g in encoder_grads)


@pytest.mark.parametrize("tasks", [[], ["unknown"]])
def test_trainable_groups_refuses_unknown_or_empty_tasks(tasks):
    with pytest.raises(ValueError, match="non-empty subset"):
        trainable_groups(build_model(make_config("ctan")), tasks)
