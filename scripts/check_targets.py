"""Print every target of the project's benchmarks with its measured value and pass/fail.

Targets are records in :data:`TARGETS`: a name, the result file under ``docs/results/``, how to
read the value from it, a comparison and a threshold. A benchmark adds its targets there, in
one place. A missing file or key prints "not measured" rather than failing, and a federated
suite measured with settings its config no longer gives prints "stale" with what changed.

    python scripts/check_targets.py            # always exits 0
    python scripts/check_targets.py --strict   # exits 1 unless every target passes
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
CTAN_DELTA_M_MIN = 4.67
MTL_SUITES = ("openkbp", "derm", "chest")

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


class NotMeasured(LookupError):
    """The result file or the value inside it does not exist (yet)."""


@dataclass(frozen=True)
class Target:
    """One benchmark target.

    Attributes:
        name: what is promised, in words.
        source: the result file, relative to ``docs/results/``.
        read: the value from the parsed JSON; raises :class:`NotMeasured` where it is absent.
        comparison: one of :data:`COMPARISONS`, ``value <comparison> threshold``.
        threshold: a number, or a reader like ``read`` for targets relative to another value.
        stale: why the parsed JSON no longer measures the project as it is (``None`` when it
            does), for results that depend on a config.
    """

    name: str
    source: str
    read: Callable[[Mapping[str, Any]], float]
    comparison: str
    threshold: float | Callable[[Mapping[str, Any]], float]
    stale: Callable[[Mapping[str, Any]], str | None] | None = None


def key_path(*keys: str) -> Callable[[Mapping[str, Any]], float]:
    """A reader of the number at ``data[keys[0]][keys[1]]...``."""

    def read(data: Mapping[str, Any]) -> float:
        value: Any = data
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                raise NotMeasured(f"no {'.'.join(keys)}")
            value = value[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise NotMeasured(f"{'.'.join(keys)} is {value!r}, not a number")
        if not math.isfinite(value):
            raise NotMeasured(f"{'.'.join(keys)} is not finite")
        return float(value)

    return read


def once_complete(
    suite: str, read: Callable[[Mapping[str, Any]], float]
) -> Callable[[Mapping[str, Any]], float]:
    """``read``, but only once every seed of ``suite`` has run: a suite can be run a few seeds
    at a time, and a target is judged on all of them."""

    def read_complete(data: Mapping[str, Any]) -> float:
        record = data.get("suites", {}).get(suite, {})
        if not record.get("complete", False):
            raise NotMeasured(f"suite {suite} is not complete (seeds run: {record.get('seeds')})")
        return read(data)

    return read_complete


def federated_staleness(suite: str) -> Callable[[Mapping[str, Any]], str | None]:
    """Why ``suite`` of the main federated results no longer measures its config, if it does
    not (:func:`bench_federated.stale_suites`)."""

    def stale(data: Mapping[str, Any]) -> str | None:
        from bench_federated import stale_suites

        return stale_suites({"suites": {suite: data.get("suites", {}).get(suite, {})}}, None).get(
            suite
        )

    return stale


def mtl_delta_m(suite: str, arch: str) -> Callable[[Mapping[str, Any]], float]:
    """Δm against STL of ``arch`` on ``suite`` in ``bench_mtl.json``, once the suite is done."""
    return once_complete(suite, key_path("suites", suite, "summary", arch, "delta_m", "mean"))


def _mtl_targets() -> list[Target]:
    targets = []
    for suite in MTL_SUITES:
        ctan = mtl_delta_m(suite, "ctan")
        targets.append(
            Target(
                f"mtl/{suite}: CTAN Δm vs STL (%)", "bench_mtl.json", ctan, ">=", CTAN_DELTA_M_MIN
            )
        )
        for other in ("hps", "mtan"):
            targets.append(
                Target(
                    f"mtl/{suite}: CTAN Δm above {other.upper()}'s (%)",
                    "bench_mtl.json",
                    ctan,
                    ">",
                    mtl_delta_m(suite, other),
                )
            )
    return targets


TARGETS: list[Target] = [
    *_mtl_targets(),
    *[
        Target(
            f"models/{dims}: CTAN/HPS training-step time on CPU",
            "bench_models.json",
            key_path("results", dims, "archs", "ctan", "step_ratio_to_hps"),
            "<=",
            1.5,
        )
        for dims in ("2d", "3d")
    ],
    Target(
        "models/2d: CTAN 64x64 training images per second",
        "bench_models.json",
        key_path("results", "2d", "archs", "ctan", "images_per_second"),
        ">=",
        30.0,
    ),
    Target(
        "data: OpenKBP parse seconds per patient",
        "bench_data.json",
        key_path("openkbp_parse_s_per_patient", "value"),
        "<",
        0.5,
    ),
    Target(
        "data: uncached / cached epoch time",
        "bench_data.json",
        key_path("epoch_s", "ratio_uncached_over_cached"),
        ">=",
        10.0,
    ),
    *[
        Target(
            name,
            "bench_federated.json",
            once_complete(suite, key_path("suites", suite, "checks", key)),
            rule,
            limit,
            federated_staleness(suite),
        )
        for suite in MTL_SUITES
        for name, key, rule, limit in (
            (
                f"federated/{suite}: federated / centralised CTAN (worst task)",
                "fed_over_central",
                ">=",
                0.97,
            ),
            (
                f"federated/{suite}: federated CTAN / sites alone (worst task)",
                "fed_over_alone",
                ">",
                1.0,
            ),
        )
    ],
    Target(
        "federated: train reply bytes vs raw array bytes, worst |ratio - 1|",
        "bench_federated.json",
        key_path("bytes_excess"),
        "<=",
        0.05,
    ),
    Target(
        "federated: head bytes sent by sites (heads local)",
        "bench_federated.json",
        key_path("heads", "head_bytes_sent"),
        "<=",
        0.0,
    ),
    Target(
        "federated: round train wall time / sum of sites' local training",
        "bench_federated.json",
        key_path("overhead", "ratio"),
        "<=",
        1.10,
    ),
    Target(
        "federated: same, deployed over TLS on 127.0.0.1",
        "bench_federated.json",
        key_path("deployment_overhead", "ratio"),
        "<=",
        1.10,
    ),
]


@dataclass(frozen=True)
class Outcome:
    """A target checked: ``status`` is ``pass``, ``fail``, ``stale`` (measured, but with
    settings that are no longer the project's; the note says which) or ``not measured``."""

    target: Target
    status: str
    value: float | None
    threshold: float | None
    note: str = ""


def check(target: Target, results: Path = RESULTS) -> Outcome:
    """Read ``target``'s value and threshold from its result file and compare them."""
    path = results / target.source
    fixed = float(target.threshold) if isinstance(target.threshold, int | float) else None
    if not path.is_file():
        return Outcome(target, "not measured", None, fixed, f"{target.source} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return Outcome(target, "not measured", None, fixed, f"{target.source}: bad JSON ({err})")
    try:
        value = target.read(data)
        threshold = fixed if fixed is not None else target.threshold(data)
    except NotMeasured as err:
        return Outcome(target, "not measured", None, fixed, f"{target.source}: {err}")
    reason = target.stale(data) if target.stale is not None else None
    if reason is not None:
        return Outcome(target, "stale", value, threshold, f"{target.source}: {reason}")
    passed = COMPARISONS[target.comparison](value, threshold)
    return Outcome(target, "pass" if passed else "fail", value, threshold)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of result JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every target passes")
    args = parser.parse_args(argv)
    outcomes = [check(target, args.results) for target in TARGETS]
    width = max(len(o.target.name) for o in outcomes)
    for o in outcomes:
        rule = f"{o.target.comparison} {_fmt(o.threshold)}"
        print(
            f"{o.status.upper():12} {o.target.name:{width}}  value {_fmt(o.value):>8}  "
            f"{rule:12} {o.note}".rstrip()
        )
    statuses = ("pass", "fail", "stale", "not measured")
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if args.strict and counts["pass"] < len(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
