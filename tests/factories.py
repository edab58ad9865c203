"""Config factories shared by tests: small widths keep 3D and Opacus checks fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctan.config import Config, load_config

TASK_MIXES: dict[str, list[dict[str, Any]]] = {
    "seg+cls": [
        {"name": "lesion", "kind": "segmentation", "classes": 1},
        {"name": "diagnosis", "kind": "classification", "classes": 7},
    ],
    "seg+reg": [
        {"name": "organs", "kind": "segmentation", "classes": 3, "exclusive": False},
        {"name": "dose", "kind": "regression", "classes": 1},
    ],
    "cls+cls": [
        {"name": "covid", "kind": "classification", "classes": 2},
        {"name": "severe", "kind": "classification", "classes": 1},
    ],
    "three": [
        {"name": "lesion", "kind": "segmentation", "classes": 2},
        {"name": "dose", "kind": "regression", "classes": 2},
        {"name": "diagnosis", "kind": "classification", "classes": 4},
    ],
}

ARCHS = ["stl", "hps", "mtan", "ctan"]


def make_config(
    arch: str = "ctan",
    spatial_dims: int = 2,
    mix: str = "seg+cls",
    size: int | None = None,
    widths: list[int] | None = None,
    seed: int = 0,
    **model: Any,
) -> Config:
    """A validated config; 2D defaults to 64x64 RGB, 3D to 32^3 single channel."""
    if size is None:
        size = 64 if spatial_dims == 2 else 32
    return load_config(
        {
            "experiment": {"seed": seed},
            "model": {
                "arch": arch,
                "spatial_dims": spatial_dims,
                "in_channels": 3 if spatial_dims == 2 else 1,
                "image_size": [size] * spatial_dims,
                "widths": widths or [8, 16, 16, 32],
                **model,
            },
            "tasks": TASK_MIXES[mix],
        }
    )


def with_scale(config: Config, task: str, scale: float) -> Config:
    """``config`` with regression task ``task`` at output ``scale``."""
    tasks = [t.model_copy(update={"scale": scale}) if t.name == task else t for t in config.tasks]
    return config.model_copy(update={"tasks": tasks})


def derm_config(root: Path, tmp: Path, arch: str = "ctan", **train: Any) -> Config:
    """A small 2D config on a HAM10000-layout folder: 32x32 images, widths [8, 16, 32]."""
    return load_config(
        {
            "experiment": {"name": f"test-{arch}", "seed": 0, "output_dir": str(tmp / "runs")},
            "model": {
                "arch": arch,
                "spatial_dims": 2,
                "in_channels": 3,
                "image_size": [32, 32],
                "widths": [8, 16, 32],
            },
            "tasks": TASK_MIXES["seg+cls"],
            "data": {
                "format": "ham10000",
                "root": str(root),
                "cache_dir": str(tmp / "cache"),
                "split": {"validation": 0.25, "test": 0.25},
            },
            "train": {"epochs": 2, "batch_size": 8, "lr": 3.0e-3, **train},
        }
    )
