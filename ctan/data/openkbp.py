"""OpenKBP reader: head-and-neck planning CT and structures -> dose, organ contours.

Layout (``provided-data`` of the OpenKBP challenge, also accepted: a folder of ``pt_*`` folders)::

    root/{train-pats,validation-pats,test-pats}/pt_N/
        ct.csv  dose.csv  possible_dose_mask.csv  voxel_dimensions.csv  <Structure>.csv ...
    root/sites.csv    optional, case_id,site (case_id = pt_N); not in the real release

Every CSV but ``voxel_dimensions.csv`` is sparse: a ``,data`` header, then ``index,value`` rows
(masks: ``index,`` with an empty value); indices point into a flattened 128x128x128 C-order
array whose axis 2 is the slice axis. A structure file exists only where it was contoured, so
``organs`` has per-channel availability; test patients have no ``dose.csv``. The real release has
no site column: ``Case.site`` comes from ``sites.csv`` where it exists (the phantom generator
writes one) and is ``None`` otherwise and for patients it does not list (see
:func:`~ctan.data.reader.read_sites`).

Preprocessing crops a box around the possible-dose mask (square in-plane, 2 voxels margin) and
resamples it to ``model.image_size``: a volume ``(D, H, W)`` along axes 0, 1, 2 in 3D, or in 2D
one sample per slice (axis 2) of the box, resampled in-plane to ``(H, W)``. The box is kept in
``Case.meta["crop_box"]`` so :func:`to_native` maps predictions back to 128^3 for scoring and
:func:`write_dose_csv` writes them in the submission format.

Label keys: ``dose`` (regression, 1 channel, Gy; ROI = possible-dose mask) and ``organs``
(segmentation, 7 independent channels in :data:`ORGANS` order). The image has 4 channels: CT
(HU+1024 clipped to 0..4095, scaled to [0, 1]) and the PTV56, PTV63, PTV70 masks. Volume axis 1
runs between the patient's right and left (the left parotid lies at higher indices than the
right one in all 35 real patients with both contoured), so a mirror across spatial axis 1
exchanges the two parotid channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctan.checkpoint import atomic_write_bytes
from ctan.data.base import Case
from ctan.data.reader import FormatReader, LabelInfo, ListingProblems, read_sites
from ctan.data.transforms import resize_labels, resize_values

__all__ = [
    "GRID",
    "ORGANS",
    "TARGETS",
    "OpenKBPReader",
    "crop_box",
    "dose_levels",
    "read_patient",
    "read_sparse",
    "to_native",
    "write_dose_csv",
]

GRID = 128
ORGANS = (
    "Brainstem",
    "SpinalCord",
    "RightParotid",
    "LeftParotid",
    "Esophagus",
    "Larynx",
    "Mandible",
)
TARGETS = ("PTV56", "PTV63", "PTV70")
SUBSETS = {"train-pats": "train", "validation-pats": "validation", "test-pats": "test"}
REQUIRED = ("ct.csv", "possible_dose_mask.csv", "voxel_dimensions.csv")
CT_MAX = 4095.0
MARGIN = 2
ROI_KEY = "possible_dose_mask"


def read_sparse(path: Path, values: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse one OpenKBP sparse CSV quickly (whole text at once, no per-line Python).

    Args:
        path: a ``,data``-headed CSV.
        values: ``True`` for ``index,value`` files, ``False`` for masks (``index,``).

    Returns:
        ``(indices int64 (N,), values float32 (N,) or None)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: wrong header, unparsable rows, a missing value, or an index outside
            ``0 .. 128**3 - 1``; the file is named.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file does not exist")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    header, _, body = text.partition("\n")
    if header.strip() != ",data":
        raise ValueError(f"{path}: header is {header.strip()[:40]!r}, expected ',data'")
    body = body.strip()
    rows = body.count("\n") + 1 if body else 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            flat = np.fromstring(body.replace(",", " "), sep=" ") if rows else np.zeros(0)
        except ValueError:
            flat = np.zeros(0)
    if caught or flat.size not in ((2 * rows,) if values else (rows, 2 * rows)):
        raise ValueError(
            f"{path}: cannot parse {rows} rows as 'index,{'value' if values else ''}' "
            f"(read {flat.size} numbers)"
        )
    pairs = flat.reshape(rows, -1)
    index = pairs[:, 0]
    bad = (index < 0) | (index >= GRID**3) | (index != np.floor(index))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{path}: row {row + 2} has index {index[row]:g}, outside the 128^3 grid "
            f"(0..{GRID**3 - 1})"
        )
    return index.astype(np.int64), (pairs[:, 1].astype(np.float32) if values else None)


def _dense(path: Path, values: bool) -> np.ndarray:
    index, data = read_sparse(path, values)
    volume = np.zeros(GRID**3, dtype=np.float32)
    volume[index] = 1.0 if data is None else data
    return volume.reshape(GRID, GRID, GRID)


def read_voxel_dimensions(path: Path) -> np.ndarray:
    """The voxel size in mm, ``float64 (3,)``; raises ``ValueError`` naming ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        spacing = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        spacing = np.zeros(0)
    if spacing.shape != (3,) or (spacing <= 0).any():
        raise ValueError(f"{path}: expected three positive voxel sizes, got {spacing.tolist()}")
    return spacing


def read_patient(folder: Path) -> dict[str, np.ndarray]:
    """All volumes of one patient on the native grid, ``float32 (128, 128, 128)`` each.

    Returns:
        ``ct`` (clipped to 0..4095), ``possible_dose_mask``, ``dose`` (Gy, where present) and one
        mask per structure file present, plus ``voxel_dimensions`` ``(3,)``.
    """
    out = {
        "ct": np.clip(_dense(folder / "ct.csv", True), 0.0, CT_MAX),
        ROI_KEY: _dense(folder / "possible_dose_mask.csv", False),
        "voxel_dimensions": read_voxel_dimensions(folder / "voxel_dimensions.csv"),
    }
    if (folder / "dose.csv").is_file():
        out["dose"] = _dense(folder / "dose.csv", True)
    for name in (*ORGANS, *TARGETS):
        if (folder / f"{name}.csv").is_file():
            out[name] = _dense(folder / f"{name}.csv", False)
    return out


def dose_levels(files: Mapping[str, Path]) -> str:
    """The plan's prescription levels in Gy from the target files present (``"56+63+70"``,
    ``"56+70"``, ``"70"``; ``"none"`` without targets): a per-patient class for partitions,
    since sites differ in how many dose levels their protocols prescribe."""
    return "+".join(name.removeprefix("PTV") for name in TARGETS if name in files) or "none"


def crop_box(mask_index: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The crop ``((x0, x1), (y0, y1), (z0, z1))`` around mask voxels (flat indices).

    The box has a margin of 2 voxels and equal x and y extents (so in-plane resampling keeps the
    aspect ratio), clamped to the grid. An empty mask gives the whole grid.
    """
    if mask_index.size == 0:
        return ((0, GRID),) * 3
    coords = np.unravel_index(mask_index, (GRID,) * 3)
    low = [max(0, int(c.min()) - MARGIN) for c in coords]
    high = [min(GRID, int(c.max()) + 1 + MARGIN) for c in coords]
    side = max(high[0] - low[0], high[1] - low[1])
    for axis in (0, 1):
        start = max(0, min(GRID - side, (low[axis] + high[axis] - side) // 2))
        low[axis], high[axis] = start, start + side
    return tuple((lo, hi) for lo, hi in zip(low, high, strict=True))


def to_native(prediction: np.ndarray, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Map a prediction over the crop box back onto the native grid.

    Args:
        prediction: ``(X', Y', Z')`` over the box (a 3D output, or 2D slice outputs ``(H, W)``
            stacked along the last axis, one per slice of the box).
        box: ``Case.meta["crop_box"]``.

    Returns:
        ``float32 (128, 128, 128)``, zero outside the box.
    """
    size = tuple(hi - lo for lo, hi in box)
    resized = resize_values(np.asarray(prediction, dtype=np.float32)[None], size)[0]
    native = np.zeros((GRID,) * 3, dtype=np.float32)
    native[tuple(slice(lo, hi) for lo, hi in box)] = resized
    return native


def write_dose_csv(dose: np.ndarray, path: Path) -> Path:
    """Write a dose ``(128, 128, 128)`` in Gy as an OpenKBP submission CSV (atomically).

    One ``,data``-headed file with ``index,value`` rows for the nonzero voxels, values at full
    ``float32`` precision (they read back bit-identical).
    """
    dose = np.asarray(dose, dtype=np.float32)
    if dose.shape != (GRID,) * 3:
        raise ValueError(f"dose for {path} has shape {dose.shape}, expected (128, 128, 128)")
    flat = dose.reshape(-1)
    index = np.flatnonzero(flat)
    rows = "\n".join(
        f"{i},{v!r}" for i, v in zip(index.tolist(), flat[index].tolist(), strict=True)
    )
    text = ",data\n" + rows + ("\n" if rows else "")
    return atomic_write_bytes(Path(path), lambda file: file.write(text.encode()))


class OpenKBPReader(FormatReader):
    """Reads OpenKBP ``provided-data`` (see the module docstring for layout and keys)."""

    version = "1"
    left_right_axis = 1
    #: PTV56, PTV63, PTV70 after the CT
    image_mask_channels = tuple(range(1, 1 + len(TARGETS)))

    @property
    def labels(self) -> Mapping[str, LabelInfo]:
        parotids = (ORGANS.index("RightParotid"), ORGANS.index("LeftParotid"))
        return {
            "dose": LabelInfo("pixel", 1, ("dose",), roi=ROI_KEY),
            "organs": LabelInfo("pixel", len(ORGANS), ORGANS, mirror_pairs=(parotids,)),
        }

    @property
    def image_channels(self) -> int:
        return 1 + len(TARGETS)

    def _patients(self, root: Path) -> list[tuple[Path, str | None]]:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: OpenKBP data folder does not exist")
        subsets = [(root / name, subset) for name, subset in SUBSETS.items()]
        if any(folder.is_dir() for folder, _ in subsets):
            found = [
                (patient, subset)
                for folder, subset in subsets
                if folder.is_dir()
                for patient in folder.iterdir()
                if patient.is_dir() and patient.name.startswith("pt_")
            ]
        else:
            found = [(p, None) for p in root.iterdir() if p.is_dir() and p.name.startswith("pt_")]
        if not found:
            raise FileNotFoundError(
                f"{root}: no OpenKBP patients; expected train-pats/, validation-pats/ or "
                "test-pats/ holding pt_N/ folders (or pt_N/ folders directly)"
            )
        return sorted(found, key=lambda item: (item[0].name.split("_")[-1].zfill(8), item[0]))

    def list_cases(self, root: Path, problems: ListingProblems) -> list[Case]:
        patients = self._patients(root)
        sites = read_sites(root, [folder.name for folder, _ in patients])
        cases: list[Case] = []
        for folder, subset in patients:
            try:
                cases.extend(self._patient_cases(folder, subset, sites.get(folder.name)))
            except (ValueError, FileNotFoundError) as err:
                problems.bad(folder.name, err)
        return cases

    def _patient_cases(self, folder: Path, subset: str | None, site: str | None) -> list[Case]:
        for name in REQUIRED:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: required OpenKBP file is missing")
        mask_index, _ = read_sparse(folder / "possible_dose_mask.csv", values=False)
        box = crop_box(mask_index)
        files = {p.stem: p for p in sorted(folder.glob("*.csv"))}
        has_dose = "dose" in files
        base = {
            "group": folder.name,
            "site": site,
            "files": files,
            "available": {"dose": (has_dose,), "organs": tuple(o in files for o in ORGANS)},
        }
        meta = {
            "patient_id": folder.name,
            "subset": subset,
            "crop_box": box,
            "dose_levels": dose_levels(files),
        }
        if self.spatial_dims == 3:
            return [Case(case_id=folder.name, meta=meta, **base)]
        z0, z1 = box[2]
        return [
            Case(case_id=f"{folder.name}:z{z:03d}", meta={**meta, "slice": z}, **base)
            for z in range(z0, z1)
        ]

    def cache_id(self, case: Case) -> str:
        return str(case.meta["patient_id"])

    def preprocess(self, case: Case) -> dict[str, np.ndarray]:
        """Crop and resample one patient: 3D ``(C, D, H, W)``; 2D ``(Z, C, H, W)`` over the box
        slices (slice first, so one cached slice is contiguous), cut by :meth:`select`."""
        folder = Path(case.files["ct"]).parent
        volumes = read_patient(folder)
        box = case.meta["crop_box"]
        size = (
            self.image_size if self.spatial_dims == 3 else (*self.image_size, box[2][1] - box[2][0])
        )
        window = tuple(slice(lo, hi) for lo, hi in box)
        zeros = np.zeros((GRID,) * 3, dtype=np.float32)

        def crop(*names: str) -> np.ndarray:
            return np.stack([volumes.get(n, zeros)[window] for n in names])

        ct = crop("ct") / CT_MAX
        arrays = {
            "image": np.concatenate([resize_values(ct, size), resize_labels(crop(*TARGETS), size)]),
            "dose": resize_values(crop("dose"), size),
            ROI_KEY: resize_labels(crop(ROI_KEY), size),
            "organs": resize_labels(crop(*ORGANS), size),
        }
        if self.spatial_dims == 3:
            return arrays
        return {key: np.ascontiguousarray(np.moveaxis(a, -1, 0)) for key, a in arrays.items()}

    def select(self, arrays: Mapping[str, np.ndarray], case: Case) -> dict[str, np.ndarray]:
        if self.spatial_dims == 3:
            return super().select(arrays, case)
        z = case.meta["slice"] - case.meta["crop_box"][2][0]
        return {key: np.array(value[z]) for key, value in arrays.items()}
