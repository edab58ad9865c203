"""Image geometry: the affine a prediction is written with is the one its input lies on."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ctan.data.imageio import file_affine

AFFINE = np.array([[0, 0, -2.5, 40], [0.8, 0, 0, -7], [0, 1.2, 0, 3], [0, 0, 0, 1.0]])


def test_a_nifti_gives_its_own_affine(tmp_path: Path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), AFFINE), tmp_path / "a.nii.gz")
    assert np.allclose(file_affine(tmp_path / "a.nii.gz"), AFFINE)


def test_an_mha_gives_the_nifti_affine_of_the_same_grid(tmp_path: Path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), AFFINE), tmp_path / "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")), str(tmp_path / "a.mha"))
    assert np.allclose(file_affine(tmp_path / "a.mha"), AFFINE)


def test_a_png_records_no_geometry(tmp_path: Path):
    Image.fromarray(np.zeros((3, 7), np.uint8)).save(tmp_path / "a.png")
    assert np.array_equal(file_affine(tmp_path / "a.png"), np.eye(4))


def test_an_unreadable_header_is_named(tmp_path: Path):
    (tmp_path / "bad.mha").write_text("not a header")
    with pytest.raises(ValueError, match=r"bad\.mha: cannot read the image header"):
        file_affine(tmp_path / "bad.mha")


def test_a_folder_of_two_dicom_series_is_refused_naming_them(tmp_path: Path):
    """A localiser beside the CT would otherwise be read in its place, silently."""
    from ctan.data.imageio import read_sitk

    folder = tmp_path / "export"
    folder.mkdir()
    for name, series, shape in (("ct.dcm", "1.2.3.1", (16, 16)), ("scout.dcm", "1.2.3.2", (8, 8))):
        image = sitk.GetImageFromArray(np.zeros(shape, np.int16))
        image.SetMetaData("0020|000e", series)
        image.SetMetaData("0008|0060", "CT")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / name))
        writer.Execute(image)
    with pytest.raises(ValueError, match=r"export: folder holds 2 DICOM series \(1\.2\.3\.1, 1"):
        read_sitk(folder)
