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


def test_a_left_right_mirror_exchanges_lateral_channels_and_their_availability():
    image = torch.arange(3 * 4, dtype=torch.float32).reshape(1, 3, 4)
    organs = torch.zeros(3, 3, 4)
    organs[0, :, 0] = 1.0  # the "right" structure, at the low end of axis 1
    organs[2, 1, :] = 1.0  # an unpaired structure
    available = torch.tensor([1.0, 0.0, 1.0])
    swaps = {"organs": [(0, 1)], "organs/available": [(0, 1)]}
    mirror = augmentation(
        "image",
        [],
        ["organs"],
        2,
        seed=0,
        flip_axes=[0, 1],
        affine=False,
        intensity=False,
        left_right_axis=1,
        left_right_swaps=swaps,
    )
    mirrorings = [(), (1,), (2,), (1, 2)]  # tensor dimensions: spatial axis + 1
    seen = set()
    for _ in range(30):
        out = mirror({"image": image, "organs": organs, "organs/available": available})
        got = {key: torch.as_tensor(value) for key, value in out.items()}
        across = next(a for a in mirrorings if torch.equal(got["image"], image.flip(a)))
        order = [1, 0, 2] if 2 in across else [0, 1, 2]
        assert torch.equal(got["organs"], organs.flip(across)[order])
        assert got["organs/available"].tolist() == available[order].tolist()
        seen.add(across)
    assert seen == set(mirrorings)


def test_mask_channels_of_the_image_stay_binary_through_jitter_and_affine():
    """OpenKBP's target volumes are image channels 1-3: evaluation sees them as 0 or 1, so
    training must too, while the CT channel is jittered and resampled smoothly."""
    rng = np.random.default_rng(0)
    ct = torch.from_numpy(rng.random((1, 16, 16), dtype=np.float32))
    targets = torch.zeros(3, 16, 16)
    targets[:, 4:12, 4:12] = 1.0
    image = torch.cat([ct, targets])
    augment = augmentation("image", [], [], 2, seed=0, image_mask_channels=(1, 2, 3))
    jittered = False
    for _ in range(20):
        out = torch.as_tensor(augment({"image": image.clone()})["image"])
        assert out.shape == image.shape
        assert set(out[1:].unique().tolist()) <= {0.0, 1.0}
        jittered |= not torch.equal(out[0], ct)
    assert jittered, "the CT channel is still augmented"
