"""Checkpoints: weights with everything needed to trust and reuse them, in one file.

A checkpoint holds the model's ``state_dict``, the whole validated config, the task specs,
metrics, the model fingerprint (:meth:`ctan.config.ModelConfig.fingerprint`) and the code
version. It is written atomically: a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctan import __version__
from ctan.config import Config, load_config

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        config: the config the weights were trained with.
        state_dict: the model weights (unwrapped keys).
        metrics: whatever metrics were saved with it.
        extra: other saved state (epoch, optimiser, round).
        code_version: ``ctan.__version__`` of the writer.
        created: ISO timestamp of writing.
    """

    config: Config
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    created: str = ""

    def build_model(self) -> nn.Module:
        """The model of this checkpoint with its weights loaded (on the CPU, eval mode)."""
        from ctan.models import build_model

        model = build_model(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def _process_umask() -> int:
    """The umask, read once at import (setting and restoring it later could race threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the mode a file written with ``open()`` gets; temporary files are created owner-only
FILE_MODE = 0o666 & ~_process_umask()


def atomic_write_bytes(path: Path, write: Any) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place,
    with the mode ``open()`` would have given it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(
    path: Path,
    model: nn.Module,
    config: Config,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights with ``config`` and ``metrics`` to ``path`` atomically."""
    unwrapped = getattr(model, "_module", model)
    payload = {
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json"),
        "fingerprint": config.model.fingerprint(config.tasks),
        "state_dict": {k: v.detach().cpu() for k, v in unwrapped.state_dict().items()},
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
    }
    return atomic_write_bytes(Path(path), lambda file: torch.save(payload, file))


def load_checkpoint(path: Path, config: Config | None = None) -> Checkpoint:
    """Read a checkpoint, optionally checking that it fits ``config``.

    Args:
        path: the checkpoint file.
        config: when given, the checkpoint's architecture, model settings and tasks must match
            it (so its weights mean what the config says).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a checkpoint of this project, was written by a newer
            version whose format or config settings this one does not know, or does not match
            ``config`` (the message names each difference).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {err}") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("format_version"), int):
        raise ValueError(
            f"{str(path)!r} is not a checkpoint of this project (format {FORMAT_VERSION})"
        )
    writer = payload.get("code_version") or "an unknown version"
    if payload["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has format {payload['format_version']} (written by ctan "
            f"{writer}); this ctan {__version__} reads format {FORMAT_VERSION}: upgrade ctan to "
            "read it"
        )
    try:
        saved = load_config(payload["config"])
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"checkpoint {str(path)!r} (written by ctan {writer}) holds a config that this ctan "
            f"{__version__} cannot read; a checkpoint of a newer ctan needs that version or "
            f"later: {err}"
        ) from err
    weights = payload.get("state_dict")
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds no model weights (no state_dict)")
    _require_fitting_weights(path, saved, weights)
    if config is not None:
        problems = checkpoint_mismatch(saved, config)
        if problems:
            raise ValueError(
                f"checkpoint {str(path)!r} does not match the config: " + "; ".join(problems)
            )
    return Checkpoint(
        config=saved,
        state_dict=weights,
        metrics=payload.get("metrics", {}),
        extra=payload.get("extra", {}),
        code_version=payload.get("code_version", ""),
        created=payload.get("created", ""),
    )


def _require_fitting_weights(path: Path, config: Config, weights: Mapping[str, Any]) -> None:
    """Refuse weights that the model of the checkpoint's own config cannot take (a file edited
    or assembled by hand, or written by a version whose model differed).

    Raises:
        ValueError: names the file and the first weights that differ.
    """
    from ctan.models import build_model

    expected = build_model(config).state_dict()
    problems = [f"{k} missing" for k in expected if k not in weights]
    problems += [f"{k} unexpected" for k in weights if k not in expected]
    problems += [
        f"{k} {tuple(weights[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(v.shape)
    ]
    if problems:
        more = f"; {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(
            f"checkpoint {str(path)!r} holds weights that do not fit the model of its own config "
            f"({'; '.join(problems[:3])}{more})"
        )


def require_trained_heads(checkpoint: Checkpoint, path: Path) -> None:
    """Refuse a federated run's global model whose heads stayed at the sites.

    With ``federation.heads: local`` the server never sees a head, so the heads in its
    ``global_model.pt`` are untrained and would score or predict noise.

    Raises:
        ValueError: the checkpoint is such a model (the message names what to use instead).
    """
    if checkpoint.extra.get("heads") == "local":
        raise ValueError(
            f"{str(path)!r} holds a federation's shared groups only: its heads stayed local to "
            "the sites (federation.heads: local), so the heads in it are untrained. Use a "
            "site's personalised model, <state dir>/<federation id>/<site>/model.pt (last "
            "round) or best.pt (its best round), or train with federation.heads: federated "
            "for one global model."
        )


def trained_tasks(checkpoint: Checkpoint) -> list[str]:
    """The tasks whose heads were trained, in config order: those the checkpoint records (a
    federated site's own tasks; the tasks some site held, for a federation's global model),
    else every task of its config (centralised training trains them all)."""
    names = [t.name for t in checkpoint.config.tasks]
    recorded = checkpoint.extra.get("tasks")
    return names if recorded is None else [t for t in names if t in recorded]


def checkpoint_mismatch(saved: Config, config: Config) -> list[str]:
    """Differences between the model and tasks of two configs, one message each."""
    problems = []
    if saved.model.arch != config.model.arch:
        problems.append(
            f"architecture is {saved.model.arch!r} in the checkpoint but {config.model.arch!r} "
            "in the config"
        )
    saved_model = saved.model.model_dump()
    for key, value in config.model.model_dump().items():
        if key != "arch" and saved_model.get(key) != value:
            found = saved_model.get(key)
            problems.append(f"model.{key} is {found!r} in the checkpoint, {value!r} in the config")
    saved_tasks = [(t.name, t.kind, t.classes, t.exclusive) for t in saved.tasks]
    tasks = [(t.name, t.kind, t.classes, t.exclusive) for t in config.tasks]
    if saved_tasks != tasks:
        problems.append(
            f"tasks (name, kind, classes, exclusive) are {saved_tasks} in the checkpoint but "
            f"{tasks} in the config"
        )
    return problems
