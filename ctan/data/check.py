"""``ctan data check``: what a site's data holds, read exactly as training would read it.

Lists the cases, preprocesses each one through the cache (which finds corrupt files and warms the
cache for training), and reports labelled cases per task (per channel for partial pixel labels),
sites, split sizes and every problem found.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctan.config import Config
from ctan.data.dataset import build_cases, make_reader, readable_cases, split_cases
from ctan.data.reader import BadCase, ListingProblems

__all__ = ["DataReport", "check_data"]


@dataclass
class DataReport:
    """What :func:`check_data` found.

    Attributes:
        format, root: the data checked.
        cases: number of readable cases.
        groups: number of groups among them (patients, lesions).
        labelled: per task name, labelled cases; pixel tasks with several channels also get
            ``"<task>[<channel>]"`` entries.
        sites: cases per site (``"-"`` where the data does not say).
        splits: cases per split, empty when splitting failed.
        problems: one line per problem (file and reason).
        skipped: bad cases left out under ``skip_bad``.
    """

    format: str
    root: Path
    cases: int = 0
    groups: int = 0
    labelled: dict[str, int] = field(default_factory=dict)
    sites: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: list[BadCase] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing went wrong (no problems, no skipped cases)."""
        return not self.problems and not self.skipped

    def render(self) -> str:
        """A readable text report (rich tables, no colour codes)."""
        buffer = io.StringIO()
        console = Console(file=buffer, width=100, color_system=None, force_terminal=False)
        console.print(f"data: {self.format} at {self.root}")
        console.print(f"cases: {self.cases} in {self.groups} groups")
        for title, column, rows in (
            ("labelled cases per task", "task", self.labelled),
            ("cases per site", "site", self.sites),
            ("split sizes", "split", self.splits),
        ):
            table = Table(title=title, title_justify="left")
            table.add_column(column)
            table.add_column("cases", justify="right")
            for name, count in rows.items():
                table.add_row(name, str(count))
            console.print(table)
        if self.skipped:
            console.print(f"skipped {len(self.skipped)} bad cases:")
            for bad in self.skipped:
                console.print(f"  {bad.name}: {bad.reason}", soft_wrap=True)
        if self.problems:
            console.print(f"{len(self.problems)} problems:")
            for problem in self.problems:
                console.print(f"  {problem}", soft_wrap=True)
        console.print("OK" if self.ok else "NOT OK")
        return buffer.getvalue()


def check_data(config: Config, skip_bad: bool = False) -> DataReport:
    """Read the data of ``config`` and report what a site holds.

    Args:
        config: experiment or site config with a data section.
        skip_bad: go on past bad cases (also when ``config.data.skip_bad`` is set); without it
            the first bad case stops the check and is reported as the problem.

    Returns:
        A :class:`DataReport`; its ``ok`` is ``False`` when any problem was found.
    """
    make_reader(config)
    report = DataReport(format=config.data.format, root=config.data.root)
    skip = skip_bad or config.data.skip_bad
    try:
        cases = build_cases(config, skip_bad=skip)
        if not skip:
            readable_cases(cases, config, ListingProblems(skip_bad=False))
    except (ValueError, OSError) as err:
        report.problems.append(str(err))
        return report
    report.skipped = list(cases.skipped)
    report.cases = len(cases)
    report.groups = len({c.group for c in cases})
    for task in config.tasks:
        report.labelled[task.name] = sum(c.has_label(task.label) for c in cases)
        if task.is_pixel_task and task.classes > 1:
            names = make_reader(config).labels[task.label].names
            for channel in range(task.classes):
                name = names[channel] if channel < len(names) else str(channel)
                report.labelled[f"{task.name}[{name}]"] = sum(
                    _channel(c.available.get(task.label), channel) for c in cases
                )
    report.sites = dict(sorted(Counter(c.site or "-" for c in cases).items()))
    if cases:
        try:
            split = split_cases(cases, config.data.split, config.experiment.seed)
            report.splits = {name: len(part) for name, part in split.items()}
        except ValueError as err:
            report.problems.append(str(err))
    else:
        report.problems.append(f"{config.data.root}: no readable cases")
    return report


def _channel(available: bool | tuple[bool, ...] | None, channel: int) -> bool:
    if isinstance(available, tuple):
        return channel < len(available) and available[channel]
    return bool(available)
