"""``ctan data ...``: check a site's data before joining, and write phantom data sets."""

from __future__ import annotations

import argparse
from pathlib import Path

PHANTOM_LAYOUTS = ("ham10000", "openkbp", "stoic")


def _run_check(args: argparse.Namespace) -> int:
    from ctan.config import load_config
    from ctan.data.check import check_data

    config = load_config(args.config)
    data = config.data
    if data is not None and data.phantom is None and not data.root.exists():
        raise FileNotFoundError(
            f"data.root {data.root} does not exist; point data.root in {args.config} at the "
            "data folder, or add data.phantom to write phantom data there"
        )
    report = check_data(config, skip_bad=args.skip_bad)
    print(report.render())
    return 0 if report.ok else 1


def _run_synth(args: argparse.Namespace) -> int:
    from ctan.data.phantoms import write_phantoms

    try:
        written = write_phantoms(
            args.layout, args.out, cases=args.cases, sites=args.sites, seed=args.seed
        )
    except FileExistsError as err:
        raise ValueError(f"{err}; choose another --out or empty it") from None
    print(f"wrote {args.cases} {args.layout} phantom cases from {args.sites} sites to {written}")
    return 0


def _run_partition(args: argparse.Namespace) -> int:
    from ctan.config import load_config
    from ctan.data.partition import format_partition_table
    from ctan.federation import partition_problems, simulated_partition

    config = load_config(args.config)
    if config.federation is None or not config.federation.sites:
        raise ValueError(f"{args.config} has no federation.sites to partition the data into")
    partition = config.federation.partition
    label = args.label or partition.label
    label_key = config.task(label).label if label else None
    stratum = partition.stratum if args.label is None else None
    sites = simulated_partition(config)
    print(format_partition_table(sites, label_key=label_key, stratum=stratum))
    problems = partition_problems(config, sites)
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the ``ctan`` parser."""
    data = subparsers.add_parser("data", help="check data, write phantom data sets")
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="what a site's data holds: cases, labels per task, sites, problems",
        description=(
            "Read the data that a config points at, exactly as training would, and report cases, "
            "labelled cases per task (and per channel for partial pixel labels), sites and every "
            "problem found. Exit status 1 when problems were found, 2 when data.root does not "
            "exist or the config is invalid."
        ),
    )
    check.add_argument("--config", type=Path, required=True, help="experiment or site YAML")
    check.add_argument(
        "--skip-bad", action="store_true", help="report bad cases and go on instead of stopping"
    )
    check.set_defaults(handler=_run_check)

    partition = commands.add_parser(
        "partition",
        help="how a simulated federation splits the data: cases and labels per site",
        description=(
            "Partition the config's data into its federation.sites (federation.partition: site, "
            "iid or dirichlet; labels of tasks a site does not hold removed) and print cases, "
            "groups and labelled cases per site, and the classes of the label (or the values of "
            "the metadata field) a Dirichlet partition skews. Exit status 1 when a site gets no "
            "cases or cannot split them into train, validation and test."
        ),
    )
    partition.add_argument("--config", type=Path, required=True, help="federation YAML")
    partition.add_argument(
        "--label", help="count the classes of this task per site (default: the partition's)"
    )
    partition.set_defaults(handler=_run_partition)

    synth = commands.add_parser(
        "synth",
        help="write a phantom data set in a real data set's layout",
        description=(
            "Write deterministic phantom cases in the layout of HAM10000 (Dataverse), OpenKBP "
            "(provided-data) or STOIC2021, so that the real readers read them."
        ),
    )
    synth.add_argument("layout", choices=PHANTOM_LAYOUTS)
    synth.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    synth.add_argument("--cases", type=int, default=200, help="number of cases (default 200)")
    synth.add_argument("--sites", type=int, default=4, help="number of sites (default 4)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(handler=_run_synth)
