from __future__ import annotations

import numpy as np
import torch

from ctan.data.transforms import augmentation


def _flipped_axes(transform, image: torch.Tensor, draws: int) -> set[int]:
    """The spatial axes along which some draw of ``transform`` mirrored ``image``."""
    seen = set()
    for _ in range(draws):
        out = torch.as_tensor(transform({"image": image.clone()})["image"])
        for axis in range(image.ndim - 1):
            if torch.equal(out, image.flip(axis + 1)):
                seen.add(axis)
    return seen


def test_only_the_chosen_axes_are_mirrored():
    image = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    only_last = augmentation(
        "image", [], [], 3, seed=0, flip_axes=[2], affine=False, intensity=False
    )
    assert _flipped_axes(only_last, image, 20) == {2}
    every = augmentation("image", [], [], 3, seed=0, affine=False, intensity=False)
    assert _flipped_axes(every, image, 40) == {0, 1, 2}


def test_nothing_chosen_leaves_the_sample_unchanged():
    image = torch.from_numpy(np.random.default_rng(0).random((1, 8, 8), dtype=np.float32))
    label = (image > 0.5).float()
    nothing = augmentation(
        "image", [], ["mask"], 2, seed=0, flip_axes=[], affine=False, intensity=False
    )
    for _ in range(5):
        out = nothing({"image": image.clone(), "mask": label.clone()})
        assert torch.equal(torch.as_tensor(out["image"]), image)
        assert torch.equal(torch.as_tensor(out["mask"]), label)


def test_intensity_jitter_changes_values_but_not_geometry():
    image = torch.ones(1, 8, 8)
    jitter = augmentation("image", [], [], 2, seed=0, flip_axes=[], affine=False)
    outs = [torch.as_tensor(jitter({"image": image.clone()})["image"]) for _ in range(10)]
    assert any(not torch.equal(o, image) for o in outs)
    assert all(torch.allclose(o, o.flatten()[0].expand_as(o)) for o in outs)
