"""Tests for selmask_lib.tables: the paper's table layout, cell strings, per-class gains."""

import math
import warnings

import numpy as np
import pytest

from fake_results import fields, make_runs_tree, write_run
from selmask_lib.results import load_results, write_results
from selmask_lib.tables import PAPER_COLUMNS, format_table, per_class_gain, results_table


@pytest.fixture
def tree(tmp_path):
    return make_runs_tree(tmp_path / "runs")


def test_results_table_layout_and_self_cross_split(tree):
    df = load_results(tree)
    t = results_table(df)
    assert list(t.index) == ["nassar", "sugarbeets"]
    assert list(dict.fromkeys(t.columns.get_level_values(0))) == list(PAPER_COLUMNS)
    assert list(PAPER_COLUMNS) == ["none", "imagenet", "random_ir_self", "selective_ir_self",
                                   "selective_ir_cross"]
    # random IR self on nassar: two seeds, mIoU 0.55 and 0.54333.. -> percent mean/std
    r = [np.mean([0.95, 0.50, 0.20]) * 100, np.mean([0.93, 0.60, 0.10]) * 100]
    assert t.loc["nassar", ("random_ir_self", "mean")] == pytest.approx(np.mean(r))
    assert t.loc["nassar", ("random_ir_self", "std")] == pytest.approx(np.std(r, ddof=1))
    assert t.loc["nassar", ("random_ir_self", "n")] == 2
    # self vs cross for selective IR
    assert t.loc["nassar", ("selective_ir_self", "n")] == 2
    assert t.loc["nassar", ("selective_ir_cross", "n")] == 1
    assert t.loc["nassar", ("selective_ir_cross", "mean")] == pytest.approx((0.95 + 0.52) / 2 * 100)
    assert math.isnan(t.loc["nassar", ("selective_ir_cross", "std")])  # single seed
    assert t.loc["sugarbeets", ("selective_ir_cross", "n")] == 1
    assert t.loc["sugarbeets", ("selective_ir_self", "n")] == 0
    # missing combinations are NaN, not errors
    assert math.isnan(t.loc["sugarbeets", ("none", "mean")])
    assert math.isnan(t.loc["sugarbeets", ("selective_ir_self", "mean")])
    # fractions, other metrics, explicit datasets incl. an unknown one
    tf = results_table(df, metric="iou/weed", percent=False, datasets=["voc", "nassar"])
    assert tf.loc["nassar", ("none", "mean")] == pytest.approx(0.10)
    assert tf.loc["nassar", ("selective_ir_cross", "n")] == 0  # its weed IoU is null
    assert tf.loc["voc"].drop(index="n", level="stat").isna().all()

    txt = format_table(t)
    assert list(txt.columns) == list(PAPER_COLUMNS.values())
    assert " ± " in txt.loc["nassar", "Random IR (self)"]
    assert "±" not in txt.loc["nassar", "Selective IR (cross)"]
    assert txt.loc["sugarbeets", "No pretraining"] == "n/a"
    assert list(format_table(t, labels=False).columns) == list(PAPER_COLUMNS)


def test_empty_results_do_not_crash(tmp_path):
    df = load_results(tmp_path)
    assert df.empty and "miou" in df.columns
    t = results_table(df, datasets=["voc"])
    assert t.loc["voc"].drop(index="n", level="stat").isna().all()
    g = per_class_gain(df, "voc")
    assert g.empty and list(g.columns) == ["baseline", "method", "gain", "lower", "upper", "n", "verdict"]


def test_per_class_gain_sorted_by_baseline(tree):
    df = load_results(tree)
    g = per_class_gain(df, "nassar")  # random_ir (self) -> selective_ir_self
    assert list(g.index) == ["weed", "crop", "background"]  # lowest baseline IoU first
    assert g.loc["weed", "baseline"] == pytest.approx(15.0)
    assert g.loc["weed", "method"] == pytest.approx(28.0)
    assert g.loc["weed", "gain"] == pytest.approx(13.0)
    assert g.loc["crop", "gain"] == pytest.approx(3.0)
    assert g.loc["background", "gain"] == pytest.approx(1.0)
    # the cross run has a null weed IoU -> NaN method and gain for weed
    gc = per_class_gain(df, "nassar", baseline="imagenet", method="selective_ir_cross",
                        percent=False)
    assert list(gc.index) == ["weed", "crop", "background"]
    assert math.isnan(gc.loc["weed", "method"]) and math.isnan(gc.loc["weed", "gain"])
    assert gc.loc["crop", "gain"] == pytest.approx(0.12)
    # missing method: NaN, no crash
    gm = per_class_gain(df, "sugarbeets", method="selective_ir_self")
    assert gm["method"].isna().all() and gm["baseline"].notna().all()


def test_a_users_strategy_gets_its_own_table_column(tmp_path):
    write_results(tmp_path / "paper", **fields(pretrain_masking="selective", miou=0.5))
    write_results(tmp_path / "mine", **fields(pretrain_masking="mine", miou=0.6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not two runs of one variant
        df = load_results(tmp_path)
    assert sorted(df["pretrain_masking"]) == ["mine", "selective"]
    table = results_table(df, columns=[*PAPER_COLUMNS, "mine_ir_self"])
    assert table.loc["nassar", ("selective_ir_self", "mean")] == pytest.approx(50.0)
    assert table.loc["nassar", ("mine_ir_self", "mean")] == pytest.approx(60.0)
    assert format_table(table).loc["nassar", "mine_ir_self"] == "60.0 (1 seed)"  # no per-image counts: no ±
    assert format_table(table, show_n=False).loc["nassar", "mine_ir_self"] == "60.0"


def test_rows_put_the_kits_datasets_first_then_others_alphabetically(tmp_path):
    for i, dataset in enumerate(["zebra", "sugarbeets", "pascal_voc", "nassar", "cityscapes", "voc", "alpha"]):
        write_run(tmp_path, dataset, dataset, "none", None, i, [0.1, 0.2, 0.3])
    table = results_table(load_results(tmp_path))
    assert list(table.index) == ["voc", "cityscapes", "nassar", "sugarbeets", "alpha", "pascal_voc", "zebra"]


def test_an_ir_init_alone_names_its_self_column(tree):
    df = load_results(tree)
    table = results_table(df, columns=["random_ir", "selective_ir", "scratch"])
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == [
        "random_ir_self", "selective_ir_self", "scratch"]
    assert table.loc["nassar", ("random_ir_self", "n")] == 2
    assert table.loc["nassar", ("scratch", "n")] == 0  # not an alias of "none"
    g = per_class_gain(df, "nassar", baseline="random_ir", method="selective_ir")
    assert g.attrs["baseline"] == "random_ir_self" and g.attrs["method"] == "selective_ir_self"
    assert g.loc["weed", "gain"] == pytest.approx(13.0)
