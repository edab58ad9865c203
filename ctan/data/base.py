"""The contract between data readers, partitioners and the training engine.

A **case** is one patient image (or volume) with whatever labels exist for it. Readers list
cases cheaply (:class:`Case`, no pixels loaded) so partitioners and splitters can work on
thousands of them; a dataset then loads each case into a **sample**:

``sample["image"]``
    ``float32`` tensor ``(C, *image_size)``, intensities scaled for the network.
``sample["targets"][label]``
    one entry per task label key (``TaskSpec.label``):
    segmentation ``float32 (classes, *image_size)`` in {0, 1};
    regression ``float32 (classes, *image_size)``;
    exclusive classification ``int64 ()`` class index;
    multi-label classification ``float32 (classes,)`` in {0, 1}.
    A missing label is filled with zeros and switched off by its mask.
``sample["target_masks"][label]``
    ``float32`` availability: ``(classes,)`` per channel for pixel tasks (a structure that was
    not contoured is 0 while the others are 1), ``()`` for image-level tasks.
``sample["roi"][label]`` (optional)
    ``float32 (1, *image_size)`` region where a pixel task is scored (OpenKBP's possible-dose
    mask); absent means the whole image.
``sample["case_id"]``, ``sample["site"]``
    strings, for logs, per-site metrics and prediction files (``site`` is ``""`` where unknown).
``sample["case_labels"][key]``
    ``float32 ()``, one entry per image-level label the reader knows for the case
    (:attr:`Case.labels`), whether or not a task trains on it, NaN where missing; for metrics
    computed over a subgroup (STOIC's severity AUC over COVID-positive cases).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    """One case as listed by a reader, before any pixels are read.

    Attributes:
        case_id: unique within the data set (image id, patient id).
        group: the unit that never straddles splits or sites (HAM10000 ``lesion_id``,
            a patient id); equal to ``case_id`` where cases are independent.
        site: acquisition site or hospital, ``None`` where the data set does not say.
        files: the files this case is read from, by reader-specific role
            (``{"image": ..., "mask": ...}``).
        labels: image-level labels known from metadata, by label key (class index, or a float
            for a probability); ``None`` for a missing label.
        available: for each label key, whether the label exists: a bool for image-level labels,
            a tuple of bools (one per channel) for pixel labels.
        meta: anything else worth keeping (age, sex, spacing, original size).
    """

    case_id: str
    group: str
    site: str | None
    files: Mapping[str, Path] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)
    available: Mapping[str, bool | tuple[bool, ...]] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def has_label(self, key: str) -> bool:
        """Whether any part of label ``key`` exists for this case."""
        value = self.available.get(key, False)
        return any(value) if isinstance(value, tuple) else bool(value)
