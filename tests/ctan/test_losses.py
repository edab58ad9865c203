"""Per-sample task losses: hand-computed values, masks, gradients and Opacus compatibility."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctan.data.base import Case
from ctan.losses import (
    build_task_loss,
    class_weights_from_cases,
    labelled_counts,
    logit_adjustments_from_cases,
    task_losses,
)
from ctan.tasks import TaskSpec

SEG = TaskSpec(name="lesion", kind="segmentation", classes=1)
ORGANS = TaskSpec(name="organs", kind="segmentation", classes=2, exclusive=False)
CLASSES = TaskSpec(name="tissue", kind="segmentation", classes=2, exclusive=True)
DOSE = TaskSpec(name="dose", kind="regression", classes=1)
DX = TaskSpec(name="dx", kind="classification", classes=3)
BINARY = TaskSpec(name="covid", kind="classification", classes=1)


def test_sigmoid_segmentation_matches_hand_value() -> None:
    # p = 0.5 everywhere, target all ones on 4 pixels: Dice loss 1 - 4/6, BCE log 2.
    loss = build_task_loss(SEG)(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.ones(1, 1))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(1 / 3 + math.log(2), abs=1e-4)


def test_softmax_segmentation_matches_hand_value_and_drops_ce_when_a_class_is_missing() -> None:
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    loss_fn = build_task_loss(CLASSES)
    full = loss_fn(torch.zeros(1, 2, 2, 2), target, torch.ones(1, 2))
    # softmax 0.5 per class: Dice per class 1 - 2/4 = 0.5, cross-entropy log 2.
    assert full.item() == pytest.approx(0.5 + math.log(2), abs=1e-4)
    partial = loss_fn(torch.zeros(1, 2, 2, 2), target, torch.tensor([[1.0, 0.0]]))
    assert partial.item() == pytest.approx(0.5, abs=1e-4)


def test_sigmoid_segmentation_scores_an_absent_structure_by_cross_entropy_only() -> None:
    # Channel 0 present (as in the test above), channel 1 labelled but empty: p = 0.5 gives
    # BCE log 2 and no Dice, so the sample's loss is the mean of (1/3 + log 2) and log 2.
    target = torch.zeros(1, 2, 2, 2)
    target[:, 0] = 1.0
    loss = build_task_loss(ORGANS)(torch.zeros(1, 2, 2, 2), target, torch.ones(1, 2))
    assert loss.item() == pytest.approx((1 / 3 + 2 * math.log(2)) / 2, abs=1e-4)
    # predicting nothing is rewarded on the empty channel only through cross-entropy
    confident_empty = torch.zeros(1, 2, 2, 2)
    confident_empty[:, 1] = -20.0
    lower = build_task_loss(ORGANS)(confident_empty, target, torch.ones(1, 2))
    assert lower.item() == pytest.approx((1 / 3 + math.log(2)) / 2, abs=1e-4)


def test_sigmoid_and_softmax_differ_on_same_logits() -> None:
    logits = torch.tensor([[[[2.0]], [[-1.0]]]])
    target = torch.tensor([[[[1.0]], [[0.0]]]])
    sigmoid = build_task_loss(ORGANS)(logits, target, torch.ones(1, 2))
    softmax = build_task_loss(CLASSES)(logits, target, torch.ones(1, 2))
    assert sigmoid.item() != pytest.approx(softmax.item(), abs=1e-3)


def test_per_channel_mask_ignores_uncontoured_structure() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4)
    target = (torch.rand(2, 2, 4, 4) > 0.5).float()
    loss_fn = build_task_loss(ORGANS)
    masked = loss_fn(logits, target, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    single = build_task_loss(SEG)(logits[:, :1], target[:, :1], torch.ones(2, 1))
    torch.testing.assert_close(masked, single)
    changed = target.clone()
    changed[:, 1] = 1 - changed[:, 1]
    torch.testing.assert_close(loss_fn(logits, changed, torch.tensor([[1.0, 0.0]] * 2)), masked)


def test_masked_l1_inside_roi() -> None:
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    roi = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    loss_fn = build_task_loss(DOSE)
    assert loss_fn(torch.zeros(1, 1, 2, 2), target, torch.ones(1, 1), roi).item() == 3.5
    assert loss_fn(torch.zeros(1, 1, 2, 2), target, torch.ones(1, 1)).item() == 2.5


def test_masked_l1_is_divided_by_the_task_scale() -> None:
    target = 70 * torch.rand(2, 1, 4, 4)
    prediction = 70 * torch.rand(2, 1, 4, 4)
    scaled = TaskSpec(name="dose", kind="regression", classes=1, scale=70)
    torch.testing.assert_close(
        build_task_loss(scaled)(prediction, target, torch.ones(2, 1)),
        build_task_loss(DOSE)(prediction / 70, target / 70, torch.ones(2, 1)),
    )


def test_cross_entropy_with_class_weights() -> None:
    loss_fn = build_task_loss(DX, class_weights=torch.tensor([1.0, 2.0, 3.0]))
    loss = loss_fn(torch.zeros(3, 3), torch.tensor([2, 0, 1]), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([3 * math.log(3), math.log(3), 0.0]))


def test_binary_cross_entropy_with_positive_weight() -> None:
    loss_fn = build_task_loss(BINARY, class_weights=torch.tensor([2.0]))
    loss = loss_fn(torch.zeros(2, 1), torch.tensor([1.0, 0.0]), torch.ones(2))
    torch.testing.assert_close(loss, torch.tensor([2 * math.log(2), math.log(2)]))


def test_class_weight_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="class_weights"):
        build_task_loss(SEG, class_weights=torch.ones(1))
    with pytest.raises(ValueError, match="3 values"):
        build_task_loss(DX, class_weights=torch.ones(2))


def _case(index: int, label: object) -> Case:
    return Case(
        case_id=f"c{index}",
        group=f"c{index}",
        site=None,
        labels={"dx": label},
        available={"dx": label is not None},
    )


def test_balanced_class_weights_from_training_labels() -> None:
    spec = TaskSpec(name="dx", kind="classification", classes=3, class_weights="balanced")
    cases = [_case(i, y) for i, y in enumerate([0, 0, 0, 0, 1, 1, None, None])]
    weights = class_weights_from_cases([spec, SEG], cases)
    assert list(weights) == ["dx"]
    # n = 6 labelled, K = 3: class 0 -> 6 / (3 * 4), class 1 -> 6 / (3 * 2), class 2 absent -> 0
    assert torch.allclose(weights["dx"], torch.tensor([0.5, 1.0, 0.0]))


def test_balanced_positive_weights_and_listed_weights() -> None:
    binary = TaskSpec(
        name="covid", kind="classification", classes=1, label="dx", class_weights="balanced"
    )
    cases = [_case(i, y) for i, y in enumerate([1.0, 0.0, 0.0, 0.0, None])]
    assert torch.allclose(class_weights_from_cases([binary], cases)["covid"], torch.tensor([3.0]))
    none_positive = [_case(i, 0.0) for i in range(3)]
    assert class_weights_from_cases([binary], none_positive)["covid"].tolist() == [1.0]
    listed = TaskSpec(name="dx", kind="classification", classes=3, class_weights=[1, 2, 0.5])
    assert class_weights_from_cases([listed], [])["dx"].tolist() == [1.0, 2.0, 0.5]


def test_class_weights_in_the_task_spec_are_checked() -> None:
    with pytest.raises(ValueError, match="classification tasks only"):
        TaskSpec(name="seg", kind="segmentation", classes=1, class_weights="balanced")
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        TaskSpec(name="dx", kind="classification", classes=3, class_weights=[1, 2])
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        TaskSpec(name="dx", kind="classification", classes=3, class_weights=[1, -2, 1])
    with pytest.raises(ValueError):
        TaskSpec(name="dx", kind="classification", classes=3, class_weights="inverse")


def test_logit_adjusted_cross_entropy_adds_the_offsets_inside_the_loss() -> None:
    offsets = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    adjusted = build_task_loss(DX, logit_adjustment=offsets)(logits, target, torch.ones(4))
    plain = build_task_loss(DX)(logits + offsets, target, torch.ones(4))
    torch.testing.assert_close(adjusted, plain)
    uniform = build_task_loss(DX, logit_adjustment=torch.full((3,), -2.0))
    torch.testing.assert_close(
        uniform(logits, target, torch.ones(4)), build_task_loss(DX)(logits, target, torch.ones(4))
    )
    with pytest.raises(ValueError, match="logit_adjustment applies to classification"):
        build_task_loss(SEG, logit_adjustment=torch.zeros(1))
    with pytest.raises(ValueError, match="3 finite values"):
        build_task_loss(DX, logit_adjustment=torch.tensor([0.0, -math.inf, 0.0]))


def _fitted_bias_gap(loss_fn: nn.Module, target: torch.Tensor) -> float:
    """Score gap (class 0 - class 1) of a bias-only classifier fitted to ``target``."""
    bias = nn.Parameter(torch.zeros(2))
    optimiser = torch.optim.LBFGS([bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn(bias.expand(len(target), 2), target, torch.ones(len(target))).mean()
        loss.backward()
        return loss

    optimiser.step(closure)
    return (bias[0] - bias[1]).item()


def test_logit_adjustment_learns_balanced_scores_from_skewed_labels() -> None:
    """On 90/10 labels plain cross-entropy learns the prior (scores log 9 apart), so its argmax
    is always the majority; the adjusted loss learns the prior's ratio minus the offsets' (the
    Laplace-smoothed prior), close to equal scores."""
    spec = TaskSpec(name="dx", kind="classification", classes=2, logit_adjustment=1.0)
    labels = [0] * 90 + [1] * 10
    offsets = logit_adjustments_from_cases([spec], [_case(i, y) for i, y in enumerate(labels)])
    target = torch.tensor(labels)
    plain = _fitted_bias_gap(build_task_loss(spec), target)
    adjusted = _fitted_bias_gap(build_task_loss(spec, logit_adjustment=offsets["dx"]), target)
    assert plain == pytest.approx(math.log(9), abs=1e-3)
    assert adjusted == pytest.approx(math.log(9) - math.log(91 / 11), abs=1e-3)
    assert abs(adjusted) < 0.1


def test_logit_adjustments_from_training_labels() -> None:
    spec = TaskSpec(name="dx", kind="classification", classes=3, logit_adjustment=0.5)
    cases = [_case(i, y) for i, y in enumerate([0, 0, 0, 1, None])]
    offsets = logit_adjustments_from_cases([spec, DX, SEG], cases)
    assert list(offsets) == ["dx"]
    # 4 labelled, Laplace: (3 + 1) / 7, (1 + 1) / 7, (0 + 1) / 7; times tau = 0.5
    expected = 0.5 * torch.log(torch.tensor([4 / 7, 2 / 7, 1 / 7]))
    torch.testing.assert_close(offsets["dx"], expected)
    binary = TaskSpec(
        name="covid", kind="classification", classes=1, label="dx", logit_adjustment=1
    )
    positives = [_case(i, y) for i, y in enumerate([1.0, 0.0, 0.0, 0.0])]
    # log-odds of the prior: (1 + 1) / (3 + 1)
    torch.testing.assert_close(
        logit_adjustments_from_cases([binary], positives)["covid"], torch.tensor([math.log(0.5)])
    )


def test_logit_adjustment_in_the_task_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="classification tasks only"):
        TaskSpec(name="seg", kind="segmentation", classes=1, logit_adjustment=1.0)
    with pytest.raises(ValueError, match="set one"):
        TaskSpec(
            name="dx",
            kind="classification",
            classes=3,
            logit_adjustment=1.0,
            class_weights="balanced",
        )
    with pytest.raises(ValueError):
        TaskSpec(name="dx", kind="classification", classes=3, logit_adjustment=-1.0)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="mask"):
        build_task_loss(SEG)(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.ones(2))
    with pytest.raises(ValueError, match="channels"):
        build_task_loss(SEG)(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), torch.ones(2, 2))


@pytest.mark.parametrize("spatial", [(6, 6), (4, 4, 4)])
@pytest.mark.parametrize("spec", [SEG, ORGANS, CLASSES, DOSE])
def test_pixel_losses_in_2d_and_3d(spec: TaskSpec, spatial: tuple[int, ...]) -> None:
    shape = (3, spec.classes, *spatial)
    target = (torch.rand(shape) > 0.5).float()
    roi = torch.ones(3, 1, *spatial)
    loss = build_task_loss(spec)(torch.randn(shape), target, torch.ones(3, spec.classes), roi)
    assert loss.shape == (3,)
    assert torch.isfinite(loss).all()


def _batch(masks: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    torch.manual_seed(1)
    outputs = {
        "lesion": torch.randn(3, 1, 8, 8, requires_grad=True),
        "dx": torch.randn(3, 3, requires_grad=True),
    }
    batch = {
        "targets": {
            "lesion": (torch.rand(3, 1, 8, 8) > 0.5).float(),
            "dx": torch.tensor([0, 2, 1]),
        },
        "target_masks": masks,
    }
    return outputs, batch


def test_masked_out_sample_contributes_nothing() -> None:
    masks = {"lesion": torch.tensor([[1.0], [0.0], [1.0]]), "dx": torch.tensor([1.0, 0.0, 1.0])}
    outputs, batch = _batch(masks)
    losses = task_losses(outputs, batch, [SEG, DX])
    per_sample = build_task_loss(DX)(outputs["dx"], batch["targets"]["dx"], torch.ones(3))
    torch.testing.assert_close(losses["dx"], (per_sample[0] + per_sample[2]) / 2)
    sum(losses.values()).backward()
    assert outputs["lesion"].grad[1].abs().sum() == 0
    assert outputs["dx"].grad[1].abs().sum() == 0

    changed_outputs = {k: v.detach().clone() for k, v in outputs.items()}
    changed_outputs["lesion"][1] = 5.0
    changed_outputs["dx"][1] = torch.tensor([9.0, -9.0, 0.0])
    batch["targets"]["dx"][1] = 0
    batch["targets"]["lesion"][1] = 1.0
    changed = task_losses(changed_outputs, batch, [SEG, DX])
    for name in losses:
        torch.testing.assert_close(changed[name], losses[name].detach())
    assert labelled_counts(batch, [SEG, DX]) == {"lesion": 2, "dx": 2}


def test_a_sample_with_an_empty_region_of_interest_is_not_counted_as_labelled() -> None:
    """OpenKBP margin slices hold no possible-dose voxel: their loss is zero by construction
    and must not halve the loss of the slices that have one."""
    target = torch.full((2, 1, 2, 2), 70.0)
    roi = torch.ones(2, 1, 2, 2)
    roi[1] = 0
    batch = {
        "targets": {"dose": target},
        "target_masks": {"dose": torch.ones(2, 1)},
        "roi": {"dose": roi},
    }
    losses = task_losses({"dose": torch.zeros(2, 1, 2, 2)}, batch, [DOSE])
    assert losses["dose"].item() == 70.0
    assert labelled_counts(batch, [DOSE]) == {"dose": 1}


def test_all_labels_missing_gives_zero_with_gradient() -> None:
    model = nn.Linear(4, 3)
    masks = {"lesion": torch.zeros(3, 1), "dx": torch.zeros(3)}
    outputs, batch = _batch(masks)
    outputs["dx"] = model(torch.randn(3, 4))
    losses = task_losses(outputs, batch, [SEG, DX])
    assert losses["dx"].item() == 0.0 and losses["lesion"].item() == 0.0
    assert losses["dx"].requires_grad
    losses["dx"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_task_losses_errors_name_missing_keys() -> None:
    outputs, batch = _batch({"lesion": torch.ones(3, 1), "dx": torch.ones(3)})
    with pytest.raises(ValueError, match="no prediction for task 'dose'"):
        task_losses(outputs, batch, [DOSE])
    del batch["target_masks"]["dx"]
    with pytest.raises(ValueError, match="target_masks"):
        task_losses(outputs, batch, [DX])


class _TinyMultiTask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.seg = nn.Conv2d(4, 1, 1)
        self.cls = nn.Linear(4, 3)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.norm(self.conv(image)))
        return {"lesion": self.seg(features), "dx": self.cls(features.mean(dim=(2, 3)))}


def test_one_dp_sgd_step_with_missing_labels() -> None:
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(0)
    images = torch.randn(4, 1, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=4)
    model = _TinyMultiTask()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = opacus.PrivacyEngine()
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )
    batch = {
        "targets": {
            "lesion": (torch.rand(4, 1, 8, 8) > 0.5).float(),
            "dx": torch.tensor([0, 1, 2, 0]),
        },
        "target_masks": {
            "lesion": torch.tensor([[1.0], [0.0], [1.0], [0.0]]),
            "dx": torch.zeros(4),
        },
    }
    (image,) = next(iter(loader))
    losses = task_losses(model(image), batch, [SEG, DX])
    optimizer.zero_grad()
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad_sample is not None, name
        assert parameter.grad_sample.shape[0] == 4, name
    optimizer.step()
