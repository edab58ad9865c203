"""Split one data set into the sites of a simulated federation.

Three ways to say which site holds a case (``PartitionConfig.method``):

``site``
    the data set's own site column (natural split: HAM10000 ``dataset``, phantom ``sites.csv``).
``iid``
    groups shuffled and dealt to ``num_sites`` sites with as equal case counts as possible.
``dirichlet``
    for every class of a label, the class's groups are dealt to the sites in proportions drawn
    from Dirichlet(``alpha``); a small ``alpha`` gives each site a few dominant classes
    (Hsu et al. 2019, "Measuring the effects of non-identical data distribution for federated
    visual classification"). The classes are those of a task's label (``label``) or, for data
    whose tasks have no per-case class, of a case metadata field (``stratum``: OpenKBP's
    ``dose_levels``, the prescription levels of the plan).

Whole groups (a lesion, a patient) go to one site, never two. A site with fewer than
``min_cases`` cases is an error, not a silent empty client; a Dirichlet draw that leaves a site
too small is drawn again, up to ``DIRICHLET_ATTEMPTS`` times. Then
:func:`apply_task_availability` switches off the labels of the tasks a site does not hold
(``federation.sites[].tasks``), and :func:`format_partition_table` prints who holds what.

Example:
    >>> parts = partition_cases(cases, PartitionConfig(method="iid", num_sites=3), seed=0)
    >>> parts = apply_task_availability(parts, {"site_1": ["lesion"], ...}, {"lesion": "lesion"})
    >>> print(format_partition_table(parts, label_key="diagnosis"))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import io
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from ctan.config import PartitionConfig
from ctan.data.base import Case

DIRICHLET_ATTEMPTS = 100
"""Dirichlet draws tried before a too-small site is reported as an error."""

MISSING_LABEL = "missing"
"""Class name under which cases without the Dirichlet label are counted and dealt."""


def partition_cases(
    cases: Sequence[Case],
    config: PartitionConfig,
    seed: int,
    label_key: str | None = None,
    site_names: Sequence[str] | None = None,
) -> dict[str, list[Case]]:
    """Assign every case to one site of a simulated federation.

    Args:
        cases: the cases of one data set (each ``Case.group`` goes to exactly one site).
        config: the method and its settings; ``config.seed`` overrides ``seed`` when set.
        seed: the experiment seed; the same seed gives the same partition.
        label_key: the ``Case.labels`` key that ``dirichlet`` skews; defaults to
            ``config.label`` (callers pass the task's label key when it differs from its name).
            Not used when ``config.stratum`` names a ``Case.meta`` field to skew instead.
        site_names: names of the ``num_sites`` sites for ``iid``/``dirichlet``
            (default ``site_1``, ``site_2``...); not used by ``site``.

    Returns:
        Site name -> its cases, in the order of ``cases``. Sites are in name order for
        ``site`` and in ``site_names`` order otherwise.

    Raises:
        ValueError: no cases; ``site`` method with cases lacking a site or a group that
            spans two sites; ``site_names`` of the wrong length or repeated; a site smaller
            than ``config.min_cases`` (the message names the site, its size and the minimum).
    """
    if not cases:
        raise ValueError("cannot partition an empty list of cases")
    seed = config.seed if config.seed is not None else seed
    groups = _groups(cases)
    if config.method == "site":
        partition = _by_site(cases, groups, config)
    else:
        names = _site_names(site_names, config.num_sites or 0)
        rng = np.random.default_rng(seed)
        if config.method == "iid":
            assignment = _deal_iid(rng, list(groups), [len(g) for g in groups.values()], len(names))
        else:
            if config.stratum is not None:
                key, field = config.stratum, "meta"
            else:
                key, field = label_key or config.label or "", "labels"
            assignment = _deal_dirichlet(rng, groups, key, field, len(names), config)
        partition = {name: [] for name in names}
        for group, site in zip(groups, assignment, strict=True):
            partition[names[site]].extend(groups[group])
        order = {case.case_id: index for index, case in enumerate(cases)}
        partition = {
            name: sorted(part, key=lambda c: order[c.case_id]) for name, part in partition.items()
        }
    _check_sizes(partition, config.min_cases, config.method)
    return partition


def apply_task_availability(
    partition: Mapping[str, Sequence[Case]],
    site_tasks: Mapping[str, Sequence[str]],
    task_labels: Mapping[str, str],
) -> dict[str, list[Case]]:
    """Remove from each site the labels of the tasks it does not hold.

    A site that holds masks but no diagnoses keeps its images and masks; its cases come back
    with ``available[<diagnosis key>]`` False (all-False tuple for pixel labels) and the label
    value ``None``, so the training loss masks them out. The input is not changed.

    Args:
        partition: site name -> cases, as from :func:`partition_cases`.
        site_tasks: site name -> names of the tasks it holds (``federation.sites[].tasks``);
            must name exactly the sites of ``partition``.
        task_labels: task name -> its label key (``TaskSpec.label``), for every task.

    Returns:
        Site name -> cases with the unheld labels switched off, in the same order.

    Raises:
        ValueError: a site in one mapping but not the other, or an unknown task name.
    """
    missing = sorted(set(partition) - set(site_tasks))
    extra = sorted(set(site_tasks) - set(partition))
    if missing or extra:
        raise ValueError(
            f"federation sites {sorted(site_tasks)} do not match the partition's sites "
            f"{sorted(partition)}: no tasks given for {missing}, no cases for {extra}"
            + _hint(extra, list(partition))
        )
    result: dict[str, list[Case]] = {}
    for site, cases in partition.items():
        held = list(site_tasks[site])
        for task in held:
            if task not in task_labels:
                raise ValueError(
                    f"site {site!r} holds task {task!r}, which is not a task of this "
                    f"experiment; allowed: {sorted(task_labels)}" + _hint([task], list(task_labels))
                )
        kept = {task_labels[task] for task in held}
        removed = {key for key in task_labels.values() if key not in kept}
        result[site] = [_without_labels(case, removed) for case in cases]
    return result


def format_partition_table(
    partition: Mapping[str, Sequence[Case]],
    label_key: str | None = None,
    class_names: Sequence[str] | None = None,
    stratum: str | None = None,
) -> str:
    """A plain-text table of cases, groups and labelled cases per site, for logs and reports.

    Args:
        partition: site name -> cases.
        label_key: if given, one column per class of this label counts its cases per site.
        class_names: names for integer class indices of ``label_key`` (index -> name).
        stratum: instead of ``label_key``, one column per value of this ``Case.meta`` field.

    Returns:
        The table, one site per row and a total row, without colour codes.
    """
    all_cases = [case for cases in partition.values() for case in cases]
    keys = sorted({key for case in all_cases for key in case.available})
    class_key, field = (stratum, "meta") if stratum is not None else (label_key, "labels")
    classes = (
        sorted({_class_of(c, class_key, field) for c in all_cases}, key=str) if class_key else []
    )
    table = Table(title="cases per site", box=box.SIMPLE_HEAD)
    for column in ("site", "cases", "groups", *(f"{k} labelled" for k in keys)):
        table.add_column(column, justify="left" if column == "site" else "right")
    for value in classes:
        table.add_column(f"{class_key}={_class_name(value, class_names)}", justify="right")

    def row(name: str, cases: Sequence[Case]) -> list[str]:
        labelled = [sum(case.has_label(key) for case in cases) for key in keys]
        counts = Counter(_class_of(case, class_key, field) for case in cases) if class_key else {}
        cells = [len(cases), len({case.group for case in cases}), *labelled]
        cells += [counts.get(value, 0) for value in classes]
        return [name, *(str(cell) for cell in cells)]

    for site, cases in partition.items():
        table.add_row(*row(site, cases))
    table.add_section()
    table.add_row(*row("total", all_cases))
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")


def _groups(cases: Sequence[Case]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    return groups


def _by_site(
    cases: Sequence[Case], groups: Mapping[str, list[Case]], config: PartitionConfig
) -> dict[str, list[Case]]:
    unsited = [case.case_id for case in cases if case.site is None]
    if unsited:
        raise ValueError(
            f"partition method 'site' needs a site for every case, but {len(unsited)} cases have "
            f"none (e.g. {unsited[:3]}); use method 'iid' or 'dirichlet' with num_sites"
        )
    for group, members in groups.items():
        sites = sorted({str(case.site) for case in members})
        if len(sites) > 1:
            raise ValueError(f"group {group!r} has cases at several sites {sites}")
    partition: dict[str, list[Case]] = {}
    for case in cases:
        partition.setdefault(str(case.site), []).append(case)
    if config.num_sites is not None and config.num_sites != len(partition):
        raise ValueError(
            f"num_sites is {config.num_sites} but the data has {len(partition)} sites "
            f"{sorted(partition)}; leave num_sites unset for method 'site'"
        )
    return dict(sorted(partition.items()))


def _site_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [f"site_{k + 1}" for k in range(count)]
    names = list(names)
    if len(names) != count or len(set(names)) != len(names):
        raise ValueError(f"site_names {names} must be {count} distinct names (num_sites)")
    return names


def _deal_iid(
    rng: np.random.Generator, groups: Sequence[Hashable], sizes: Sequence[int], sites: int
) -> list[int]:
    """Site index per group: shuffled groups, each to the site with the fewest cases so far."""
    assignment = [0] * len(groups)
    load = np.zeros(sites, dtype=int)
    for index in rng.permutation(len(groups)):
        site = int(np.argmin(load))
        assignment[index] = site
        load[site] += sizes[index]
    return assignment


def _deal_dirichlet(
    rng: np.random.Generator,
    groups: Mapping[str, list[Case]],
    key: str,
    field: Literal["labels", "meta"],
    sites: int,
    config: PartitionConfig,
) -> list[int]:
    """Site index per group: each class's groups split by Dirichlet(alpha) proportions."""
    names = list(groups)
    labels = [_class_of(members[0], key, field) for members in groups.values()]
    sizes = np.asarray([len(members) for members in groups.values()])
    if all(label == MISSING_LABEL for label in labels):
        if field == "meta":
            fields = sorted({name for members in groups.values() for name in members[0].meta})
            raise ValueError(
                f"no case has metadata field {key!r} (partition stratum) for the Dirichlet "
                f"partition; the cases' fields: {fields}" + _hint([key], fields)
            )
        raise ValueError(f"no case has label {key!r} for the Dirichlet partition")
    by_class: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    assignment = [0] * len(names)
    for _ in range(DIRICHLET_ATTEMPTS):
        for members in by_class.values():
            shares = rng.dirichlet(np.full(sites, config.alpha))
            order = rng.permutation(members)
            cuts = np.round(np.cumsum(shares)[:-1] * len(order)).astype(int)
            for site, chunk in enumerate(np.split(order, cuts)):
                for index in chunk:
                    assignment[int(index)] = site
        load = np.bincount(assignment, weights=sizes, minlength=sites)
        if load.min() >= config.min_cases:
            break
    return assignment


def _check_sizes(partition: Mapping[str, Sequence[Case]], minimum: int, method: str) -> None:
    for site, cases in partition.items():
        if len(cases) < minimum:
            raise ValueError(
                f"site {site!r} has {len(cases)} cases, fewer than min_cases={minimum} "
                f"(partition method {method!r}); lower min_cases, use fewer sites or a larger "
                "alpha, or add data"
            )


def _class_of(case: Case, key: str | None, field: Literal["labels", "meta"] = "labels") -> Hashable:
    if field == "meta":
        value = case.meta.get(key) if key else None
        return MISSING_LABEL if value is None else str(value)
    value = case.labels.get(key) if key else None
    if value is None or (key is not None and not case.has_label(key) and key in case.available):
        return MISSING_LABEL
    return value if isinstance(value, Hashable) else str(value)


def _class_name(value: Hashable, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(value, int) and 0 <= value < len(class_names):
        return class_names[value]
    return str(value)


def _without_labels(case: Case, keys: set[str]) -> Case:
    drop = keys & (set(case.available) | set(case.labels))
    if not drop:
        return case
    available = dict(case.available)
    for key in drop:
        value = available.get(key, False)
        available[key] = tuple(False for _ in value) if isinstance(value, tuple) else False
    labels = {key: (None if key in drop else value) for key, value in case.labels.items()}
    return replace(case, labels=labels, available=available)


def _hint(names: Sequence[str], allowed: Sequence[str]) -> str:
    close = [m for name in names for m in difflib.get_close_matches(name, allowed, n=1)]
    return f" (did you mean {close}?)" if close else ""
