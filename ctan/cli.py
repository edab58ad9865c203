"""The ``ctan`` command: one entry point, one subcommand per job.

Each command group lives beside the code it drives and registers itself here with a
``register(subparsers)`` function, so this file only assembles them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ctan import __version__
from ctan.data import cli as data_cli


def _run_models(args: argparse.Namespace) -> int:
    from ctan.config import load_config
    from ctan.models.summary import print_summaries

    print_summaries(load_config(args.config), archs=args.arch)
    return 0


def _register_models(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="parameters per group, multiply-accumulates and output shapes of each architecture",
        description=(
            "For the model and tasks of a config, print for every architecture (STL, HPS, MTAN, "
            "CTAN, or those chosen with --arch) the parameters in each parameter group, the "
            "multiply-accumulates of one forward pass on one input, and the output shapes."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML")
    parser.add_argument(
        "--arch",
        action="append",
        choices=["stl", "hps", "mtan", "ctan"],
        help="only this architecture (repeatable); default: all",
    )
    parser.set_defaults(handler=_run_models)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ctan",
        description="Federated multi-task learning (STL/HPS/MTAN/CTAN) for medical imaging.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_models(subparsers)
    data_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ctan`` command; returns the process exit status.

    User errors (bad config, missing or corrupt files) are printed as one clear message and give
    exit status 2, without a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        if args.verbose:
            raise
        print(f"ctan {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
