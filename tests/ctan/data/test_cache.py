"""On-disk case cache: hits, keys, invalidation by source files, atomic writes, read-only maps."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ctan.data.base import Case
from ctan.data.cache import CaseCache

SETTINGS = {"format": "ham10000", "image_size": [8, 8]}
ARRAYS = {"image": np.arange(12, dtype=np.float32).reshape(3, 4), "mask": np.ones((1, 4))}


@pytest.fixture
def case(tmp_path: Path) -> Case:
    source = tmp_path / "src" / "img.bin"
    source.parent.mkdir()
    source.write_bytes(b"pixels")
    return Case(case_id="img/1", group="img", site=None, files={"image": source})


def counting(
    arrays: dict[str, np.ndarray],
) -> tuple[Callable[[], dict[str, np.ndarray]], list[int]]:
    """A compute function returning copies of ``arrays``, and the list recording its calls."""
    calls: list[int] = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {key: value.copy() for key, value in arrays.items()}

    return compute, calls


def test_hit_does_not_compute_again(tmp_path: Path, case: Case) -> None:
    cache = CaseCache(tmp_path / "cache", SETTINGS)
    compute, calls = counting(ARRAYS)
    first = cache.get(case, compute)
    second = cache.get(case, compute)
    assert len(calls) == 1
    for key, value in ARRAYS.items():
        np.testing.assert_array_equal(first[key], value)
        np.testing.assert_array_equal(second[key], value)
        assert second[key].dtype == value.dtype
    assert cache.path(case.case_id, case).parent == cache.directory
    assert (cache.directory / "settings.json").is_file()


def test_changed_setting_gives_a_new_key(tmp_path: Path, case: Case) -> None:
    compute, calls = counting(ARRAYS)
    small = CaseCache(tmp_path / "cache", SETTINGS)
    large = CaseCache(tmp_path / "cache", {**SETTINGS, "image_size": [16, 16]})
    assert small.directory != large.directory
    assert small.directory == CaseCache(tmp_path / "cache", dict(SETTINGS)).directory
    small.get(case, compute)
    large.get(case, compute)
    small.get(case, compute)
    assert len(calls) == 2


def test_touched_source_invalidates_the_entry(tmp_path: Path, case: Case) -> None:
    cache = CaseCache(tmp_path / "cache", SETTINGS)
    compute, calls = counting(ARRAYS)
    cache.get(case, compute)
    old = cache.path(case.case_id, case)
    source = Path(case.files["image"])
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache.path(case.case_id, case) != old
    cache.get(case, compute)
    assert len(calls) == 2


def test_crash_during_write_leaves_no_entry(
    tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CaseCache(tmp_path / "cache", SETTINGS)
    compute, calls = counting(ARRAYS)
    save = np.save
    written: list[str] = []

    def crash_after_first(path: Path, array: np.ndarray, **kwargs: object) -> None:
        if written:
            raise RuntimeError("killed mid-write")
        written.append(str(path))
        save(path, array, **kwargs)

    monkeypatch.setattr(np, "save", crash_after_first)
    with pytest.raises(RuntimeError, match="mid-write"):
        cache.get(case, compute)
    monkeypatch.setattr(np, "save", save)
    entry = cache.path(case.case_id, case)
    assert written and not entry.exists()
    assert [p.name for p in cache.directory.iterdir()] == ["settings.json"]
    cache.get(case, compute)
    assert entry.is_dir() and len(calls) == 2


def test_entries_are_read_only_memory_maps(tmp_path: Path, case: Case) -> None:
    cache = CaseCache(tmp_path / "cache", SETTINGS)
    compute, _ = counting(ARRAYS)
    cache.get(case, compute)
    arrays = cache.get(case, compute)
    assert set(arrays) == set(ARRAYS)
    for value in arrays.values():
        assert isinstance(value, np.memmap) and not value.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            value[0] = 0


def test_disabled_cache_computes_every_time_and_writes_nothing(tmp_path: Path, case: Case) -> None:
    cache = CaseCache(tmp_path / "cache", SETTINGS, enabled=False)
    compute, calls = counting(ARRAYS)
    cache.get(case, compute)
    cache.get(case, compute)
    assert len(calls) == 2 and not (tmp_path / "cache").exists()


def test_a_damaged_entry_is_recomputed(tmp_path: Path, case: Case) -> None:
    """A file emptied by a power loss, or missing, is found out, not handed to training."""
    cache = CaseCache(tmp_path / "cache", SETTINGS)
    compute, calls = counting(ARRAYS)
    entry = cache.path(case.case_id, case)
    for damage in (lambda: (entry / "mask.npy").write_bytes(b""), (entry / "mask.npy").unlink):
        cache.get(case, compute)
        damage()
        arrays = cache.get(case, compute)
        assert sorted(arrays) == ["image", "mask"]
    assert len(calls) == 3


def test_an_entry_in_place_is_not_replaced_by_a_second_writer(tmp_path: Path, case: Case) -> None:
    """Two loader workers missing the same entry: the second keeps the first one's, which a
    reader may be mapping, rather than deleting it under them."""
    first = CaseCache(tmp_path / "cache", SETTINGS)
    first.get(case, counting(ARRAYS)[0])
    entry = first.path(case.case_id, case)
    mapped = first.get(case, counting(ARRAYS)[0])
    inode = entry.stat().st_ino
    CaseCache(tmp_path / "cache", SETTINGS)._write(entry, ARRAYS)
    assert entry.stat().st_ino == inode
    np.testing.assert_array_equal(mapped["image"], ARRAYS["image"])
    assert [p.name for p in (tmp_path / "cache").rglob(".tmp-*")] == []


def test_a_dicom_folder_or_an_mhd_pixel_file_rewritten_in_place_is_read_again(
    tmp_path: Path,
) -> None:
    series = tmp_path / "series"
    series.mkdir()
    (series / "slice1.dcm").write_bytes(b"old")
    header = tmp_path / "vol.mhd"
    header.write_text("ObjectType = Image\nElementDataFile = vol.raw\n")
    (tmp_path / "vol.raw").write_bytes(b"old")
    cache = CaseCache(tmp_path / "cache", SETTINGS)
    cases = [
        Case(case_id=name, group=name, site=None, files={"image": path})
        for name, path in (("d", series), ("m", header))
    ]
    before = [cache.path(c.case_id, c) for c in cases]
    for changed in (series / "slice1.dcm", tmp_path / "vol.raw"):
        changed.write_bytes(b"new pixels")
    after = [cache.path(c.case_id, c) for c in cases]
    assert all(a != b for a, b in zip(before, after, strict=True))
