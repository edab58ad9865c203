"""On-disk cache of preprocessed cases, keyed by the preprocessing settings.

Parsing OpenKBP CSVs, resampling CT volumes and decoding JPEGs is done once per case and stored as
an uncompressed ``.npz`` file, so a second epoch or a second run only memory-copies arrays. The
folder is ``<cache_dir>/<settings hash>/``; each entry's name also hashes the sizes and
modification times of the case's source files, so an edited file is re-read. Entries are written
to a temporary file and moved into place with :func:`os.replace`, so a crash or two processes
writing the same case never leave a torn file. Nothing is kept in memory between calls.

Example:
    >>> cache = CaseCache(Path("/tmp/c"), {"format": "ham10000", "image_size": [64, 64]})
    >>> arrays = cache.get(case, lambda: reader.preprocess(case))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ctan.data.base import Case

__all__ = ["CaseCache", "default_cache_dir", "settings_hash"]

log = logging.getLogger(__name__)


def settings_hash(settings: Mapping[str, object]) -> str:
    """A short stable hash of JSON-serialisable preprocessing settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def default_cache_dir(root: Path) -> Path:
    """``<root>/.ctan-cache`` when it can be written (``root``'s folder if ``root`` is a file),
    else ``~/.cache/ctan``."""
    base = root.parent if root.is_file() else root
    if base.is_dir() and os.access(base, os.W_OK):
        candidate = base / ".ctan-cache"
        if _writable_dir(candidate):
            return candidate
    return Path.home() / ".cache" / "ctan"


def _source_stamp(case: Case) -> str:
    parts = []
    for role in sorted(case.files):
        path = Path(case.files[role])
        try:
            stat = path.stat()
            parts.append(f"{role}:{path}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{role}:{path}:missing")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


class CaseCache:
    """Preprocessed arrays of cases on disk.

    Args:
        directory: the cache folder (created when first written).
        settings: preprocessing settings (format, image size, spatial dims, reader version); a
            change of any of them selects another sub-folder.
        enabled: ``False`` computes every time and writes nothing (for benchmarks).
    """

    def __init__(
        self, directory: Path, settings: Mapping[str, object], enabled: bool = True
    ) -> None:
        self.directory = Path(directory) / settings_hash(settings)
        self.settings = dict(settings)
        self.enabled = enabled

    def path(self, key: str, case: Case) -> Path:
        """Where the entry for unit ``key`` of ``case`` lives."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return self.directory / f"{safe}-{_source_stamp(case)}.npz"

    def get(
        self, case: Case, compute: Callable[[], dict[str, np.ndarray]], key: str | None = None
    ) -> dict[str, np.ndarray]:
        """The cached arrays of ``case`` (unit ``key``, default its id), computed on a miss.

        Raises:
            whatever ``compute`` raises; a corrupt cache entry is recomputed, not raised.
        """
        if not self.enabled:
            return compute()
        path = self.path(key or case.case_id, case)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as stored:
                    return {name: stored[name] for name in stored.files}
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                log.warning("cache entry %s is unreadable (%s); recomputing", path, err)
        arrays = compute()
        self._write(path, arrays)
        return arrays

    def _write(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (path.parent / "settings.json").exists():
                _atomic_text(path.parent / "settings.json", json.dumps(self.settings, indent=1))
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.savez(handle, **arrays)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            log.warning("cannot write cache entry %s: %s", path, err)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
