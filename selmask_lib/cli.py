"""The ``selmask`` command: ``demo``, ``pretrain``, ``finetune``, ``reproduce`` and ``synthetic``.

Each subcommand is a thin wrapper over a library function a notebook can call
too. Mistakes a user can make (bad data, bad config) end with one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import yaml

from .errors import SelmaskError

EXIT_USER_ERROR = 2


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["epochs=3", "lr=1e-3"]`` -> ``{"epochs": 3, "lr": 0.001}`` (values read as YAML)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SelmaskError(f"--set expects key=value, got {pair!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "3e-3" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        overrides[key.strip()] = parsed
    return overrides


def add_common_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``pretrain`` and ``finetune``."""
    from .config import DATASET_NAMES, PRESET_NAMES

    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--data-root", default=None,
                        help="dataset folder (default for 'synthetic': the embedded set, generated once)")
    parser.add_argument("--preset", default="demo", choices=PRESET_NAMES)
    parser.add_argument("--config", default=None, help="YAML config file (instead of --preset)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<name>-<config hash>)")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override one config field, e.g. --set epochs=3 (repeatable)")


def _pretrain_command(args: argparse.Namespace) -> int:
    from .config import load_config, pretrain_preset
    from .distributed import is_main_process
    from .pretrain import pretrain

    overrides = dict(parse_overrides(args.overrides), strategy=args.strategy)
    if "dataset" in overrides:
        raise SelmaskError("--set dataset=... is not allowed: name the dataset with --dataset")
    if args.data_root is not None:
        overrides["data_root"] = args.data_root
    if args.config:
        cfg = load_config(args.config, kind="pretrain").updated(dataset=args.dataset, **overrides)
    else:
        cfg = pretrain_preset(args.preset, args.dataset, **overrides)
    run = pretrain(cfg, out_dir=args.out, resume=args.resume)
    if is_main_process():  # once, not once per torchrun process
        print(f"pretrained weights: {run.weights}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    figure = run_demo(out_dir=args.out, data_root=args.data_root, runs_root=args.runs)
    print(f"demo figure: {figure}")
    return 0


def _reproduce_command(args: argparse.Namespace) -> int:
    from .reproduce import reproduce
    from .results import format_table, results_table

    data_roots = {}
    for pair in args.data_roots or []:
        name, sep, root = pair.partition("=")
        if not sep:
            raise SelmaskError(f"--data-root expects NAME=DIR, got {pair!r}")
        data_roots[name] = root
    reproduction = reproduce(
        args.datasets, preset=args.preset, data_roots=data_roots, seeds=args.seeds, runs_root=args.runs,
        imagenet_weights=args.imagenet_weights,
        pretrain_overrides=parse_overrides(args.pretrain_overrides),
        finetune_overrides=parse_overrides(args.finetune_overrides),
    )
    for reason in reproduction.skipped:
        print(f"skipped: {reason}")
    table = format_table(results_table(reproduction.results))
    print(table.to_string())
    if args.table:
        table.to_csv(args.table)
        print(f"table: {args.table}")
    return 0


def _synthetic_command(args: argparse.Namespace) -> int:
    from .data.synthetic import ensure_synthetic_voc

    print(ensure_synthetic_voc(args.root, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selmask", description="Selective masking pretraining for segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="end-to-end demo on the embedded data; writes a figure")
    demo.add_argument("--out", default="figures", help="folder for the figure")
    demo.add_argument("--data-root", default=None)
    demo.add_argument("--runs", default="runs", help="folder for the demo's cached pretraining run")
    demo.set_defaults(handler=_demo_command)

    pretrain = commands.add_parser("pretrain", help="masked image reconstruction pretraining")
    pretrain.add_argument("--strategy", required=True, choices=("random", "selective"))
    add_common_run_arguments(pretrain)
    pretrain.set_defaults(handler=_pretrain_command)

    from .finetune import add_finetune_arguments, run_finetune_command

    finetune = commands.add_parser("finetune", help="downstream segmentation fine-tuning and test evaluation")
    add_finetune_arguments(finetune)
    finetune.set_defaults(handler=run_finetune_command)

    from .config import DATASET_NAMES, PRESET_NAMES

    reproduce = commands.add_parser("reproduce", help="run (or reuse) every run of the paper's table; print it")
    reproduce.add_argument("--datasets", nargs="+", default=["synthetic"], choices=DATASET_NAMES)
    reproduce.add_argument("--data-root", dest="data_roots", action="append", metavar="NAME=DIR",
                           help="folder of one dataset, e.g. --data-root voc=/data/voc (repeatable)")
    reproduce.add_argument("--preset", default="smoke", choices=PRESET_NAMES)
    reproduce.add_argument("--seeds", nargs="+", type=int, default=[3741])
    reproduce.add_argument("--runs", default="runs", help="folder of cached runs")
    reproduce.add_argument("--imagenet-weights", default=None, metavar="FILE")
    reproduce.add_argument("--set-pretrain", dest="pretrain_overrides", action="append", metavar="KEY=VALUE")
    reproduce.add_argument("--set-finetune", dest="finetune_overrides", action="append", metavar="KEY=VALUE")
    reproduce.add_argument("--table", default=None, help="also write the table to this CSV file")
    reproduce.set_defaults(handler=_reproduce_command)

    synthetic = commands.add_parser("synthetic", help="generate (or find) the embedded synthetic dataset")
    synthetic.add_argument("--root", default=None)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(handler=_synthetic_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except SelmaskError as error:
        print(f"selmask: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("selmask: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
