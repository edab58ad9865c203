"""Helpers shared by the phantom generators: seeding, atomic output, smooth noise, site files."""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def case_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """A generator for one case, seeded by ``(seed, stream, index)``.

    Each case draws from its own stream, so a change to how one case is drawn does not shift the
    random numbers of the others.
    """
    return np.random.default_rng([seed, stream, index])


def even_sizes(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes differing by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def site_names(known: Sequence[str], count: int, prefix: str) -> list[str]:
    """The first ``count`` of ``known``, then ``<prefix>_<k>`` (1-based) for further sites."""
    return [known[k] if k < len(known) else f"{prefix}_{k + 1}" for k in range(count)]


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], waves: int = 6, max_cycles: float = 3.0
) -> np.ndarray:
    """A smooth random field of roughly unit standard deviation, as a sum of random cosines.

    Args:
        rng: the generator to draw from.
        shape: output shape (any number of dimensions).
        waves: number of cosine components.
        max_cycles: highest spatial frequency, in cycles across the field.

    Returns:
        ``float32`` array of ``shape``.
    """
    axes = [np.linspace(0.0, 1.0, n, dtype=np.float32) for n in shape]
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(waves):
        freq = rng.uniform(-max_cycles, max_cycles, len(shape)) * 2.0 * np.pi
        phase = np.float32(rng.uniform(0.0, 2.0 * np.pi))
        arg = phase
        for dim, (axis, w) in enumerate(zip(axes, freq, strict=True)):
            view = [1] * len(shape)
            view[dim] = -1
            arg = arg + (np.float32(w) * axis).reshape(view)
        field += np.cos(arg)
    return field * np.float32(np.sqrt(2.0 / waves))


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` that becomes ``out`` only when the block succeeds.

    A crash leaves no half-written ``out`` that a reader could take for a complete data set.

    Raises:
        FileExistsError: ``out`` exists and is not an empty folder, also when another writer
            completed it while this one was writing (this one's folder is then discarded).
    """
    out = Path(out)
    if _is_filled(out):
        raise FileExistsError(f"phantom output {out} already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        try:
            if out.exists() and not _is_filled(out):
                out.rmdir()
            tmp.rename(out)
        except OSError as error:
            if _is_filled(out):
                raise FileExistsError(
                    f"phantom output {out} was completed by another writer meanwhile"
                ) from error
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_filled(path: Path) -> bool:
    """Whether ``path`` exists as anything but an empty folder."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write a small CSV with ``\\n`` line ends (byte-identical on every platform)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_sites_csv(root: Path, id_column: str, sites: dict[str, str]) -> None:
    """Write ``sites.csv`` (case id -> site) for layouts whose real release has no site column."""
    write_csv(root / "sites.csv", [id_column, "site"], sorted(sites.items(), key=_natural_key))


def _natural_key(item: tuple[str, str]) -> tuple[int, str]:
    digits = "".join(ch for ch in item[0] if ch.isdigit())
    return (int(digits) if digits else -1, item[0])
