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
