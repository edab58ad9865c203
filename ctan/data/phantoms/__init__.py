"""Phantom data sets written in the layouts of the real ones, so that one reader serves both.

``write_phantoms("ham10000" | "openkbp" | "stoic", out, cases=, sites=, seed=)`` writes a
deterministic phantom data set (same seed, same bytes) into ``out``. Each layout's module
documents its fixed generative parameters: the labels (diagnosis, dose, COVID and severity) are
functions of latent geometry that the image and the segmentation targets also expose, plus noise,
and sites differ in acquisition and label mix. See ``docs/data.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ctan.data.phantoms import ham10000, openkbp, stoic
from ctan.data.phantoms._common import atomic_dir

_WRITERS: dict[str, Callable[..., None]] = {
    "ham10000": ham10000.write,
    "openkbp": openkbp.write,
    "stoic": stoic.write,
}
LAYOUTS: tuple[str, ...] = tuple(_WRITERS)


def write_phantoms(layout: str, out: Path | str, *, cases: int, sites: int, seed: int) -> Path:
    """Write a phantom data set in a real data set's layout.

    The folder appears complete or not at all: it is written beside ``out`` and renamed at the end.

    Args:
        layout: ``"ham10000"`` (Dataverse release), ``"openkbp"`` (``provided-data``) or
            ``"stoic"`` (STOIC2021 ``data/mha`` + ``metadata/reference.csv``).
        out: folder to create; it must not exist or be empty.
        cases: number of cases (images for HAM10000, patients otherwise), at least ``sites``.
        sites: number of sites; cases are split evenly over them.
        seed: random seed; the same seed writes the same bytes.

    Returns:
        The absolute path of the written folder.

    Raises:
        ValueError: unknown layout, or ``cases``/``sites`` out of range.
        FileExistsError: ``out`` exists and is not an empty folder.

    Example:
        >>> write_phantoms("ham10000", "ham", cases=20, sites=2, seed=0)  # doctest: +SKIP
        PosixPath('/.../ham')
    """
    writer = _WRITERS.get(layout)
    if writer is None:
        raise ValueError(f"phantom layout {layout!r} is unknown; allowed: {list(LAYOUTS)}")
    if sites < 1:
        raise ValueError(f"sites must be at least 1, got {sites}")
    if cases < sites:
        raise ValueError(f"cases ({cases}) must be at least sites ({sites}): every site needs one")
    target = Path(out).absolute()
    with atomic_dir(target) as tmp:
        writer(tmp, cases=cases, sites=sites, seed=seed)
    return target
