"""On-disk cache of preprocessed cases, keyed by the preprocessing settings.

Parsing OpenKBP CSVs, resampling CT volumes and decoding JPEGs is done once per case and stored as
a folder of ``.npy`` files, memory-mapped on reading, so a second epoch or a second run reads only
the bytes a sample needs (one slice of a cached volume). The folder is
``<cache_dir>/<settings hash>/``; each entry's name also hashes the sizes and modification times
of the case's source files (every file of a DICOM series folder, an MHD header's pixel file), so
an edited file is re-read. Entries are written into a temporary folder, closed by an index of
their arrays, and moved into place with :func:`os.replace`; an entry in place is never replaced
(a reader may be reading it), so a crash or two processes writing the same case never hand out a
torn entry, and a damaged one (no index, an array that does not load) is recomputed. Nothing is
kept in memory between calls.

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
import shutil
import tempfile
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


#: the file in every entry naming its arrays, written last: an entry without it is torn
ENTRY_INDEX = "arrays.json"
#: the layout of an entry; a new one keys a new folder (entries before the index had none)
CACHE_FORMAT = 2


def _files_behind(path: Path) -> list[Path]:
    """Every file whose bytes a source path stands for: a DICOM series folder's files, an MHD
    header's pixel file (``ElementDataFile``), else the path itself."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    files = [path]
    if path.suffix.lower() == ".mhd":
        try:
            header = path.read_text(errors="replace").splitlines()
        except OSError:
            return files
        for line in header:
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile" and value.strip() not in ("", "LOCAL"):
                files.append(path.parent / value.strip())
    return files


def _source_stamp(case: Case) -> str:
    parts = []
    for role in sorted(case.files):
        for path in _files_behind(Path(case.files[role])):
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
        self.directory = Path(directory) / settings_hash({**settings, "cache-format": CACHE_FORMAT})
        self.settings = dict(settings)
        self.enabled = enabled

    def path(self, key: str, case: Case) -> Path:
        """Where the entry for unit ``key`` of ``case`` lives."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return self.directory / f"{safe}-{_source_stamp(case)}"

    def get(
        self, case: Case, compute: Callable[[], dict[str, np.ndarray]], key: str | None = None
    ) -> dict[str, np.ndarray]:
        """The cached arrays of ``case`` (unit ``key``, default its id), computed on a miss.

        Cached arrays are read-only memory maps; copy what you modify.

        Raises:
            whatever ``compute`` raises; a corrupt cache entry is recomputed, not raised.
        """
        if not self.enabled:
            return compute()
        path = self.path(key or case.case_id, case)
        if path.is_dir():
            try:
                return _read_entry(path)
            except (OSError, ValueError, EOFError) as err:
                log.warning("cache entry %s is unreadable (%s); recomputing", path, err)
                _remove(path)
        arrays = compute()
        self._write(path, arrays)
        return arrays

    def _write(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        """Write an entry into a temporary folder and move it into place; when another process
        placed the same entry meanwhile, theirs stays (a reader may be reading it) and this
        one is dropped."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (path.parent / "settings.json").exists():
                _atomic_text(path.parent / "settings.json", json.dumps(self.settings, indent=1))
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
            try:
                for name, array in arrays.items():
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
                _atomic_text(tmp / ENTRY_INDEX, json.dumps(sorted(arrays)))
                if not path.exists():
                    os.replace(tmp, path)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError as err:
            if not path.is_dir():
                log.warning("cannot write cache entry %s: %s", path, err)


def _read_entry(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a complete entry, memory-mapped.

    Raises:
        ValueError, OSError, EOFError: the entry is torn or damaged (its index is missing or
            names an array that does not load).
    """
    index = path / ENTRY_INDEX
    if not index.is_file():
        raise ValueError(f"{ENTRY_INDEX} is missing")
    names = json.loads(index.read_text())
    return {
        name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in names
    }


def _remove(path: Path) -> None:
    """Remove a damaged entry: moved aside first, so that no reader lists it half-deleted."""
    aside = path.with_name(f".damaged-{os.getpid()}-{path.name}")
    try:
        os.replace(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
