"""Helpers the benchmark scripts share: summaries, number formatting, JSON and markdown output."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not ``None``, NaN or a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mean_sd(values: Sequence[float | None]) -> dict[str, float | int]:
    """Mean, sample standard deviation and count of the finite values (NaN when undefined)."""
    kept = [float(v) for v in values if finite(v)]
    mean = statistics.fmean(kept) if kept else math.nan
    sd = statistics.stdev(kept) if len(kept) > 1 else math.nan
    return {"mean": mean, "sd": sd, "n": len(kept)}


def number_text(value: float | None, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits with its trailing zeros kept, so that
    a table shows the precision it has ("5.00 ± 0.23", not "5 ± 0.23").

    Larger numbers print without a decimal point ("406", "12300"), values under 1e-4 in
    exponent form ("1.20e-05"), 0 as "0"; ``n/a`` when ``value`` is not a finite number.
    """
    if not finite(value):
        return "n/a"
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits - 1}e}")
    magnitude = math.floor(math.log10(abs(rounded)))
    if magnitude < -4:
        return f"{rounded:.{digits - 1}e}"
    return f"{rounded:.{max(0, digits - 1 - magnitude)}f}"


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def code_revision(root: Path = REPOSITORY) -> str | None:
    """The commit the benchmark code is at, so that every stored figure says which code made it.

    ``+changes`` is appended when tracked files outside ``docs/`` differ from the commit
    (``docs/`` is left out: the benchmarks write their results there). ``None`` outside a git
    checkout or without git.
    """
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+changes" if changed else commit


def revision_lines(runs: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """Markdown lines naming the code revision (``code``, :func:`code_revision`) of every run,
    rows named by ``run[key]`` and grouped by revision; a row whose runs span revisions lists
    its seeds under each. No lines without runs."""
    seeds_of: dict[str, dict[str, list[int]]] = {}
    for run in runs:
        revision = run.get("code") or ""
        seeds_of.setdefault(revision, {}).setdefault(run[key], []).append(run["seed"])
    revisions_of_row = Counter(row for rows in seeds_of.values() for row in rows)
    parts = []
    for revision, rows in seeds_of.items():
        names = ", ".join(
            f"{row} seed {', '.join(map(str, sorted(seeds)))}" if revisions_of_row[row] > 1 else row
            for row, seeds in rows.items()
        )
        label = f"`{revision}`" if revision else "not recorded"
        parts.append(label if len(seeds_of) == 1 else f"{label} ({names})")
    return [f"Code revision: {'; '.join(parts)}.", ""] if parts else []


def replace_section(text: str, body: str, name: str) -> str:
    """``text`` with what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced.

    Other sections of the file are left alone; without the markers the section is appended.

    Raises:
        ValueError: only one marker is present, or the end comes before the start.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    has_start, has_end = start in text, end in text
    if has_start and has_end and text.index(start) < text.index(end):
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    if has_start or has_end:
        raise ValueError(f"markers {start} and {end} must both appear, start first")
    return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"


def write_sections(docs: Path, bodies: Mapping[str, str]) -> None:
    """Replace the named sections of ``docs`` (created with a title when missing) with
    ``bodies``, by :func:`replace_section`, and write the file once, atomically."""
    text = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    for name, body in bodies.items():
        text = replace_section(text, body, name)
    write_text(docs, text)


def render_stored(
    results: Path, docs: Path, benchmark: str, render: Callable[[Mapping[str, Any], str], str]
) -> list[str]:
    """Rewrite the docs section of every stored results file of ``benchmark`` from its JSON,
    training nothing (after a change to how results are written, or an edit of ``docs``).

    A file ``<benchmark>.json`` or ``<benchmark>_<tag>.json`` in ``results`` fills the section
    named by its stem; ``render(report, stem)`` gives the section's markdown. The docs file is
    written once, after every report has been read and rendered.

    Returns:
        The section names written, in file-name order.

    Raises:
        ValueError: a results file is not valid JSON (named in the message), or
            :func:`replace_section`'s marker errors.
    """
    bodies: dict[str, str] = {}
    for path in sorted(results.glob(f"{benchmark}*.json")):
        if path.stem != benchmark and not path.stem.startswith(f"{benchmark}_"):
            continue
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        bodies[path.stem] = render(report, path.stem)
    write_sections(docs, bodies)
    return list(bodies)


def with_logit_adjustment(tasks: Sequence[Any], tau: float = 1.0) -> list[Any]:
    """``tasks`` (``TaskSpec``) with ``logit_adjustment: tau`` (and no class weights) on every
    classification task."""
    return [
        t.model_copy(update={"logit_adjustment": tau, "class_weights": None})
        if t.kind == "classification"
        else t
        for t in tasks
    ]


def with_balanced_classes(tasks: Sequence[Any]) -> list[Any]:
    """``tasks`` (``TaskSpec``) with ``class_weights: balanced`` (and no logit adjustment) on every
    classification task."""
    return [
        t.model_copy(update={"class_weights": "balanced", "logit_adjustment": 0.0})
        if t.kind == "classification"
        else t
        for t in tasks
    ]
