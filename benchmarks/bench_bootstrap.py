"""Time of the bootstrap over test images at VOC's size, and the size of its per-image counts in results.json.

Plain script (not a test): 1,449 test images x 21 classes, confusion counts shaped like a VOC
segmenter's (background plus 1-3 object classes per image, a few confusions), 2,000 resamples.
Prints the median of ``--repeats`` calls of miou_interval and paired_bootstrap_gain, and the
bytes of the sparse ``per_image_confusions`` field next to dense nested lists.

    .venv/bin/python benchmarks/bench_bootstrap.py [--threads N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics as pystats
import time

import numpy as np
import torch

from selmask_lib.results import per_image_entries
from selmask_lib.statistics import miou_interval, paired_bootstrap_gain

N_IMAGES, N_CLASSES, N_BOOT = 1449, 21, 2000


def voc_like_confusions(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros((N_IMAGES, N_CLASSES, N_CLASSES), dtype=np.int64)
    for i in range(N_IMAGES):
        counts[i, 0, 0] = rng.integers(50_000, 150_000)
        for c in rng.choice(np.arange(1, N_CLASSES), size=rng.integers(1, 4), replace=False):
            counts[i, c, c] = rng.integers(1_000, 40_000)
            counts[i, c, 0], counts[i, 0, c] = rng.integers(0, 5_000, size=2)
            counts[i, c, rng.integers(1, N_CLASSES)] += rng.integers(0, 3_000)
    return counts


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return pystats.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = voc_like_confusions()
    better = counts.copy()
    better[:, 0, 0] += 100
    one = median_seconds(lambda: miou_interval(counts, n_boot=N_BOOT), args.repeats)
    paired = median_seconds(lambda: paired_bootstrap_gain(counts, better, n_boot=N_BOOT), args.repeats)
    ids = [f"2008_{i:06d}" for i in range(N_IMAGES)]
    sparse = len(json.dumps(per_image_entries(ids, counts), separators=(",", ":")))
    dense = len(json.dumps([{"id": i, "counts": c} for i, c in zip(ids, counts.tolist())], separators=(",", ":")))
    print(f"{N_IMAGES} images x {N_CLASSES} classes, {N_BOOT} resamples, torch threads {args.threads}, "
          f"median of {args.repeats}")
    print(f"  miou_interval          {one:.3f} s")
    print(f"  paired_bootstrap_gain  {paired:.3f} s")
    print(f"  per_image_confusions   sparse {sparse / 1e6:.2f} MB, dense lists {dense / 1e6:.2f} MB "
          f"({(counts > 0).sum((1, 2)).mean():.1f} non-zero cells per image)")


if __name__ == "__main__":
    main()
