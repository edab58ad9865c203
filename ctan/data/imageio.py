"""Image loading through MONAI's ``LoadImage``, with a SimpleITK backend for MHA and DICOM.

MONAI reads MHA and DICOM series with ``ITKReader``, which needs the ``itk`` package; we depend on
SimpleITK instead, so :class:`SimpleITKReader` implements MONAI's ``ImageReader`` interface on top
of it. Arrays come out in ITK index order ``(x, y, z)`` like ``ITKReader``, so they match
NIfTI and PNG orientation as read by MONAI's own readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader, NibabelReader, PILReader
from monai.transforms import LoadImage
from monai.utils import MetaKeys, ensure_tuple
from nibabel.filebasedimages import ImageFileError

__all__ = ["SimpleITKReader", "file_affine", "image_loader", "read_sitk"]

SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".dcm", ".nii", ".nii.gz")


def read_sitk(path: Path) -> sitk.Image:
    """Read an image file, or the DICOM series of a folder, with SimpleITK.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: SimpleITK cannot read it (corrupt or unsupported file), or the folder holds
            more than one series; ``path`` is named.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file does not exist")
    try:
        if path.is_dir():
            found = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if len(found) > 1:
                raise ValueError(
                    f"{path}: folder holds {len(found)} DICOM series ({', '.join(found)}); "
                    "give each series a folder of its own (a scout or localiser beside the CT "
                    "would otherwise be read in its place)"
                )
            series = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not series:
                raise ValueError(f"{path}: folder holds no DICOM series")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(series)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[-1] if first else "unreadable"
        raise ValueError(f"{path}: cannot read image ({detail})") from None


def _affine(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    dims = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = direction * np.asarray(image.GetSpacing())
    affine[:dims, dims] = image.GetOrigin()
    return affine


def file_affine(path: Path) -> np.ndarray:
    """The ``(4, 4)`` matrix from an image file's voxel indices ``(x, y, z)`` to NIfTI world
    coordinates (RAS, mm), so an image written on the same grid lies where the file does.

    NIfTI gives its own; MHA/MHD/NRRD give spacing, origin and direction, in ITK's LPS world;
    PNG and JPEG record no geometry and give the identity. 2D grids fill the upper-left block.

    Raises:
        ValueError: the file's header cannot be read (the file is named).
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return np.asarray(nib.load(path).affine, dtype=np.float64)
        if not name.endswith(SITK_SUFFIXES):
            return np.eye(4)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except (RuntimeError, OSError, ImageFileError) as err:
        raise ValueError(f"{path}: cannot read the image header ({err})") from None
    dims = reader.GetDimension()
    lps = np.eye(4)
    grid = _affine(reader)
    lps[:dims, :dims] = grid[:dims, :dims]
    lps[:dims, 3] = grid[:dims, dims]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` for MHA/MHD/NRRD files and DICOM series folders, via SimpleITK."""

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """Whether every name is a DICOM folder or has a SimpleITK suffix."""
        names = [str(n) for n in ensure_tuple(filename)]
        return all(Path(n).is_dir() or n.lower().endswith(SITK_SUFFIXES) for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> sitk.Image | list[sitk.Image]:
        """Read one image (or one per name)."""
        images = [read_sitk(Path(n)) for n in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: sitk.Image | list[sitk.Image]) -> tuple[np.ndarray, dict]:
        """Array in ``(x, y, z[, c])`` order and metadata (affine, spatial shape, channel dim)."""
        arrays, meta = [], {}
        for image in [img] if isinstance(img, sitk.Image) else img:
            array = sitk.GetArrayFromImage(image)
            channels = image.GetNumberOfComponentsPerPixel()
            spatial = array.ndim - (1 if channels > 1 else 0)
            order = list(reversed(range(spatial))) + ([spatial] if channels > 1 else [])
            arrays.append(np.transpose(array, order))
            meta = {
                MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()),
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if channels > 1 else float("nan"),
                MetaKeys.AFFINE: _affine(image),
                MetaKeys.ORIGINAL_AFFINE: _affine(image),
                "spacing": np.asarray(image.GetSpacing()),
            }
        stacked = np.stack(arrays) if len(arrays) > 1 else arrays[0]
        return stacked, meta


def image_loader() -> LoadImage:
    """A ``LoadImage`` returning channel-first ``MetaTensor`` ``(C, *spatial)`` for NIfTI
    (nibabel), PNG/JPEG (PIL) and MHA/MHD/NRRD/DICOM series (SimpleITK)."""
    return LoadImage(
        reader=[NibabelReader(), PILReader(), SimpleITKReader()],
        image_only=True,
        ensure_channel_first=True,
        dtype=np.float32,
    )
