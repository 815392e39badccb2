"""Tests for selmask_lib.results: results.json round trip, loading, paper tables."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import selmask_lib
from selmask_lib.errors import SelmaskError
from selmask_lib.metrics import SegmentationEvaluator
from selmask_lib.results import (
    PAPER_COLUMNS,
    format_table,
    load_results,
    per_class_gain,
    read_results,
    results_table,
    variant_of,
    write_results,
)

NAMES = ["background", "crop", "weed"]


def fields(**over):
    base = dict(
        dataset="nassar",
        init="selective_ir",
        pretrain_run="runs/pre/nassar_selective",
        pretrain_dataset="nassar",
        seed=1,
        miou=0.5,
        per_class_iou={"background": 0.9, "crop": 0.4, "weed": 0.2},
        confusion_matrix=[[9, 1, 0], [1, 4, 1], [0, 2, 1]],
        class_names=list(NAMES),
        config={"epochs": 2, "lr": 3e-3, "note": "ids [1,2]", "sizes": [256, 128]},
        timings={"train": 1.5, "test": 0.25},
    )
    base.update(over)
    return base


def run(root, name, dataset, init, pretrain_dataset, seed, ious, miou=None):
    ious = dict(zip(NAMES, ious))
    defined = [v for v in ious.values() if v is not None]
    m = miou if miou is not None else sum(defined) / len(defined)
    return write_results(
        root / name, **fields(dataset=dataset, init=init, pretrain_dataset=pretrain_dataset,
                              pretrain_run=None if pretrain_dataset is None else f"pre/{pretrain_dataset}",
                              seed=seed, per_class_iou=ious, miou=m))


# ------------------------------------------------------------------ round trip
def test_round_trip_and_null_handling(tmp_path):
    cm = torch.tensor([[9, 1, 0], [1, 4, 1], [0, 0, 0]])
    path = write_results(
        tmp_path / "r1",
        **fields(per_class_iou={"background": 0.9, "crop": np.float32(0.5), "weed": float("nan")},
                 confusion_matrix=cm, miou=torch.tensor(0.7), val_miou=float("nan"),
                 best_epoch=3, note="extra keys are kept"),
    )
    assert path == tmp_path / "r1" / "results.json"
    assert [p.name for p in (tmp_path / "r1").iterdir()] == ["results.json"]  # no temp left
    text = path.read_text()
    assert "NaN" not in text
    raw = json.loads(text)
    assert raw["per_class_iou"]["weed"] is None and raw["val_miou"] is None
    data = read_results(path)
    assert data == read_results(path.parent)  # a run directory works too
    assert data["per_class_iou"] == pytest.approx({"background": 0.9, "crop": 0.5, "weed": None})
    assert data["confusion_matrix"] == cm.tolist()
    assert data["miou"] == pytest.approx(0.7)
    assert data["library_version"] == selmask_lib.__version__
    assert data["created"] and data["best_epoch"] == 3 and data["note"] == "extra keys are kept"
    for key in ("dataset", "init", "pretrain_run", "pretrain_dataset", "seed", "class_names",
                "config", "timings"):
        assert data[key] == fields()[key]


def test_write_from_scores_and_overwrite(tmp_path):
    ev = SegmentationEvaluator(3, NAMES)
    ev.update(torch.tensor([[[0, 0, 1]]]), torch.tensor([[[0, 0, 1]]]))  # weed absent
    scores = ev.compute()
    f = fields(init="none", pretrain_dataset=None, pretrain_run=None)
    for key in ("miou", "per_class_iou", "confusion_matrix", "class_names"):
        del f[key]
    path = write_results(tmp_path, scores=scores, **f)
    data = read_results(path)
    assert data["per_class_iou"] == {"background": 1.0, "crop": 1.0, "weed": None}
    assert data["miou"] == 1.0 and data["pixel_accuracy"] == 1.0
    # a second write replaces the first; a failing write leaves it intact
    write_results(tmp_path, **fields(seed=7))
    assert read_results(path)["seed"] == 7
    with pytest.raises(SelmaskError):
        write_results(tmp_path, **fields(seed="x"))
    assert read_results(path)["seed"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize(
    "field", ["dataset", "init", "seed", "miou", "per_class_iou", "confusion_matrix",
              "class_names", "config", "timings"],
)
def test_missing_required_field_is_named(tmp_path, field):
    f = fields()
    del f[field]
    with pytest.raises(SelmaskError, match=f"'{field}'"):
        write_results(tmp_path, **f)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    "over, field",
    [
        (dict(init="random_ir", pretrain_dataset=None), "pretrain_dataset"),
        (dict(init="selfsup"), "init"),
        (dict(seed=True), "seed"),
        (dict(miou=57.0), "miou"),
        (dict(per_class_iou={"background": 0.1, "crop": 0.2}), "per_class_iou"),
        (dict(confusion_matrix=[[1, 2], [3, 4]]), "confusion_matrix"),
        (dict(timings={"train": "slow"}), "timings.train"),
        (dict(config=object()), "config"),
        (dict(pretrain_masking=3), "pretrain_masking"),
    ],
)
def test_invalid_fields_are_named(tmp_path, over, field):
    with pytest.raises(SelmaskError, match=field.replace(".", r"\.")):
        write_results(tmp_path, **fields(**over))


def test_read_results_names_file_and_field(tmp_path):
    path = write_results(tmp_path, **fields())
    data = json.loads(path.read_text())
    del data["timings"]
    path.write_text(json.dumps(data))
    with pytest.raises(SelmaskError, match=r"results\.json.*'timings'"):
        read_results(path)
    path.write_text("{not json")
    with pytest.raises(SelmaskError, match="not valid JSON"):
        read_results(path)
    with pytest.raises(SelmaskError, match="not found"):
        read_results(tmp_path / "nope")


# ------------------------------------------------------------------ DataFrame
@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "runs"
    # nassar: none, imagenet, random_ir self (2 seeds), selective self (2 seeds), selective cross
    run(root, "nassar/none/s1", "nassar", "none", None, 1, [0.90, 0.30, 0.10])
    run(root, "nassar/imagenet/s1", "nassar", "imagenet", None, 1, [0.92, 0.40, 0.15])
    run(root, "nassar/random/s1", "nassar", "random_ir", "nassar", 1, [0.95, 0.50, 0.20])
    run(root, "nassar/random/s2", "nassar", "random_ir", "nassar", 2, [0.93, 0.60, 0.10])
    run(root, "nassar/sel_self/s1", "nassar", "selective_ir", "nassar", 1, [0.96, 0.55, 0.30])
    run(root, "nassar/sel_self/s2", "nassar", "selective_ir", "nassar", 2, [0.94, 0.61, 0.26])
    run(root, "nassar/sel_cross/s1", "nassar", "selective_ir", "sugarbeets", 1, [0.95, 0.52, None])
    # sugarbeets: only random-IR self and selective-IR cross (from nassar)
    run(root, "deep/er/sb/random", "sugarbeets", "random_ir", "sugarbeets", 1, [0.8, 0.7, 0.6])
    run(root, "sb/cross", "sugarbeets", "selective_ir", "nassar", 1, [0.81, 0.72, 0.65])
    return root


def test_load_results_tree(tree):
    df = load_results(tree)
    assert len(df) == 9
    for col in ["dataset", "init", "pretrain_dataset", "seed", "miou", "run_dir", "variant",
                "iou/background", "iou/crop", "iou/weed", "time/train"]:
        assert col in df.columns
    cross = df[(df["dataset"] == "nassar") & (df["pretrain_dataset"] == "sugarbeets")].iloc[0]
    assert cross["variant"] == "selective_ir_cross"
    assert math.isnan(cross["iou/weed"])  # null -> NaN
    assert cross["run_dir"].endswith("sel_cross/s1")
    assert set(df["variant"]) == {"none", "imagenet", "random_ir_self", "selective_ir_self",
                                  "selective_ir_cross"}
    assert df["miou"].dtype == float
    # a list of dirs and files, overlapping, gives each run once
    df2 = load_results([tree / "nassar", tree / "sb" / "cross" / "results.json", tree / "nassar/none"])
    assert len(df2) == 8
    with pytest.raises(SelmaskError, match="does not exist"):
        load_results(tree / "missing")


def test_load_results_bad_file_raise_or_skip(tree):
    (tree / "broken").mkdir()
    (tree / "broken" / "results.json").write_text("{}")
    with pytest.raises(SelmaskError, match="broken"):
        load_results(tree)
    with pytest.warns(UserWarning, match="skipping"):
        df = load_results(tree, on_error="skip")
    assert len(df) == 9


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
    assert g.empty and list(g.columns) == ["baseline", "method", "gain"]


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


def test_duplicate_seed_warns(tmp_path):
    run(tmp_path, "a", "voc", "none", None, 1, [0.1, 0.2, 0.3])
    run(tmp_path, "b", "voc", "none", None, 1, [0.1, 0.2, 0.3])
    with pytest.warns(UserWarning, match="share"):
        load_results(tmp_path)
    run(tmp_path, "c", "voc", "none", None, 2, [0.1, 0.2, 0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_results([tmp_path / "a", tmp_path / "c"])


# ------------------------------------------------------------ other masking strategies
def test_variant_keys_other_masking_strategies_apart():
    assert variant_of("selective_ir", "voc", "voc") == "selective_ir_self"
    assert variant_of("selective_ir", "voc", "voc", "selective") == "selective_ir_self"
    assert variant_of("selective_ir", "voc", "cityscapes", "random_fixed") == "random_fixed_ir_cross"
    assert variant_of("selective_ir", "voc", "voc", "mine") == "mine_ir_self"
    assert variant_of("random_ir", "voc", "voc", "random") == "random_ir_self"
    assert variant_of("none", "voc", None, None) == "none"


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
    assert format_table(table).loc["nassar", "mine_ir_self"] == "60.0"
