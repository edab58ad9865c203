"""What the heads output under mixed precision."""

from __future__ import annotations

import torch

from ctan.models.heads import ImageHead, PixelDecoder


def test_heads_predict_in_float32_under_mixed_precision() -> None:
    """bfloat16 would put a dose scaled to 70 Gy on a 0.25-0.5 Gy grid; the prediction is the
    float32 result of the last layer on the (mixed-precision) features."""
    torch.manual_seed(0)
    features = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    dose = PixelDecoder(2, [8, 16], 1, "group", "relu", 8, output_scale=70.0)
    diagnosis = ImageHead([8, 16], 7, hidden=32, act="relu", dropout=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predicted = dose(features)
        scores = diagnosis(features)
    assert predicted.dtype == torch.float32 and scores.dtype == torch.float32
    on_bf16_grid = predicted == predicted.to(torch.bfloat16).float()
    assert not on_bf16_grid.all(), "float32 values, not bfloat16 ones stored as float32"
