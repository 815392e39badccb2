"""Selective-masking scoring cost on CPU, measured side by side in one process.

What it measures (one 256x256 image, batch 1, the paper's 21x21 = 441 patch grid,
one randomly initialised reconstruction U-Net in eval mode, no_grad):

1. Per-patch losses: ``selmask_lib.masking.patch_losses`` (one SSIM map for the
   whole image, summed per patch) against a Python loop like the authors':
   for each of the 441 patches, crop pred/target, L1 mean + 1 - 
   ``pytorch_msssim.ssim(win_size=3, data_range=1.0)``, with one ``.item()``
   host sync per patch. Target: the vectorised version is >= 20x faster.
   The max abs difference between the two is printed too (should be ~1e-6).

2. Scoring S=5 draws with ``selmask_lib.strategies.score_patches`` (the 5
   masked copies go through the network as one batch, plus the patch losses)
   against 5 plain forward passes of the U-Net on the image (batch 1 each).
   Target: score_patches / 5 forwards <= 1.5x. Also printed: one forward pass
   alone, and what the authors' loop costs (5 x (forward + looped patch losses)).

Every candidate is timed with ``time.perf_counter`` after a warm-up; the
candidates are interleaved inside each of the ``--repeats`` rounds (so a
change in machine load hits them all alike) and the median is reported.

    .venv/bin/python benchmarks/bench_scoring.py [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from selmask_lib.masking import apply_mask, patch_grid, patch_losses, random_mask
from selmask_lib.models import build_reconstruction_model
from selmask_lib.strategies import score_patches
from selmask_lib.config import DEFAULT_MEAN, DEFAULT_STD

SIZE = 256
N_PATCHES = 512  # nominal; gives the 21x21 grid of 441 patches at 256 px
N_DRAWS = 5
TARGET_LOSS_SPEEDUP = 20.0
TARGET_SCORING_RATIO = 1.5


def test_image(size: int = SIZE) -> torch.Tensor:
    """A real photograph (scikit-image's astronaut), resized to size x size and normalised, [1, 3, S, S]."""
    import skimage.data

    image = torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut())).permute(2, 0, 1)
    image = image[None].float() / 255.0
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEFAULT_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def looped_patch_losses(pred: torch.Tensor, target: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The authors' way: one patch at a time, with a host sync (``.item()``) per patch. Batch 1."""
    losses = []
    for y0, y1, x0, x1 in grid.tolist():
        pred_patch, target_patch = pred[:, :, y0:y1, x0:x1], target[:, :, y0:y1, x0:x1]
        l1 = (pred_patch - target_patch).abs().mean()
        similarity = ssim(pred_patch, target_patch, data_range=1.0, win_size=3)
        losses.append((l1 + 1.0 - similarity).item())
    return torch.tensor(losses)[None]  # [1, P]


def time_once(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_times(candidates: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each candidate; candidates run interleaved in every round."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            samples[name].append(time_once(fn))
    return {name: statistics.median(values) for name, values in samples.items()}


def load() -> str:
    """The 1/5/15-minute load averages (``uptime``): other processes on the CPU skew every number."""
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: all cores available to this process)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_reconstruction_model().eval()
    image = test_image()
    grid = patch_grid(SIZE, SIZE, N_PATCHES)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, image 1x3x{SIZE}x{SIZE}, "
          f"{grid.shape[0]} patches, S={N_DRAWS}, repeats {args.repeats} (median), warm-up {args.warmup}")
    print(f"start: {load()}")

    # A realistic prediction: the model's reconstruction of a randomly masked image.
    with torch.no_grad():
        mask = random_mask(1, grid.shape[0], 0.5, torch.Generator().manual_seed(args.seed))
        masked, _ = apply_mask(image, mask, grid, 0.0)
        pred = model(masked)

    # -- 1. per-patch losses: vectorised vs looped ---------------------------------------
    vectorised, looped = patch_losses(pred, image, grid), looped_patch_losses(pred, image, grid)
    max_diff = (vectorised - looped).abs().max().item()

    def forward():
        with torch.no_grad():
            model(image)

    def five_forwards():
        for _ in range(N_DRAWS):
            forward()

    generator = torch.Generator().manual_seed(args.seed)
    times = median_times({
        "patch_losses (vectorised)": lambda: patch_losses(pred, image, grid),
        "patch losses (looped, authors')": lambda: looped_patch_losses(pred, image, grid),
        "forward x1": forward,
        f"forward x{N_DRAWS} (batch 1 each)": five_forwards,
        f"score_patches S={N_DRAWS}": lambda: score_patches(model, image, grid, N_DRAWS, 0.5, generator),
    }, args.repeats, args.warmup)

    print(f"end:   {load()}")
    print("\nmedian seconds")
    for name, seconds in times.items():
        print(f"  {name:34s} {seconds * 1e3:9.2f} ms")

    t_vec, t_loop = times["patch_losses (vectorised)"], times["patch losses (looped, authors')"]
    t_fwd, t_fwd5 = times["forward x1"], times[f"forward x{N_DRAWS} (batch 1 each)"]
    t_score = times[f"score_patches S={N_DRAWS}"]
    t_authors = N_DRAWS * (t_fwd + t_loop)
    loss_speedup, scoring_ratio = t_loop / t_vec, t_score / t_fwd5

    print("\n1. per-patch losses")
    print(f"  max |vectorised - looped|        {max_diff:.2e}")
    print(f"  speed-up looped / vectorised     {loss_speedup:7.1f}x   "
          f"(target >= {TARGET_LOSS_SPEEDUP:.0f}x: {'MET' if loss_speedup >= TARGET_LOSS_SPEEDUP else 'MISSED'})")
    print(f"  looped losses / one forward      {t_loop / t_fwd:7.2f}x")
    print(f"\n2. scoring one image, S={N_DRAWS} draws")
    print(f"  score_patches / {N_DRAWS} forwards       {scoring_ratio:7.2f}x   "
          f"(target <= {TARGET_SCORING_RATIO}x: {'MET' if scoring_ratio <= TARGET_SCORING_RATIO else 'MISSED'})")
    print(f"  authors' loop per draw           {(t_fwd + t_loop) * 1e3:9.2f} ms  (forward + looped losses)")
    print(f"  authors' loop, {N_DRAWS} draws           {t_authors * 1e3:9.2f} ms  "
          f"= {t_authors / t_score:.1f}x score_patches")


if __name__ == "__main__":
    main()
