"""Federated multi-task learning for medical imaging: the library (no Flower imports here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedctan")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"
