"""Partitioners: counts add up, groups stay whole, seeds repeat, Dirichlet skews, sizes checked."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from ctan.config import PartitionConfig
from ctan.data.base import Case
from ctan.data.partition import (
    apply_task_availability,
    format_partition_table,
    partition_cases,
)

CLASSES = 4


def make_cases(groups: int = 120, seed: int = 0) -> list[Case]:
    """Cases in groups of 1-3 (one label and site per group), each with a mask and a diagnosis."""
    rng = np.random.default_rng(seed)
    cases = []
    for g in range(groups):
        label = int(rng.integers(CLASSES))
        site = ("north", "south", "east")[g % 3]
        for k in range(int(rng.integers(1, 4))):
            cases.append(
                Case(
                    case_id=f"img_{g}_{k}",
                    group=f"lesion_{g}",
                    site=site,
                    labels={"diagnosis": label},
                    available={"diagnosis": True, "lesion": (True,)},
                )
            )
    return cases


def site_of_groups(partition: dict[str, list[Case]]) -> dict[str, set[str]]:
    sites: dict[str, set[str]] = {}
    for site, cases in partition.items():
        for case in cases:
            sites.setdefault(case.group, set()).add(site)
    return sites


CONFIGS = [
    PartitionConfig(method="site"),
    PartitionConfig(method="iid", num_sites=4),
    PartitionConfig(method="dirichlet", num_sites=4, alpha=0.5, label="diagnosis"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method)
def test_counts_add_up_and_groups_stay_whole(config: PartitionConfig) -> None:
    cases = make_cases()
    partition = partition_cases(cases, config, seed=0)
    assert sum(len(part) for part in partition.values()) == len(cases)
    assert sorted(c.case_id for p in partition.values() for c in p) == sorted(
        c.case_id for c in cases
    )
    assert all(len(sites) == 1 for sites in site_of_groups(partition).values())
    assert partition == partition_cases(cases, config, seed=0)


def test_site_method_uses_the_site_column() -> None:
    partition = partition_cases(make_cases(), PartitionConfig(method="site"), seed=0)
    assert list(partition) == ["east", "north", "south"]
    assert all(case.site == site for site, cases in partition.items() for case in cases)


def test_iid_balances_sizes_and_changes_with_seed() -> None:
    cases = make_cases()
    config = PartitionConfig(method="iid", num_sites=4)
    first = partition_cases(cases, config, seed=0)
    other = partition_cases(cases, config, seed=1)
    sizes = [len(part) for part in first.values()]
    assert list(first) == ["site_1", "site_2", "site_3", "site_4"]
    assert max(sizes) - min(sizes) <= 3
    assert first != other
    named = partition_cases(cases, config, seed=0, site_names=["a", "b", "c", "d"])
    assert list(named) == ["a", "b", "c", "d"]


def _label_skew(partition: dict[str, list[Case]]) -> float:
    """Mean total-variation distance between each site's label mix and the pooled mix."""
    pooled = np.bincount([c.labels["diagnosis"] for p in partition.values() for c in p], None, 4)
    pooled = pooled / pooled.sum()
    distances = []
    for cases in partition.values():
        mix = np.bincount([c.labels["diagnosis"] for c in cases], minlength=CLASSES)
        distances.append(0.5 * np.abs(mix / mix.sum() - pooled).sum())
    return float(np.mean(distances))


def test_dirichlet_skews_label_mix_more_as_alpha_shrinks() -> None:
    cases = make_cases(groups=400)
    skews = {}
    for alpha in (100.0, 1.0, 0.1):
        config = PartitionConfig(method="dirichlet", num_sites=4, alpha=alpha, label="diagnosis")
        skews[alpha] = np.mean(
            [_label_skew(partition_cases(cases, config, seed=s)) for s in range(5)]
        )
    assert skews[100.0] < skews[1.0] < skews[0.1]
    assert skews[100.0] < 0.1 < 0.3 < skews[0.1]


def test_too_small_site_is_an_error_naming_it() -> None:
    cases = make_cases(groups=30)
    with pytest.raises(ValueError, match=r"site 'site_\d+' has \d+ cases, fewer than min_cases=20"):
        partition_cases(cases, PartitionConfig(method="iid", num_sites=4, min_cases=20), seed=0)
    with pytest.raises(ValueError, match=r"site '\w+' has \d+ cases, fewer than min_cases=50"):
        partition_cases(cases, PartitionConfig(method="site", min_cases=50), seed=0)


def test_site_method_refuses_unsited_cases_and_split_groups() -> None:
    with pytest.raises(ValueError, match="iid"):
        partition_cases([Case("a", "a", None)], PartitionConfig(method="site"), seed=0)
    split = [Case("a", "g", "north"), Case("b", "g", "south")]
    with pytest.raises(ValueError, match="group 'g' has cases at several sites"):
        partition_cases(split, PartitionConfig(method="site"), seed=0)


def test_task_availability_removes_unheld_labels() -> None:
    partition = partition_cases(make_cases(), PartitionConfig(method="site"), seed=0)
    site_tasks = {"north": ["lesion", "diagnosis"], "south": ["lesion"], "east": ["diagnosis"]}
    task_labels = {"lesion": "lesion", "diagnosis": "diagnosis"}
    held = apply_task_availability(partition, site_tasks, task_labels)
    assert [len(c) for c in held.values()] == [len(c) for c in partition.values()]
    assert all(c.has_label("diagnosis") and c.has_label("lesion") for c in held["north"])
    assert all(c.labels["diagnosis"] is None for c in held["south"])
    assert all(not c.has_label("diagnosis") and c.has_label("lesion") for c in held["south"])
    assert all(c.available["lesion"] == (False,) for c in held["east"])
    assert all(c.has_label("diagnosis") for c in partition["south"]), "input unchanged"


def test_task_availability_refuses_unknown_sites_and_tasks() -> None:
    partition = partition_cases(make_cases(), PartitionConfig(method="site"), seed=0)
    task_labels = {"lesion": "lesion", "diagnosis": "diagnosis"}
    with pytest.raises(ValueError, match="did you mean"):
        apply_task_availability(
            partition, {"north": ["lesion"], "south": ["lesion"], "eest": ["lesion"]}, task_labels
        )
    with pytest.raises(ValueError, match="allowed"):
        apply_task_availability(
            partition, {"north": ["lesion"], "south": ["lesion"], "east": ["dose"]}, task_labels
        )


def test_table_lists_sites_counts_and_classes() -> None:
    partition = partition_cases(make_cases(), PartitionConfig(method="site"), seed=0)
    held = apply_task_availability(
        partition,
        {"north": ["lesion", "diagnosis"], "south": ["lesion"], "east": ["diagnosis"]},
        {"lesion": "lesion", "diagnosis": "diagnosis"},
    )
    table = format_partition_table(held, label_key="diagnosis", class_names=["a", "b", "c", "d"])
    lines = table.splitlines()
    assert any("diagnosis=a" in line for line in lines)
    assert any("diagnosis=missing" in line for line in lines)
    south = next(line for line in lines if "south" in line).split()
    total = sum(len(cases) for cases in held.values())
    assert any(str(total) in line for line in lines if "total" in line)
    groups = len({case.group for case in held["south"]})
    assert south[:3] == ["south", str(len(held["south"])), str(groups)]
    assert "\x1b" not in table


def _with_plan_types(cases: list[Case]) -> list[Case]:
    """The same cases with a per-group metadata class, as OpenKBP's ``dose_levels``."""
    return [
        replace(
            case,
            meta={"dose_levels": ("70", "56+70", "56+63+70")[int(case.group.split("_")[1]) % 3]},
        )
        for case in cases
    ]


def test_dirichlet_can_skew_a_metadata_stratum() -> None:
    cases = _with_plan_types(make_cases(groups=300))
    skews = {}
    for alpha in (100.0, 0.1):
        config = PartitionConfig(
            method="dirichlet", num_sites=3, alpha=alpha, stratum="dose_levels", min_cases=5
        )
        partition = partition_cases(cases, config, seed=0)
        assert all(len(groups) == 1 for groups in site_of_groups(partition).values())
        assert sum(len(part) for part in partition.values()) == len(cases)
        pooled = Counter(c.meta["dose_levels"] for c in cases)
        skews[alpha] = max(
            0.5
            * sum(
                abs(Counter(c.meta["dose_levels"] for c in part)[k] / len(part) - n / len(cases))
                for k, n in pooled.items()
            )
            for part in partition.values()
        )
    assert skews[100.0] < 0.1 < 0.3 < skews[0.1]
    table = format_partition_table(partition, stratum="dose_levels")
    assert "dose_levels=56+63+70" in table and "dose_levels=70" in table


def test_unknown_stratum_names_the_fields_cases_have() -> None:
    cases = _with_plan_types(make_cases(groups=30))
    config = PartitionConfig(method="dirichlet", num_sites=3, stratum="dose_level")
    with pytest.raises(ValueError, match=r"metadata field 'dose_level'.*\['dose_levels'\]"):
        partition_cases(cases, config, seed=0)


def test_partition_config_takes_label_or_stratum() -> None:
    with pytest.raises(ValueError, match=r"needs label .* or stratum"):
        PartitionConfig(method="dirichlet", num_sites=3)
    with pytest.raises(ValueError, match="label or stratum, not both"):
        PartitionConfig(method="dirichlet", num_sites=3, label="diagnosis", stratum="x")
