"""Manifest reader: the cases a hospital actually holds, listed in one CSV.

``data.root`` is the CSV file, or a folder holding ``manifest.csv``. One row per case::

    case_id,image,site,group,lesion,diagnosis
    p001,images/p001.nii.gz,,p001,masks/p001.nii.gz,3
    p002,images/p002.nii.gz,,p001,,          <- no lesion mask, no diagnosis

* ``case_id`` and ``image`` are required; ``site`` and ``group`` are optional columns (``group``
  defaults to ``case_id``).
* one column per task, named after the task's label key (``TaskSpec.label``); a task without a
  column is unlabelled everywhere. An empty cell means "no label".
* pixel tasks (segmentation, regression) hold a mask/map path. A segmentation mask with one
  channel is binary (> 0) for ``classes: 1`` and a label map for more classes: for exclusive
  classes (softmax, the default) value ``c`` is channel ``c`` and channel 0 the background, so
  ``classes`` counts it; for independent structures (``exclusive: false``) value ``c + 1`` is
  channel ``c``. A mask with ``classes`` channels is used as it is.
* classification cells hold the class index ``0 .. classes - 1``; multi-label tasks
  (``exclusive: false``) hold indices separated by ``;`` (``"0;2"``); a ``classes: 1`` task holds
  0 or 1. Class names are not accepted (the config has no class-name list).

``data.laterality`` (optional) names the spatial axis running between the patient's right and
left and, per pixel label, the channel pairs that are the right and left of one structure; a
training mirror across that axis exchanges them (as the OpenKBP reader does for the parotids).

Paths are relative to the CSV's folder. Images are read with MONAI's ``LoadImage`` (NIfTI,
PNG/JPEG, and MHA/NRRD/DICOM series folders through :class:`~ctan.data.imageio.SimpleITKReader`),
scaled per image to [0, 1] and resized to ``model.image_size``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctan.data.base import Case
from ctan.data.imageio import file_affine, image_loader
from ctan.data.reader import FormatReader, LabelInfo, ListingProblems, csv_text
from ctan.data.transforms import resize_labels, resize_values
from ctan.tasks import TaskSpec

__all__ = ["ManifestReader", "find_manifest"]

REQUIRED = ("case_id", "image")


def find_manifest(root: Path) -> Path:
    """The manifest CSV: ``root`` itself, or ``root/manifest.csv``.

    Raises:
        FileNotFoundError: neither exists (both are named).
    """
    if root.is_file():
        return root
    if (root / "manifest.csv").is_file():
        return root / "manifest.csv"
    raise FileNotFoundError(f"{root}: no manifest; give the CSV file or a folder with manifest.csv")


def _one_hot(values: np.ndarray, task: TaskSpec, path: Path) -> np.ndarray:
    """A label map as ``(classes, *spatial)`` channels. Exclusive classes (softmax) cover every
    pixel, the background too: value ``c`` is channel ``c``, 0 the background. Independent
    structures (sigmoid) have no background channel: value ``c + 1`` is channel ``c``.

    Raises:
        ValueError: a value the task has no channel for (the file and the values are named).
    """
    first = 0 if task.exclusive else 1
    found = np.unique(values)
    allowed = np.arange(first, first + task.classes)
    stray = [v for v in found.tolist() if v not in allowed and not (v == 0 and first == 1)]
    if stray:
        raise ValueError(
            f"{path}: label values {', '.join(f'{v:g}' for v in stray[:5])} but task "
            f"{task.name!r} has {task.classes} "
            + (
                f"exclusive classes, values 0..{task.classes - 1} (0 the background)"
                if task.exclusive
                else f"structures, values 1..{task.classes} (0 the background)"
            )
        )
    return np.stack([values == c + first for c in range(task.classes)])


def _require_same_grid(image: Path, mask: Path) -> None:
    """Refuse a mask whose voxels lie elsewhere than its image's (another spacing, origin or
    orientation in the file's header): of the same size, it would be misaligned silently.

    Raises:
        ValueError: names both files and the two voxel-to-world matrices.
    """
    image_grid, mask_grid = file_affine(image), file_affine(mask)
    if not np.allclose(image_grid, mask_grid, atol=1e-3):
        raise ValueError(
            f"{mask}: its voxels lie elsewhere than those of {image.name} (voxel-to-world "
            f"matrix {np.round(mask_grid, 3).tolist()} against "
            f"{np.round(image_grid, 3).tolist()}); resample the mask onto the image's grid"
        )


def _image_label(task: TaskSpec, text: str, where: str) -> int | tuple[int, ...]:
    """Parse a classification cell into a class index (or indices for multi-label tasks)."""
    top = 1 if task.classes == 1 else task.classes - 1
    parts = [p.strip() for p in text.split(";")] if not task.exclusive else [text]
    try:
        values = [int(float(p)) for p in parts if p]
        if any(float(p) != int(float(p)) for p in parts if p):
            raise ValueError
    except (ValueError, OverflowError):
        values = []
    if not values or any(v < 0 or v > top for v in values):
        raise ValueError(
            f"{where}: {task.label} cell {text!r} is not a class index 0..{top}"
            + ("; give indices separated by ';'" if not task.exclusive else "")
        )
    return values[0] if task.exclusive or task.classes == 1 else tuple(values)


class ManifestReader(FormatReader):
    """Reads a manifest CSV (see the module docstring for its columns)."""

    version = "1"

    @property
    def labels(self) -> Mapping[str, LabelInfo]:
        laterality = self.config.data.laterality
        pairs = laterality.pairs if laterality is not None else {}
        return {
            task.label: LabelInfo(
                "pixel" if task.is_pixel_task else "image",
                task.classes,
                mirror_pairs=tuple(pairs.get(task.label, ())),
            )
            for task in self.config.tasks
        }

    @property
    def left_right_axis(self) -> int | None:  # type: ignore[override]
        """``data.laterality.axis``: a manifest says itself which way its images lie."""
        laterality = self.config.data.laterality
        return laterality.axis if laterality is not None else None

    @property
    def image_channels(self) -> int:
        return self.config.model.in_channels

    def settings(self) -> dict[str, object]:
        """The base settings plus what :meth:`preprocess` reads from the config: the image
        channels and each pixel task's label, kind, classes and exclusivity (a label map becomes
        one channel per class, the background one of them for exclusive classes), so that
        changing them never serves arrays cached under the old ones."""
        return super().settings() | {
            "in_channels": self.config.model.in_channels,
            "pixel_tasks": [
                [task.label, task.kind, task.classes, task.exclusive]
                for task in self.config.tasks
                if task.is_pixel_task
            ],
        }

    def list_cases(self, root: Path, problems: ListingProblems) -> list[Case]:
        manifest = find_manifest(root)
        folder = manifest.parent
        reader = csv.DictReader(csv_text(manifest))
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ValueError(
                f"{manifest}: header {columns} lacks columns {missing}; required: "
                f"{', '.join(REQUIRED)}, optional: site, group and one column per task label "
                f"({', '.join(t.label for t in self.config.tasks)})"
            )
        rows = [
            (line, {k.strip(): (v or "").strip() for k, v in row.items() if k})
            for line, row in enumerate(reader, start=2)
        ]
        cases, seen = [], set()
        for line, row in rows:
            where = f"{manifest} row {line}"
            try:
                cases.append(self._case(row, folder, where, seen))
            except (ValueError, FileNotFoundError) as err:
                problems.bad(row.get("case_id") or f"row {line}", err)
        return cases

    def _case(self, row: dict[str, str], folder: Path, where: str, seen: set[str]) -> Case:
        case_id = row["case_id"]
        if not case_id:
            raise ValueError(f"{where}: empty case_id")
        if case_id in seen:
            raise ValueError(f"{where}: case_id {case_id!r} appears twice")
        seen.add(case_id)

        def path_of(text: str, what: str) -> Path:
            path = (folder / text).resolve()
            if not path.exists():
                raise FileNotFoundError(f"{where}: {what} {path} does not exist")
            return path

        if not row["image"]:
            raise ValueError(f"{where}: empty image path for case {case_id!r}")
        files = {"image": path_of(row["image"], "image")}
        labels: dict[str, object] = {}
        available: dict[str, bool | tuple[bool, ...]] = {}
        for task in self.config.tasks:
            cell = row.get(task.label, "")
            if task.is_pixel_task:
                if cell:
                    files[task.label] = path_of(cell, f"{task.label} mask")
                available[task.label] = (bool(cell),) * task.classes
            else:
                labels[task.label] = _image_label(task, cell, where) if cell else None
                available[task.label] = bool(cell)
        return Case(
            case_id=case_id,
            group=row.get("group") or case_id,
            site=row.get("site") or None,
            files=files,
            labels=labels,
            available=available,
            meta={"group": row.get("group") or case_id},
        )

    def _load(self, path: Path) -> np.ndarray:
        try:
            array = np.asarray(image_loader()(str(path)), dtype=np.float32)
        except (RuntimeError, ValueError, OSError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: cannot read image ({detail})") from None
        if array.ndim == self.spatial_dims + 2 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"{path}: image has shape {array.shape[1:]} ({array.ndim - 1}D) but "
                f"model.spatial_dims is {self.spatial_dims}"
            )
        return array

    def preprocess(self, case: Case) -> dict[str, np.ndarray]:
        """``image (in_channels, *size)`` scaled to [0, 1], one ``(classes, *size)`` map per
        pixel task with a file (zeros for the others)."""
        path = Path(case.files["image"])
        image = self._load(path)
        channels = self.config.model.in_channels
        if image.shape[0] == 4 and channels == 3:
            image = image[:3]
        if image.shape[0] != channels:
            raise ValueError(
                f"{path}: image has {image.shape[0]} channels but model.in_channels is {channels}"
            )
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        out = {"image": resize_values(image, self.image_size)}
        for task in self.config.tasks:
            if not task.is_pixel_task:
                continue
            if task.label not in case.files:
                out[task.label] = np.zeros((task.classes, *self.image_size), dtype=np.float32)
                continue
            mask_path = Path(case.files[task.label])
            mask = self._load(mask_path)
            if mask.shape[1:] != image.shape[1:]:
                raise ValueError(
                    f"{mask_path}: size {mask.shape[1:]} differs from image size {image.shape[1:]}"
                )
            _require_same_grid(path, mask_path)
            if task.kind == "segmentation":
                if mask.shape[0] == 1 and task.classes > 1:
                    mask = _one_hot(mask[0], task, mask_path)
                mask = mask > 0
            if mask.shape[0] != task.classes:
                raise ValueError(
                    f"{mask_path}: {mask.shape[0]} channels but task {task.name!r} has "
                    f"{task.classes} classes"
                )
            resize = resize_labels if task.kind == "segmentation" else resize_values
            out[task.label] = resize(mask.astype(np.float32), self.image_size)
        return out
