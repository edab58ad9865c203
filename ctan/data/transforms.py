"""MONAI transforms shared by the readers and the dataset: resizing, intensity scaling and
training augmentation.

Preprocessing (resize, scale) is deterministic and its output is cached; augmentation runs on
every training sample and is applied identically to the image, the pixel labels and the ROI
(geometric transforms) while intensity jitter touches the image only. A mirror across the
patient's left-right axis turns a left structure into a right one, so there it also exchanges the
channels of lateralised labels (see :class:`RandMirrord`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resize,
    ScaleIntensityRange,
)

__all__ = [
    "JoinChannelsd",
    "RandMirrord",
    "SplitChannelsd",
    "augmentation",
    "resize_labels",
    "resize_values",
    "scale_range",
]

#: where :class:`SplitChannelsd` puts the mask channels of the image while augmenting
IMAGE_MASKS_KEY = "_image_masks"


class SplitChannelsd:
    """Move ``channels`` of ``key`` into ``into`` (both ``(C, *spatial)``)."""

    def __init__(self, key: str, channels: Sequence[int], into: str) -> None:
        self.key, self.channels, self.into = key, list(channels), into

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = out[self.key]
        kept = [c for c in range(image.shape[0]) if c not in self.channels]
        out[self.into], out[self.key] = image[self.channels], image[kept]
        return out


class JoinChannelsd:
    """Undo :class:`SplitChannelsd`: put the channels of ``from_key`` back into ``key``."""

    def __init__(self, key: str, channels: Sequence[int], from_key: str) -> None:
        self.key, self.channels, self.from_key = key, list(channels), from_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        rest, masks = torch.as_tensor(out[self.key]), torch.as_tensor(out.pop(self.from_key))
        total = rest.shape[0] + masks.shape[0]
        split_order = [c for c in range(total) if c not in self.channels] + self.channels
        out[self.key] = torch.cat([rest, masks])[np.argsort(split_order).tolist()]
        return out


def resize_values(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize intensities or regression values ``(C, *spatial)`` to ``(C, *size)``.

    Downsampling averages (``area``) so thin structures are not aliased away; upsampling
    repeats values.
    """
    if tuple(array.shape[1:]) == tuple(size):
        return np.ascontiguousarray(array, dtype=np.float32)
    out = Resize(spatial_size=tuple(size), mode="area")(torch.as_tensor(array, dtype=torch.float32))
    return np.asarray(out, dtype=np.float32)


def resize_labels(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize binary masks ``(C, *spatial)`` to ``(C, *size)``, keeping them in {0, 1}.

    A voxel of the result is 1 where at least half of the area it covers was 1.
    """
    return (resize_values(array.astype(np.float32), size) >= 0.5).astype(np.float32)


def scale_range(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip ``array`` to ``[low, high]`` and map it linearly to ``[0, 1]`` (``float32``)."""
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(np.asarray(array, dtype=np.float32)), dtype=np.float32)


class RandMirrord(RandFlipd):
    """``RandFlipd`` that, when it mirrors, also exchanges channel pairs of some keys.

    Mirroring a patient left-right makes the left parotid lie where the right one was: without
    exchanging the two label channels the network is taught both sides for the same structure.
    ``swaps`` maps a key to the channel pairs exchanged on dimension 0; it may name keys that are
    not flipped, such as a per-channel availability vector ``(C,)``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        prob: float,
        spatial_axis: int,
        swaps: Mapping[str, Sequence[tuple[int, int]]],
    ) -> None:
        super().__init__(keys=keys, prob=prob, spatial_axis=spatial_axis)
        self.swaps = {key: list(pairs) for key, pairs in swaps.items() if pairs}

    def __call__(
        self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None
    ) -> dict[Hashable, torch.Tensor]:
        out = super().__call__(data, lazy=lazy)
        if self._do_transform:
            for key, pairs in self.swaps.items():
                order = list(range(out[key].shape[0]))
                for a, b in pairs:
                    order[a], order[b] = order[b], order[a]
                out[key] = out[key][order]
        return out


def augmentation(
    image_key: str,
    interpolated_keys: Sequence[str],
    mask_keys: Sequence[str],
    spatial_dims: int,
    seed: int,
    flip_axes: Sequence[int] | None = None,
    affine: bool = True,
    intensity: bool = True,
    left_right_axis: int | None = None,
    left_right_swaps: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    image_mask_channels: Sequence[int] = (),
) -> Compose:
    """Random training augmentation on a sample dictionary of channel-first tensors.

    Args:
        image_key: the image, ``(C, *spatial)``; gets geometric and intensity changes.
        interpolated_keys: maps resampled smoothly with the image (regression targets).
        mask_keys: binary maps resampled by nearest neighbour (segmentations, ROIs).
        spatial_dims: 2 or 3.
        seed: seeds this transform's own random state (no global randomness).
        flip_axes: spatial axes mirrored independently with p=0.5 each (0 = first spatial
            axis); ``None`` mirrors along every axis. Chest CT has a front and a back, a top and
            a bottom: mirroring those axes makes images no scanner produces.
        affine: a small affine (rotation up to 0.2 rad, scaling ±10 %, p=0.5).
        intensity: intensity scale/shift jitter (±10 %, p=0.5 each).
        left_right_axis: the spatial axis running from the patient's right to left, if known.
        left_right_swaps: channel pairs exchanged per key when ``left_right_axis`` is mirrored
            (lateralised labels and their availability vectors).
        image_mask_channels: channels of the image that are binary masks (OpenKBP's target
            volumes): resampled by nearest neighbour and left out of the intensity jitter, so
            that training sees them as evaluation does, 0 or 1.

    Returns:
        A MONAI ``Compose`` of the chosen transforms, in that order.
    """
    split = list(image_mask_channels)
    if split:
        mask_keys = [*mask_keys, IMAGE_MASKS_KEY]
    smooth = [image_key, *interpolated_keys]
    keys = [*smooth, *mask_keys]
    modes = ["bilinear"] * len(smooth) + ["nearest"] * len(mask_keys)
    axes = range(spatial_dims) if flip_axes is None else flip_axes
    transforms: list[Any] = [SplitChannelsd(image_key, split, IMAGE_MASKS_KEY)] if split else []
    transforms += [
        RandMirrord(keys, 0.5, axis, left_right_swaps or {})
        if axis == left_right_axis
        else RandFlipd(keys=keys, prob=0.5, spatial_axis=axis)
        for axis in axes
    ]
    if affine:
        transforms.append(
            RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=(0.2,) if spatial_dims == 2 else (0.2, 0.2, 0.2),
                scale_range=(0.1,) * spatial_dims,
                mode=modes,
                padding_mode="zeros",
            )
        )
    if intensity:
        transforms += [
            RandScaleIntensityd(keys=image_key, factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=image_key, offsets=0.1, prob=0.5),
        ]
    if split:
        transforms.append(JoinChannelsd(image_key, split, IMAGE_MASKS_KEY))
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose
