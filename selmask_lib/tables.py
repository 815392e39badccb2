"""The paper's tables, built from the DataFrame of :func:`selmask_lib.results.load_results`.

Rows are downstream datasets (the kit's datasets first, in the paper's order,
then any others alphabetically); columns are *variants*, the run's
initialisation keyed by whether the pretraining dataset equals the downstream
dataset (see :func:`selmask_lib.results.variant_of`)::

    none, imagenet, random_ir_self, selective_ir_self, selective_ir_cross

IoUs are stored as fractions; the tables default to percent (the paper's
"points"). A run pretrained with another masking of the iterative
loop has a column of its own (``<masking>_ir_self``): pass it in
``results_table(columns=...)``.

Every number comes with its 95 % interval (:mod:`selmask_lib.statistics`):
over seeds (t-interval) where a cell has two runs or more, over the test
images (bootstrap from the per-image confusions in results.json) where it
has one. The tables keep them as numbers (``mean, lower, upper, n``); only
:func:`format_table` writes "mean ± half-width". :func:`compare` gives the
gain of one column over another per dataset with its interval and verdict.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import SelmaskError
from .config import IR_INITS
from .results import read_per_image_confusions
from .statistics import (
    BOOT_SEED,
    BOOTSTRAP,
    N_BOOT,
    PAIRED_BOOTSTRAP,
    Estimate,
    class_gain_intervals,
    iou_interval,
    miou_interval,
    paired_bootstrap_gain,
    paired_t_test,
    t_interval,
)

__all__ = ["PAPER_COLUMNS", "results_table", "format_table", "tidy_table", "column_label", "compare",
           "per_class_gain"]

#: Paper table columns, in order: variant key -> human label.
PAPER_COLUMNS: dict[str, str] = {
    "none": "No pretraining",
    "imagenet": "ImageNet",
    "random_ir_self": "Random IR (self)",
    "selective_ir_self": "Selective IR (self)",
    "selective_ir_cross": "Selective IR (cross)",
}
#: Row order of the kit's datasets; other datasets follow alphabetically.
_DATASET_ORDER = ("voc", "cityscapes", "nassar", "sugarbeets")


def _resolve_variant(name: str) -> str:
    """An IR init alone (``random_ir``) means its self variant (``random_ir_self``), as in the paper."""
    return f"{name}_self" if name in IR_INITS else name


def _dataset_order(datasets: Iterable[str]) -> list[str]:
    uniq = list(dict.fromkeys(datasets))
    pref = [d for d in _DATASET_ORDER if d in uniq]
    return pref + sorted(d for d in uniq if d not in pref)


def _require_columns(df: pd.DataFrame, cols: Sequence[str], fn: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SelmaskError(f"{fn}: DataFrame lacks column(s) {missing}; use load_results()")


STATS = ("mean", "std", "n", "lower", "upper")


def _scaled(estimate: Estimate, scale: float) -> Estimate:
    return dataclasses.replace(estimate, estimate=estimate.estimate * scale, lower=estimate.lower * scale,
                               upper=estimate.upper * scale)


def _metric_values(rows: pd.DataFrame, metric: str) -> pd.Series:
    if metric not in rows.columns:
        return pd.Series(np.nan, index=rows.index, dtype=float)
    return pd.to_numeric(rows[metric], errors="coerce").astype(float)


def _per_image_of(row: pd.Series):
    """The run's per-image confusions, or a note saying why there are none."""
    path = row.get("path")
    if not isinstance(path, str):
        return None, "no results file to read per-image confusions from"
    found = read_per_image_confusions(path)
    if found is None:
        return None, f"{path} keeps no per-image confusions (written before they were kept): no interval"
    return found, ""


def _class_index(per_image, metric: str) -> int | None:
    name = metric[len("iou/"):]
    return per_image.class_names.index(name) if name in per_image.class_names else None


def _one_run_interval(row: pd.Series, metric: str, n_boot: int, seed: int) -> Estimate:
    """A cell of one run: the bootstrap over its test images (mIoU and per-class IoU only)."""
    value = float(pd.to_numeric(row.get(metric), errors="coerce"))
    no_interval = Estimate(value, math.nan, math.nan, 1, BOOTSTRAP)
    if metric != "miou" and not metric.startswith("iou/"):
        return dataclasses.replace(no_interval, note=f"one seed: no interval for {metric}")
    per_image, note = _per_image_of(row)
    if per_image is None:
        return dataclasses.replace(no_interval, note=note)
    if metric == "miou":
        found = miou_interval(per_image, n_boot, seed, per_image.absent_class_iou)
    else:
        index = _class_index(per_image, metric)
        if index is None:
            return dataclasses.replace(no_interval, note=f"{metric}: no such class in {row.get('path')}")
        found = iou_interval(per_image, index, n_boot, seed, per_image.absent_class_iou)
    return dataclasses.replace(found, estimate=value)


def cell_estimate(rows: pd.DataFrame, metric: str = "miou", n_boot: int = N_BOOT,
                  seed: int = BOOT_SEED) -> Estimate:
    """A table cell's number and 95 % interval: t over seeds (n >= 2) or bootstrap over test images (n = 1)."""
    values = _metric_values(rows, metric)
    runs = rows[values.notna()]
    if len(runs) == 1:
        return _one_run_interval(runs.iloc[0], metric, n_boot, seed)
    return t_interval(values)


def results_table(
    df: pd.DataFrame,
    metric: str = "miou",
    columns: Sequence[str] = tuple(PAPER_COLUMNS),
    datasets: Sequence[str] | None = None,
    percent: bool = True,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> pd.DataFrame:
    """The paper's layout: rows = downstream dataset, columns = initialisation.

    Returns a numeric DataFrame indexed by dataset with MultiIndex columns
    ``(variant, stat)``, stat in ``mean``, ``std`` (over seeds; NaN with one
    seed), ``n`` (number of runs, i.e. seeds), ``lower`` and ``upper`` (the
    95 % interval: t over seeds when n >= 2, else the bootstrap over the
    run's test images with ``n_boot`` resamples drawn from ``seed``; NaN when
    the run kept no per-image confusions). Variants default to the five paper
    columns (``none, imagenet, random_ir_self, selective_ir_self,
    selective_ir_cross``); ``metric`` may be any numeric column, e.g.
    ``val_miou`` or ``iou/weed`` (intervals over test images exist for
    ``miou`` and ``iou/<class>``). Missing combinations are NaN (n = 0).
    ``table.attrs["notes"]`` says why an interval is NaN, per ``(dataset, variant)``.
    Use :func:`format_table` for "mean ± half-width" strings, :func:`tidy_table` for a CSV.
    """
    _require_columns(df, ["dataset", "variant", metric], "results_table")
    columns = [_resolve_variant(c) for c in columns]
    if datasets is None:
        datasets = _dataset_order(df["dataset"])
    scale = 100.0 if percent else 1.0
    index = pd.Index(list(datasets), name="dataset")
    mi = pd.MultiIndex.from_product([columns, list(STATS)], names=["variant", "stat"])
    out = pd.DataFrame(np.nan, index=index, columns=mi)
    notes = {}
    for (ds, var), rows in df.groupby(["dataset", "variant"]):
        if ds not in index or var not in columns:
            continue
        values = _metric_values(rows, metric)
        found = _scaled(cell_estimate(rows, metric, n_boot, seed), scale)
        cell = {"mean": found.estimate, "std": values.std() * scale, "n": values.count(),
                "lower": found.lower, "upper": found.upper}
        for stat, value in cell.items():
            out.loc[ds, (var, stat)] = value
        if found.note:
            notes[(ds, var)] = found.note
    for var in columns:
        out[(var, "n")] = out[(var, "n")].fillna(0).astype(int)
    out.attrs.update(metric=metric, notes=notes)
    return out


def format_table(table: pd.DataFrame, decimals: int = 1, labels: bool = True, show_n: bool = True) -> pd.DataFrame:
    """Strings from :func:`results_table`: ``"72.3 ± 0.4 (3 seeds)"``, ``"72.3 (1 seed)"``, ``"n/a"``.

    ``±`` is half the width of the 95 % interval (over seeds, or over test
    images for one seed); a table without ``lower``/``upper`` shows ± std.
    """
    variants = list(dict.fromkeys(table.columns.get_level_values(0)))
    out = pd.DataFrame(index=table.index)
    for var in variants:
        out[column_label(var) if labels else var] = [
            _cell_text(table.loc[ds, var], decimals, show_n) for ds in table.index]
    return out


def _cell_text(cell: pd.Series, decimals: int, show_n: bool) -> str:
    mean, n = cell["mean"], cell["n"]
    if pd.isna(mean):
        return "n/a"
    if "lower" in cell.index:
        half = (cell["upper"] - cell["lower"]) / 2
    else:  # a table made before intervals
        half = cell["std"] if n > 1 else math.nan
    text = f"{mean:.{decimals}f}" if pd.isna(half) else f"{mean:.{decimals}f} ± {half:.{decimals}f}"
    return f"{text} ({int(n)} seed{'s' if n != 1 else ''})" if show_n else text


def tidy_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`results_table` as one row per (dataset, variant) with numeric columns: the CSV form."""
    long = table.stack("variant", future_stack=True).reset_index()
    long.insert(2, "label", [column_label(v) for v in long["variant"]])
    return long[["dataset", "variant", "label", *[s for s in STATS if s in long.columns]]]


def _by_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per seed (the mean if a seed ran twice), NaNs dropped."""
    return _metric_values(rows, metric).groupby(rows["seed"]).mean().dropna()


def _run_pair(rows_a: pd.DataFrame, rows_b: pd.DataFrame):
    """The two runs a one-seed comparison pairs over test images: the same seed if both have one."""
    common = sorted(set(rows_a["seed"]) & set(rows_b["seed"]))
    if common:
        return rows_a[rows_a["seed"] == common[0]].iloc[0], rows_b[rows_b["seed"] == common[0]].iloc[0]
    return rows_a.iloc[0], rows_b.iloc[0]


def _paired_estimates(rows_a: pd.DataFrame, rows_b: pd.DataFrame, metrics: Sequence[str], scale: float,
                      n_boot: int, seed: int) -> dict[str, Estimate]:
    """Gain of B over A for each metric: paired t over the seeds both ran (>= 2), else paired bootstrap."""
    missing = Estimate(math.nan, math.nan, math.nan, 0, "")
    if rows_a.empty or rows_b.empty:
        note = "no run of " + " and ".join(arm for arm, rows in (("A", rows_a), ("B", rows_b)) if rows.empty)
        return {m: dataclasses.replace(missing, note=note) for m in metrics}
    if len(set(rows_a["seed"]) & set(rows_b["seed"])) >= 2:
        out = {}
        for m in metrics:
            a, b = _by_seed(rows_a, m), _by_seed(rows_b, m)
            seeds = a.index.intersection(b.index)
            out[m] = _scaled(paired_t_test(a[seeds].to_numpy(), b[seeds].to_numpy()), scale)
        return out
    return _bootstrap_pair(*_run_pair(rows_a, rows_b), metrics, scale, n_boot, seed)


def _bootstrap_pair(row_a: pd.Series, row_b: pd.Series, metrics: Sequence[str], scale: float,
                    n_boot: int, seed: int) -> dict[str, Estimate]:
    """One run per arm: the paired bootstrap over their (same) test images."""
    missing = Estimate(math.nan, math.nan, math.nan, 1, PAIRED_BOOTSTRAP)
    (a, note_a), (b, note_b) = _per_image_of(row_a), _per_image_of(row_b)
    if a is None or b is None:
        return {m: dataclasses.replace(missing, note=note_a or note_b) for m in metrics}
    out = {}
    if "miou" in metrics:
        out["miou"] = paired_bootstrap_gain(a, b, n_boot, seed, a.absent_class_iou)
    class_metrics = [m for m in metrics if m.startswith("iou/")]
    if class_metrics:
        per_class = class_gain_intervals(a, b, n_boot, seed, a.absent_class_iou)
        for m in class_metrics:
            index = _class_index(a, m)
            out[m] = per_class[index] if index is not None else dataclasses.replace(missing, note=f"no class {m}")
    for m in metrics:
        out.setdefault(m, dataclasses.replace(missing, note=f"one seed: no interval for {m}"))
    if row_a["seed"] != row_b["seed"]:
        out = {m: dataclasses.replace(e, note=f"different seeds ({row_a['seed']}, {row_b['seed']})")
               for m, e in out.items()}
    return {m: _scaled(e, scale) for m, e in out.items()}


def compare(
    df: pd.DataFrame,
    baseline: str,
    other: str,
    metric: str = "miou",
    datasets: Sequence[str] | None = None,
    percent: bool = True,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> pd.DataFrame:
    """Gain of column ``other`` over column ``baseline`` per dataset, with its 95 % interval and verdict.

    With two seeds or more run by both: paired t over those seeds. With one:
    the paired bootstrap over the test images of the two runs (the same seed
    when both ran it). Returns a DataFrame indexed by dataset with columns
    ``gain, lower, upper, n, p_value, method, verdict, note`` (``n``: seeds or
    test images; ``verdict``: better / worse / not distinguishable at 95 %,
    or "no interval").
    """
    _require_columns(df, ["dataset", "variant", "seed", metric], "compare")
    baseline, other = _resolve_variant(baseline), _resolve_variant(other)
    if datasets is None:
        datasets = _dataset_order(df["dataset"])
    scale = 100.0 if percent else 1.0
    records = []
    for ds in datasets:
        sub = df[df["dataset"] == ds]
        found = _paired_estimates(sub[sub["variant"] == baseline], sub[sub["variant"] == other], [metric],
                                  scale, n_boot, seed)[metric]
        records.append({"gain": found.estimate, "lower": found.lower, "upper": found.upper, "n": found.n,
                        "p_value": found.p_value, "method": found.method, "verdict": found.verdict,
                        "note": found.note})
    out = pd.DataFrame(records, index=pd.Index(list(datasets), name="dataset"),
                       columns=["gain", "lower", "upper", "n", "p_value", "method", "verdict", "note"])
    out["n"] = out["n"].astype(int)
    out.attrs.update(baseline=baseline, other=other, metric=metric)
    return out


def column_label(variant: str) -> str:
    """The human label of a table column: the paper's, or one made from the variant key
    (``random_ir_ssim3_self`` -> "Random IR, ssim3 loss (self)")."""
    if variant in PAPER_COLUMNS:
        return PAPER_COLUMNS[variant]
    match = re.fullmatch(r"random_ir_(\w+)_(self|cross)", variant)
    if match:
        return f"Random IR, {match.group(1)} loss ({match.group(2)})"
    return variant


def per_class_gain(
    df: pd.DataFrame,
    dataset: str,
    baseline: str = "random_ir",
    method: str = "selective_ir_self",
    percent: bool = True,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> pd.DataFrame:
    """Per-class IoU of ``method`` minus ``baseline`` on one downstream dataset, with 95 % intervals.

    ``baseline`` / ``method`` are variant keys (``random_ir`` means
    ``random_ir_self``, ``selective_ir`` means ``selective_ir_self``). IoUs are
    averaged over seeds (undefined IoUs skipped). Returns a DataFrame indexed
    by class with columns ``baseline``, ``method``, ``gain``, ``lower``,
    ``upper``, ``n``, ``verdict`` (the gain's interval as in :func:`compare`:
    paired t over seeds, or the paired bootstrap over test images with one
    seed), sorted by baseline IoU ascending (lowest-performing classes first;
    NaN last), to check the paper's claim that the largest gains are on the
    weakest classes. Missing runs give NaN, never an error.
    """
    _require_columns(df, ["dataset", "variant"], "per_class_gain")
    baseline, method = _resolve_variant(baseline), _resolve_variant(method)
    sub = df[df["dataset"] == dataset]
    if "class_names" in sub.columns and len(sub):
        names = list(dict.fromkeys(n for names in sub["class_names"] for n in names))
    else:
        names = [c[4:] for c in sub.columns if c.startswith("iou/") and sub[c].notna().any()]
    scale = 100.0 if percent else 1.0

    def mean_iou_of(variant: str) -> pd.Series:
        rows = sub[sub["variant"] == variant]
        vals = {}
        for name in names:
            col = f"iou/{name}"
            vals[name] = (pd.to_numeric(rows[col], errors="coerce").mean() * scale
                          if col in rows.columns and len(rows) else np.nan)
        return pd.Series(vals, index=names, dtype=float)

    out = pd.DataFrame({"baseline": mean_iou_of(baseline), "method": mean_iou_of(method)},
                       index=pd.Index(names, name="class"))
    out["gain"] = out["method"] - out["baseline"]
    metrics = [f"iou/{name}" for name in names]
    found = (_paired_estimates(sub[sub["variant"] == baseline], sub[sub["variant"] == method], metrics, scale,
                               n_boot, seed) if names and "seed" in sub.columns else {})
    estimates = [found.get(m, Estimate(math.nan, math.nan, math.nan, 0, "")) for m in metrics]
    out["lower"] = [e.lower for e in estimates]
    out["upper"] = [e.upper for e in estimates]
    out["n"] = pd.Series([e.n for e in estimates], index=out.index, dtype=int)
    out["verdict"] = [e.verdict for e in estimates]
    out = out.sort_values("baseline", ascending=True, na_position="last", kind="stable")
    methods = {e.method for e in estimates if e.method}
    out.attrs.update(dataset=dataset, baseline=baseline, method=method,
                     interval=methods.pop() if len(methods) == 1 else "")
    return out
