"""Selective vs random masking pretraining: wall time at equal sample-epochs.

Both strategies do the same training work (METHOD.md): random masking trains
E epochs on the whole pool, selective masking K steps x E epochs on 1/K of it
each. Selective masking additionally scores partitions 1..K-1 with the previous
step's model (S draws per image) and reads every training image through its
scoring view. This script runs both on the same preset (default ``demo``, on
the embedded synthetic data ``ensure_synthetic_voc()``), in one process, with
runs written under a temporary directory and ``SELMASK_NO_PROGRESS=1``.

Printed: total seconds of each run, the ratio selective / random (target
<= 1.10x), and where the time goes: the per-epoch ``seconds`` of every
``metrics.csv`` (training + validation epochs), the scoring time (measured by
wrapping ``selmask_lib.pretraining.select_masks``), checkpoint writes (wrapping
``save_checkpoint``: resumable ``last.pt`` files, step models, masks), and the
rest (model set-up, data loaders, masks read back). A micro-benchmark of the
two data pipelines (``ReconstructionDataset`` items with and without fixed
masks) shows the extra cost of the scoring view per training image.

The fixed cost of an epoch (what an epoch costs beyond its images) is measured
on its own, since selective masking runs K x as many epochs as random masking
(K steps of E epochs on 1/K of the pool): per epoch, the wait for the first
training batch (loader start-up; with workers, only the first epoch of a
loader, as later ones are read ahead), the rest of the training pass, validation,
the metrics row and checkpoints. A line ``seconds = fixed + per_image x
images`` through the training passes of both strategies separates the two,
and its weight at K=10 is printed.

    .venv/bin/python benchmarks/bench_budget.py                  # demo preset, 1 round
    .venv/bin/python benchmarks/bench_budget.py --epochs 1 --max-images 64   # quick look
    .venv/bin/python benchmarks/bench_budget.py --repeats 3 --set max_images=560 --set image_size=64 \
        --set score_size=64 --set epochs=30 --set batch_size=16             # the issue's second size
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["SELMASK_NO_PROGRESS"] = "1"

import torch  # noqa: E402

import selmask_lib.engine as engine_module  # noqa: E402
import selmask_lib.pretraining as pretrain_module  # noqa: E402
from selmask_lib.cli import parse_overrides  # noqa: E402
from selmask_lib.config import pretrain_preset  # noqa: E402
from selmask_lib.data.synthetic import ensure_synthetic_voc  # noqa: E402
from selmask_lib.data.cache import DecodedCache  # noqa: E402
from selmask_lib.masking import patch_grid, random_mask  # noqa: E402
from selmask_lib.pretraining import pretrain_random, pretrain_selective  # noqa: E402
from selmask_lib.pretrain_data import (  # noqa: E402
    ReconstructionDataset,
    partition_indices,
    pretraining_pool,
    scoring_view,
    train_val_split,
)
from selmask_lib.transforms import train_transform  # noqa: E402

TARGET_RATIO = 1.10


class WallTimer:
    """Adds up the wall time of calls to ``name`` in each of ``modules``, by wrapping it for the ``with``.

    The library calls these functions through module globals, so replacing the
    attribute is enough to time them without editing the library.
    """

    def __init__(self, name: str, *modules):
        self.name, self.modules, self.seconds, self.calls = name, modules, 0.0, 0

    def __enter__(self):
        self.originals = [getattr(module, self.name) for module in self.modules]
        for module, original in zip(self.modules, self.originals):
            setattr(module, self.name, self._timed(original))
        return self

    def _timed(self, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1
        return timed

    def __exit__(self, *exc):
        for module, original in zip(self.modules, self.originals):
            setattr(module, self.name, original)


class EpochParts:
    """Per-epoch seconds of each part of :func:`selmask_lib.engine.fit`'s epoch, by wrapping the library's methods.

    ``first_batch``: from the start of the training pass to its first batch
    (loader and worker start-up, or a batch read ahead); ``train``: the rest of the pass; ``val``:
    validation (``Trainer.mean_loss``); ``log``: the metrics row. Checkpoints
    are timed by :class:`WallTimer` on ``save_checkpoint``.
    """

    def __init__(self):
        self.passes: list[dict] = []  # one per training pass: images, first_batch, train seconds
        self.val = self.log = 0.0

    def __enter__(self):
        trainer, logger = engine_module.Trainer, engine_module.MetricsLogger
        self.originals = (trainer.train_one_epoch, trainer.mean_loss, logger.log)
        parts = self

        def train_one_epoch(self_, loader, *args, **kwargs):
            started, first = time.perf_counter(), []

            def batches():
                for batch in loader:
                    if not first:
                        first.append(time.perf_counter() - started)
                    yield batch
            result = parts.originals[0](self_, _Sized(batches(), loader), *args, **kwargs)
            total = time.perf_counter() - started
            parts.passes.append({"images": len(loader.sampler), "first_batch": first[0] if first else total,
                                 "train": total - (first[0] if first else total)})
            return result

        def mean_loss(self_, *args, **kwargs):
            started = time.perf_counter()
            try:
                return parts.originals[1](self_, *args, **kwargs)
            finally:
                parts.val += time.perf_counter() - started

        def log(self_, row):
            started = time.perf_counter()
            try:
                return parts.originals[2](self_, row)
            finally:
                parts.log += time.perf_counter() - started

        trainer.train_one_epoch, trainer.mean_loss, logger.log = train_one_epoch, mean_loss, log
        return self

    def __exit__(self, *exc):
        engine_module.Trainer.train_one_epoch, engine_module.Trainer.mean_loss, engine_module.MetricsLogger.log = \
            self.originals


class _Sized:
    """An iterable with the ``len`` (and ``sampler``) of the loader it wraps, for progress bars and counts."""

    def __init__(self, iterable, loader):
        self.iterable, self.loader, self.sampler = iterable, loader, loader.sampler

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self):
        return len(self.loader)


def fixed_and_per_image(passes: list[dict]) -> tuple[float, float]:
    """Least-squares ``seconds = fixed + per_image x images`` over training passes (first batch included)."""
    x = torch.tensor([float(p["images"]) for p in passes], dtype=torch.float64)
    y = torch.tensor([p["first_batch"] + p["train"] for p in passes], dtype=torch.float64)
    if len(set(x.tolist())) < 2:
        return math.nan, float((y / x).mean())
    design = torch.stack([torch.ones_like(x), x], dim=1)
    fixed, per_image = torch.linalg.lstsq(design, y[:, None]).solution[:, 0].tolist()
    return fixed, per_image


def epoch_seconds(run_dir: Path) -> float:
    """Sum of the per-epoch ``seconds`` of every metrics.csv under ``run_dir`` (train + val epochs)."""
    total = 0.0
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open() as handle:
            total += sum(float(row["seconds"]) for row in csv.DictReader(handle))
    return total


def timed_run(kind: str, cfg, out_dir: Path) -> dict:
    """Seconds of one fresh run: total, epochs (from metrics.csv), scoring, checkpoint writes, the rest."""
    with WallTimer("select_masks", pretrain_module) as scoring, \
            WallTimer("save_checkpoint", pretrain_module, engine_module) as checkpoints, EpochParts() as parts:
        started = time.perf_counter()
        (pretrain_random if kind == "random" else pretrain_selective)(cfg, out_dir, resume=False)
        total = time.perf_counter() - started
    epochs = epoch_seconds(out_dir)
    n_epochs = len(parts.passes)
    return {"total": total, "epochs": epochs, "scoring": scoring.seconds, "checkpoints": checkpoints.seconds,
            "other": total - epochs - scoring.seconds - checkpoints.seconds,
            "checkpoint_saves": checkpoints.calls, "n_epochs": n_epochs, "passes": parts.passes,
            "per_epoch": {"first batch": sum(p["first_batch"] for p in parts.passes) / n_epochs,
                          "train": sum(p["train"] for p in parts.passes) / n_epochs,
                          "val": parts.val / n_epochs, "log": parts.log / n_epochs,
                          "checkpoints": checkpoints.seconds / n_epochs}}


def batches(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size) if n_images else 0


def work_summary(cfg, n_pool: int) -> dict:
    """Images and optimiser steps per epoch of each strategy (drop_last=False)."""
    train, val = train_val_split(range(n_pool), cfg.val_fraction)
    parts = [train_val_split(p, cfg.val_fraction) for p in partition_indices(n_pool, cfg.n_partitions)]
    return {
        "random": dict(train=len(train), val=len(val), train_batches=batches(len(train), cfg.batch_size),
                       val_batches=batches(len(val), cfg.batch_size)),
        "selective": dict(train=sum(len(t) for t, _ in parts), val=sum(len(v) for _, v in parts),
                          train_batches=sum(batches(len(t), cfg.batch_size) for t, _ in parts),
                          val_batches=sum(batches(len(v), cfg.batch_size) for _, v in parts)),
        "scored": sum(len(p) for p in partition_indices(n_pool, cfg.n_partitions)[1:]),
    }


def pipeline_item_seconds(cfg, pool, n_items: int, repeats: int) -> dict[str, float]:
    """Median seconds per ``ReconstructionDataset`` item: random (decode + crop) vs fixed masks
    (decode + scoring-view resize + pixel mask + crop of image and mask), same images, interleaved.

    Decoded images and scoring views are kept as a run keeps them (``image_cache_mb``), so the
    first repeat fills the caches and the median is what an epoch after the first pays.
    """
    indices = list(range(min(n_items, len(pool))))
    transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std)
    masks = {}
    for index in indices:
        h, w = scoring_view(pool, index, cfg.score_size).shape[-2:]
        masks[index] = random_mask(1, patch_grid(h, w, cfg.n_patches).shape[0], cfg.mask_ratio)[0]
    datasets = {
        "random": ReconstructionDataset(pool, indices, transform, cfg.score_size, cfg.n_patches),
        "selective": ReconstructionDataset(pool, indices, transform, cfg.score_size, cfg.n_patches, masks,
                                           cache=DecodedCache(cfg.image_cache_mb)),
        "pool image only": None,  # decoded (kept, with a cache) and converted to float
    }
    samples = {name: [] for name in datasets}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            started = time.perf_counter()
            for item in range(len(indices)):
                pool[indices[item]] if dataset is None else dataset[item]
            samples[name].append((time.perf_counter() - started) / len(indices))
    return {name: statistics.median(values) for name, values in samples.items()}


def load() -> str:
    """The 1/5/15-minute load averages (``uptime``): other processes on the CPU skew every number."""
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="pretrain preset (smoke, demo, paper)")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs (per selective step)")
    parser.add_argument("--max-images", type=int, help="override the preset's max_images")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch_size")
    parser.add_argument("--partitions", type=int, help="override the preset's n_partitions (K)")
    parser.add_argument("--draws", type=int, help="override the preset's n_scoring_draws (S)")
    parser.add_argument("--checkpoint-every", type=int,
                        help="override checkpoint_every (epochs between resumable checkpoints; not hashed)")
    parser.add_argument("--data-root", help="synthetic VOC tree (default: ensure_synthetic_voc())")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: all cores available to this process)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of (random, selective), order alternating; medians are reported")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                        help="override any pretrain config key, e.g. --set image_size=64 --set score_size=64 "
                             "(repeatable; read as YAML like `selmask --set`)")
    parser.add_argument("--pipeline-items", type=int, default=64,
                        help="images for the data-pipeline micro-benchmark (0 skips it)")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `kill` still removes the temporary runs
    torch.set_num_threads(args.threads)
    overrides = {key: value for key, value in (
        ("epochs", args.epochs), ("max_images", args.max_images), ("batch_size", args.batch_size),
        ("n_partitions", args.partitions), ("n_scoring_draws", args.draws),
        ("checkpoint_every", args.checkpoint_every)) if value is not None}
    overrides.update(parse_overrides(args.overrides))
    data_root = args.data_root or str(ensure_synthetic_voc())
    cfg = pretrain_preset(args.preset, "synthetic", data_root=data_root, device="cpu", **overrides)
    pool = pretraining_pool(cfg)
    work = work_summary(cfg, len(pool))
    print(f"preset {args.preset}: {len(pool)} images, {cfg.image_size} px crops, score size {cfg.score_size}, "
          f"E={cfg.epochs}, batch {cfg.batch_size}, K={cfg.n_partitions}, S={cfg.n_scoring_draws}, "
          f"threads {torch.get_num_threads()}, repeats {args.repeats}")
    for kind in ("random", "selective"):
        w = work[kind]
        print(f"  {kind:9s} per epoch: {w['train']} train images in {w['train_batches']} batches, "
              f"{w['val']} val images in {w['val_batches']} batches")
    print(f"  selective scores {work['scored']} images x S={cfg.n_scoring_draws} draws")
    print(f"start: {load()}")

    results = {"random": [], "selective": []}
    with tempfile.TemporaryDirectory(prefix="selmask-bench-") as tmp:
        # Untimed warm-up (the first forward/backward passes of a process are slow): a one-epoch
        # selective run on a few images exercises training, validation and scoring.
        warm = cfg.updated(epochs=1, max_images=min(len(pool), 4 * cfg.n_partitions))
        pretrain_selective(warm, Path(tmp) / "warm-up", resume=False)
        for round_ in range(args.repeats):
            order = ("random", "selective") if round_ % 2 == 0 else ("selective", "random")
            for kind in order:
                result = timed_run(kind, cfg, Path(tmp) / f"{kind}-{round_}")
                results[kind].append(result)
                print(f"  round {round_} {kind:9s} total {result['total']:7.1f} s  (epochs {result['epochs']:.1f}, "
                      f"scoring {result['scoring']:.1f}, checkpoints {result['checkpoints']:.1f}, "
                      f"other {result['other']:.1f}); {load()}")

    median = {kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]
                     if isinstance(runs[0][key], (int, float))}
              for kind, runs in results.items()}
    rnd, sel = median["random"], median["selective"]
    ratio = sel["total"] / rnd["total"]
    print(f"\nmedian over {args.repeats} round(s), seconds")
    print(f"  {'':10s} {'total':>8s} {'epochs':>8s} {'scoring':>8s} {'ckpt I/O':>8s} {'other':>8s}")
    for kind, m in median.items():
        print(f"  {kind:10s} {m['total']:8.1f} {m['epochs']:8.1f} {m['scoring']:8.1f} {m['checkpoints']:8.1f} "
              f"{m['other']:8.1f}   ({m['checkpoint_saves']:.0f} checkpoint saves)")
    gap = {key: sel[key] - rnd[key] for key in ("total", "epochs", "scoring", "checkpoints", "other")}
    print("  selective - random: " + ", ".join(f"{key} {value:+.1f} s" for key, value in gap.items()))
    # The target is judged on the median of paired rounds (each round's two runs back to back, so
    # they share the machine's load), not on the ratio of the two medians, which pairs nothing.
    paired = [s_run["total"] / r_run["total"] for r_run, s_run in zip(results["random"], results["selective"])]
    paired_median = statistics.median(paired)
    print("\n  per round (same round, back to back): " + ", ".join(f"{value:.3f}x" for value in paired))
    print(f"  selective / random total, median of paired rounds   {paired_median:.3f}x   "
          f"(target <= {TARGET_RATIO:.2f}x: {'MET' if paired_median <= TARGET_RATIO else 'MISSED'})")
    print(f"  ratio of the two medians above                      {ratio:.3f}x")
    print(f"  selective / random epochs  {sel['epochs'] / rnd['epochs']:.3f}x")
    print(f"  scoring share of selective {sel['scoring'] / sel['total']:.1%}  "
          f"({sel['scoring'] / max(work['scored'], 1) * 1e3:.1f} ms per scored image; in all as long as "
          f"{sel['scoring'] / (sel['epochs'] / (cfg.n_partitions * cfg.epochs)):.1f} of the run's "
          f"{cfg.n_partitions * cfg.epochs} step-epochs)")
    print(f"  scoring / (scoring + epochs) at E={cfg.epochs}: {sel['scoring'] / (sel['scoring'] + sel['epochs']):.1%}; "
          f"the scoring cost is fixed per step, so E x 10 would make it about "
          f"{sel['scoring'] / (sel['scoring'] + 10 * sel['epochs']):.1%}")

    print_fixed_epoch_cost(cfg, results)

    if args.pipeline_items:
        per_item = pipeline_item_seconds(cfg, pool, args.pipeline_items, repeats=5)
        extra = per_item["selective"] - per_item["random"]
        n_loaded = cfg.epochs * (work["selective"]["train"] + work["selective"]["val"])
        print(f"\ndata pipeline, median per training item over {min(args.pipeline_items, len(pool))} images")
        for name, seconds in per_item.items():
            print(f"  {name:12s} {seconds * 1e3:7.2f} ms")
        print(f"  extra per selective item {extra * 1e3:.2f} ms; about "
              f"{(cfg.n_partitions - 1) / cfg.n_partitions * n_loaded * extra:.2f} s over the run's fixed-mask steps "
              f"({(cfg.n_partitions - 1) / cfg.n_partitions * n_loaded} items)")


def print_fixed_epoch_cost(cfg, results: dict) -> None:
    """Each part of an epoch, per epoch, and the fixed cost per epoch and its weight at K=10."""
    print("\nper epoch, seconds (mean over the rounds' epochs)")
    parts = ("first batch", "train", "val", "log", "checkpoints")
    print("  " + f"{'':10s} {'epochs':>6s} " + " ".join(f"{part:>11s}" for part in parts))
    for kind, runs in results.items():
        mean = {part: statistics.mean(r["per_epoch"][part] for r in runs) for part in parts}
        print(f"  {kind:10s} {runs[0]['n_epochs']:6d} " + " ".join(f"{mean[part]:11.3f}" for part in parts))
    passes = [p for runs in results.values() for r in runs for p in r["passes"]]
    fixed, per_image = fixed_and_per_image(passes)
    rnd, sel = results["random"][0], results["selective"][0]
    val_and_rest = statistics.mean(r["per_epoch"]["val"] + r["per_epoch"]["log"] + r["per_epoch"]["checkpoints"]
                                   for r in results["selective"])
    per_epoch = fixed + val_and_rest
    sel_total = statistics.median(r["total"] for r in results["selective"])
    print(f"  training pass = {fixed:.3f} s + {per_image * 1e3:.2f} ms x images (least squares over "
          f"{len(passes)} passes of both strategies): a fixed {fixed:.3f} s per pass")
    print(f"  fixed cost per selective epoch (pass start + validation + log + checkpoints): {per_epoch:.3f} s; "
          f"selective runs {sel['n_epochs']} epochs to random's {rnd['n_epochs']}: "
          f"{per_epoch * (sel['n_epochs'] - rnd['n_epochs']):.1f} s more, "
          f"{per_epoch * (sel['n_epochs'] - rnd['n_epochs']) / sel_total:.1%} of the selective run")
    k10 = 10 * cfg.epochs - cfg.epochs
    print(f"  at K=10 (this E={cfg.epochs}): {k10} more epochs than random, {per_epoch * k10:.1f} s of fixed cost")


if __name__ == "__main__":
    main()
