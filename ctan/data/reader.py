"""The plug-in contract of a data format: list cases cheaply, preprocess one case, pick a sample.

A format reader is registered by name in :mod:`ctan.data.dataset`; callers never branch on the
format's name. Readers hold no mutable state beyond their construction arguments, so one process
can serve several simulated sites.
"""

from __future__ import annotations

import csv
import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ctan.config import Config
from ctan.data.base import Case

__all__ = [
    "SITES_FILE",
    "BadCase",
    "CaseList",
    "FormatReader",
    "LabelInfo",
    "ListingProblems",
    "read_sites",
]

log = logging.getLogger(__name__)

#: optional ``case_id,site`` file at the root of layouts whose real release has no site column
SITES_FILE = "sites.csv"


@dataclass(frozen=True)
class LabelInfo:
    """What a reader provides under one label key.

    Attributes:
        level: ``pixel`` (a map ``(channels, *image_size)`` in the preprocessed arrays) or
            ``image`` (a value in :attr:`Case.labels`).
        channels: channels of a pixel label, or classes of an image-level label.
        names: channel or class names in order.
        roi: for pixel labels, the key of the preprocessed array that says where it is scored.
        mirror_pairs: for pixel labels, channel pairs of lateralised structures (left and
            right of one organ) that trade places when the image is mirrored left-right.
    """

    level: Literal["pixel", "image"]
    channels: int
    names: tuple[str, ...] = ()
    roi: str | None = None
    mirror_pairs: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class BadCase:
    """A case that could not be read: its name, the file at fault and the problem."""

    name: str
    reason: str


class CaseList(list):
    """A ``list[Case]`` that also carries the bad cases skipped under ``data.skip_bad``."""

    def __init__(self, cases: list[Case] = (), skipped: list[BadCase] | None = None) -> None:
        super().__init__(cases)
        self.skipped: list[BadCase] = list(skipped or [])


@dataclass
class ListingProblems:
    """Collects bad cases while listing: raises at once unless ``skip_bad`` is set."""

    skip_bad: bool
    skipped: list[BadCase] = field(default_factory=list)

    def bad(self, name: str, error: Exception) -> None:
        """Record ``error`` for case ``name``, or re-raise it when bad cases are not skipped."""
        if not self.skip_bad:
            raise error
        log.warning("skipping bad case %s: %s", name, error)
        self.skipped.append(BadCase(name, str(error)))


def csv_text(path: Path) -> io.StringIO:
    """A CSV file's text, ready for :mod:`csv` (a leading byte-order mark dropped).

    Raises:
        ValueError: the file is not UTF-8 text, as a CSV saved from a spreadsheet in a local
            encoding may be (the file is named).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None
    return io.StringIO(text, newline="")


def read_sites(root: Path, known: Collection[str]) -> dict[str, str]:
    """Sites by case id from the optional ``root/sites.csv`` (header ``case_id,site``).

    The real OpenKBP and STOIC2021 layouts have no site column; the phantom generators write this
    file beside them so cases get a site for the natural split.

    Args:
        root: the data root.
        known: the case ids of the layout; rows naming other ids are logged as a warning and
            ignored.

    Returns:
        ``{case_id: site}`` for the known ids listed; empty when the file is absent.

    Raises:
        ValueError: the file cannot be decoded, its header is not ``case_id,site``, a row does
            not hold two non-empty fields, or a case id is listed twice; the file is named.
    """
    path = root / SITES_FILE
    if not path.is_file():
        return {}
    rows = [[field.strip() for field in row] for row in csv.reader(csv_text(path))]
    header = rows[0] if rows else []
    if header != ["case_id", "site"]:
        raise ValueError(f"{path}: header is {','.join(header)!r}, expected 'case_id,site'")
    sites: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(row):
            continue
        if len(row) != 2 or not all(row):
            raise ValueError(f"{path}: row {line} is {','.join(row)!r}, expected 'case_id,site'")
        if row[0] in sites:
            raise ValueError(f"{path}: row {line} lists case {row[0]!r} a second time")
        sites[row[0]] = row[1]
    known = set(known)
    unknown = sorted(set(sites) - known)
    if unknown:
        log.warning(
            "%s names %d cases that are not in the data (ignored): %s",
            path,
            len(unknown),
            ", ".join(unknown[:10]),
        )
    return {case_id: site for case_id, site in sites.items() if case_id in known}


class FormatReader(ABC):
    """One data format: how cases are listed and how one case becomes arrays.

    Args:
        config: the experiment config; readers read ``config.data`` and ``config.model``
            (``spatial_dims``, ``image_size``, ``in_channels``), and the manifest reader also
            ``config.tasks``.
    """

    #: bump when :meth:`preprocess` output changes, so cached arrays are rebuilt
    version: str = "1"
    #: the spatial axis of the preprocessed arrays that runs between the patient's right and
    #: left, where the format fixes one; mirroring it exchanges :attr:`LabelInfo.mirror_pairs`
    left_right_axis: int | None = None
    #: the image channels that are binary masks rather than intensities (OpenKBP's target
    #: volumes): training augmentation resamples them by nearest neighbour and does not jitter
    #: their values
    image_mask_channels: tuple[int, ...] = ()
    #: the order of the spatial axes of :meth:`preprocess` arrays against the image file:
    #: ``"xyz"``, the file's own index order (x first), as MONAI's readers give it; ``"zyx"``,
    #: reversed (rows first in 2D), as PIL and SimpleITK arrays give it. Predictions are turned
    #: back into the file's order by it.
    axis_order: Literal["xyz", "zyx"] = "xyz"

    def __init__(self, config: Config) -> None:
        if config.data is None:
            raise ValueError("the config has no data section; add data: {format: ..., root: ...}")
        self.config = config
        self.data = config.data
        self.spatial_dims = config.model.spatial_dims
        self.image_size = tuple(config.model.image_size)

    @property
    @abstractmethod
    def labels(self) -> Mapping[str, LabelInfo]:
        """Label keys this format provides, by key."""

    @property
    def image_channels(self) -> int | None:
        """Channels of the image this format produces (``None``: decided by the files)."""
        return None

    @abstractmethod
    def list_cases(self, root: Path, problems: ListingProblems) -> list[Case]:
        """List the cases under ``root`` without reading pixels (headers are fine).

        Raises:
            FileNotFoundError: the layout's folders or files are missing (named).
            ValueError: a metadata file is malformed (file and problem named).
        """

    @abstractmethod
    def preprocess(self, case: Case) -> dict[str, np.ndarray]:
        """Read and preprocess the files of ``case`` (the expensive, cached step).

        Returns:
            ``"image"``: ``float32 (C, *size)`` and one ``float32 (channels, *size)`` array per
            pixel label key present (plus ROI arrays). ``size`` is ``image_size``, except for
            readers whose :meth:`select` cuts samples out of a larger array.

        Raises:
            ValueError: a file is corrupt or inconsistent (the file is named).
        """

    def cache_id(self, case: Case) -> str:
        """Which cached preprocessing unit ``case`` is cut from (by default, itself)."""
        return case.case_id

    def select(self, arrays: Mapping[str, np.ndarray], case: Case) -> dict[str, np.ndarray]:
        """Cut the sample of ``case`` out of its (read-only) cached unit (by default, a copy of
        all of it)."""
        return {key: np.array(value) for key, value in arrays.items()}

    def settings(self) -> dict[str, object]:
        """Everything that changes :meth:`preprocess` output; it keys the cache."""
        return {
            "format": self.data.format,
            "reader": type(self).__name__,
            "version": self.version,
            "spatial_dims": self.spatial_dims,
            "image_size": list(self.image_size),
        }
