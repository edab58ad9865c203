"""Print the exact installed versions of a package's dependency closure (``name==version``).

Used by ``build_wheelhouse.sh`` to download, for a site without internet, the versions this
environment was tested with. Reads installed metadata only: no network, no resolver.

Usage: python scripts/dependency_lock.py [--package fedctan] [--extra dev] [--exclude torch]
       [--python-version X.Y]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def dependency_closure(
    package: str, extras: set[str], python_version: str | None = None
) -> dict[str, str]:
    """``{canonical name: version specifier}`` of everything ``package`` needs, itself
    excluded: ``==<installed version>``, or, for a requirement only ``python_version`` needs
    (not installed here), the specifier its parent asks for, for pip to resolve.

    Requirements whose environment markers do not hold (other platforms, other Python versions,
    extras not asked for) are skipped; markers are read for ``python_version`` (``X.Y``) when
    given, for this interpreter otherwise.

    Raises:
        metadata.PackageNotFoundError: the package or one of its requirements for this
            interpreter's Python is not installed.
    """
    target = (
        {}
        if python_version is None
        else {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    )
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
            markers = [{"extra": e, **target} for e in wanted or {""}]
            if requirement.marker and not any(requirement.marker.evaluate(m) for m in markers):
                continue
            key = canonicalize_name(requirement.name)
            try:
                version = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                if python_version is None:
                    raise
                pinned.setdefault(key, str(requirement.specifier))
                continue
            pinned[key] = f"=={version.split('+', 1)[0]}"
            pending.append((requirement.name, set(requirement.extras)))
    pinned.pop(canonicalize_name(package), None)
    return dict(sorted(pinned.items()))


def main(argv: list[str] | None = None) -> int:
    """Print the lock, one ``name==version`` (or ``name>=...`` for what only another Python
    needs) a line, without local labels such as ``+cpu``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="fedctan", help="root package (default fedctan)")
    parser.add_argument("--extra", action="append", default=[], help="extras of the root")
    parser.add_argument("--exclude", action="append", default=[], help="names to leave out")
    parser.add_argument(
        "--python-version", help="X.Y of the Python that installs the lock (default: this one)"
    )
    args = parser.parse_args(argv)
    try:
        closure = dependency_closure(args.package, set(args.extra), args.python_version)
    except metadata.PackageNotFoundError as error:
        print(f"error: not installed in this environment: {error}", file=sys.stderr)
        return 1
    excluded = {canonicalize_name(n) for n in args.exclude}
    for name, specifier in closure.items():
        if name not in excluded:
            print(f"{name}{specifier}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
