"""Print the exact installed versions of a package's dependency closure (``name==version``).

Used by ``build_wheelhouse.sh`` to download, for a site without internet, the versions this
environment was tested with. Reads installed metadata only: no network, no resolver.

Usage: python scripts/dependency_lock.py [--package fedctan] [--extra dev] [--exclude torch]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def dependency_closure(package: str, extras: set[str]) -> dict[str, str]:
    """``{canonical name: installed version}`` of everything ``package`` needs, itself excluded.

    Requirements whose environment markers do not hold here (other platforms, Python versions,
    extras not asked for) are skipped.

    Raises:
        metadata.PackageNotFoundError: the package or one of its requirements is not installed.
    """
    pinned: dict[str, str] = {}
    pending: list[tuple[str, set[str]]] = [(package, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        if (canonicalize_name(name), frozenset(wanted)) in seen:
            continue
        seen.add((canonicalize_name(name), frozenset(wanted)))
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            markers = [{"extra": e} for e in wanted or {""}]
            if requirement.marker and not any(requirement.marker.evaluate(m) for m in markers):
                continue
            key = canonicalize_name(requirement.name)
            pinned[key] = metadata.version(requirement.name)
            pending.append((requirement.name, set(requirement.extras)))
    pinned.pop(canonicalize_name(package), None)
    return dict(sorted(pinned.items()))


def main(argv: list[str] | None = None) -> int:
    """Print the lock, one ``name==version`` a line, without local labels such as ``+cpu``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="fedctan", help="root package (default fedctan)")
    parser.add_argument("--extra", action="append", default=[], help="extras of the root")
    parser.add_argument("--exclude", action="append", default=[], help="names to leave out")
    args = parser.parse_args(argv)
    try:
        closure = dependency_closure(args.package, set(args.extra))
    except metadata.PackageNotFoundError as error:
        print(f"error: not installed in this environment: {error}", file=sys.stderr)
        return 1
    excluded = {canonicalize_name(n) for n in args.exclude}
    for name, version in closure.items():
        if name not in excluded:
            print(f"{name}=={version.split('+', 1)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
