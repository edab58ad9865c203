"""The models under Opacus: validation, exact per-sample gradients, a DP-SGD step."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from factories import ARCHS, make_config
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator

from ctan.models import build_model, trainable_groups


def _loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A per-sample-separable loss touching every output: ``(B,)`` summed."""
    return sum(out.flatten(1).square().mean(dim=1).sum() for out in outputs.values())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_module_validator_finds_nothing(arch, spatial_dims):
    model = build_model(make_config(arch, spatial_dims))
    assert ModuleValidator.validate(model, strict=True) == []


@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("arch", ARCHS)
def test_per_sample_gradients_equal_single_example_loop(arch, norm):
    config = make_config(arch, 2, "three", size=16, widths=[8, 16], norm=norm)
    model = build_model(config).double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    expected = []
    for i in range(x.shape[0]):
        model.zero_grad()
        _loss(model(x[i : i + 1])).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    _loss(wrapped(x)).backward()
    for name, parameter in model.named_parameters():
        per_sample = parameter.grad_sample
        assert per_sample is not None, name
        for i in range(x.shape[0]):
            torch.testing.assert_close(per_sample[i], expected[i][name], rtol=1e-8, atol=1e-10)
    wrapped._close()


def test_per_sample_gradients_3d_ctan():
    config = make_config("ctan", 3, "seg+cls", size=8, widths=[8, 16])
    model = build_model(config).double()
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    expected = []
    for i in range(2):
        model.zero_grad()
        _loss(model(x[i : i + 1])).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    wrapped = GradSampleModule(model, loss_reduction="sum")
    _loss(wrapped(x)).backward()
    for name, parameter in model.named_parameters():
        for i in range(2):
            torch.testing.assert_close(parameter.grad_sample[i], expected[i][name])
    wrapped._close()


@pytest.mark.parametrize("arch", ARCHS)
def test_dp_sgd_step_on_a_site_holding_one_task(arch):
    model = build_model(make_config(arch, 2, "seg+cls", size=32))
    trainable_groups(model, ["lesion"])
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.rand(8, 1, 32, 32))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private_model, private_optimizer, private_loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
        images, masks = next(iter(private_loader))
        outputs = private_model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            outputs["lesion"], masks, reduction="none"
        ).mean(dim=(1, 2, 3)) + 0.0 * outputs["diagnosis"].sum(dim=1)
        loss.mean().backward()
        private_optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter.detach(), frozen_before[name])
        assert changed is parameter.requires_grad, name


def test_importing_the_models_leaves_the_root_logger_alone():
    """Opacus configures the root logger on import; left so, Flower's debug records would flood
    every site's and simulation's console."""
    probe = (
        "import logging, ctan.models; from flwr.common.logger import log; "
        "log(logging.DEBUG, 'hidden'); print(len(logging.getLogger().handlers))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0" and "hidden" not in done.stderr
