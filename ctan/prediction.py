"""Evaluation and prediction with saved checkpoints.

OpenKBP dose is scored the official way: predictions over the crop box are mapped back onto the
native 128^3 grid of each patient (:func:`ctan.data.openkbp.to_native`) and compared with the
reference dose, structures and voxel size read from the patient's own CSVs.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctan.checkpoint import Checkpoint, atomic_write_bytes, load_checkpoint
from ctan.config import Config, load_config
from ctan.data.base import Case
from ctan.engine import Evaluation, TaskTrainer, make_loader
from ctan.tasks import TaskSpec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
NATIVE_DOSE_METRICS = ("dose_score", "dvh_score")
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
    """Score ``cases``; OpenKBP dose metrics are replaced by their native-grid values."""
    from ctan.data.dataset import CaseDataset

    loader = make_loader(
        CaseDataset(list(cases), config, train=False),
        config.train.batch_size,
        shuffle=False,
        seed=0,
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

    Raises:
        ValueError: the other config has no data section, or the split is empty.
    """
    from ctan.training import prepare_splits

    saved = load_checkpoint(checkpoint)
    config = saved.config
    if data_config is not None:
        other = load_config(data_config)
        if other.data is None:
            raise ValueError(f"{data_config} has no data section to evaluate on")
        config = config.model_copy(update={"data": other.data})
    splits = prepare_splits(config)
    cases = [c for part in splits.values() for c in part] if split == "all" else splits[split]
    if not cases:
        raise ValueError(f"the {split} split of {config.data.root} is empty")
    evaluation = evaluate_cases(trainer_for(saved, config), config, cases)
    return {
        "checkpoint": str(checkpoint),
        "data": str(config.data.root),
        "split": split,
        "cases": len(cases),
        "metrics": evaluation.metrics,
        "labelled": evaluation.labelled,
    }


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
    """Official OpenKBP dose and DVH scores of the dose task(s) on the native grid.

    Returns:
        ``{task: {"dose_score": mean over patients, "dvh_score": mean over all DVH errors}}``
        for each regression task reading the ``dose`` label; patients without a reference dose
        are skipped.
    """
    from ctan.data.openkbp import ORGANS, ROI_KEY, TARGETS, read_patient, read_voxel_dimensions
    from ctan.metrics import dose_score, dvh_errors

    dose_tasks = [t for t in config.tasks if t.kind == "regression" and t.label == "dose"]
    if not dose_tasks:
        return {}
    predictions = collect_predictions(trainer, config, cases)
    volumes = assemble_patients(cases, predictions, [t.name for t in dose_tasks])
    scores: dict[str, dict[str, list]] = {t.name: defaultdict(list) for t in dose_tasks}
    for patient, (folder, by_task) in volumes.items():
        reference = read_patient(folder)
        if "dose" not in reference:
            logger.info("patient %s has no reference dose; not scored", patient)
            continue
        structures = {n: reference[n] for n in (*ORGANS, *TARGETS) if n in reference}
        voxels = read_voxel_dimensions(folder / "voxel_dimensions.csv")
        for task, native in by_task.items():
            mask = reference[ROI_KEY]
            scores[task]["dose_score"].append(dose_score(reference["dose"], native, mask))
            scores[task]["dvh_score"].extend(
                dvh_errors(reference["dose"], native, structures, voxels, mask).tolist()
            )
    return {
        task: {m: float(np.mean(v)) if v else float("nan") for m, v in metrics.items()}
        for task, metrics in scores.items()
    }


def assemble_patients(
    cases: Sequence[Case], predictions: Mapping[str, Mapping[str, np.ndarray]], tasks: list[str]
) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """Per OpenKBP patient, its folder and each task's first output channel on the native grid.

    2D slice predictions are stacked along the slice axis in slice order before mapping back;
    dose is clipped at 0 and zeroed outside the patient's possible-dose mask, as the official
    baseline does before writing a submission.
    """
    from ctan.data.openkbp import GRID, ROI_KEY, read_sparse, to_native

    slices: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        slices[str(case.meta["patient_id"])].append(case)
    out = {}
    for patient, members in slices.items():
        members.sort(key=lambda c: c.meta.get("slice", 0))
        box = members[0].meta["crop_box"]
        folder = Path(members[0].files["ct"]).parent
        mask_index, _ = read_sparse(folder / f"{ROI_KEY}.csv", values=False)
        possible = np.zeros(GRID**3, dtype=np.float32)
        possible[mask_index] = 1.0
        possible = possible.reshape((GRID,) * 3)
        by_task = {}
        for task in tasks:
            if "slice" in members[0].meta:
                volume = np.stack([predictions[c.case_id][task][0] for c in members], axis=-1)
            else:
                volume = predictions[members[0].case_id][task][0]
            by_task[task] = np.clip(to_native(volume, box), 0.0, None) * possible
        out[patient] = (folder, by_task)
    return out


def predict_to_folder(checkpoint: Path, input_path: Path, out: Path) -> list[Path]:
    """Run a checkpoint on new data and write its predictions under ``out``.

    Writes ``<task>/<case>.png`` (2D) or ``<task>/<case>.nii.gz`` (3D) for segmentation
    (binary or label maps; multi-label tasks as one NIfTI with a channel per structure),
    ``<task>/<case>.nii.gz`` for other pixel maps, ``dose/<patient>.csv`` in the OpenKBP
    submission format for OpenKBP dose, and ``predictions.csv`` with class probabilities.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: no usable image in ``input_path``, or an image of the wrong dimensionality.
    """
    saved = load_checkpoint(checkpoint)
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
    out = Path(out)
    written: list[Path] = []
    if config.data.format == "openkbp":
        dose_tasks = [t.name for t in config.tasks if t.kind == "regression" and t.label == "dose"]
        from ctan.data.openkbp import write_dose_csv

        for patient, (_, by_task) in assemble_patients(cases, predictions, dose_tasks).items():
            for task, volume in by_task.items():
                written.append(write_dose_csv(volume, out / task / f"{patient}.csv"))
    else:
        for case in cases:
            for task in config.tasks:
                if task.is_pixel_task:
                    written.append(
                        _write_map(task, case, predictions[case.case_id][task.name], out)
                    )
    rows = _probability_rows(config.tasks, cases, predictions)
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
