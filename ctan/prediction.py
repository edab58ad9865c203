"""Evaluation and prediction with saved checkpoints.

OpenKBP is scored per patient on the native 128^3 grid: predictions over the crop box are mapped
back (:func:`ctan.data.openkbp.to_native`) and compared with the reference dose, structures and
voxel size read from the patient's own CSVs (dose the official way; organs by Dice per contoured
organ).
"""

from __future__ import annotations

import csv
import io
import logging
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
from ctan.config import Config, load_config
from ctan.data.base import Case
from ctan.engine import Evaluation, TaskTrainer, make_loader
from ctan.tasks import TaskSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
#: spatial dimensions of the files each format reads, whatever the model's spatial_dims
INPUT_DIMS = {"ham10000": 2, "stoic": 3}


def trainer_for(checkpoint: Checkpoint, config: Config | None = None) -> TaskTrainer:
    """A :class:`TaskTrainer` around the checkpoint's model (for scoring and prediction)."""
    from ctan.training import companions

    config = config or checkpoint.config
    return TaskTrainer(
        checkpoint.build_model(), config.tasks, config.train, companions=companions(config)
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
    checkpoint: Path, data_config: Path | None = None, split: str = "test"
) -> dict[str, Any]:
    """Score a checkpoint on a split of its own data, or of another config's data section.

    A federated site's model is scored on the split that site held out (its checkpoint records
    how it split its cases), not on a split of the whole data, which would hold some of its
    training cases. Only tasks whose heads were trained are scored; the others are listed
    under ``untrained-tasks``.

    Raises:
        ValueError: there is no data to evaluate on (the message names the checkpoint and
            ``--data``), the split is empty, the site's data changed since it split it, or the
            checkpoint is a federated global model without trained heads.
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
    if data_config is None and "split" in saved.extra:
        splits = recorded_site_splits(config, saved.extra, checkpoint)
    else:
        splits = prepare_splits(config)
    cases = [c for part in splits.values() for c in part] if split == "all" else splits[split]
    if not cases:
        raise ValueError(f"the {split} split of {config.data.root} is empty")
    evaluation = evaluate_cases(trainer_for(saved, config), config, cases)
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
    predicted = resize_values(probabilities.numpy(), size) > threshold
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


def predict_to_folder(checkpoint: Path, input_path: Path, out: Path) -> list[Path]:
    """Run a checkpoint on new data and write its predictions under ``out``.

    Writes ``<task>/<case>.png`` (2D) or ``<task>/<case>.nii.gz`` (3D) for segmentation
    (binary or label maps; multi-label tasks as one NIfTI with a channel per structure),
    ``<task>/<case>.nii.gz`` for other pixel maps, ``dose/<patient>.csv`` in the OpenKBP
    submission format for OpenKBP dose, and ``predictions.csv`` with class probabilities.
    Tasks whose heads were never trained (a federated site's model predicts only its own
    tasks) are left out with a warning.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: no usable image in ``input_path``, an image of the wrong dimensionality,
            or a federated global model without trained heads.
    """
    saved = load_checkpoint(checkpoint)
    require_trained_heads(saved, checkpoint)
    config = saved.config
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"prediction input {str(input_path)!r} does not exist")
    if config.data is not None and config.data.format == "openkbp":
        config = config.model_copy(
            update={
                "data": config.data.model_copy(
                    update={"root": input_path, "phantom": None, "cache_dir": None}
                )
            }
        )
        from ctan.data.dataset import build_cases

        cases = list(build_cases(config))
    else:
        config, cases = _image_cases(config, input_path)
    trainer = trainer_for(saved, config)
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
    written: list[Path] = []
    if config.data.format == "openkbp":
        dose_tasks = [t.name for t in tasks if t.kind == "regression" and t.label == "dose"]
        from ctan.data.openkbp import write_dose_csv

        for patient in assemble_patients(cases, predictions, dose_tasks):
            for task in dose_tasks:
                path = out / task / f"{patient.patient_id}.csv"
                written.append(write_dose_csv(patient.native_dose(task), path))
    else:
        for case in cases:
            for task in tasks:
                if task.is_pixel_task:
                    written.append(
                        _write_map(task, case, predictions[case.case_id][task.name], out)
                    )
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


def _image_cases(config: Config, input_path: Path) -> tuple[Config, list[Case]]:
    """Cases for image files given directly, preprocessed by the checkpoint's reader."""
    from ctan.data.imageio import image_loader

    files = (
        [input_path]
        if input_path.is_file()
        else sorted(p for p in input_path.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    )
    if not files:
        raise ValueError(
            f"{input_path} holds no image; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    data_format = config.data.format if config.data is not None else "manifest"
    expected = INPUT_DIMS.get(data_format, config.model.spatial_dims)
    loader = image_loader()
    for path in files:
        dims = loader(path).ndim - 1
        if dims != expected:
            raise ValueError(
                f"{path}: a {dims}D image, but this {config.model.spatial_dims}D "
                f"{data_format} model expects {expected}D inputs"
            )
    data = {
        "format": data_format,
        "root": str(input_path.parent if input_path.is_file() else input_path),
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
    cases = [Case(case_id=_stem(p), group=_stem(p), site=None, files={"image": p}) for p in files]
    return config, cases


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _write_map(task: TaskSpec, case: Case, output: np.ndarray, out: Path) -> Path:
    """Write one pixel prediction ``(classes, *size)``: PNG in 2D binary/label maps, else NIfTI."""
    tensor = torch.from_numpy(output)
    if task.kind == "segmentation":
        if task.exclusive:
            values = tensor.argmax(dim=0).numpy().astype(np.uint8)
        else:
            values = (torch.sigmoid(tensor) > 0.5).numpy().astype(np.uint8)
            if task.classes == 1:
                values = values[0] * 255
    else:
        values = output.astype(np.float32)
    if values.ndim == 2:
        from PIL import Image

        path = out / task.name / f"{case.case_id}.png"
        buffer = io.BytesIO()
        Image.fromarray(values).save(buffer, format="PNG")
        return atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    import nibabel as nib

    array = np.moveaxis(values, 0, -1) if values.ndim == output.ndim else values
    path = out / task.name / f"{case.case_id}.nii.gz"
    image = nib.Nifti1Image(array, affine=np.eye(4))
    return atomic_write_bytes(path, lambda f: f.write(image.to_bytes()))  # type: ignore[arg-type]


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
