"""HAM10000 reader: dermoscopy -> lesion segmentation and 7-class diagnosis.

Layouts accepted under ``root`` (also nested one folder deeper):

* Harvard Dataverse: ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/``,
  ``HAM10000_metadata`` (``.csv``, ``.tab`` or no extension; comma or tab separated),
  ``HAM10000_segmentations_lesion_tschandl/ISIC_*_segmentation.png``;
* Kaggle: the same metadata without the ``dataset`` column and lower-case duplicate image folders
  (``ham10000_images_part_1/`` ...); no masks.

Each image is a case; its group is ``lesion_id`` (splits never divide a lesion) and its site the
``dataset`` column. The 9 lesions photographed at two sites are given to the site holding most of
their images (ties: the site of the smallest image id), so no lesion is in two sites. Images
without a mask keep a missing ``lesion`` label. ``dx_type`` says how the diagnosis was confirmed
and leaks it: it is never read.

Label keys: ``lesion`` (segmentation, 1 channel) and ``diagnosis`` (class index in
:data:`CLASSES` order). The image is RGB scaled to [0, 1], resized to ``model.image_size``.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ctan.data.base import Case
from ctan.data.reader import FormatReader, LabelInfo, ListingProblems
from ctan.data.transforms import resize_labels, resize_values

__all__ = ["CLASSES", "Ham10000Reader", "find_metadata", "lesion_sites", "read_metadata"]

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata")
IMAGE_FOLDERS = (
    "HAM10000_images_part_1",
    "HAM10000_images_part_2",
    "ham10000_images_part_1",
    "ham10000_images_part_2",
    "HAM10000_images",
)
MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"


def _candidates(root: Path) -> Iterable[Path]:
    """``root`` and its sub-folders (one level deeper), in a stable order."""
    yield root
    yield from sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_metadata(root: Path) -> Path:
    """The metadata file under ``root`` (or one folder deeper).

    Raises:
        FileNotFoundError: none of ``HAM10000_metadata{.csv,.tab,}`` exists (names tried listed).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: HAM10000 data folder does not exist")
    for folder in _candidates(root):
        for name in METADATA_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"{root}: no HAM10000 metadata file; expected one of {', '.join(METADATA_NAMES)} "
        "here or one folder deeper"
    )


def read_metadata(path: Path) -> list[dict[str, str]]:
    """The metadata rows, comma- or tab-separated, quotes removed.

    Raises:
        ValueError: the header lacks a required column, a row has an unknown ``dx`` or
            repeats an image (the file and the row are named).
    """
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    header = text.partition("\n")[0]
    delimiter = "\t" if header.count("\t") > header.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: header {columns} lacks columns {missing}; expected "
            "lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]"
        )
    rows, first_row = [], {}
    for line, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if row["dx"] not in CLASSES:
            raise ValueError(
                f"{path}: row {line} ({row['image_id']}) has dx {row['dx']!r}; allowed: "
                f"{', '.join(CLASSES)}"
            )
        earlier = first_row.setdefault(row["image_id"], line)
        if earlier != line:
            raise ValueError(
                f"{path}: row {line} lists image {row['image_id']!r} again (first in row "
                f"{earlier}); each image needs exactly one row"
            )
        rows.append(row)
    return rows


def lesion_sites(rows: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """One site per lesion: the site holding most of its images (ties: smallest image id).

    Args:
        rows: metadata rows with ``lesion_id``, ``image_id`` and ``dataset``.

    Returns:
        ``{lesion_id: site}`` for every lesion with a site.
    """
    images: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        if row.get("dataset"):
            images[row["lesion_id"]].append((row["image_id"], row["dataset"]))
    sites = {}
    for lesion, pairs in images.items():
        counts = Counter(site for _, site in pairs)
        most = max(counts.values())
        sites[lesion] = min((image, site) for image, site in pairs if counts[site] == most)[1]
    return sites


class Ham10000Reader(FormatReader):
    """Reads the HAM10000 release (see the module docstring for layouts and keys)."""

    version = "1"
    axis_order = "zyx"

    @property
    def labels(self) -> Mapping[str, LabelInfo]:
        return {
            "lesion": LabelInfo("pixel", 1, ("lesion",)),
            "diagnosis": LabelInfo("image", len(CLASSES), CLASSES),
        }

    @property
    def image_channels(self) -> int:
        return 3

    def list_cases(self, root: Path, problems: ListingProblems) -> list[Case]:
        if self.spatial_dims != 2:
            raise ValueError(
                f"model.spatial_dims is {self.spatial_dims} but HAM10000 images are 2D; "
                "set model.spatial_dims: 2"
            )
        metadata = find_metadata(root)
        rows = read_metadata(metadata)
        images, masks = self._index_files(root)
        sites = lesion_sites(rows)
        cases = []
        for row in rows:
            image_id = row["image_id"]
            image = images.get(image_id)
            if image is None:
                problems.bad(
                    image_id,
                    FileNotFoundError(
                        f"{metadata}: image {image_id}.jpg of this row is in none of the image "
                        f"folders {', '.join(IMAGE_FOLDERS)} under {root}"
                    ),
                )
                continue
            mask = masks.get(image_id)
            files = {"image": image, **({"mask": mask} if mask else {})}
            cases.append(
                Case(
                    case_id=image_id,
                    group=row["lesion_id"],
                    site=sites.get(row["lesion_id"]),
                    files=files,
                    labels={"diagnosis": CLASSES.index(row["dx"])},
                    available={"lesion": (mask is not None,), "diagnosis": True},
                    meta={
                        "lesion_id": row["lesion_id"],
                        "age": row.get("age") or None,
                        "sex": row.get("sex") or None,
                        "localization": row.get("localization") or None,
                    },
                )
            )
        return cases

    def _index_files(self, root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for folder in _candidates(root):
            for name in IMAGE_FOLDERS:
                for path in sorted((folder / name).glob("ISIC_*.jp*g")):
                    images.setdefault(path.stem, path)
            for path in sorted((folder / MASK_FOLDER).glob("ISIC_*_segmentation.png")):
                masks.setdefault(path.name.removesuffix("_segmentation.png"), path)
        return images, masks

    def preprocess(self, case: Case) -> dict[str, np.ndarray]:
        """Decode and resize: ``image (3, H, W)`` in [0, 1], ``lesion (1, H, W)`` in {0, 1}."""
        rgb = _decode(Path(case.files["image"]), "RGB")
        image = resize_values(np.moveaxis(rgb, -1, 0) / 255.0, self.image_size)
        if "mask" in case.files:
            mask = _decode(Path(case.files["mask"]), "L")
            if mask.shape != rgb.shape[:2]:
                raise ValueError(
                    f"{case.files['mask']}: mask size {mask.shape} differs from image size "
                    f"{rgb.shape[:2]}"
                )
            lesion = resize_labels((mask > 127)[None], self.image_size)
        else:
            lesion = np.zeros((1, *self.image_size), dtype=np.float32)
        return {"image": image, "lesion": lesion}


def _decode(path: Path, mode: str) -> np.ndarray:
    """Fully decode an image file to ``float32 (H, W[, 3])``; corrupt files raise ValueError."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode), dtype=np.float32)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file does not exist") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ValueError(f"{path}: corrupt or unreadable image ({err})") from None
