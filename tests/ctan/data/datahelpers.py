"""Shared helpers for the data tests: configs, the real-data folder and tiny layout writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ctan.config import Config, load_config

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"


def real_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (../shared/data is not available here)")
    return path


def make_config(
    fmt: str, root: Path, tasks: list[dict[str, Any]], cache: Path, **model: Any
) -> Config:
    """A config for ``fmt`` at ``root`` with ``tasks``; model settings override the defaults."""
    spec = {"arch": "ctan", "spatial_dims": 2, "in_channels": 3, "image_size": [32, 32]}
    spec.update(model)
    return load_config(
        {
            "model": spec,
            "tasks": tasks,
            "data": {"format": fmt, "root": str(root), "cache_dir": str(cache)},
        }
    )


HAM_TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": 1},
    {"name": "diagnosis", "kind": "classification", "classes": 7},
]
KBP_TASKS = [
    {"name": "dose", "kind": "regression", "classes": 1},
    {"name": "organs", "kind": "segmentation", "classes": 7, "exclusive": False},
]
STOIC_TASKS = [
    {"name": "covid", "kind": "classification", "classes": 2},
    {"name": "severe", "kind": "classification", "classes": 2},
]


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_mask(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[5:20, 10:30] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def write_sparse(path: Path, index: np.ndarray, values: np.ndarray | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        rows = "".join(f"{i},\n" for i in index)
    else:
        rows = "".join(f"{i},{v}\n" for i, v in zip(index, values, strict=True))
    path.write_text(",data\n" + rows)


def write_kbp_patient(folder: Path, structures: tuple[str, ...], dose: bool = True) -> None:
    """A tiny OpenKBP patient: a 10^3 cube of possible dose in the middle of the grid."""
    grid = np.zeros((128,) * 3, dtype=bool)
    grid[60:70, 60:70, 60:70] = True
    index = np.flatnonzero(grid)
    write_sparse(folder / "ct.csv", index, np.full(index.size, 1100.0))
    write_sparse(folder / "possible_dose_mask.csv", index, None)
    if dose:
        write_sparse(folder / "dose.csv", index, np.linspace(1, 70, index.size).round(3))
    for name in structures:
        write_sparse(folder / f"{name}.csv", index[:50], None)
    (folder / "voxel_dimensions.csv").write_text("3.9\n3.9\n2.5\n")


def write_mha(path: Path, seed: int, meta: dict[str, str] | None = None) -> None:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(-500, 300, (8, 16, 16)).astype(np.int16))
    for key, value in (meta or {}).items():
        image.SetMetaData(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
