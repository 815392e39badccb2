"""Would a thread that builds the next batch beside a CPU training step hide the batch's cost?

On a CPU the kit builds a batch's items in the main process between steps
(``num_workers: 0``; a worker process steals a core from the step: ``bench_throughput.py
--workers 1``). A Python thread could build the next batch while torch's kernels run the
current step, since those release the GIL: it pays only if the step leaves a core idle.
This times the demo preset's pretraining step (batch 18, 64 px, the bare loop's model
and loss on a fixed batch) with its items built before each step in the same thread
(serial), and with a thread building the next batch while the step runs (one batch
ahead). The items are the kit's own (``engine.SeededAugmentation``); the step does not
use them, so both ways train alike.

    .venv/bin/python benchmarks/bench_read_ahead_thread.py [--rounds 4] [--steps 15]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ["SELMASK_NO_PROGRESS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_throughput, beside this file

import torch  # noqa: E402
from bench_throughput import in_memory_pretraining_images  # noqa: E402

from selmask_lib.config import pretrain_preset  # noqa: E402
from selmask_lib.engine import SeededAugmentation, adam_optimizer  # noqa: E402
from selmask_lib.losses import ReconstructionLoss  # noqa: E402
from selmask_lib.models import build_reconstruction_model  # noqa: E402
from selmask_lib.pretrain_data import pretraining_pool  # noqa: E402
from selmask_lib.pretraining import loop_datasets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="serial / threaded pairs")
    parser.add_argument("--steps", type=int, default=15, help="timed steps each way a round")
    args = parser.parse_args()

    cfg = pretrain_preset("demo", "synthetic", device="cpu")
    pool = pretraining_pool(cfg)
    dataset, _ = loop_datasets(cfg, pool, range(len(pool)), range(1))
    items = SeededAugmentation(dataset)
    for index in range(len(dataset)):  # decode and keep every image first, as after a run's first epoch
        items[index, index]
    fixed_batch = in_memory_pretraining_images(cfg)[:cfg.batch_size]
    model = build_reconstruction_model(cfg.dropout)
    optimizer, loss_fn = adam_optimizer(model.parameters(), cfg.lr), ReconstructionLoss(cfg.recon_loss)
    drawn = iter(range(10**9))  # each item its own seed key, as each epoch's are

    def batch() -> list:
        return [items[next(drawn) % len(dataset), next(drawn)] for _ in range(cfg.batch_size)]

    def step(_items) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(fixed_batch), fixed_batch).backward()
        optimizer.step()

    def serial() -> float:
        started = time.perf_counter()
        for _ in range(args.steps):
            step(batch())
        return (time.perf_counter() - started) / args.steps * 1e3

    def threaded() -> float:
        ready: queue.Queue = queue.Queue(maxsize=1)  # one batch ahead, as a loader's prefetch
        builder = threading.Thread(target=lambda: [ready.put(batch()) for _ in range(args.steps)], daemon=True)
        started = time.perf_counter()
        builder.start()
        for _ in range(args.steps):
            step(ready.get())
        builder.join()
        return (time.perf_counter() - started) / args.steps * 1e3

    for _ in range(3):  # warm-up
        step(None)
    print(f"demo preset pretraining step (batch {cfg.batch_size}, {cfg.image_size} px), "
          f"{torch.get_num_threads()} torch threads; ms a step, items built serially / by a thread one batch ahead")
    ratios = []
    for round_ in range(args.rounds):
        serial_ms, threaded_ms = serial(), threaded()
        ratios.append(serial_ms / threaded_ms)
        print(f"  round {round_}: serial {serial_ms:7.1f} ms  threaded {threaded_ms:7.1f} ms  "
              f"speed-up {ratios[-1]:.3f}x", flush=True)
    print(f"median speed-up {statistics.median(ratios):.3f}x (above 1: the thread hides part of the items' cost)")


if __name__ == "__main__":
    main()
