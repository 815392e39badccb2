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
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import SelmaskError
from .config import IR_INITS

__all__ = ["PAPER_COLUMNS", "results_table", "format_table", "column_label", "per_class_gain"]

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


def results_table(
    df: pd.DataFrame,
    metric: str = "miou",
    columns: Sequence[str] = tuple(PAPER_COLUMNS),
    datasets: Sequence[str] | None = None,
    percent: bool = True,
) -> pd.DataFrame:
    """The paper's layout: rows = downstream dataset, columns = initialisation.

    Returns a numeric DataFrame indexed by dataset with MultiIndex columns
    ``(variant, stat)``, stat in ``mean``, ``std`` (over seeds; NaN with one
    seed) and ``n`` (number of runs). Variants default to the five paper
    columns (``none, imagenet, random_ir_self, selective_ir_self,
    selective_ir_cross``); ``metric`` may be any numeric column, e.g.
    ``val_miou`` or ``iou/weed``. Missing combinations are NaN (n = 0).
    Use :func:`format_table` for "mean ± std" strings.
    """
    _require_columns(df, ["dataset", "variant", metric], "results_table")
    columns = [_resolve_variant(c) for c in columns]
    if datasets is None:
        datasets = _dataset_order(df["dataset"])
    scale = 100.0 if percent else 1.0
    values = pd.to_numeric(df[metric], errors="coerce").astype(float) * scale
    grouped = (
        pd.DataFrame({"dataset": df["dataset"], "variant": df["variant"], "v": values})
        .groupby(["dataset", "variant"])["v"]
        .agg(mean="mean", std="std", n="count")
    )
    index = pd.Index(list(datasets), name="dataset")
    mi = pd.MultiIndex.from_product([columns, ["mean", "std", "n"]], names=["variant", "stat"])
    out = pd.DataFrame(np.nan, index=index, columns=mi)
    for (ds, var), stats in grouped.iterrows():
        if ds in index and var in columns:
            for stat in ("mean", "std", "n"):
                out.loc[ds, (var, stat)] = stats[stat]
    for var in columns:
        out[(var, "n")] = out[(var, "n")].fillna(0).astype(int)
    return out


def format_table(table: pd.DataFrame, decimals: int = 1, labels: bool = True) -> pd.DataFrame:
    """Strings from :func:`results_table`: ``"72.3 ± 0.4"`` (n > 1), ``"72.3"`` (n = 1), ``"n/a"``."""
    variants = list(dict.fromkeys(table.columns.get_level_values(0)))
    out = pd.DataFrame(index=table.index)
    for var in variants:
        cells = []
        for ds in table.index:
            mean, std, n = (table.loc[ds, (var, s)] for s in ("mean", "std", "n"))
            if pd.isna(mean):
                cells.append("n/a")
            elif n > 1 and not pd.isna(std):
                cells.append(f"{mean:.{decimals}f} ± {std:.{decimals}f}")
            else:
                cells.append(f"{mean:.{decimals}f}")
        out[column_label(var) if labels else var] = cells
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
) -> pd.DataFrame:
    """Per-class IoU of ``method`` minus ``baseline`` on one downstream dataset.

    ``baseline`` / ``method`` are variant keys (``random_ir`` means
    ``random_ir_self``, ``selective_ir`` means ``selective_ir_self``). IoUs are
    averaged over seeds (undefined IoUs skipped). Returns a DataFrame indexed
    by class with columns ``baseline``, ``method``, ``gain`` sorted by baseline
    IoU ascending (lowest-performing classes first; NaN last), to check the
    paper's claim that the largest gains are on the weakest classes. Missing
    runs give NaN, never an error.
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
    out = out.sort_values("baseline", ascending=True, na_position="last", kind="stable")
    out.attrs.update(dataset=dataset, baseline=baseline, method=method)
    return out
