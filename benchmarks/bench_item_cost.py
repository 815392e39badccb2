"""What one training item costs a loader worker, for each way a batch can travel to a GPU.

On a GPU the loader workers must build items as fast as the step eats them:
``workers x 1000 / (ms an item) >= the step's images per second``, with room
to spare, since the workers share the host with the thread that launches the
step's kernels. How much work an item is depends on the batch form
(``engine.training_batch_form``):

- ``float``: crop, flip, colour jitter and normalisation in the worker (a CPU run);
- ``jitter_on_device``: crop and flip only; the GPU jitters and normalises (pretraining's CUDA default until H200 call 8);
- ``uint8_batches``: crop, flip and colour jitter in the worker, sent as uint8; the GPU normalises (the CUDA default).

The last rows time a selective step's item with its fixed mask baked in (the ``paper`` preset's way),
with and without the JPEG round trip: as floats (a CPU run) and as uint8 (``uint8_batches`` on CUDA).

Each item is built as a worker builds it (``engine.SeededAugmentation``: one
torch thread, its own seed), from the embedded synthetic data's decoded and
kept images (a first pass over the items decodes them, untimed; with
``--image-cache-mb 0`` nothing is kept, and every item decodes its image and,
in a selective step, remakes its scoring view and bakes it again, as a run
does for the images beyond its cache), for the random-masking loop and for
fine-tuning. The CUDA-only keys are made to act
here as on CUDA (``bench_throughput.batch_keys_as_on_cuda``), so any machine
gives the GPU path's item costs; they are per core of this machine.

    .venv/bin/python benchmarks/bench_item_cost.py                    # 256 px, the paper's size
    .venv/bin/python benchmarks/bench_item_cost.py --image-size 64 --items 500
    .venv/bin/python benchmarks/bench_item_cost.py --image-cache-mb 0     # items rebuilt every epoch
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

os.environ["SELMASK_NO_PROGRESS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_throughput, beside this file

from bench_throughput import batch_keys_as_on_cuda  # noqa: E402

import selmask_lib.finetuning as ft  # noqa: E402
from selmask_lib.config import finetune_preset, pretrain_preset  # noqa: E402
from selmask_lib.engine import SeededAugmentation, one_torch_thread, training_batch_form  # noqa: E402
from selmask_lib.estimate import random_fixed_masks  # noqa: E402
from selmask_lib.pretrain_data import pretraining_pool  # noqa: E402
from selmask_lib.pretraining import loop_batch_form, loop_datasets  # noqa: E402

FORMS = {"float": {"jitter_on_device": False, "uint8_batches": False},  # any CPU run
         "jitter_on_device": {"jitter_on_device": True, "uint8_batches": False},
         "uint8_batches": {"jitter_on_device": False, "uint8_batches": True}}


def ms_an_item(dataset, items: int) -> float:
    """Mean milliseconds of one item of ``dataset`` built as a loader worker builds it, after a first pass
    over the same items, untimed (which decodes and keeps the images, where ``image_cache_mb`` allows)."""
    worker_items = SeededAugmentation(dataset)
    with one_torch_thread():  # a worker's thread count all along (not switched around each item)
        for index in range(items):
            worker_items[index % len(dataset), index]
        start = time.perf_counter()
        for index in range(items):
            worker_items[index % len(dataset), 1000 + index]
        return (time.perf_counter() - start) / items * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=256, help="training crop side (default 256)")
    parser.add_argument("--items", type=int, default=300, help="items timed for each loop and form")
    parser.add_argument("--image-cache-mb", type=int, default=None,
                        help="the configs' image_cache_mb (default: theirs); 0 times items rebuilt every epoch, as "
                             "a run's are beyond its cache (decoding, the scoring view, baking)")
    args = parser.parse_args()
    cache = {} if args.image_cache_mb is None else {"image_cache_mb": args.image_cache_mb}

    size = args.image_size
    print(f"ms a training item in a loader worker (one torch thread), {size} px; items a second a worker"
          + ("" if args.image_cache_mb is None else f"; image_cache_mb {args.image_cache_mb}"))
    with batch_keys_as_on_cuda():
        for form, keys in FORMS.items():
            pre = pretrain_preset("demo", "synthetic", image_size=size, score_size=size, device="cpu", **keys, **cache)
            fine = finetune_preset("demo", "synthetic", image_size=size, device="cpu", **keys, **cache)
            if not training_batch_form(pre) == training_batch_form(fine) == form:
                raise RuntimeError(f"the keys {keys} did not give {form} batches")
            pool = pretraining_pool(pre)
            random_masking, _ = loop_datasets(pre, pool, range(len(pool)), range(1))
            finetuning = ft.load_splits(fine).train
            for loop, dataset in (("random masking", random_masking), ("fine-tuning", finetuning)):
                ms = ms_an_item(dataset, args.items)
                print(f"  {loop:<15} {form:<22} {ms:6.2f} ms  {1000 / ms:7.0f} items/s")
    # The paper preset's selective steps bake their fixed masks into the images (VOC through JPEG 75, the other
    # datasets lossless): floats on a CPU, uint8 (the device normalises) with uint8_batches on CUDA.
    for quality, as_on_cuda in ((75, False), (None, False), (75, True), (None, True)):
        with batch_keys_as_on_cuda() if as_on_cuda else contextlib.nullcontext():
            baked = pretrain_preset("demo", "synthetic", strategy="selective", image_size=size, score_size=size,
                                    device="cpu", bake_selective_masks=True, baked_image_quality=quality, **cache)
            pool = pretraining_pool(baked)
            masks = random_fixed_masks(baked, pool, range(len(pool)), torch.Generator().manual_seed(0))
            baked_step, _ = loop_datasets(baked, pool, range(len(pool)), range(1), masks)
            ms = ms_an_item(baked_step, args.items)
            form = f"{loop_batch_form(baked, fixed_masks=True)}, {'JPEG 75' if quality else 'lossless'}"
        print(f"  {'selective step':<15} {form:<22} {ms:6.2f} ms  {1000 / ms:7.0f} items/s")


if __name__ == "__main__":
    main()
