"""Intervals and verdicts (selmask_lib.statistics), the per-image counts behind them, and the tables' use of them.

The bootstrap is checked against scipy.stats.bootstrap (same generator, same draws) and a
two-image case worked out by hand; the t-interval and paired t-test against scipy and the
seed numbers of issue 12 (none / random IR / selective IR on the embedded data, three seeds).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import selmask_lib.statistics as st
from fake_results import fields
from selmask_lib.errors import SelmaskError
from selmask_lib.metrics import SegmentationEvaluator, iou_from_confusion, mean_iou
from selmask_lib.results import (
    load_results,
    per_image_entries,
    read_per_image_confusions,
    read_results,
    write_results,
)
from selmask_lib.tables import compare, format_table, per_class_gain, results_table, tidy_table

# issue 12: test mIoU (%) of three seeds (3741, 1, 2) on the embedded data at a larger pretraining budget
NONE = [38.2, 41.1, 39.6]
RANDOM_IR = [42.8, 44.8, 42.7]
SELECTIVE_IR = [48.4, 42.6, 44.6]


def random_confusions(n_images=40, n_classes=4, seed=0) -> np.ndarray:
    """Per-image confusion counts of a plausible segmenter: mostly right, each image showing a few classes."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_images, n_classes, n_classes), dtype=np.int64)
    for i in range(n_images):
        for truth in rng.choice(n_classes, size=rng.integers(1, n_classes + 1), replace=False):
            counts[i, truth] = rng.multinomial(rng.integers(50, 400), [0.1 / (n_classes - 1)] * n_classes
                                               + np.eye(n_classes)[truth] * (0.9 - 0.1 / (n_classes - 1)))
    return counts


def better_arm(counts: np.ndarray) -> np.ndarray:
    """The same images with every wrong pixel of class 1 truth moved to the diagonal: a real gain everywhere."""
    better = counts.copy()
    better[:, 1, 1] += better[:, 1].sum(1) - better[:, 1, 1]
    better[:, 1, [0, 2, 3]] = 0
    return better


# --------------------------------------------------------------------------- verdict


@pytest.mark.parametrize("lower, upper, expected", [
    (0.1, 0.5, "better"), (-0.5, -0.1, "worse"), (-0.1, 0.2, "not distinguishable"),
    (0.0, 0.2, "not distinguishable"), (-0.3, 0.0, "not distinguishable"), (math.nan, math.nan, "no interval"),
])
def test_verdict_reads_where_the_interval_lies(lower, upper, expected):
    assert st.verdict(lower, upper) == expected


# --------------------------------------------------------------------------- over seeds


def test_t_interval_against_scipy_and_by_hand():
    found = st.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302652729911275
    assert (found.estimate, found.n) == (2.0, 3)
    assert found.lower == pytest.approx(2 - 4.302652729911275 / math.sqrt(3))
    assert found.upper == pytest.approx(2 + 4.302652729911275 / math.sqrt(3))
    values = np.array(RANDOM_IR)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    found = st.t_interval(values)
    assert (found.lower, found.upper) == (pytest.approx(low), pytest.approx(high))
    assert found.half_width == pytest.approx((high - low) / 2)


def test_t_interval_of_one_seed_is_nan_and_says_why():
    one = st.t_interval([41.0, math.nan])  # a NaN is no value
    assert one.estimate == 41.0 and one.n == 1 and math.isnan(one.lower) and math.isnan(one.upper)
    assert "one seed" in one.note and one.verdict == "no interval"
    assert st.t_interval([]).n == 0 and math.isnan(st.t_interval([]).estimate)


def test_paired_t_test_against_scipy_and_the_issues_numbers():
    found = st.paired_t_test(NONE, RANDOM_IR)  # the issue: +3.8, 95 % t-interval [1.9, 5.7]
    assert round(found.estimate, 1) == 3.8 and (round(found.lower, 1), round(found.upper, 1)) == (1.9, 5.7)
    reference = stats.ttest_rel(RANDOM_IR, NONE)
    assert found.p_value == pytest.approx(reference.pvalue)
    low, high = reference.confidence_interval(0.95)
    assert (found.lower, found.upper, found.n) == (pytest.approx(low), pytest.approx(high), 3)
    assert found.verdict == "better" and st.paired_t_test(RANDOM_IR, NONE).verdict == "worse"
    selective = st.paired_t_test(RANDOM_IR, SELECTIVE_IR)  # the issue: +1.8 [-7.9, 11.5]
    assert (round(selective.lower, 1), round(selective.upper, 1)) == (-7.9, 11.5)
    assert selective.verdict == "not distinguishable"


def test_paired_t_test_pairs_by_position_and_refuses_unequal_lengths():
    shifted = [v + 1.0 for v in NONE]
    assert st.paired_t_test(NONE, shifted).estimate == pytest.approx(1.0)
    assert st.paired_t_test(NONE, shifted).lower == pytest.approx(1.0)  # no spread in the differences
    assert st.paired_t_test(NONE, NONE).verdict == "not distinguishable"
    with pytest.raises(SelmaskError, match="3 values for A but 2 for B"):
        st.paired_t_test(NONE, NONE[:2])


# --------------------------------------------------------------------------- over test images


def test_resample_counts_draw_each_resample_of_n_images():
    weights = st.resample_counts(7, n_boot=50, seed=3)
    assert weights.shape == (50, 7) and (weights.sum(1) == 7).all()
    np.testing.assert_array_equal(weights, st.resample_counts(7, n_boot=50, seed=3))
    assert not np.array_equal(weights, st.resample_counts(7, n_boot=50, seed=4))


def test_miou_interval_is_scipys_percentile_bootstrap_of_the_pooled_miou():
    counts = random_confusions()

    def pooled_miou(images, axis=-1):  # the statistic scipy resamples: mIoU of the summed matrices
        return np.array([mean_iou(iou_from_confusion(counts[row].sum(0))) for row in np.atleast_2d(images)])

    reference = stats.bootstrap((np.arange(len(counts)),), pooled_miou, n_resamples=300, method="percentile",
                                rng=np.random.default_rng(11), vectorized=True)
    found = st.miou_interval(counts, n_boot=300, seed=11)
    assert found.lower == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert found.upper == pytest.approx(reference.confidence_interval.high, abs=1e-12)
    assert found.estimate == pytest.approx(mean_iou(iou_from_confusion(counts.sum(0))))  # pooled, not per image
    assert (found.n, found.method) == (len(counts), "bootstrap over test images")
    assert found.lower < found.estimate < found.upper


def test_miou_interval_of_two_images_by_hand():
    # image A: 10 pixels of class 0, all right; image B: 10 of class 1, half predicted as 0.
    # Resamples: AA (1/4), AB (1/2), BB (1/4). mIoU: AA 1 (class 1 absent, left out), AB (10/15 + 5/10) / 2,
    # BB (0 + 10/20) / 2 = 0.25. With absent="zero" AA scores (1 + 0) / 2.
    a, b = [[10, 0], [0, 0]], [[0, 0], [5, 5]]
    counts = np.array([a, b])
    found = st.miou_interval(counts, n_boot=2000, seed=0)
    assert found.estimate == pytest.approx((10 / 15 + 0.5) / 2)
    assert (found.lower, found.upper) == (pytest.approx(0.25), pytest.approx(1.0))
    zero = st.miou_interval(counts, n_boot=2000, seed=0, absent="zero")
    assert (zero.lower, zero.upper) == (pytest.approx(0.25), pytest.approx((10 / 15 + 0.5) / 2))


def test_one_test_image_gives_no_interval_and_bad_input_is_refused():
    one = st.miou_interval(random_confusions(n_images=1))
    assert one.n == 1 and math.isnan(one.lower) and "one test image" in one.note
    with pytest.raises(SelmaskError, match=r"\[N, C, C\]"):
        st.miou_interval(np.zeros((3, 4)))
    with pytest.raises(SelmaskError, match="no test images"):
        st.miou_interval(np.zeros((0, 3, 3), dtype=np.int64))


def test_same_seed_same_interval_another_seed_another():
    counts = random_confusions()
    assert st.miou_interval(counts, seed=5) == st.miou_interval(counts, seed=5)
    assert st.miou_interval(counts, seed=5).lower != st.miou_interval(counts, seed=6).lower


def test_identical_arms_gain_exactly_zero_in_every_resample(monkeypatch):
    seen = []
    real = st._percentile_interval
    monkeypatch.setattr(st, "_percentile_interval", lambda gains: seen.append(gains) or real(gains))
    counts = random_confusions()
    found = st.paired_bootstrap_gain(counts, counts.copy(), n_boot=500)
    assert len(seen) == 1 and seen[0].shape == (500,) and (seen[0] == 0).all()  # the same images in both arms
    assert (found.estimate, found.lower, found.upper, found.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert found.verdict == "not distinguishable" and found.method == "paired bootstrap over test images"


def test_a_known_gain_is_better_and_its_reverse_worse():
    counts = random_confusions()
    better = better_arm(counts)
    gain = st.paired_bootstrap_gain(counts, better, n_boot=500)
    expected = mean_iou(iou_from_confusion(better.sum(0))) - mean_iou(iou_from_confusion(counts.sum(0)))
    assert gain.estimate == pytest.approx(expected) and gain.estimate > 0
    assert gain.verdict == "better" and gain.p_value == pytest.approx(2 / 501)
    assert st.paired_bootstrap_gain(better, counts, n_boot=500).verdict == "worse"


def test_per_class_gains_pair_the_same_resamples():
    counts = random_confusions()
    gains = st.class_gain_intervals(counts, better_arm(counts), n_boot=300)
    assert [g.verdict for g in gains] == ["better"] * 4  # class 1's misses were the other classes' false alarms
    same = st.class_gain_intervals(counts, counts, n_boot=300)
    assert all((g.estimate, g.lower, g.upper) == (0.0, 0.0, 0.0) for g in same)


def test_arms_must_be_scored_on_the_same_images_in_the_same_order():
    counts = random_confusions(n_images=3)
    ids = ["a", "b", "c"]
    assert st.paired_bootstrap_gain(counts, counts, ids_a=ids, ids_b=list(ids), n_boot=20).estimate == 0
    with pytest.raises(SelmaskError, match="test image 1 is 'b' in arm A but 'x' in arm B"):
        st.paired_bootstrap_gain(counts, counts, ids_a=ids, ids_b=["a", "x", "c"])
    with pytest.raises(SelmaskError, match="same images, another order"):
        st.paired_bootstrap_gain(counts, counts, ids_a=ids, ids_b=["a", "c", "b"])
    with pytest.raises(SelmaskError, match="arm A has 3 test images, arm B 2"):
        st.paired_bootstrap_gain(counts, counts[:2], ids_a=ids, ids_b=ids[:2])
    with pytest.raises(SelmaskError, match="2 image ids for 3 confusion matrices"):
        st.paired_bootstrap_gain(counts, counts, ids_a=ids[:2])


# --------------------------------------------------------------------------- per-image counts


def test_the_evaluator_keeps_each_images_counts():
    evaluator = SegmentationEvaluator(3, per_image=True)
    target = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [1, 1]]])
    preds = torch.tensor([[[0, 2], [2, 0]], [[1, 0], [1, 1]]])
    evaluator.update(preds, target)
    evaluator.update(torch.tensor([[2, 2]]), torch.tensor([[0, 255]]))  # unbatched [H, W]
    scores = evaluator.compute()
    per_image = scores.per_image_confusions
    assert per_image.shape == (3, 3, 3) and per_image.dtype == torch.int64
    assert per_image[0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]  # the void pixel is not counted
    assert per_image[1].tolist() == [[0, 0, 0], [1, 3, 0], [0, 0, 0]]
    assert per_image[2].tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert per_image.sum(0).tolist() == scores.confusion_matrix
    assert "per_image_confusions" not in scores.to_dict()
    plain = SegmentationEvaluator(3)
    plain.update(preds, target)
    assert plain.compute().per_image_confusions is None


def test_results_json_keeps_the_counts_sparsely_and_reads_them_back(tmp_path):
    counts = np.array([[[9, 1, 0], [0, 0, 0], [0, 0, 0]], [[0, 0, 0], [1, 4, 1], [0, 2, 1]]])
    entries = per_image_entries(["img_a", "img_b"], torch.as_tensor(counts))
    assert entries[0] == {"id": "img_a", "cells": [[0, 0, 9], [0, 1, 1]]}
    path = write_results(tmp_path / "run", **fields(per_image_confusions=entries,
                                                    confusion_matrix=counts.sum(0).tolist()))
    lines = path.read_text().splitlines()
    assert '    {"id":"img_a","cells":[[0,0,9],[0,1,1]]},' in lines  # one line per image
    found = read_per_image_confusions(path)
    assert found.ids == ("img_a", "img_b") and found.absent_class_iou == "nan"
    np.testing.assert_array_equal(found.counts, counts)
    assert found.class_names == ("background", "crop", "weed")
    assert read_per_image_confusions(write_results(tmp_path / "old", **fields())) is None  # older files


def test_a_trained_void_class_is_kept_as_a_column_and_scored_as_the_evaluator_does(tmp_path):
    evaluator = SegmentationEvaluator(3, ["background", "crop", "weed"], void_as_class=True, per_image=True)
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]], [[1, 1, 1, 0], [0, 0, 2, 2]]])
    preds = torch.tensor([[[0, 3, 1, 1], [2, 0, 3, 1]], [[1, 3, 3, 0], [0, 2, 2, 2]]])  # 3: void predicted
    evaluator.update(preds, target)
    scores = evaluator.compute()
    assert scores.per_image_confusions.shape == (2, 4, 4)
    entries = per_image_entries(["a", "b"], scores.per_image_confusions)
    path = write_results(tmp_path / "run", **fields(per_image_confusions=entries, miou=scores.miou,
                                                    per_class_iou=scores.per_class_iou,
                                                    confusion_matrix=scores.confusion_matrix,
                                                    predicted_void=scores.predicted_void))
    found = read_per_image_confusions(path)
    assert found.counts.shape == (2, 4, 4) and found.counts[:, :3, 3].sum(0).tolist() == scores.predicted_void
    assert st.miou_interval(found, n_boot=50).estimate == pytest.approx(scores.miou)  # void: a miss, never scored
    broken = [dict(e, cells=[c for c in e["cells"] if c[1] != 3]) for e in entries]
    with pytest.raises(SelmaskError, match="void column does not sum to 'predicted_void'"):
        write_results(tmp_path / "broken", **fields(per_image_confusions=broken, miou=scores.miou,
                                                   per_class_iou=scores.per_class_iou,
                                                   confusion_matrix=scores.confusion_matrix,
                                                   predicted_void=scores.predicted_void))


@pytest.mark.parametrize("entries, message", [
    ([{"id": "a", "cells": [[0, 0, 5]]}], "do not sum to 'confusion_matrix'"),
    ([{"id": "a", "cells": [[0, 3, 5]]}], r"cell \[0, 3, 5\] is not \[truth, prediction, count\] with class ids below 3"),
    ([{"id": "a", "cells": []}, {"id": "a", "cells": []}], "image id 'a' appears twice"),
    ([{"cells": []}], "string 'id'"),
])
def test_bad_per_image_counts_are_named(tmp_path, entries, message):
    with pytest.raises(SelmaskError, match=message):
        write_results(tmp_path / "run", **fields(per_image_confusions=entries))
    good = write_results(tmp_path / "good", **fields())
    data = json.loads(good.read_text())
    data["per_image_confusions"] = entries
    good.write_text(json.dumps(data))
    with pytest.raises(SelmaskError, match=f"{good}: results field 'per_image_confusions'"):
        read_results(good)


# --------------------------------------------------------------------------- tables


def write_arm(root, name, init, seed, counts, miou=None):
    """A results.json for a nassar run whose test images have ``counts``; mIoU pooled from them."""
    pooled = counts.sum(0)
    iou = iou_from_confusion(pooled)
    names = ["background", "crop", "weed", "soil"]
    return write_results(root / name, **fields(
        init=init, pretrain_dataset=None if init == "none" else "nassar",
        pretrain_run=None if init == "none" else "pre/nassar", seed=seed,
        class_names=names, per_class_iou=dict(zip(names, iou.tolist())), confusion_matrix=pooled.tolist(),
        miou=mean_iou(iou) if miou is None else miou,
        per_image_confusions=per_image_entries([f"img{i}" for i in range(len(counts))], counts)))


def test_one_seed_cells_get_the_bootstrap_and_compare_pairs_the_images(tmp_path):
    counts = random_confusions()
    write_arm(tmp_path, "random", "random_ir", 1, counts)
    write_arm(tmp_path, "selective", "selective_ir", 1, better_arm(counts))
    write_results(tmp_path / "old", **fields(init="none", pretrain_dataset=None, pretrain_run=None))
    df = load_results(tmp_path)
    table = results_table(df, n_boot=300)
    expected = st.miou_interval(counts, n_boot=300)
    cell = table.loc["nassar", "random_ir_self"]
    assert cell["n"] == 1 and math.isnan(cell["std"])
    assert (cell["mean"], cell["lower"], cell["upper"]) == (
        pytest.approx(expected.estimate * 100), pytest.approx(expected.lower * 100),
        pytest.approx(expected.upper * 100))
    assert math.isnan(table.loc["nassar", ("none", "lower")])  # an old file: no interval, and why
    assert "keeps no per-image confusions" in table.attrs["notes"][("nassar", "none")]
    text = format_table(table).loc["nassar", "Random IR (self)"]
    assert text == f"{cell['mean']:.1f} ± {(cell['upper'] - cell['lower']) / 2:.1f} (1 seed)"

    gain = compare(df, baseline="random_ir", other="selective_ir_self", n_boot=300).loc["nassar"]
    reference = st.paired_bootstrap_gain(counts, better_arm(counts), n_boot=300)
    assert gain["gain"] == pytest.approx(reference.estimate * 100)
    assert gain["lower"] == pytest.approx(reference.lower * 100) and gain["n"] == len(counts)
    assert (gain["method"], gain["verdict"]) == ("paired bootstrap over test images", "better")
    no_images = compare(df, baseline="none", other="selective_ir_self").loc["nassar"]
    assert no_images["verdict"] == "no interval" and "no per-image confusions" in no_images["note"]

    per_class = per_class_gain(df, "nassar", n_boot=300)
    assert per_class.loc["crop", "verdict"] == "better" and per_class.loc["crop", "n"] == len(counts)
    assert per_class.loc["crop", "lower"] <= per_class.loc["crop", "gain"] <= per_class.loc["crop", "upper"]
    assert per_class.attrs["interval"] == "paired bootstrap over test images"


def test_several_seeds_use_the_t_interval_and_the_paired_t_test(tmp_path):
    counts = random_confusions()
    for seed, none, random in zip((3741, 1, 2), NONE, RANDOM_IR):
        write_arm(tmp_path, f"none{seed}", "none", seed, counts, miou=none / 100)
        write_arm(tmp_path, f"random{seed}", "random_ir", seed, counts, miou=random / 100)
    df = load_results(tmp_path)
    table = results_table(df)
    expected = st.t_interval(RANDOM_IR)
    cell = table.loc["nassar", "random_ir_self"]
    assert (cell["n"], cell["lower"], cell["upper"]) == (3, pytest.approx(expected.lower),
                                                          pytest.approx(expected.upper))
    assert cell["mean"] == pytest.approx(np.mean(RANDOM_IR))  # mean over seeds, not over a bootstrap
    gain = compare(df, baseline="none", other="random_ir").loc["nassar"]
    assert (gain["method"], gain["n"], gain["verdict"]) == ("paired t over seeds", 3, "better")
    assert (round(gain["gain"], 1), round(gain["lower"], 1), round(gain["upper"], 1)) == (3.8, 1.9, 5.7)

    csv = tidy_table(table)
    assert list(csv.columns) == ["dataset", "variant", "label", "mean", "std", "n", "lower", "upper"]
    row = csv.set_index("variant").loc["random_ir_self"]
    assert row["lower"] == pytest.approx(expected.lower) and row["label"] == "Random IR (self)"
    assert all(csv[c].dtype.kind == "f" for c in ("mean", "lower", "upper"))  # numbers, not "a ± b" strings


def test_the_per_class_figure_draws_the_intervals(tmp_path):
    import matplotlib
    import matplotlib.container

    matplotlib.use("Agg")
    from selmask_lib.plotting import per_class_gain_figure

    counts = random_confusions()
    write_arm(tmp_path, "random", "random_ir", 1, counts)
    write_arm(tmp_path, "selective", "selective_ir", 1, better_arm(counts))
    gain = per_class_gain(load_results(tmp_path), "nassar", n_boot=200)
    figure = per_class_gain_figure(gain)
    errorbars = [c for c in figure.axes[1].containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(errorbars) == 1  # on the gain panel
    segments = errorbars[0].lines[2][0].get_segments()
    assert [(s[0][0], s[1][0]) for s in segments] == [(pytest.approx(lo), pytest.approx(hi))
                                                      for lo, hi in zip(gain["lower"], gain["upper"])]
    assert "95 % interval" in figure.axes[1].get_xlabel()


def test_weakest_gain_correlation_is_spearman_with_the_bonett_wright_interval():
    from scipy import stats as sps

    from selmask_lib.statistics import weakest_gain_correlation

    baseline = [10, 20, 30, 40, 50, 60, 70, 80]
    gain = [9, 7, 8, 5, 3, 4, 1, -2]  # the weakest classes gain most
    found = weakest_gain_correlation(baseline, gain)
    rho = sps.spearmanr(baseline, gain).statistic
    assert found.estimate == pytest.approx(rho) and found.n == 8
    se = np.sqrt((1 + rho ** 2 / 2) / (8 - 3))  # Bonett & Wright (2000), by hand
    assert found.lower == pytest.approx(np.tanh(np.arctanh(rho) - 1.959963984540054 * se))
    assert found.upper == pytest.approx(np.tanh(np.arctanh(rho) + 1.959963984540054 * se))
    assert found.verdict == "worse"  # a negative correlation: gains fall as baseline IoU rises
    flat = weakest_gain_correlation(baseline, [3, -1, 2, 0, 1, -2, 3, 0])
    assert flat.verdict == "not distinguishable"
    few = weakest_gain_correlation([10, 20, 30], [3, 2, 1])  # a 3-class weed set: no trend to speak of
    assert np.isnan(few.estimate) and "at least 6" in few.note
    with_nan = weakest_gain_correlation(baseline + [np.nan], gain + [5])
    assert with_nan.n == 8 and with_nan.estimate == pytest.approx(rho)
