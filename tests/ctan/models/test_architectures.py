from __future__ import annotations

import math
import typing

import pytest
import torch
from factories import ARCHS, TASK_MIXES, make_config, with_scale

from ctan.config import ModelConfig
from ctan.models import ARCHITECTURES, build_model, parameter_groups


def _expected_shape(task, batch: int, image_size: list[int]) -> tuple[int, ...]:
    if task.kind == "classification":
        return (batch, task.classes)
    return (batch, task.classes, *image_size)


def test_registry_matches_config_choices():
    allowed = typing.get_args(ModelConfig.model_fields["arch"].annotation)
    assert sorted(ARCHITECTURES) == sorted(allowed)


@pytest.mark.parametrize("mix", list(TASK_MIXES))
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_shapes_and_gradients(arch, spatial_dims, mix):
    config = make_config(arch, spatial_dims, mix)
    model = build_model(config)
    x = torch.randn(2, config.model.in_channels, *config.model.image_size)
    outputs = model(x)
    assert list(outputs) == [t.name for t in config.tasks]
    for task in config.tasks:
        assert outputs[task.name].shape == _expected_shape(task, 2, config.model.image_size)
        assert outputs[task.name].dtype == torch.float32
    sum(out.square().mean() for out in outputs.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_default_widths_2d_rgb_64():
    config = make_config("ctan", 2, "seg+cls", widths=[16, 32, 64, 128])
    outputs = build_model(config)(torch.randn(3, 3, 64, 64))
    assert outputs["lesion"].shape == (3, 1, 64, 64)
    assert outputs["diagnosis"].shape == (3, 7)


@pytest.mark.parametrize("arch", ARCHS)
def test_regression_scale_multiplies_the_output_and_adds_no_parameters(arch):
    plain = make_config(arch, mix="seg+reg", seed=3)
    scaled = with_scale(plain, "dose", 70.0)
    images = torch.randn(2, 3, 64, 64)
    plain_model, scaled_model = build_model(plain).eval(), build_model(scaled).eval()
    assert plain_model.state_dict().keys() == scaled_model.state_dict().keys()
    scaled_model.load_state_dict(plain_model.state_dict())
    with torch.no_grad():
        expected, outputs = plain_model(images), scaled_model(images)
    torch.testing.assert_close(outputs["dose"], 70 * expected["dose"])
    torch.testing.assert_close(outputs["organs"], expected["organs"])


@pytest.mark.parametrize("arch", ARCHS)
def test_structure_prior_sets_the_starting_probability_of_sigmoid_segmentations(arch):
    plain = make_config(arch, mix="seg+reg", seed=3)
    tasks = [t.model_copy(update={"prior": 0.01}) if t.name == "organs" else t for t in plain.tasks]
    model = build_model(plain.model_copy(update={"tasks": tasks})).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64))
    bias = model.state_dict()["heads.organs.output.bias"]
    torch.testing.assert_close(bias, torch.full_like(bias, math.log(0.01 / 0.99)))
    assert 0.002 < torch.sigmoid(outputs["organs"]).mean() < 0.05
    reference = build_model(plain).state_dict()
    assert not torch.equal(reference["heads.organs.output.bias"], bias)
    assert torch.equal(
        reference["heads.dose.output.bias"], model.state_dict()["heads.dose.output.bias"]
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_weights(arch):
    torch.manual_seed(123)
    first = build_model(make_config(arch, seed=7)).state_dict()
    torch.rand(10)
    second = build_model(make_config(arch, seed=7)).state_dict()
    other = build_model(make_config(arch, seed=8)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def _perturb_group(model, group: str) -> None:
    keys = parameter_groups(model)[group]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in keys:
                parameter.add_(torch.randn_like(parameter))


@pytest.mark.parametrize(
    ("arch", "group", "changes"),
    [
        ("ctan", "task.diagnosis", True),
        ("mtan", "task.diagnosis", False),
        ("hps", "heads.diagnosis", False),
        ("ctan", "heads.diagnosis", False),
    ],
)
def test_cross_task_attention_reaches_other_tasks_only_in_ctan(arch, group, changes):
    model = build_model(make_config(arch)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["lesion"]
        _perturb_group(model, group)
        after = model(x)["lesion"]
    assert (not torch.allclose(before, after)) is changes


def test_ctan_single_task_attends_to_itself():
    config = make_config("ctan")
    single = config.model_copy(update={"tasks": config.tasks[:1]})
    outputs = build_model(single)(torch.randn(1, 3, 64, 64))
    assert outputs["lesion"].shape == (1, 1, 64, 64)


def test_models_hold_no_batch_norm():
    for arch in ARCHS:
        model = build_model(make_config(arch, spatial_dims=3))
        kinds = {type(m).__name__ for m in model.modules()}
        assert not any("BatchNorm" in k for k in kinds), (arch, kinds)


def test_unknown_architecture_is_refused_with_choices():
    with pytest.raises(ValueError, match=r"allowed: \['ctan', 'hps', 'mtan', 'stl'\]"):
        build_model(make_config("ctan"), arch="unet")


@pytest.mark.parametrize(("stages", "shallow_matters"), [("all", True), ("last", False)])
def test_image_head_pools_the_stages_it_is_configured_for(stages, shallow_matters):
    config = make_config("ctan", 2, "seg+cls", image_head_stages=stages)
    head = build_model(config).heads["diagnosis"].eval()
    widths = config.model.widths
    features = [torch.randn(2, w, 64 >> s, 64 >> s) for s, w in enumerate(widths)]
    changed = [f + 1.0 for f in features[:-1]] + features[-1:]
    with torch.no_grad():
        before, after = head(features), head(changed)
    assert head.mlp[0].in_features == (sum(widths) if stages == "all" else widths[-1])
    assert (not torch.allclose(before, after)) is shallow_matters


def test_unknown_image_head_stages_is_refused_with_choices():
    with pytest.raises(ValueError, match=r"image_head_stages.*'all'.*'last'"):
        make_config("ctan", 2, "seg+cls", image_head_stages="first")
