"""The ``selmask`` command: ``demo``, ``pretrain``, ``finetune``, ``reproduce``, ``budget``, ``config``, ``estimate``,
``synthetic``.

The command line lives here alone: argument definitions, the one step that
turns arguments into a config, error printing and exit codes. Each
subcommand is a thin wrapper over a library function a notebook can call
too; no library module imports this one. Mistakes a user can make (bad data,
bad config) end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from .config import DATASET_NAMES, EMBEDDED_DATASETS, INITS, PAPER_DATASET_SIZES, PAPER_SEED, PRESET_NAMES, STRATEGIES, parse_value
from .errors import SelmaskError, one_line_message

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- arguments -> config


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["epochs=3", "lr=3e-3"]`` -> ``{"epochs": 3, "lr": 0.003}`` (values read as YAML, like config files)."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SelmaskError(f"--set expects key=value, got {pair!r}")
        overrides[key] = parse_value(value, key)
    return overrides


# The options of `pretrain` / `finetune` that set one config key each; they win over --set.
_DEDICATED_KEYS = {
    "pretrain": ("strategy", "data_root"),
    "finetune": ("data_root", "init", "pretrained", "imagenet_weights"),
}


def config_from_args(args: argparse.Namespace, kind: str):
    """The config a ``pretrain`` or ``finetune`` command line describes.

    Base: ``--config FILE`` if given, else ``--preset``; then ``--set
    key=value`` overrides; then the dedicated options (``--strategy``,
    ``--data-root``, ``--init``, ...), which win over ``--set``. The dataset
    is named by ``--dataset`` only.
    """
    from .config import finetune_preset, load_config, pretrain_preset

    overrides = parse_overrides(args.overrides)
    if "dataset" in overrides:
        raise SelmaskError("--set dataset=... is not allowed: name the dataset with --dataset")
    for key in _DEDICATED_KEYS[kind]:
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.config:
        return load_config(args.config, kind=kind).updated(dataset=args.dataset, **overrides)
    preset = pretrain_preset if kind == "pretrain" else finetune_preset
    return preset(args.preset, args.dataset, **overrides)


def parse_data_roots(pairs: list[str] | None) -> dict[str, str]:
    """``["voc=/data/voc"]`` -> ``{"voc": "/data/voc"}`` (``reproduce --data-root``)."""
    data_roots = {}
    for pair in pairs or []:
        name, sep, root = pair.partition("=")
        if not sep:
            raise SelmaskError(f"--data-root expects NAME=DIR, got {pair!r}")
        data_roots[name] = root
    return data_roots


# --------------------------------------------------------------------------- subcommands


def _pretrain_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, "pretrain")  # before torch is imported: a config mistake is reported at once
    from .distributed import is_main_process
    from .pretraining import pretrain

    run = pretrain(cfg, out_dir=args.out, resume=args.resume)
    if is_main_process():  # once, not once per torchrun process
        print(f"pretrained weights: {run.weights}")
    return 0


def _finetune_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, "finetune")  # before torch is imported
    from .distributed import is_main_process
    from .finetuning import finetune

    run = finetune(cfg, out_dir=args.out, resume=args.resume)
    if is_main_process():
        miou = run.results["miou"]
        print(f"test mIoU {'n/a' if miou is None else f'{100 * miou:.1f} %'} ({cfg.init}, {cfg.dataset}); "
              f"results: {run.results_path}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    figure = run_demo(out_dir=args.out, data_root=args.data_root, runs_root=args.runs)
    print(f"demo figure: {figure}")
    return 0


def _reproduce_command(args: argparse.Namespace) -> int:
    from .reproduction import reproduce
    from .tables import format_table, results_table, tidy_table

    if args.figures:
        return _figures_command(args)
    if args.fractions:
        raise SelmaskError("reproduce --fractions sets the budget sweep of --figures; add --figures DIR, "
                           "or use `selmask budget --fractions ...` for the sweep alone")
    reproduction = reproduce(
        args.datasets, preset=args.preset, data_roots=parse_data_roots(args.data_roots), seeds=args.seeds,
        runs_root=args.runs, imagenet_weights=args.imagenet_weights,
        pretrain_overrides=parse_overrides(args.pretrain_overrides),
        finetune_overrides=parse_overrides(args.finetune_overrides),
        maskings=args.maskings or (), same_loss_control=args.same_loss_control,
    )
    for reason in reproduction.skipped:
        print(f"skipped: {reason}")
    numbers = results_table(reproduction.results, columns=reproduction.columns)
    print(format_table(numbers).to_string())
    if args.table:  # numbers (mean, lower, upper, n), not the printed strings
        tidy_table(numbers).to_csv(args.table, index=False)
        print(f"table: {args.table}")
    return 0


def _figures_command(args: argparse.Namespace) -> int:
    """``reproduce --figures DIR``: every notebook for the datasets, executed into DIR (selmask_lib.report)."""
    from .report import write_report

    for flag, value in (("--masking", args.maskings), ("--same-loss-control", args.same_loss_control),
                        ("--set-pretrain", args.pretrain_overrides), ("--set-finetune", args.finetune_overrides),
                        ("--table", args.table), ("--imagenet-weights", args.imagenet_weights)):
        if value:
            raise SelmaskError(f"reproduce --figures runs the notebooks with their own settings; drop {flag}")
    executed = write_report(args.datasets, preset=args.preset, seeds=args.seeds, runs_root=args.runs,
                            figures_dir=args.figures, data_roots=parse_data_roots(args.data_roots),
                            fractions=args.fractions, command=args.command_line)
    for item in executed:
        print(f"{item.run.output}: {item.seconds / 60:.1f} min")
    print(f"figures: {Path(args.figures) / 'README.md'}")
    return 0


def _budget_command(args: argparse.Namespace) -> int:
    from .budget import budget_gains, budget_sweep, check_fractions, check_pair

    check_pair(args.dataset, args.partner)  # before any run starts
    check_fractions(args.fractions)
    sweep = budget_sweep(args.dataset, args.partner, fractions=args.fractions, preset=args.preset, seeds=args.seeds,
                         runs_root=args.runs_root, scale=args.scale, data_roots=parse_data_roots(args.data_roots),
                         pretrain_overrides=parse_overrides(args.pretrain_overrides),
                         finetune_overrides=parse_overrides(args.finetune_overrides))
    gains = budget_gains(sweep)
    shown = ["fraction", "image_steps_self", "image_steps_cross", "gain", "lower", "upper", "n", "verdict"]
    print(f"self - cross test mIoU on {args.dataset} (points; pretrained on {args.dataset} vs {args.partner}):")
    print(gains[shown].round(2).to_string(index=False))
    if args.table:  # one row per run: budget, seed, self/cross, mIoU and its interval
        sweep.to_csv(args.table, index=False)
        print(f"table: {args.table}")
    if args.figure:
        from .plotting import budget_figure

        budget_figure(sweep, gains).savefig(args.figure, dpi=110)
        print(f"figure: {args.figure}")
    return 0


def _config_command(args: argparse.Namespace) -> int:
    from .config import describe_keys

    rows = describe_keys(args.kind, args.dataset)
    columns = ["key", "type", *PRESET_NAMES]
    def cell(row: dict, column: str) -> str:
        value = row[column]
        text = value if isinstance(value, str) else json.dumps(value)  # YAML spelling: null, true, [..]
        return text + (" *" if column == "key" and not row["hashed"] else "")

    table = [[cell(row, column) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in table)) for i, column in enumerate(columns)]
    print(f"{args.kind} config keys and their preset values for dataset {args.dataset!r} "
          f"(set any with --set KEY=VALUE):")
    for line in [columns, *table]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    print("* not part of the run's identity (config hash): changes speed or place, not results")
    return 0


def _estimate_command(args: argparse.Namespace) -> int:
    import os

    from .estimate import estimate_report

    os.environ.setdefault("SELMASK_NO_PROGRESS", "1")  # a bar per timed step would only clutter the report
    overrides = parse_overrides(args.overrides)
    if "dataset" in overrides:
        raise SelmaskError("--set dataset=... is not allowed: name the datasets with --dataset")
    for line in estimate_report(args.datasets or list(PAPER_DATASET_SIZES), args.preset, overrides,
                                steps=args.steps, warmup=args.warmup, gpus=args.gpus):
        print(line, flush=True)
    return 0


def _synthetic_command(args: argparse.Namespace) -> int:
    from .data.embedded import ensure_embedded

    print(ensure_embedded(args.dataset, args.root, seed=args.seed))
    return 0


# --------------------------------------------------------------------------- parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``pretrain`` and ``finetune``."""
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset to train on")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder (default for the embedded datasets: generated once)")
    parser.add_argument("--preset", default="demo", choices=PRESET_NAMES,
                        help="named config to start from: smoke (seconds), demo (CPU minutes), paper "
                             "(the paper's recipe); default: %(default)s")
    parser.add_argument("--config", default=None, help="YAML config file (instead of --preset)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<name>-<config hash>)")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override one config key, e.g. --set epochs=3 (repeatable); "
                             "`selmask config KIND` lists every key with its preset values")


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other selmask error (no usage block)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"selmask: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="selmask", description="Selective masking pretraining for segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # -v after the subcommand too; SUPPRESS keeps a -v given before it
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="on an error, show the traceback too")
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", _demo_command, "end-to-end demo on the embedded data; writes a figure")
    demo.add_argument("--out", default="figures", help="folder for the figure (default: %(default)s)")
    demo.add_argument("--data-root", default=None, help="synthetic dataset folder (default: the embedded set)")
    demo.add_argument("--runs", default="runs",
                      help="folder for the demo's cached pretraining run (default: %(default)s)")

    pretrain = command("pretrain", _pretrain_command, "masked image reconstruction pretraining")
    pretrain.add_argument("--strategy", required=True, choices=STRATEGIES,
                          help="training loop: random masking on all images, or K selective steps")
    _add_run_arguments(pretrain)

    finetune = command("finetune", _finetune_command, "downstream segmentation fine-tuning and test evaluation")
    _add_run_arguments(finetune)
    finetune.add_argument("--init", default=None, choices=INITS,
                          help="initialisation (default: the preset's / config's, 'none')")
    finetune.add_argument("--pretrained", default=None, metavar="RUN_DIR",
                          help="pretraining run directory (init random_ir / selective_ir)")
    finetune.add_argument("--imagenet-weights", default=None, metavar="FILE",
                          help="local copy of torchvision's resnet34-b627a593.pth (init imagenet; "
                               "default: the torch hub cache)")

    reproduce = command("reproduce", _reproduce_command, "run (or reuse) every run of the paper's table; print it")
    reproduce.add_argument("--datasets", nargs="+", default=["synthetic"], choices=DATASET_NAMES,
                           help="downstream datasets, the table's rows (default: synthetic)")
    reproduce.add_argument("--data-root", dest="data_roots", action="append", metavar="NAME=DIR",
                           help="folder of one dataset, e.g. --data-root voc=/data/voc (repeatable)")
    reproduce.add_argument("--preset", default="smoke", choices=PRESET_NAMES,
                           help="named configs of every run (default: %(default)s)")
    reproduce.add_argument("--seeds", nargs="+", type=int, default=[PAPER_SEED],
                           help="one run of each column per seed (default: the authors' 3741)")
    reproduce.add_argument("--runs", default="runs", help="folder of cached runs (default: %(default)s)")
    reproduce.add_argument("--imagenet-weights", default=None, metavar="FILE",
                           help="local resnet34-b627a593.pth for the ImageNet column (default: the torch hub cache)")
    reproduce.add_argument("--masking", dest="maskings", action="append", metavar="NAME",
                           help="also compare this masking of the selective loop, e.g. random_fixed (repeatable)")
    reproduce.add_argument("--same-loss-control", action="store_true",
                           help="also random masking trained on the selective arm's loss, which separates masking "
                                "from loss where the two arms' losses differ (the paper preset); default: off")
    reproduce.add_argument("--set-pretrain", dest="pretrain_overrides", action="append", metavar="KEY=VALUE",
                           help="override a key of every pretraining run (repeatable)")
    reproduce.add_argument("--set-finetune", dest="finetune_overrides", action="append", metavar="KEY=VALUE",
                           help="override a key of every fine-tuning run (repeatable)")
    reproduce.add_argument("--table", default=None, help="also write the table's numbers (mean, 95 %% interval, n) to this CSV file")
    reproduce.add_argument("--figures", default=None, metavar="DIR",
                           help="instead, execute every notebook for these datasets into DIR: executed notebooks, "
                                "PNG figures, CSV tables and a README.md saying what made each")
    reproduce.add_argument("--fractions", nargs="+", type=float, default=None,
                           help="with --figures: the budget sweep's fractions (default: the notebook's)")

    budget = command("budget", _budget_command,
                     "claim (3): self vs cross selective pretraining at fractions of the pretraining budget")
    budget.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="downstream dataset (self)")
    budget.add_argument("--partner", required=True, choices=DATASET_NAMES,
                        help="the other dataset pretrained on (cross)")
    budget.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0],
                        help="budgets, fractions in (0, 1] of the preset's pretraining budget (default: %(default)s)")
    budget.add_argument("--scale", default="images", choices=("images", "epochs", "both"),
                        help="what a fraction shrinks: the pretraining images (default), the epochs, or both "
                             "by its square root")
    budget.add_argument("--preset", default="demo", choices=PRESET_NAMES,
                        help="named configs of every run (default: %(default)s)")
    budget.add_argument("--seeds", nargs="+", type=int, default=[PAPER_SEED],
                        help="one self and one cross run per budget and seed (default: %(default)s)")
    budget.add_argument("--runs-root", default="runs", help="folder of cached runs (default: %(default)s)")
    budget.add_argument("--data-root", dest="data_roots", action="append", metavar="NAME=DIR",
                        help="folder of one dataset, e.g. --data-root folder=/data/mine (repeatable)")
    budget.add_argument("--set-pretrain", dest="pretrain_overrides", action="append", metavar="KEY=VALUE",
                        help="override a key of every pretraining run before its budget is cut (repeatable)")
    budget.add_argument("--set-finetune", dest="finetune_overrides", action="append", metavar="KEY=VALUE",
                        help="override a key of every fine-tuning run (repeatable)")
    budget.add_argument("--table", default=None, metavar="CSV", help="write one row per run to this CSV file")
    budget.add_argument("--figure", default=None, metavar="PNG", help="save the mIoU-by-budget figure here")

    config = command("config", _config_command, "list every config key with its type and preset values")
    config.add_argument("kind", choices=("pretrain", "finetune"), help="which config")
    config.add_argument("--dataset", default="voc", choices=DATASET_NAMES,
                        help="presets differ per dataset (e.g. the paper's batch); default: %(default)s")

    estimate = command("estimate", _estimate_command,
                       "time training steps here and project the wall time of the whole paper run per dataset")
    estimate.add_argument("--dataset", dest="datasets", action="append", choices=tuple(PAPER_DATASET_SIZES),
                          help="a paper dataset (repeatable; default: all four)")
    estimate.add_argument("--preset", default="paper", choices=PRESET_NAMES,
                          help="batch, image size and epochs to time and project (default: %(default)s)")
    estimate.add_argument("--steps", type=int, default=20, help="timed steps of each kind (default: %(default)s)")
    estimate.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    estimate.add_argument("--gpus", type=int, default=1,
                          help="project for N GPUs, assuming linear scaling (default: %(default)s)")
    estimate.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                          help="override a key of both configs, e.g. --set image_size=128 (repeatable)")

    synthetic = command("synthetic", _synthetic_command, "generate (or find) an embedded dataset; print its folder")
    synthetic.add_argument("--dataset", default="synthetic", choices=EMBEDDED_DATASETS,
                           help="which embedded dataset (default: %(default)s)")
    synthetic.add_argument("--root", default=None,
                           help="folder to write it to (default: $SELMASK_DATA_DIR/<dataset> or ~/.cache/selmask/<dataset>)")
    synthetic.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    return parser


def _configure_logging(verbose: bool) -> None:
    """What a run decides on its own (e.g. the SSIM fallback) goes to its run.log; to stderr only with -v."""
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    elif not root.handlers:
        root.addHandler(logging.NullHandler())  # a handler, so Python's last-resort stderr printer stays quiet


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = "selmask " + shlex.join(sys.argv[1:] if argv is None else argv)  # for records of a run
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except SelmaskError as error:
        if args.debug:
            traceback.print_exc()
        print(f"selmask: error: {one_line_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("selmask: interrupted; rerun with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
