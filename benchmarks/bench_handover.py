"""What a loader's handover of one ready batch costs the training process's main thread.

A bare loop's data sits in memory already; the kit's batches come from loader
workers. Even when the workers are ahead, taking a batch costs the training
process the unpickling of each tensor of the batch: with torch's default
``file_descriptor`` sharing, a socket connection to the worker for every
tensor, then a map of its shared memory. Without pinned memory (a CPU run, and
this script, which runs anywhere) the main thread does it inside
``next(loader)``; on CUDA the kit pins its batches and torch's pin-memory
thread does it instead, sharing the interpreter's lock with the thread that
launches the step. This script measures the unpinned handover alone: items are ready-made tensors
(no augmentation), the "step" is a pause long enough for the workers to get
ahead, and only ``next()`` is timed. The cost is per batch and per tensor,
not per image, so a larger batch pays less of it an image.

    .venv/bin/python benchmarks/bench_handover.py [--batch-size 32] [--image-size 256] [--workers 2]
                                                  [--batches 60] [--step-ms 40] [--sharing file_system]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

# The forms a training batch travels in (engine.training_batch_form): pretraining's random masking sends its
# image alone; fine-tuning sends the image and its label.
FORMS = {
    "uint8 image (random masking, uint8_batches)": (torch.uint8, False),
    "float image (random masking, a CPU run)": (torch.float32, False),
    "uint8 image + uint8 label (fine-tuning, uint8_batches)": (torch.uint8, True),
    "float image + int64 label (fine-tuning, a CPU run)": (torch.float32, True),
}


class ReadyItems(Dataset):
    """Items that cost nothing to build: a copy of one image (and label) of the given dtypes."""

    def __init__(self, count: int, size: int, image_dtype: torch.dtype, with_label: bool):
        self.count = count
        self.image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8).to(image_dtype)
        label_dtype = torch.uint8 if image_dtype == torch.uint8 else torch.int64
        self.label = torch.randint(0, 21, (size, size), dtype=label_dtype) if with_label else None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.image.clone() if self.label is None else (self.image.clone(), self.label.clone())


def handover_ms(dataset: Dataset, batch_size: int, workers: int, step_ms: float) -> list[float]:
    """Milliseconds of the main thread's ``next(loader)`` for each batch after the first few."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, prefetch_factor=4)
    took = []
    batches = iter(loader)
    while True:
        time.sleep(step_ms / 1000)  # the step, during which the workers get ahead
        began = time.perf_counter()
        try:
            next(batches)
        except StopIteration:
            break
        took.append((time.perf_counter() - began) * 1000)
    return took[5:]  # the first 5 wait for the workers to start; main builds 5 more than it times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--step-ms", type=float, default=40.0, help="pause standing in for a step (default 40)")
    parser.add_argument("--sharing", choices=mp.get_all_sharing_strategies(), default=None,
                        help="torch.multiprocessing sharing strategy (default: torch's own)")
    args = parser.parse_args()
    if args.batches < 10:
        parser.error("--batches must be at least 10 (the first 5 are not timed)")
    if args.sharing:
        mp.set_sharing_strategy(args.sharing)
    print(f"main thread's ms for next(loader) with the batch ready; batch {args.batch_size}, {args.image_size} px, "
          f"{args.workers} workers, sharing {mp.get_sharing_strategy()}, torch {torch.__version__}")
    for name, (image_dtype, with_label) in FORMS.items():
        dataset = ReadyItems(args.batch_size * (args.batches + 5), args.image_size, image_dtype, with_label)
        took = handover_ms(dataset, args.batch_size, args.workers, args.step_ms)
        megabytes = dataset.image.nbytes * args.batch_size / 1e6
        if dataset.label is not None:
            megabytes += dataset.label.nbytes * args.batch_size / 1e6
        deciles = statistics.quantiles(took, n=10)
        print(f"  {name:56s} {megabytes:6.1f} MB  median {statistics.median(took):5.2f} ms  "
              f"(p10 {deciles[0]:.2f}, p90 {deciles[-1]:.2f})")


if __name__ == "__main__":
    main()
