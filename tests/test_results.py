"""Tests for selmask_lib.results: results.json round trip, validation, loading into a DataFrame."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

import selmask_lib
from fake_results import NAMES, fields, make_runs_tree, write_run
from selmask_lib import config, results
from selmask_lib.errors import SelmaskError
from selmask_lib.metrics import SegmentationEvaluator
from selmask_lib.results import (
    load_results,
    read_results,
    variant_of,
    write_results,
)


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
    return make_runs_tree(tmp_path / "runs")


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


def test_duplicate_seed_warns(tmp_path):
    write_run(tmp_path, "a", "voc", "none", None, 1, [0.1, 0.2, 0.3])
    write_run(tmp_path, "b", "voc", "none", None, 1, [0.1, 0.2, 0.3])
    with pytest.warns(UserWarning, match="share"):
        load_results(tmp_path)
    write_run(tmp_path, "c", "voc", "none", None, 2, [0.1, 0.2, 0.3])
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


def test_ir_inits_come_from_the_config():
    assert results.IR_INITS == ("random_ir", "selective_ir")
    assert set(results.IR_INITS) < set(config.INITS)
