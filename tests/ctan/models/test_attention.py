from __future__ import annotations

import pytest
import torch
from factories import make_config

from ctan.models import build_model
from ctan.models.attention import AttentionMask, CrossTaskBottleneck, TaskMasks, tokens_to_map


def test_mask_shape_and_range():
    mask = AttentionMask(2, 24, 16, "group", "relu", 8)
    out = mask(torch.randn(2, 24, 8, 8))
    assert out.shape == (2, 16, 8, 8)
    assert out.min() > 0 and out.max() < 1


@pytest.mark.parametrize("first_stage", [0, 1])
def test_task_masks_see_previous_stage_and_other_tasks(first_stage):
    widths = [8, 16, 32]
    masks = TaskMasks(
        3, widths, cross_tasks=2, first_stage=first_stage, norm="group", act="relu", norm_groups=8
    )
    assert list(masks) == [f"stage{s}" for s in range(first_stage, 3)]
    shared = torch.randn(2, 16, 4, 4, 4)
    previous = [torch.randn(2, 8, 8, 8, 8) for _ in range(3)]
    out = masks.attend(1, shared, previous[0], previous[1:])
    assert out.shape == shared.shape
    stem = torch.randn(2, 8, 8, 8, 8)
    first = masks.attend(0, stem, None, [])
    assert torch.equal(first, stem) is (first_stage == 1)


def test_bottleneck_shapes():
    block = CrossTaskBottleneck(channels=32, tokens=16, heads=4, act="gelu")
    feature = torch.randn(2, 32, 4, 4)
    tokens = block.tokens_of(feature)
    assert tokens.shape == (2, 16, 32)
    keys = torch.randn(2, 48, 32)
    out = block(tokens, keys)
    assert out.shape == (2, 16, 32)
    assert tokens_to_map(out, feature).shape == feature.shape


@pytest.mark.parametrize("arch", ["mtan", "ctan"])
def test_attention_on_every_stage(arch):
    model = build_model(make_config(arch, 2, "three", attention_from_stage=0))
    assert "attention.dose.masks.stage0.conv_in.weight" in model.state_dict()
    outputs = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in outputs.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
