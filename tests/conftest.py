"""Fixtures shared across the test folders: small phantom data sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctan.data.phantoms import write_phantoms


@pytest.fixture(scope="session")
def ham_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 HAM10000-layout phantom images from 3 sites."""
    root = tmp_path_factory.mktemp("phantoms") / "ham10000"
    return write_phantoms("ham10000", root, cases=48, sites=3, seed=0)
