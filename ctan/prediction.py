"""Evaluation and prediction with saved checkpoints.

OpenKBP is scored per patient on the native 128^3 grid: predictions over the crop box are mapped
back (:func:`ctan.data.openkbp.to_native`) and compared with the reference dose, structures and
voxel size read from the patient's own CSVs (dose the official way; organs by Dice per contoured
organ).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctan.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    load_checkpoint,
    require_trained_heads,
    trained_tasks,
)
from ctan.config import DEVICE_PATTERN, Config, load_config
from ctan.data.base import Case
from ctan.engine import Evaluation, TaskTrainer, make_loader, resolve_device
from ctan.tasks import TaskSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
#: spatial dimensions of the files each format reads, whatever the model's spatial_dims
INPUT_DIMS = {"ham10000": 2, "stoic": 3}


def trainer_for(
    checkpoint: Checkpoint, config: Config | None = None, device: str | None = None
) -> TaskTrainer:
    """A :class:`TaskTrainer` around the checkpoint's model (for scoring and prediction).

    Args:
        checkpoint: the loaded checkpoint.
        config: the config to run under (default the checkpoint's own).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, instead of the config's
            ``train.device`` (a model trained on a GPU can be scored on a machine without one);
            ``None`` keeps ``train.device``.

    Raises:
        ValueError: ``device`` is not one of those, or names CUDA where there is none.
    """
    from ctan.training import companions

    config = config or checkpoint.config
    if device is not None and not re.fullmatch(DEVICE_PATTERN, device):
        raise ValueError(f"device is {device!r}; allowed: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return TaskTrainer(
        checkpoint.build_model(),
        config.tasks,
        config.train,
        companions=companions(config),
        device=resolve_device(device, "the device asked for") if device is not None else None,
    )


def evaluate_cases(trainer: TaskTrainer, config: Config, cases: Sequence[Case]) -> Evaluation:
    """Score ``cases``; OpenKBP dose and organ metrics are replaced by their native-grid values
    (:func:`openkbp_native_scores`).

    The one scoring of a model on labelled cases: centralised validation and test, a federated
    site's evaluation and ``ctan evaluate`` all call it, so their figures are comparable.
    """
    from ctan.data.dataset import CaseDataset

    loader = make_loader(
        CaseDataset(list(cases), config, train=False),
        config.train.batch_size,
        shuffle=False,
        seed=0,
        num_workers=config.train.num_workers,
    )
    evaluation = trainer.evaluate(loader)
    if config.data is not None and config.data.format == "openkbp":
        native = openkbp_native_scores(trainer, config, cases)
        for task, scores in native.items():
            evaluation.metrics[task] = {
                metric: scores.get(metric, value)
                for metric, value in evaluation.metrics[task].items()
            } | {m: v for m, v in scores.items() if m not in evaluation.metrics[task]}
    return evaluation


def evaluate_checkpoint(
    checkpoint: Path,
    data_config: Path | None = None,
    split: str = "test",
    device: str | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on a split of its own data, or of another config's data section.

    A federated site's model is scored on the split that site held out (its checkpoint records
    how it split its cases), not on a split of the whole data, which would hold some of its
    training cases. Only tasks whose heads were trained are scored; the others are listed
    under ``untrained-tasks``. ``device`` overrides the checkpoint's ``train.device`` (see
    :func:`trainer_for`).

    Raises:
        ValueError: there is no data to evaluate on (the message names the checkpoint and
            ``--data``), the split is empty, the site's data changed since it split it, the
            checkpoint is a federated global model without trained heads, or ``device`` is not
            usable.
    """
    from ctan.site import recorded_site_splits
    from ctan.training import prepare_splits

    saved = load_checkpoint(checkpoint)
    require_trained_heads(saved, checkpoint)
    config = saved.config
    if data_config is not None:
        other = load_config(data_config)
        if other.data is None:
            raise ValueError(f"{data_config} has no data section to evaluate on")
        config = config.model_copy(update={"data": other.data})
    elif config.data is None:
        raise ValueError(
            f"{str(checkpoint)!r} records no data to evaluate on; name a config whose data "
            "section to use with --data"
        )
    trainer = trainer_for(saved, config, device)
    if data_config is None and "split" in saved.extra:
        splits = recorded_site_splits(config, saved.extra, checkpoint)
    else:
        splits = prepare_splits(config)
    cases = [c for part in splits.values() for c in part] if split == "all" else splits[split]
    if not cases:
        raise ValueError(f"the {split} split of {config.data.root} is empty")
    evaluation = evaluate_cases(trainer, config, cases)
    trained = trained_tasks(saved)
    untrained = [t.name for t in config.tasks if t.name not in trained]
    return {
        "checkpoint": str(checkpoint),
        "data": str(config.data.root),
        "split": split,
        "cases": len(cases),
        "metrics": {t: m for t, m in evaluation.metrics.items() if t in trained},
        "labelled": {t: n for t, n in evaluation.labelled.items() if t in trained},
    } | ({"untrained-tasks": untrained} if untrained else {})


def collect_predictions(
    trainer: TaskTrainer, config: Config, cases: Sequence[Case]
) -> dict[str, dict[str, np.ndarray]]:
    """Raw model outputs per case id and task, on the model grid (``(classes, *size)``)."""
    from ctan.data.dataset import CaseDataset

    dataset = CaseDataset(list(cases), config, train=False, cache=config.data.format != "manifest")
    loader = make_loader(dataset, config.train.batch_size, shuffle=False, seed=0)
    out: dict[str, dict[str, np.ndarray]] = {}
    for batch, outputs in trainer.predict(loader):
        for index, case_id in enumerate(batch["case_id"]):
            out[case_id] = {task: value[index].numpy() for task, value in outputs.items()}
    return out


def openkbp_native_scores(
    trainer: TaskTrainer, config: Config, cases: Sequence[Case]
) -> dict[str, dict[str, float]]:
    """OpenKBP scores on the native grid: dose and DVH scores, organ Dice per patient.

    Dose (regression tasks reading the ``dose`` label) is scored with the official dose and DVH
    scores. Organs (segmentation tasks reading the ``organs`` label) get ``dice``/``iou`` per
    (patient, contoured organ) inside the crop box the model sees, averaged over those pairs.
    On slices, most (slice, organ) pairs have an empty reference, which slice-level Dice scores
    as 1 when the prediction is empty too: an all-empty prediction would score about 0.7. Per
    patient, an organ that is contoured is present, so missing it scores 0.

    Returns:
        ``{task: {metric: value}}`` for those tasks; patients without a reference dose are not
        scored for dose.
    """
    from ctan.data.openkbp import ORGANS, ROI_KEY, TARGETS, read_patient, read_voxel_dimensions
    from ctan.metrics import dose_score, dvh_errors

    dose_tasks = [t for t in config.tasks if t.kind == "regression" and t.label == "dose"]
    organ_tasks = [
        t
        for t in config.tasks
        if t.kind == "segmentation" and t.label == "organs" and set(t.metrics) & {"dice", "iou"}
    ]
    if not dose_tasks and not organ_tasks:
        return {}
    predictions = collect_predictions(trainer, config, cases)
    patients = assemble_patients(cases, predictions, [t.name for t in dose_tasks + organ_tasks])
    scores: dict[str, dict[str, list]] = {
        t.name: defaultdict(list) for t in dose_tasks + organ_tasks
    }
    for patient in patients:
        reference = read_patient(patient.folder)
        for task in organ_tasks:
            overlaps = organ_overlaps(task, patient.outputs[task.name], reference, patient.box)
            for metric in set(task.metrics) & {"dice", "iou"}:
                scores[task.name][metric].extend(o[metric] for o in overlaps.values())
        if not dose_tasks:
            continue
        if "dose" not in reference:
            logger.info("patient %s has no reference dose; not scored", patient.patient_id)
            continue
        structures = {n: reference[n] for n in (*ORGANS, *TARGETS) if n in reference}
        voxels = read_voxel_dimensions(patient.folder / "voxel_dimensions.csv")
        mask = reference[ROI_KEY]
        for task in dose_tasks:
            native = patient.native_dose(task.name, mask)
            scores[task.name]["dose_score"].append(dose_score(reference["dose"], native, mask))
            scores[task.name]["dvh_score"].extend(
                dvh_errors(reference["dose"], native, structures, voxels, mask).tolist()
            )
    return {
        task: {m: float(np.mean(v)) if v else float("nan") for m, v in metrics.items()}
        for task, metrics in scores.items()
    }


def organ_overlaps(
    task: TaskSpec,
    output: np.ndarray,
    reference: Mapping[str, np.ndarray],
    box: tuple[tuple[int, int], ...],
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Dice and IoU of each contoured organ of one patient, on the native grid inside ``box``.

    Args:
        task: the organ segmentation task (channels in ``ctan.data.openkbp.ORGANS`` order).
        output: the task's logits over the box on the model grid, ``(C, X', Y', Z')``.
        reference: :func:`ctan.data.openkbp.read_patient` of the patient; an organ without a
            mask there was not contoured and is not scored.
        box: the patient's crop box.
        threshold: sigmoid probability above which a voxel belongs to an organ
            (``exclusive=False``); exclusive tasks take the argmax.

    Returns:
        ``{organ: {"dice": ..., "iou": ...}}``; an organ empty in both scores 1.
    """
    from ctan.data.openkbp import ORGANS

    predicted = organ_masks(task, output, box, threshold)
    window = tuple(slice(lo, hi) for lo, hi in box)
    out = {}
    for channel, organ in enumerate(ORGANS[: task.classes]):
        if organ not in reference:
            continue
        truth = reference[organ][window] > 0.5
        both = float(np.logical_and(truth, predicted[channel]).sum())
        total = float(truth.sum() + predicted[channel].sum())
        union = total - both
        out[organ] = {
            "dice": 2.0 * both / total if total else 1.0,
            "iou": both / union if union else 1.0,
        }
    return out


def organ_masks(
    task: TaskSpec,
    output: np.ndarray,
    box: tuple[tuple[int, int], ...],
    threshold: float = 0.5,
) -> np.ndarray:
    """The organ masks of one patient over ``box`` on the native grid.

    Args:
        task: the organ segmentation task (channels in ``ctan.data.openkbp.ORGANS`` order).
        output: the task's logits over the box on the model grid, ``(C, X', Y', Z')``.
        box: the patient's crop box.
        threshold: sigmoid probability above which a voxel belongs to an organ
            (``exclusive=False``); exclusive tasks take the argmax.

    Returns:
        ``bool (C, X, Y, Z)``, the box's size on the native grid.
    """
    from ctan.data.transforms import resize_values

    logits = torch.from_numpy(np.asarray(output, dtype=np.float32))
    if task.exclusive:
        probabilities = torch.softmax(logits, dim=0)
        probabilities = torch.zeros_like(probabilities).scatter_(
            0, probabilities.argmax(dim=0, keepdim=True), 1.0
        )
    else:
        probabilities = torch.sigmoid(logits)
    size = tuple(hi - lo for lo, hi in box)
    return resize_values(probabilities.numpy(), size) > threshold


@dataclass
class PatientOutputs:
    """One OpenKBP patient's model outputs, stacked over its crop box.

    Attributes:
        patient_id: the patient folder's name.
        folder: the patient folder.
        box: the crop box (``Case.meta["crop_box"]``).
        outputs: per task, the raw output ``(C, X', Y', Z')`` on the model grid over the box
            (2D slice outputs stacked along the last axis in slice order).
    """

    patient_id: str
    folder: Path
    box: tuple[tuple[int, int], ...]
    outputs: dict[str, np.ndarray]

    def native_dose(self, task: str, possible: np.ndarray | None = None) -> np.ndarray:
        """The task's dose ``(128, 128, 128)`` on the native grid, clipped at 0 and zeroed
        outside the possible-dose mask, as the official baseline does before a submission.

        Args:
            task: a dose task of :attr:`outputs`.
            possible: the patient's possible-dose mask ``(128, 128, 128)`` where already read;
                read from the patient folder otherwise.
        """
        from ctan.data.openkbp import GRID, ROI_KEY, read_sparse, to_native

        if possible is None:
            mask_index, _ = read_sparse(self.folder / f"{ROI_KEY}.csv", values=False)
            flat = np.zeros(GRID**3, dtype=np.float32)
            flat[mask_index] = 1.0
            possible = flat.reshape((GRID,) * 3)
        dose = np.clip(to_native(self.outputs[task][0], self.box), 0.0, None)
        return dose * possible

    def native_organs(self, task: TaskSpec) -> np.ndarray:
        """The organ masks of segmentation ``task`` on the native grid, ``bool (C, 128, 128,
        128)`` (channels in ``ctan.data.openkbp.ORGANS`` order), empty outside the crop box."""
        from ctan.data.openkbp import GRID

        masks = np.zeros((task.classes, GRID, GRID, GRID), dtype=bool)
        window = tuple(slice(lo, hi) for lo, hi in self.box)
        masks[(slice(None), *window)] = organ_masks(task, self.outputs[task.name], self.box)
        return masks


def assemble_patients(
    cases: Sequence[Case], predictions: Mapping[str, Mapping[str, np.ndarray]], tasks: list[str]
) -> list[PatientOutputs]:
    """Group per-case outputs of ``tasks`` by OpenKBP patient (slices in slice order)."""
    slices: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        slices[str(case.meta["patient_id"])].append(case)
    out = []
    for patient, members in slices.items():
        members.sort(key=lambda c: c.meta.get("slice", 0))
        outputs = {}
        for task in tasks:
            if "slice" in members[0].meta:
                outputs[task] = np.stack([predictions[c.case_id][task] for c in members], axis=-1)
            else:
                outputs[task] = predictions[members[0].case_id][task]
        folder = Path(members[0].files["ct"]).parent
        out.append(PatientOutputs(patient, folder, members[0].meta["crop_box"], outputs))
    return out


def predict_to_folder(
    checkpoint: Path, input_path: Path, out: Path, device: str | None = None
) -> list[Path]:
    """Run a checkpoint on new data and write its predictions under ``out``.

    Image inputs (a file, or a folder of ``.png``, ``.jpg``, ``.nii[.gz]``, ``.mha``, ``.mhd``,
    ``.nrrd`` files) get one file per pixel task and image, ``<task>/<case>``, ``<case>`` being
    the file's name without its suffix, on the input image's own grid (its size; nearest
    neighbour for segmentation, linear for other maps):

    * 2D segmentation with one map (binary masks as 0/255, as HAM10000's own masks and
      viewers have them; exclusive label maps as class indices): ``.png`` of the input's width
      and height;
    * everything else: gzipped ``.nii.gz`` with the input's affine (PNG and JPEG have none: the
      identity), multi-label masks (0/1) and multi-channel maps with one channel per structure
      on the fourth axis.

    OpenKBP patients get, on the native 128^3 grid, ``<task>/<patient>.csv`` in the submission
    format for dose and ``<task>/<patient>.nii.gz`` for organs: ``uint8 (128, 128, 128, C)``,
    0/1 per organ in ``ctan.data.openkbp.ORGANS`` order, axes as the OpenKBP arrays, voxel size
    from ``voxel_dimensions.csv`` (OpenKBP records no position: origin 0).

    ``predictions.csv`` holds class probabilities of image-level tasks. Tasks whose heads were
    never trained (a federated site's model predicts only its own tasks) are left out with a
    warning. Nothing is written into ``input_path``: preprocessed arrays are cached in a
    temporary folder, removed afterwards.

    Args:
        checkpoint: the checkpoint file.
        input_path: an image file, a folder of them, or an OpenKBP folder for OpenKBP models.
        out: the output folder (created).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` instead of the checkpoint's
            ``train.device``; ``None`` keeps it.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: no usable image in ``input_path``, an unreadable image or one of the wrong
            dimensionality (named), two images with the same name but for the suffix (both
            named), a federated global model without trained heads, or an unusable ``device``.
    """
    saved = load_checkpoint(checkpoint)
    require_trained_heads(saved, checkpoint)
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"prediction input {str(input_path)!r} does not exist")
    trainer = trainer_for(saved, device=device)
    with tempfile.TemporaryDirectory(prefix="ctan-predict-") as cache:
        config, cases = _prediction_cases(saved.config, input_path, Path(cache))
        predictions = collect_predictions(trainer, config, cases)
    trained = trained_tasks(saved)
    untrained = [t.name for t in config.tasks if t.name not in trained]
    if untrained:
        logger.warning(
            "%s: no predictions for %s: their heads were never trained (no site that trained "
            "this model held those tasks)",
            checkpoint,
            untrained,
        )
    tasks = [t for t in config.tasks if t.name in trained]
    out = Path(out)
    if config.data.format == "openkbp":
        written = _write_openkbp(tasks, cases, predictions, out)
    else:
        from ctan.data.dataset import make_reader

        axis_order = make_reader(config).axis_order
        written = [
            _write_map(task, case, predictions[case.case_id][task.name], out, axis_order)
            for case in cases
            for task in tasks
            if task.is_pixel_task
        ]
    rows = _probability_rows(tasks, cases, predictions)
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        written.append(
            atomic_write_bytes(
                out / "predictions.csv", lambda f: f.write(buffer.getvalue().encode())
            )
        )
    return written


def _prediction_cases(config: Config, input_path: Path, cache: Path) -> tuple[Config, list[Case]]:
    """The config to predict under (data at ``input_path``, cached in ``cache``) and its cases."""
    if config.data is None or config.data.format != "openkbp":
        return _image_cases(config, input_path, cache)
    from ctan.data.dataset import build_cases

    data = config.data.model_copy(update={"root": input_path, "phantom": None, "cache_dir": cache})
    config = config.model_copy(update={"data": data})
    return config, list(build_cases(config))


def _image_cases(config: Config, input_path: Path, cache: Path) -> tuple[Config, list[Case]]:
    """Cases for image files given directly, preprocessed by the checkpoint's reader; each
    case's ``meta`` keeps its file's grid (``input_shape`` in index order, ``affine``)."""
    from ctan.data.imageio import file_affine, image_loader

    files = (
        [input_path]
        if input_path.is_file()
        else sorted(p for p in input_path.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    )
    if not files:
        raise ValueError(
            f"{input_path} holds no image; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    _refuse_shared_stems(files)
    data_format = config.data.format if config.data is not None else "manifest"
    expected = INPUT_DIMS.get(data_format, config.model.spatial_dims)
    loader = image_loader()
    cases = []
    for path in files:
        try:
            shape = tuple(loader(str(path)).shape[1:])
        except (RuntimeError, ValueError, OSError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: cannot read image ({detail})") from None
        if len(shape) == expected + 1 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != expected:
            raise ValueError(
                f"{path}: a {len(shape)}D image, but this {config.model.spatial_dims}D "
                f"{data_format} model expects {expected}D inputs"
            )
        cases.append(
            Case(
                case_id=_stem(path),
                group=_stem(path),
                site=None,
                files={"image": path},
                meta={"input_shape": shape, "affine": file_affine(path)},
            )
        )
    data = {
        "format": data_format,
        "root": str(input_path.parent if input_path.is_file() else input_path),
        "cache_dir": str(cache),
    }
    config = config.model_copy(
        update={
            "data": load_config(
                {
                    "model": config.model.model_dump(),
                    "tasks": [t.model_dump() for t in config.tasks],
                    "data": data,
                }
            ).data
        }
    )
    return config, cases


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _refuse_shared_stems(files: Sequence[Path]) -> None:
    """Raise ``ValueError`` naming two files whose predictions would be written to one name
    (``a.png`` and ``a.jpg``; ``a.png`` and ``A.png`` too, as on a case-insensitive disk)."""
    first: dict[str, Path] = {}
    for path in files:
        earlier = first.setdefault(_stem(path).casefold(), path)
        if earlier != path:
            raise ValueError(
                f"{earlier} and {path} would both be predicted as case {_stem(path)!r}; rename "
                "one of them or predict them separately"
            )


def _write_openkbp(
    tasks: Sequence[TaskSpec],
    cases: Sequence[Case],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    out: Path,
) -> list[Path]:
    """Per patient on the native grid: dose as submission CSVs, organ masks as NIfTI."""
    from ctan.data.openkbp import read_voxel_dimensions, write_dose_csv

    dose = [t for t in tasks if t.kind == "regression" and t.label == "dose"]
    organs = [t for t in tasks if t.kind == "segmentation" and t.label == "organs"]
    written = {t.name for t in dose + organs}
    skipped = [t.name for t in tasks if t.is_pixel_task and t.name not in written]
    if skipped:
        logger.warning("OpenKBP predictions are dose or organs; not written: %s", skipped)
    paths = []
    for patient in assemble_patients(cases, predictions, sorted(written)):
        for task in dose:
            path = out / task.name / f"{patient.patient_id}.csv"
            paths.append(write_dose_csv(patient.native_dose(task.name), path))
        if not organs:
            continue
        spacing = read_voxel_dimensions(patient.folder / "voxel_dimensions.csv")
        affine = np.diag([*spacing, 1.0])
        for task in organs:
            masks = np.moveaxis(patient.native_organs(task), 0, -1).astype(np.uint8)
            path = out / task.name / f"{patient.patient_id}.nii.gz"
            paths.append(_write_nifti(path, masks, affine))
    return paths


#: torch's linear interpolation mode by number of spatial dimensions
LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _resample(values: torch.Tensor, size: Sequence[int], nearest: bool) -> torch.Tensor:
    """Resample ``(C, *spatial)`` to ``(C, *size)``: nearest neighbour or linear."""
    if tuple(values.shape[1:]) == tuple(size):
        return values
    if nearest:
        resized = torch.nn.functional.interpolate(
            values[None], size=tuple(size), mode="nearest-exact"
        )
    else:
        resized = torch.nn.functional.interpolate(
            values[None], size=tuple(size), mode=LINEAR_MODES[len(size)], align_corners=False
        )
    return resized[0]


#: the value of foreground pixels in a binary PNG mask (background 0)
BINARY_PNG_FOREGROUND = 255


def _write_map(task: TaskSpec, case: Case, output: np.ndarray, out: Path, axis_order: str) -> Path:
    """Write one pixel prediction on the grid of the case's input file.

    Args:
        task: a segmentation or regression task.
        case: an image case whose ``meta`` holds ``input_shape`` (index order) and ``affine``.
        output: the raw output ``(classes, *image_size)``, spatial axes in ``axis_order``.
        out: the output folder.
        axis_order: the reader's :attr:`~ctan.data.reader.FormatReader.axis_order`.

    Returns:
        ``out/<task>/<case>.png`` for 2D segmentation with one map, else ``.nii.gz``.
    """
    spatial = output.ndim - 1
    logits = torch.from_numpy(np.asarray(output, dtype=np.float32))
    if axis_order == "zyx":
        logits = logits.permute(0, *range(spatial, 0, -1))
    size = case.meta["input_shape"]
    if task.kind == "segmentation":
        maps = logits.argmax(0, keepdim=True) if task.exclusive else torch.sigmoid(logits) > 0.5
        values = _resample(maps.float(), size, nearest=True).to(torch.uint8).numpy()
    else:
        values = _resample(logits, size, nearest=False).numpy()
    channels = values.shape[0]
    if task.kind == "segmentation" and channels == 1 and spatial == 2:
        from PIL import Image

        path = out / task.name / f"{case.case_id}.png"
        mask = values[0].T if task.exclusive else values[0].T * BINARY_PNG_FOREGROUND
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(mask)).save(buffer, format="PNG")
        return atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    if channels == 1:
        array = values[0]
    else:
        volume = values.reshape(channels, *size, *(1,) * (3 - len(size)))
        array = np.moveaxis(volume, 0, -1)
    return _write_nifti(out / task.name / f"{case.case_id}.nii.gz", array, case.meta["affine"])


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (index order ``(x, y, z[, c])``) as a gzipped NIfTI, atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = gzip.compress(image.to_bytes(), mtime=0)
    return atomic_write_bytes(path, lambda f: f.write(data))


def _probability_rows(
    tasks: Sequence[TaskSpec], cases: Sequence[Case], predictions: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    image_tasks = [t for t in tasks if not t.is_pixel_task]
    rows = []
    for case in cases:
        if case.case_id not in predictions:
            continue
        row: dict[str, Any] = {"case_id": case.case_id}
        for task in image_tasks:
            logits = torch.from_numpy(predictions[case.case_id][task.name])
            probs = logits.softmax(0) if task.exclusive else logits.sigmoid()
            row[f"{task.name}_class"] = int(probs.argmax()) if task.exclusive else ""
            for k, p in enumerate(probs.tolist()):
                row[f"{task.name}_p{k}"] = round(p, 6)
        if image_tasks:
            rows.append(row)
    return rows
