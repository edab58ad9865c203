"""Registry, group-aware split and the cache: deterministic, no group in two splits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from datahelpers import HAM_TASKS, KBP_TASKS, make_config, write_kbp_patient

from ctan.config import SplitConfig
from ctan.data.base import Case
from ctan.data.check import check_data
from ctan.data.dataset import READERS, CaseDataset, build_cases, split_cases
from ctan.data.openkbp import OpenKBPReader


def cases(n: int) -> list[Case]:
    return [Case(case_id=f"c{i}", group=f"g{i // 3}", site=None) for i in range(n)]


def test_registry_holds_every_format() -> None:
    assert set(READERS) == {"ham10000", "openkbp", "stoic", "manifest"}


def test_split_is_deterministic_and_keeps_groups() -> None:
    split = SplitConfig(validation=0.2, test=0.2)
    first = split_cases(cases(60), split, seed=1)
    assert first == split_cases(cases(60), split, seed=1)
    groups = {name: {c.group for c in part} for name, part in first.items()}
    assert not groups["train"] & groups["test"] and not groups["validation"] & groups["test"]
    assert sum(len(p) for p in first.values()) == 60
    assert 6 <= len(first["test"]) <= 18


def test_empty_validation_names_the_numbers() -> None:
    with pytest.raises(ValueError, match="2 cases in 1 groups"):
        split_cases(cases(2), SplitConfig(validation=0.2, test=0.0), seed=0)


def test_second_pass_reads_the_cache_and_check_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "kbp"
    for i in range(5):
        write_kbp_patient(root / "train-pats" / f"pt_{i}", ("Brainstem",))
    cfg = make_config("openkbp", root, KBP_TASKS, tmp_path / "cache", in_channels=4, widths=[8, 16])
    listed = build_cases(cfg)
    dataset = CaseDataset(listed, cfg, train=False)
    parsed: list[str] = []
    preprocess = OpenKBPReader.preprocess

    def counted(reader: OpenKBPReader, case: Case) -> dict[str, np.ndarray]:
        parsed.append(case.case_id)
        return preprocess(reader, case)

    monkeypatch.setattr(OpenKBPReader, "preprocess", counted)
    first = [dataset[i] for i in range(len(dataset))]
    assert len(set(parsed)) == 5  # one parse per patient (the slices of one share an entry)
    parsed.clear()
    second = [dataset[i] for i in range(len(dataset))]
    assert parsed == [], "the second pass parsed source files instead of reading the cache"
    assert all((a["image"] == b["image"]).all() for a, b in zip(first, second, strict=True))
    assert list((tmp_path / "cache").rglob("settings.json"))
    report = check_data(cfg)
    assert report.ok and report.cases == len(listed) and report.groups == 5
    assert report.labelled["organs[Brainstem]"] == len(listed)
    assert "organs[SpinalCord]" in report.render()


def test_check_reports_a_missing_folder(tmp_path: Path) -> None:
    cfg = make_config("openkbp", tmp_path / "none", KBP_TASKS, tmp_path / "c", in_channels=4)
    report = check_data(cfg)
    assert not report.ok and "none" in report.render()


def test_sites_starting_at_once_share_the_phantoms_they_write(tmp_path: Path) -> None:
    """Simulated sites on a fresh machine all find ``data.root`` missing and write it at once."""
    import threading

    from ctan.config import PhantomConfig

    cfg = make_config("ham10000", tmp_path / "ham", HAM_TASKS, tmp_path / "cache")
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(
                update={"phantom": PhantomConfig(cases=24, sites=2, seed=0)}
            )
        }
    )
    start = threading.Barrier(3)
    listed: list[int] = []
    errors: list[BaseException] = []

    def list_cases() -> None:
        start.wait()
        try:
            listed.append(len(build_cases(cfg)))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=list_cases) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert listed == [24, 24, 24]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_split_by_a_finer_key_still_keeps_each_group_whole() -> None:
    split = SplitConfig(validation=0.2, test=0.2, by="case_id")
    parts = split_cases(cases(60), split, seed=1)
    groups = {name: {c.group for c in part} for name, part in parts.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    coarser = SplitConfig(validation=0.2, test=0.2, by="site")
    sited = [replace(c, site=f"s{i % 4}") for i, c in enumerate(cases(60))]
    with pytest.raises(ValueError, match="the validation split is empty: 60 cases in 1 groups"):
        split_cases(sited, coarser, seed=1)
