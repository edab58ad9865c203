"""The ``ctan`` command: one entry point, one subcommand per job.

Each command group lives beside the code it drives and registers itself here with a
``register(subparsers)`` function, so this file only assembles them.
"""

from __future__ import annotations

import argparse
import json
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


def _run_train(args: argparse.Namespace) -> int:
    from ctan.config import load_config
    from ctan.training import train_centralised

    config = load_config(args.config)
    if args.epochs is not None:
        raw = config.model_dump(mode="json")
        raw["train"]["epochs"] = args.epochs
        config = load_config(raw)
    result = train_centralised(config, folder=args.out, show_progress=not args.no_progress)
    print(f"run folder: {result.folder}")
    print(f"best checkpoint: {result.best_checkpoint}")
    if result.test is not None:
        print(f"test metrics: {result.test.metrics}")
    return 0


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model centrally on the data of a config",
        description=(
            "Train the config's architecture on its data (split by data.split), keep the "
            "checkpoint with the lowest validation loss and score it on the test split. The run "
            "folder gets config.yaml, best.pt, last.pt, metrics.csv/jsonl, TensorBoard events, "
            "learning_curves.png and test_metrics.json."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML")
    parser.add_argument(
        "--out", type=Path, help="run folder (default: under experiment.output_dir)"
    )
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_train)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: a GPU where there is one, else the CPU), cpu, cuda or cuda:N; the "
        "checkpoint's train.device is where it trained, not where it must run",
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from ctan.prediction import evaluate_checkpoint
    from ctan.report import json_safe

    scores = evaluate_checkpoint(
        args.checkpoint, data_config=args.data, split=args.split, device=args.device
    )
    print(json.dumps(json_safe(scores), indent=2))
    return 0


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on a data split",
        description=(
            "Score a checkpoint with its tasks' metrics on a split of the data of its own config, "
            "or of the data section of another config (--data). Prints JSON."
        ),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.pt)")
    parser.add_argument(
        "--data", type=Path, help="YAML whose data section to use (default: the checkpoint's)"
    )
    parser.add_argument(
        "--split",
        choices=["train", "validation", "test", "all"],
        default="test",
        help="which split (default: test)",
    )
    _add_device(parser)
    parser.set_defaults(handler=_run_evaluate)


def _run_predict(args: argparse.Namespace) -> int:
    from ctan.prediction import predict_to_folder

    written = predict_to_folder(args.checkpoint, args.input, args.out, device=args.device)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run a checkpoint on new images",
        description=(
            "Run a checkpoint on an image file or a folder of images (PNG/JPEG, NIfTI, MHA) or, "
            "for OpenKBP models, a folder of pt_N/ patient folders (or of train-pats/, "
            "validation-pats/, test-pats/). Writes each prediction on its input's own grid: "
            "2D masks as PNG, other maps as gzipped NIfTI with the input's affine; for OpenKBP, "
            "dose in the submission CSV format and organ masks as NIfTI on the native grid; "
            "class probabilities in predictions.csv. Nothing is written into the input folder."
        ),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.pt)")
    parser.add_argument("--input", type=Path, required=True, help="image file or folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    _add_device(parser)
    parser.set_defaults(handler=_run_predict)


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
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_predict(subparsers)
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
    except (ValueError, OSError, KeyError) as err:
        if args.verbose:
            raise
        print(f"ctan {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
