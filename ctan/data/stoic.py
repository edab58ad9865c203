"""STOIC2021 reader: chest CT -> COVID-19 diagnosis and severity.

Layout::

    root/data/mha/<PatientID>.mha
    root/metadata/reference.csv      PatientID,probCOVID,probSevere
    root/sites.csv                   optional, case_id,site (case_id = PatientID)

``PatientAge`` (``"065Y"``) and ``PatientSex`` are read from each MHA header at listing time
(cheap: header only, which also finds unreadable files early). Images are read with SimpleITK
directly (MONAI's ``ITKReader`` needs the ``itk`` package, which we do not depend on), clipped to
-1100..300 HU, scaled to [0, 1] and resampled to ``model.image_size``: the whole volume
``(D, H, W)`` along (z, y, x) in 3D, or the middle axial slice ``(H, W)`` in 2D.

The real release has no site column: ``Case.site`` comes from ``sites.csv`` where it exists (the
phantom generator writes one) and is ``None`` otherwise and for patients it does not list (see
:func:`~ctan.data.reader.read_sites`).

Label keys: ``covid`` and ``severe``, class indices 0/1. Severity is only meaningful for
COVID-positive cases but is labelled for every case, as in the challenge; the sample's
``case_labels["covid"]`` lets the severity AUC be computed over positives.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctan.data.base import Case
from ctan.data.imageio import read_sitk
from ctan.data.reader import FormatReader, LabelInfo, ListingProblems, csv_text, read_sites
from ctan.data.transforms import resize_values, scale_range

__all__ = ["HU_WINDOW", "StoicReader", "read_header"]

HU_WINDOW = (-1100.0, 300.0)
COLUMNS = ("PatientID", "probCOVID", "probSevere")


def read_header(path: Path) -> dict[str, object]:
    """Age (years), sex, size and spacing from an MHA header, without reading voxels.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the header cannot be read (the file is named).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ValueError(f"{path}: corrupt or unreadable MHA header") from None
    keys = set(reader.GetMetaDataKeys())
    age_text = reader.GetMetaData("PatientAge").strip() if "PatientAge" in keys else ""
    digits = "".join(ch for ch in age_text if ch.isdigit())
    return {
        "age": int(digits) if digits else None,
        "sex": (reader.GetMetaData("PatientSex").strip() or None) if "PatientSex" in keys else None,
        "size": tuple(reader.GetSize()),
        "spacing": tuple(reader.GetSpacing()),
    }


def _binary(path: Path, line: int, column: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value not in (0.0, 1.0):
        raise ValueError(f"{path}: row {line} has {column} {text!r}; expected 0 or 1")
    return int(value)


class StoicReader(FormatReader):
    """Reads STOIC2021 (see the module docstring for layout and keys)."""

    version = "1"
    axis_order = "zyx"

    @property
    def labels(self) -> Mapping[str, LabelInfo]:
        return {
            "covid": LabelInfo("image", 2, ("negative", "positive")),
            "severe": LabelInfo("image", 2, ("not severe", "severe")),
        }

    @property
    def image_channels(self) -> int:
        return 1

    def list_cases(self, root: Path, problems: ListingProblems) -> list[Case]:
        reference = root / "metadata" / "reference.csv"
        images = root / "data" / "mha"
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: STOIC2021 data folder does not exist")
        if not reference.is_file():
            raise FileNotFoundError(f"{reference}: STOIC2021 reference file does not exist")
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: STOIC2021 image folder does not exist")
        reader = csv.DictReader(csv_text(reference))
        columns = [c.strip() for c in reader.fieldnames or []]
        if any(c not in columns for c in COLUMNS):
            raise ValueError(
                f"{reference}: header {columns} must hold columns {', '.join(COLUMNS)}"
            )
        rows = [
            (line, {k.strip(): (v or "").strip() for k, v in row.items() if k})
            for line, row in enumerate(reader, start=2)
        ]
        first_row: dict[str, int] = {}
        for line, row in rows:
            earlier = first_row.setdefault(row["PatientID"], line)
            if earlier != line:
                raise ValueError(
                    f"{reference}: row {line} lists patient {row['PatientID']!r} again (first "
                    f"in row {earlier}); each patient needs exactly one row"
                )
        sites = read_sites(root, [row["PatientID"] for _, row in rows])
        cases = []
        for line, row in rows:
            patient = row["PatientID"]
            try:
                covid = _binary(reference, line, "probCOVID", row["probCOVID"])
                severe = _binary(reference, line, "probSevere", row["probSevere"])
                path = images / f"{patient}.mha"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{reference}: row {line} names patient {patient} but {path} does not exist"
                    )
                header = read_header(path)
            except (ValueError, FileNotFoundError) as err:
                problems.bad(patient or f"row {line}", err)
                continue
            cases.append(
                Case(
                    case_id=patient,
                    group=patient,
                    site=sites.get(patient),
                    files={"image": path},
                    labels={"covid": covid, "severe": severe},
                    available={"covid": True, "severe": True},
                    meta={"PatientID": patient, **header},
                )
            )
        return cases

    def preprocess(self, case: Case) -> dict[str, np.ndarray]:
        """``image (1, D, H, W)`` in 3D or ``(1, H, W)`` (middle axial slice) in 2D."""
        volume = sitk.GetArrayFromImage(read_sitk(Path(case.files["image"])))
        if volume.ndim != 3:
            raise ValueError(f"{case.files['image']}: expected a 3D CT, got shape {volume.shape}")
        if self.spatial_dims == 2:
            volume = volume[volume.shape[0] // 2]
        image = scale_range(volume, *HU_WINDOW)[None]
        return {"image": resize_values(image, self.image_size)}
