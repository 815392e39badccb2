"""How sure a number is: 95 % intervals for mIoU and for gains, and a verdict per comparison.

Two kinds of noise move the kit's numbers, and each has its interval:

* **Which test images** (one run, one seed). The test split is a sample of
  images; resampling them with replacement (percentile bootstrap, ``n_boot``
  resamples) shows how far the mIoU would move on another sample of the same
  size. Each resample *sums* its images' confusion matrices and scores the
  sum with the kit's rule (:func:`selmask_lib.metrics.iou_from_confusion`,
  :func:`~selmask_lib.metrics.mean_iou`): mIoU is pooled over the pixels of the
  split, never a mean of per-image scores. :func:`miou_interval`.
* **Which seed** (several runs). Mean, 95 % t-interval and n over seeds:
  :func:`t_interval`.

Comparing initialisation B with A (gain = B - A) is *paired*:

* one seed each: :func:`paired_bootstrap_gain` draws the **same** resampled
  images for both arms, so what makes an image hard for both cancels out;
* several seeds: :func:`paired_t_test` over the seeds both arms ran.

The bootstrap sees only the test images, not the seed: one seed's interval
can exclude 0 while another seed's gain has the other sign. Prefer seeds.

:func:`verdict` reads an interval of a gain at 95 %: "better" (it lies
above 0), "worse" (below 0), "not distinguishable" (it holds 0), or
"no interval" (fewer than two seeds or images, or no per-image counts).

A run that trained void as a class (``void_as_class``) keeps a void column
in its per-image counts; as in :mod:`selmask_lib.metrics`, a pixel predicted
as void is a miss of its class and void itself is never scored.

Everything is deterministic given ``seed`` (a numpy Generator). The
bootstrap is vectorised: a ``[n_boot, N]`` matrix of how often each image is
drawn times the ``[N, C*C]`` per-image counts gives every resampled matrix in
one product: 2,000 resamples of 1,449 images x 21 classes take about 0.2 s,
a paired gain 0.3 s, on one CPU thread (benchmarks/bench_bootstrap.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import stats

from .errors import SelmaskError
from .metrics import iou_from_confusion, mean_iou_of_rows

__all__ = [
    "LEVEL",
    "Estimate",
    "class_gain_intervals",
    "iou_interval",
    "miou_interval",
    "paired_bootstrap_gain",
    "paired_t_test",
    "resample_counts",
    "t_interval",
    "verdict",
]

LEVEL = 0.95  # every interval of the kit is a 95 % interval
N_BOOT = 2000
BOOT_SEED = 0

BOOTSTRAP = "bootstrap over test images"
PAIRED_BOOTSTRAP = "paired bootstrap over test images"
T_OVER_SEEDS = "t over seeds"
PAIRED_T = "paired t over seeds"
RANK_CORRELATION = "Spearman over classes, Bonett-Wright interval"
MIN_CLASSES_FOR_CORRELATION = 6  # fewer classes (the 3-class weed sets) say nothing about a trend


@dataclass(frozen=True)
class Estimate:
    """A number with its 95 % interval: an mIoU, a mean over seeds or a gain (B - A).

    ``n`` counts what the interval is over (test images or seeds); ``note``
    says why the interval is NaN when it is.
    """

    estimate: float
    lower: float
    upper: float
    n: int
    method: str
    p_value: float = math.nan
    note: str = ""

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2

    @property
    def verdict(self) -> str:
        return verdict(self.lower, self.upper)


def verdict(lower: float, upper: float) -> str:
    """"better" / "worse" / "not distinguishable" at 95 % for a gain's interval; "no interval" if NaN."""
    if math.isnan(lower) or math.isnan(upper):
        return "no interval"
    if lower > 0:
        return "better"
    if upper < 0:
        return "worse"
    return "not distinguishable"


# --------------------------------------------------------------------------- over seeds


def t_interval(values: Sequence[float]) -> Estimate:
    """Mean, 95 % t-interval and n of ``values`` (e.g. one mIoU per seed); NaNs are left out.

    n = 1 has no spread to measure: its interval is NaN and ``note`` says so.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, T_OVER_SEEDS, note="no values")
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, T_OVER_SEEDS, note="one seed: no interval over seeds")
    half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, T_OVER_SEEDS)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Gain of B over A paired by position (the same seed): mean of ``b - a``, its t-interval, p-value, n.

    A pair with a NaN on either side is left out. The p-value is the two-sided
    paired t-test's (``scipy.stats.ttest_rel(b, a)``).
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise SelmaskError(f"paired_t_test: {len(a)} values for A but {len(b)} for B; pair them by seed")
    difference = b - a
    difference = difference[~np.isnan(difference)]
    interval = t_interval(difference)
    p_value = math.nan
    if interval.n >= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = interval.estimate / (difference.std(ddof=1) / math.sqrt(interval.n))
        p_value = float(2 * stats.t.sf(abs(t), interval.n - 1))
    return Estimate(interval.estimate, interval.lower, interval.upper, interval.n, PAIRED_T, p_value,
                    interval.note.replace("one seed", "one seed pair"))


# --------------------------------------------------------------------------- over classes


def weakest_gain_correlation(baseline_iou: Sequence[float], gain: Sequence[float]) -> Estimate:
    """Claim (2) as one number: Spearman's rank correlation of a class's baseline IoU and its gain.

    Negative means the weakest classes gain most, as the paper claims. The
    95 % interval is Fisher's z with Bonett and Wright's (2000) standard
    error for Spearman's rho, sqrt((1 + rho^2 / 2) / (n - 3)), over the n
    classes with both numbers; it needs at least
    ``MIN_CLASSES_FOR_CORRELATION`` classes (else NaN with a note).
    """
    x, y = np.asarray(baseline_iou, dtype=np.float64).ravel(), np.asarray(gain, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise SelmaskError(f"weakest_gain_correlation: {len(x)} baseline IoUs but {len(y)} gains")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y, n = x[keep], y[keep], int(keep.sum())
    if n < MIN_CLASSES_FOR_CORRELATION:
        return Estimate(math.nan, math.nan, math.nan, n, RANK_CORRELATION,
                        note=f"{n} classes with both numbers: a trend needs at least {MIN_CLASSES_FOR_CORRELATION}")
    rho = float(stats.spearmanr(x, y).statistic)
    if not math.isfinite(rho):  # a constant column: no ranks to correlate
        return Estimate(math.nan, math.nan, math.nan, n, RANK_CORRELATION, note="a constant column has no ranks")
    z, se = math.atanh(max(min(rho, 1 - 1e-12), -1 + 1e-12)), math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    half = stats.norm.ppf((1 + LEVEL) / 2) * se
    p_value = float(2 * stats.norm.sf(abs(z) / se))
    return Estimate(rho, math.tanh(z - half), math.tanh(z + half), n, RANK_CORRELATION, p_value)


# --------------------------------------------------------------------------- over test images


def resample_counts(n_images: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """``[n_boot, n_images]``: how often each image is drawn in each resample (each row sums to n_images).

    The draws are ``numpy.random.default_rng(seed).integers(0, n_images, (n_boot, n_images))``,
    the same as ``scipy.stats.bootstrap`` makes with that generator.
    """
    if n_boot < 1:
        raise SelmaskError(f"n_boot must be a positive number of resamples, got {n_boot}")
    drawn = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
    offsets = np.arange(n_boot)[:, None] * n_images
    return np.bincount((drawn + offsets).ravel(), minlength=n_boot * n_images).reshape(n_boot, n_images)


def _class_iou(summed, absent: str, scored: int) -> torch.Tensor:
    """IoU of the first ``scored`` classes of ``[..., K, K]`` counts: a trained void class (K = C + 1)
    is a miss of the pixels predicted as it and is never scored itself (selmask_lib.metrics)."""
    return iou_from_confusion(torch.as_tensor(summed), absent)[..., :scored]


def _resampled_class_iou(counts: np.ndarray, weights: np.ndarray, absent: str, scored: int) -> torch.Tensor:
    """``[n_boot, C]`` per-class IoU of each resample's summed confusion matrix (the kit's rule)."""
    n, k, _ = counts.shape
    summed = weights.astype(np.float64) @ counts.reshape(n, k * k).astype(np.float64)  # exact below 2**53
    return _class_iou(torch.from_numpy(summed.reshape(-1, k, k)), absent, scored)


def _as_counts(per_image, ids, what: str) -> tuple[np.ndarray, tuple | None, tuple | None]:
    """``(counts [N, K, K], ids or None, class names or None)`` from a PerImageConfusions or an array."""
    names = None
    if hasattr(per_image, "counts") and hasattr(per_image, "ids"):  # results.PerImageConfusions
        ids = per_image.ids if ids is None else ids
        names = tuple(per_image.class_names)
        per_image = per_image.counts
    if isinstance(per_image, torch.Tensor):
        per_image = per_image.cpu().numpy()
    counts = np.asarray(per_image)
    if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
        raise SelmaskError(f"{what}: per-image confusions must be [N, C, C], got shape {counts.shape}")
    if len(counts) == 0:
        raise SelmaskError(f"{what}: no test images")
    if ids is not None and len(ids) != len(counts):
        raise SelmaskError(f"{what}: {len(ids)} image ids for {len(counts)} confusion matrices")
    return counts.astype(np.int64), None if ids is None else tuple(ids), names


def _percentile_interval(resampled: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles (linear interpolation, as scipy.stats.bootstrap's 'percentile')."""
    tail = (1 - LEVEL) / 2 * 100
    finite = resampled[~np.isnan(resampled)]
    if finite.size == 0:
        return math.nan, math.nan
    lower, upper = np.percentile(finite, [tail, 100 - tail])
    return float(lower), float(upper)


def _one_arm_interval(per_image, score: Callable[[torch.Tensor], torch.Tensor], n_boot: int, seed: int,
                      absent: str, what: str) -> Estimate:
    counts, _ids, names = _as_counts(per_image, None, what)
    scored = counts.shape[-1] if names is None else len(names)
    estimate = float(score(_class_iou(counts.sum(0), absent, scored)))
    if len(counts) < 2:
        return Estimate(estimate, math.nan, math.nan, len(counts), BOOTSTRAP, note="one test image: no interval")
    resampled = score(_resampled_class_iou(counts, resample_counts(len(counts), n_boot, seed), absent, scored))
    return Estimate(estimate, *_percentile_interval(resampled.numpy()), len(counts), BOOTSTRAP)


def miou_interval(per_image_confusions, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                  absent: str = "nan") -> Estimate:
    """mIoU of a run's test split and its 95 % percentile-bootstrap interval over test images.

    ``per_image_confusions``: ``[N, C, C]`` counts (array or tensor) or a
    :class:`selmask_lib.results.PerImageConfusions`. ``absent`` is the
    absent-class rule (``"nan"``: left out of the mean; ``"zero"``: counts as 0).
    """
    return _one_arm_interval(per_image_confusions, mean_iou_of_rows, n_boot, seed, absent, "miou_interval")


def iou_interval(per_image_confusions, class_index: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                 absent: str = "nan") -> Estimate:
    """:func:`miou_interval` for the IoU of one class (resamples where it is undefined are left out)."""
    return _one_arm_interval(per_image_confusions, lambda iou: iou[..., class_index], n_boot, seed, absent,
                             "iou_interval")


def _check_same_images(ids_a, ids_b, names_a, names_b) -> None:
    """Paired means the same test images in the same order, scored on the same classes."""
    if names_a is not None and names_b is not None and names_a != names_b:
        raise SelmaskError(f"paired bootstrap: the arms have different classes: A {list(names_a)}, B {list(names_b)}")
    if ids_a is None or ids_b is None:
        return
    if len(ids_a) != len(ids_b):
        raise SelmaskError(f"paired bootstrap: arm A has {len(ids_a)} test images, arm B {len(ids_b)}; "
                           "both must be scored on the same test split")
    for position, (a, b) in enumerate(zip(ids_a, ids_b)):
        if a != b:
            order = " (same images, another order)" if sorted(ids_a) == sorted(ids_b) else ""
            raise SelmaskError(f"paired bootstrap: test image {position} is {a!r} in arm A but {b!r} in arm B{order}")


def _paired_resamples(confusions_a, confusions_b, n_boot: int, seed: int, absent: str, ids_a, ids_b):
    """Per-class IoU of both arms on the whole split and on the same resampled images."""
    counts_a, ids_a, names_a = _as_counts(confusions_a, ids_a, "paired bootstrap, arm A")
    counts_b, ids_b, names_b = _as_counts(confusions_b, ids_b, "paired bootstrap, arm B")
    _check_same_images(ids_a, ids_b, names_a, names_b)
    if counts_a.shape != counts_b.shape:
        raise SelmaskError(f"paired bootstrap: arm A's confusions are {counts_a.shape}, arm B's {counts_b.shape}")
    scored = counts_a.shape[-1] if names_a is None else len(names_a)
    whole = [_class_iou(c.sum(0), absent, scored) for c in (counts_a, counts_b)]
    weights = resample_counts(len(counts_a), n_boot, seed)  # one draw, both arms: the pairing
    resampled = [_resampled_class_iou(c, weights, absent, scored) for c in (counts_a, counts_b)]
    return whole, resampled, len(counts_a)


def _gain_estimate(gain: float, resampled_gains: np.ndarray, n_images: int) -> Estimate:
    """Interval and two-sided bootstrap p-value (the share of resamples on the far side of 0, doubled)."""
    if n_images < 2:
        return Estimate(gain, math.nan, math.nan, n_images, PAIRED_BOOTSTRAP, note="one test image: no interval")
    finite = resampled_gains[~np.isnan(resampled_gains)]
    tail = min((finite <= 0).sum(), (finite >= 0).sum())
    p_value = float(min(1.0, 2 * (tail + 1) / (finite.size + 1))) if finite.size else math.nan
    return Estimate(gain, *_percentile_interval(finite), n_images, PAIRED_BOOTSTRAP, p_value)


def paired_bootstrap_gain(confusions_a, confusions_b, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                          absent: str = "nan", ids_a: Sequence[str] | None = None,
                          ids_b: Sequence[str] | None = None) -> Estimate:
    """mIoU gain of B over A on the same test images, its 95 % interval and p-value (paired bootstrap).

    Both arms are scored on the same resampled images in every resample.
    Arms are ``[N, C, C]`` counts or :class:`~selmask_lib.results.PerImageConfusions`;
    their image ids (theirs, or ``ids_a`` / ``ids_b``) must match in order.
    """
    whole, resampled, n = _paired_resamples(confusions_a, confusions_b, n_boot, seed, absent, ids_a, ids_b)
    gain = float(mean_iou_of_rows(whole[1]) - mean_iou_of_rows(whole[0]))
    resampled_gains = (mean_iou_of_rows(resampled[1]) - mean_iou_of_rows(resampled[0])).numpy()
    return _gain_estimate(gain, resampled_gains, n)


def class_gain_intervals(confusions_a, confusions_b, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                         absent: str = "nan", ids_a: Sequence[str] | None = None,
                         ids_b: Sequence[str] | None = None) -> list[Estimate]:
    """:func:`paired_bootstrap_gain` for each class's IoU: one Estimate per class, in class order.

    Resamples where a class's IoU is undefined in either arm are left out of its interval.
    """
    whole, resampled, n = _paired_resamples(confusions_a, confusions_b, n_boot, seed, absent, ids_a, ids_b)
    gains, resampled_gains = (whole[1] - whole[0]).tolist(), (resampled[1] - resampled[0]).numpy()
    return [_gain_estimate(gain, resampled_gains[:, c], n) for c, gain in enumerate(gains)]
