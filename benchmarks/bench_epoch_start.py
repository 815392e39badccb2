"""Each epoch's start with loader workers: a loader per epoch against one that reads ahead.

Both sides load the training items of a random-masking pretraining run (the
kit's dataset and training transform, seeded per item) through the kit's
``engine.Trainer`` with persistent workers:

- per epoch: ``Trainer.loader(train_set, True, epoch)``, the kept workers
  given each epoch's order (what the training loops used before the read-ahead);
- read ahead: ``Trainer.epoch_loader(train_set, epoch)``, one loader over
  all the epochs (``selmask_lib.read_ahead``), as the training loops use now.

A device's training step is stood in for by a pause of ``--step-ms`` per
batch in the main process, and validation by ``--val-ms`` between epochs,
so that the workers have the CPU to themselves, as beside a GPU. Printed:
the wait for each epoch's first batch, and the seconds of each epoch's pass
(validation excluded), medians over the epochs after the first (the first
pays the workers' start on both sides) and over rounds, the order of the two
sides alternating.

    .venv/bin/python benchmarks/bench_epoch_start.py                          # 256 px, batch 32, 2 workers
    .venv/bin/python benchmarks/bench_epoch_start.py --workers 8 --step-ms 32  # an H200-like step
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["SELMASK_NO_PROGRESS"] = "1"

import torch  # noqa: E402
from torch.utils.data import BatchSampler  # noqa: E402

from selmask_lib.config import pretrain_preset  # noqa: E402
from selmask_lib.data.synthetic import ensure_synthetic_voc  # noqa: E402
from selmask_lib.engine import Trainer  # noqa: E402
from selmask_lib.pretrain_data import ReconstructionDataset, pretraining_pool, train_val_split  # noqa: E402
from selmask_lib.transforms import train_transform  # noqa: E402


def training_set(cfg) -> ReconstructionDataset:
    """The training items of a random-masking run, as ``pretraining.pretrain_random`` builds them on a CPU."""
    pool = pretraining_pool(cfg)
    train, _ = train_val_split(range(len(pool)), cfg.val_fraction)
    transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std, antialias=cfg.antialias)
    return ReconstructionDataset(pool, train, transform, cfg.score_size, cfg.n_patches)


def one_side(cfg, dataset, read_ahead: bool, epochs: int, step_s: float, val_s: float) -> list[tuple[float, float]]:
    """(first-batch wait, whole pass) seconds of each epoch; a fresh Trainer, so its workers start anew."""
    trainer = Trainer(cfg, torch.nn.Identity())
    timings = []
    for epoch in range(epochs):
        loader = trainer.epoch_loader(dataset, epoch) if read_ahead else trainer.loader(dataset, True, epoch)
        started, first = time.perf_counter(), None
        for _ in loader:
            if first is None:
                first = time.perf_counter() - started
            time.sleep(step_s)  # the device's training step
        timings.append((first, time.perf_counter() - started))
        time.sleep(val_s)  # validation and the checkpoint: read-ahead workers go on meanwhile
    return timings  # the trainer goes, and its workers with it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=504, help="pool cap (default 504 images)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--step-ms", type=float, default=60.0, help="stand-in for a training step, per batch")
    parser.add_argument("--val-ms", type=float, default=200.0, help="stand-in for validation, per epoch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cfg = pretrain_preset("demo", "synthetic", data_root=str(ensure_synthetic_voc()), device="cpu",
                          image_size=args.image_size, score_size=args.image_size, batch_size=args.batch_size,
                          num_workers=args.workers, persistent_workers=True, max_images=args.max_images,
                          epochs=args.epochs)
    dataset = training_set(cfg)
    print(f"{len(dataset)} images/epoch, {cfg.image_size} px, batch {cfg.batch_size}, {cfg.num_workers} workers, "
          f"step {args.step_ms:g} ms, validation {args.val_ms:g} ms; cores {len(os.sched_getaffinity(0))}")
    sides = {"per epoch": [], "read ahead": []}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
        for side in order:
            timings = one_side(cfg, dataset, side == "read ahead", args.epochs, args.step_ms / 1000,
                               args.val_ms / 1000)
            sides[side].extend(timings[1:])
            print(f"  round {round_} {side:10s} first batch (s) "
                  + " ".join(f"{first:.3f}" for first, _ in timings)
                  + "; pass (s) " + " ".join(f"{total:.3f}" for _, total in timings), flush=True)
    n_batches = len(BatchSampler(range(len(dataset)), cfg.batch_size, cfg.drop_last))  # as the kit's loaders
    floor = n_batches * args.step_ms / 1000
    for side, timings in sides.items():
        print(f"{side:10s}: epochs after the first, median first-batch wait {statistics.median(f for f, _ in timings):.3f} s,"
              f" median pass {statistics.median(t for _, t in timings):.3f} s (the steps alone: {floor:.3f} s)")


if __name__ == "__main__":
    main()
