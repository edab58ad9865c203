"""Cases to samples: the format registry, the torch ``Dataset`` and the group-aware splitter.

Example:
    >>> cases = build_cases(config)                       # doctest: +SKIP
    >>> splits = split_cases(cases, config.data.split, seed=0)
    >>> train = CaseDataset(splits["train"], config, train=True)
    >>> train[0]["image"].shape                           # (C, *image_size)

Samples hold the keys of :mod:`ctan.data.base`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset

from ctan.config import Config, SplitConfig
from ctan.data.base import Case
from ctan.data.cache import CaseCache, default_cache_dir
from ctan.data.ham10000 import Ham10000Reader
from ctan.data.manifest import ManifestReader
from ctan.data.openkbp import OpenKBPReader
from ctan.data.reader import CaseList, FormatReader, ListingProblems
from ctan.data.stoic import StoicReader
from ctan.data.transforms import augmentation

__all__ = [
    "READERS",
    "CaseDataset",
    "build_cases",
    "left_right_swaps",
    "make_reader",
    "readable_cases",
    "split_cases",
]

log = logging.getLogger(__name__)

READERS: Mapping[str, Callable[[Config], FormatReader]] = MappingProxyType(
    {
        "ham10000": Ham10000Reader,
        "openkbp": OpenKBPReader,
        "stoic": StoicReader,
        "manifest": ManifestReader,
    }
)


def make_reader(config: Config) -> FormatReader:
    """The reader of ``config.data.format``.

    Raises:
        ValueError: no data section, or an unknown format (allowed formats named).
    """
    if config.data is None:
        raise ValueError("the config has no data section; add data: {format: ..., root: ...}")
    factory = READERS.get(config.data.format)
    if factory is None:
        raise ValueError(f"data.format {config.data.format!r} is unknown; allowed: {list(READERS)}")
    return factory(config)


def left_right_swaps(
    config: Config, reader: FormatReader
) -> dict[str, tuple[tuple[int, int], ...]]:
    """The channel pairs of each pixel task's label that a training mirror exchanges: the
    format's lateralised labels, where ``train.augmentation`` mirrors its left-right axis."""
    flip_axes = config.train.augmentation.flip_axes
    axes = range(config.model.spatial_dims) if flip_axes is None else flip_axes
    if reader.left_right_axis not in axes:
        return {}
    labels = reader.labels
    return {
        t.label: labels[t.label].mirror_pairs
        for t in config.tasks
        if t.is_pixel_task and t.label in labels and labels[t.label].mirror_pairs
    }


def _ensure_root(config: Config) -> Path:
    """``data.root``, first writing phantoms there when it is missing and ``data.phantom`` set."""
    data = config.data
    if data.root.exists() or data.phantom is None:
        return data.root
    from ctan.data.phantoms import write_phantoms

    log.info("writing %s phantom data to %s", data.format, data.root)
    try:
        return write_phantoms(
            data.format,
            data.root,
            cases=data.phantom.cases,
            sites=data.phantom.sites,
            seed=data.phantom.seed,
        )
    except FileExistsError:
        if not data.root.is_dir():
            raise
        # Several sites of one simulation can start on a fresh machine at once; the first to
        # finish wins, and the phantoms are the same bytes for the same settings.
        log.info("phantom data at %s was written by another process meanwhile", data.root)
        return data.root


def build_cases(config: Config, skip_bad: bool | None = None) -> CaseList:
    """List the cases of ``config.data`` (no pixels read, except under ``skip_bad``).

    Args:
        config: the experiment config; ``data.format`` picks the reader.
        skip_bad: go on past bad cases (default ``config.data.skip_bad``); they are logged and
            kept in the result's ``skipped`` list. Every case is then also read once (see
            :func:`readable_cases`), so that a corrupt image is skipped too rather than stopping
            training at its first epoch.

    Returns:
        A :class:`~ctan.data.reader.CaseList` (a ``list[Case]`` with ``.skipped``).

    Raises:
        FileNotFoundError, ValueError: the layout is missing or a file is bad (named), and for
            bad cases unless skipped.
    """
    reader = make_reader(config)
    skip = config.data.skip_bad if skip_bad is None else skip_bad
    problems = ListingProblems(skip_bad=skip)
    cases = reader.list_cases(_ensure_root(config), problems)
    if skip:
        cases = readable_cases(cases, config, problems)
    if problems.skipped:
        log.warning(
            "skipped %d bad cases: %s",
            len(problems.skipped),
            ", ".join(b.name for b in problems.skipped),
        )
    return CaseList(cases, problems.skipped)


def readable_cases(cases: list[Case], config: Config, problems: ListingProblems) -> list[Case]:
    """The cases whose pixels read and preprocess; each is read once, into the cache that
    training then reads from (a cache hit costs next to nothing).

    Raises:
        ValueError, OSError: a case that does not read, unless ``problems`` skips bad cases (it
            then records it).
    """
    dataset = CaseDataset(cases, config, train=False)
    readable = []
    for case in cases:
        try:
            dataset.arrays(case)
        except (ValueError, OSError) as err:
            problems.bad(case.case_id, err)
            continue
        readable.append(case)
    return readable


def _group_of(case: Case, by: str | None) -> str:
    if by is None or by == "group":
        return case.group
    if by == "case_id":
        return case.case_id
    if by == "site":
        return str(case.site)
    if by not in case.meta:
        raise ValueError(
            f"data.split.by {by!r} is not a field of case {case.case_id}; allowed: group, "
            f"case_id, site, {', '.join(sorted(case.meta))}"
        )
    return str(case.meta[by])


def _split_groups(cases: list[Case], by: str | None) -> dict[str, list[int]]:
    """Case indices per split group: the ``by`` value of each case, with the ``by`` values that
    share a case group (a patient, a lesion) merged under the smallest of them, so that ``by``
    can make groups coarser but never divide one."""
    keys = [_group_of(case, by) for case in cases]
    parent: dict[str, str] = {key: key for key in keys}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    first_key: dict[str, str] = {}
    for key, case in zip(keys, cases, strict=True):
        a, b = root(key), root(first_key.setdefault(case.group, key))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(root(key), []).append(index)
    return groups


def split_cases(cases: list[Case], split: SplitConfig, seed: int) -> dict[str, list[Case]]:
    """Split cases into ``train``/``validation``/``test`` without dividing a group.

    A case's group is its ``split.by`` value (default its own group: a patient, a lesion);
    cases of one group stay together even when ``split.by`` would divide them. Groups are
    shuffled with ``seed`` (``split.seed`` wins when set) and filled into test, then
    validation, until each holds its fraction of the cases; the rest is train. Case order inside
    a split follows the input order.

    Raises:
        ValueError: a requested split (or train) ends up empty; the message gives the case and
            group counts and the fractions.
    """
    groups = _split_groups(cases, split.by)
    names = sorted(groups)
    rng = np.random.default_rng(seed if split.seed is None else split.seed)
    order = [names[i] for i in rng.permutation(len(names))]
    total = len(cases)
    targets = {"test": split.test * total, "validation": split.validation * total}
    assigned: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    filled = dict.fromkeys(targets, 0)
    for name in order:
        members = groups[name]
        part = next(
            (
                p
                for p in ("test", "validation")
                if filled[p] + len(members) / 2 <= targets[p] and targets[p] > 0
            ),
            "train",
        )
        if part != "train":
            filled[part] += len(members)
        assigned[part].extend(members)
    for part, fraction in (("validation", split.validation), ("test", split.test), ("train", 1)):
        if fraction > 0 and not assigned[part]:
            raise ValueError(
                f"the {part} split is empty: {total} cases in {len(names)} groups cannot give "
                f"validation {split.validation} and test {split.test} of the cases without "
                "dividing a group; use more cases or other fractions"
            )
    return {part: [cases[i] for i in sorted(members)] for part, members in assigned.items()}


class CaseDataset(Dataset):
    """Samples (see :mod:`ctan.data.base`) of ``cases`` for the tasks of ``config``.

    Preprocessing runs once per case through the on-disk cache (``data.cache_dir``, default
    ``<root>/.ctan-cache`` when writable, else ``~/.cache/ctan``); augmentation runs on training
    samples only.

    Args:
        cases: the cases to serve (from :func:`build_cases` / :func:`split_cases`).
        config: the experiment config (data, model and tasks).
        train: apply random augmentation.
        cache: cache the preprocessed arrays on disk (``False`` for benchmarks).
        augment_seed: seeds the augmentation's own random state (default
            ``experiment.seed``); a federated site passes one per round, so that its rounds do
            not repeat one sequence of draws. Loader workers reseed it (:meth:`reseed`).

    Raises:
        ValueError: a task's label key is not provided by the format, or its channel count
            disagrees with the format's (allowed keys named); ``model.in_channels`` disagrees
            with the format's image channels.
    """

    def __init__(
        self,
        cases: list[Case],
        config: Config,
        train: bool,
        cache: bool = True,
        augment_seed: int | None = None,
    ) -> None:
        self.cases = list(cases)
        self.config = config
        self.train = train
        self.reader = make_reader(config)
        labels = self.reader.labels
        for task in config.tasks:
            info = labels.get(task.label)
            if info is None:
                raise ValueError(
                    f"task {task.name!r} reads label {task.label!r}, which data.format "
                    f"{config.data.format!r} does not provide; allowed: {list(labels)}"
                )
            if info.level != ("pixel" if task.is_pixel_task else "image"):
                raise ValueError(
                    f"task {task.name!r} ({task.kind}) reads {info.level}-level label "
                    f"{task.label!r}; choose a {info.level}-level task kind"
                )
            binary = info.level == "image" and info.channels == 2 and task.classes == 1
            if task.classes != info.channels and not binary:
                raise ValueError(
                    f"task {task.name!r} has classes {task.classes} but label {task.label!r} of "
                    f"{config.data.format!r} has {info.channels}"
                )
        channels = self.reader.image_channels
        if channels is not None and channels != config.model.in_channels:
            raise ValueError(
                f"model.in_channels is {config.model.in_channels} but data.format "
                f"{config.data.format!r} gives {channels}-channel images"
            )
        directory = config.data.cache_dir or default_cache_dir(config.data.root)
        self.cache = CaseCache(directory, self.reader.settings(), enabled=cache)
        pixel = [t for t in config.tasks if t.is_pixel_task]
        rois = sorted({labels[t.label].roi for t in pixel if labels[t.label].roi})
        swaps = {
            key: pairs
            for label, pairs in left_right_swaps(config, self.reader).items()
            for key in (label, _availability_key(label))
        }
        self._augment = (
            augmentation(
                "image",
                [t.label for t in pixel if t.kind == "regression"],
                [t.label for t in pixel if t.kind == "segmentation"] + rois,
                config.model.spatial_dims,
                seed=config.experiment.seed if augment_seed is None else augment_seed,
                flip_axes=config.train.augmentation.flip_axes,
                affine=config.train.augmentation.affine,
                intensity=config.train.augmentation.intensity,
                left_right_axis=self.reader.left_right_axis,
                left_right_swaps=swaps,
                image_mask_channels=self.reader.image_mask_channels,
            )
            if train
            else None
        )

    def __len__(self) -> int:
        return len(self.cases)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation anew: each loader worker holds a copy of the dataset, and
        without this every worker would draw the same augmentations."""
        if self._augment is not None:
            self._augment.set_random_state(seed=seed % 2**32)

    def arrays(self, case: Case) -> dict[str, np.ndarray]:
        """The preprocessed arrays of ``case`` (from the cache, computed on a miss)."""
        unit = self.reader.cache_id(case)
        stored = self.cache.get(case, lambda: self.reader.preprocess(case), key=unit)
        return self.reader.select(stored, case)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        arrays = self.arrays(case)
        labels = self.reader.labels
        tensors = {"image": torch.from_numpy(np.asarray(arrays["image"], dtype=np.float32))}
        targets: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        roi: dict[str, torch.Tensor] = {}
        for task in self.config.tasks:
            key = task.label
            if task.is_pixel_task:
                tensors[key] = torch.from_numpy(np.asarray(arrays[key], dtype=np.float32))
                avail = case.available.get(key, (False,) * task.classes)
                if isinstance(avail, bool):
                    avail = (avail,) * task.classes
                masks[key] = tensors[_availability_key(key)] = torch.tensor(avail).float()
                roi_key = labels[key].roi
                if roi_key:
                    tensors[roi_key] = torch.from_numpy(np.asarray(arrays[roi_key], np.float32))
            else:
                value = case.labels.get(key)
                ok = bool(case.available.get(key, False)) and value is not None
                targets[key] = _image_target(
                    task.classes, bool(task.exclusive), value if ok else None
                )
                masks[key] = torch.tensor(float(ok))
        if self._augment is not None:
            tensors = {
                k: v.as_tensor() if isinstance(v, MetaTensor) else torch.as_tensor(v)
                for k, v in self._augment(tensors).items()
            }
        for task in self.config.tasks:
            if task.is_pixel_task:
                masks[task.label] = tensors.pop(_availability_key(task.label)).float()
                targets[task.label] = tensors[task.label].float().contiguous()
                roi_key = labels[task.label].roi
                if roi_key:
                    roi[task.label] = tensors[roi_key].float().contiguous()
        case_labels = {
            k: torch.tensor(float("nan") if v is None or isinstance(v, tuple) else float(v))
            for k, v in case.labels.items()
        }
        sample: dict[str, Any] = {
            "image": tensors["image"].float().contiguous(),
            "targets": targets,
            "target_masks": masks,
            "case_id": case.case_id,
            "site": case.site or "",
            "case_labels": case_labels,
        }
        if roi:
            sample["roi"] = roi
        return sample


def _availability_key(label: str) -> str:
    """Where a pixel label's per-channel availability ``(C,)`` travels through augmentation, so
    a left-right mirror exchanges it together with the label's channels."""
    return f"{label}/available"


def _image_target(classes: int, exclusive: bool, value: Any) -> torch.Tensor:
    """``int64 ()`` class index (exclusive), or ``float32 (classes,)`` multi-hot; zeros if
    missing."""
    if exclusive:
        return torch.tensor(0 if value is None else int(value), dtype=torch.int64)
    target = torch.zeros(classes, dtype=torch.float32)
    if value is None:
        return target
    if classes == 1:
        target[0] = float(value)
        return target
    for index in value if isinstance(value, tuple) else (value,):
        target[int(index)] = 1.0
    return target
