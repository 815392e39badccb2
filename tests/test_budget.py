"""Claim (3) as a budget sweep: self vs cross selective pretraining, cached, shared, with verdicts per budget."""

import math
import re

import matplotlib
import pandas as pd
import pytest

import fake_datasets as fake
import selmask_lib.finetuning as finetuning
import selmask_lib.pretraining as pretraining
from selmask_lib import statistics
from selmask_lib.budget import (
    GAIN_COLUMNS,
    SWEEP_COLUMNS,
    budget_config,
    budget_curves,
    budget_gains,
    budget_sweep,
    image_steps,
)
from selmask_lib.cli import main
from selmask_lib.config import config_hash, pretrain_preset
from selmask_lib.data.synthetic import SMALL
from selmask_lib.errors import SelmaskError
from selmask_lib.results import read_per_image_confusions

matplotlib.use("Agg")

FRACTIONS = (0.5, 1.0)
FAST_FINETUNE = {"epochs": 1, "image_size": 32}  # the smoke preset, shorter: the sweep's logic is under test


class TrainingSpy:
    """Records each pretraining and fine-tuning that really trains (a reused run does not get here)."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self.pretrained, self.finetuned = [], []
        steps, train_and_test = pretraining._run_selective_steps, finetuning._train_and_test

        def selective_steps(trainer, *args, **kwargs):
            cfg = trainer.cfg
            self.pretrained.append((cfg.dataset, cfg.max_images, cfg.seed))
            return steps(trainer, *args, **kwargs)

        def finetune_run(cfg, *args, **kwargs):
            self.finetuned.append((cfg.dataset, cfg.pretrained))
            return train_and_test(cfg, *args, **kwargs)

        patch.setattr(pretraining, "_run_selective_steps", selective_steps)
        patch.setattr(finetuning, "_train_and_test", finetune_run)

    def reset(self):
        self.pretrained.clear()
        self.finetuned.clear()


@pytest.fixture(scope="module")
def pair(small_synthetic_root, tmp_path_factory, one_thread_quiet):
    """The embedded set (downstream) and a tiny folder dataset (partner), a runs folder, a training spy."""
    patch = pytest.MonkeyPatch()
    folder = fake.make_folder_tree(tmp_path_factory.mktemp("folder"))
    data_roots = {"synthetic": str(small_synthetic_root), "folder": str(folder)}
    yield dict(data_roots=data_roots, runs_root=tmp_path_factory.mktemp("runs"), spy=TrainingSpy(patch))
    patch.undo()


def sweep_of(pair, dataset="synthetic", partner="folder", fractions=FRACTIONS):
    return budget_sweep(dataset, partner, fractions=fractions, preset="smoke", runs_root=pair["runs_root"],
                        data_roots=pair["data_roots"], finetune_overrides=FAST_FINETUNE)


@pytest.fixture(scope="module")
def first_sweep(pair):
    """The sweep synthetic <- folder, and what it trained."""
    pair["spy"].reset()
    sweep = sweep_of(pair)
    return sweep, list(pair["spy"].pretrained), list(pair["spy"].finetuned)


def test_one_row_per_budget_seed_and_relation(first_sweep):
    sweep, _, _ = first_sweep
    assert list(sweep.columns) == SWEEP_COLUMNS
    assert len(sweep) == len(FRACTIONS) * 2
    assert sorted(zip(sweep["fraction"], sweep["relation"])) == [(0.5, "cross"), (0.5, "self"),
                                                                 (1.0, "cross"), (1.0, "self")]
    assert set(sweep.loc[sweep["relation"] == "self", "pretrain_dataset"]) == {"synthetic"}
    assert set(sweep.loc[sweep["relation"] == "cross", "pretrain_dataset"]) == {"folder"}
    assert (sweep["dataset"] == "synthetic").all() and (sweep["partner"] == "folder").all()
    assert (sweep["n_test_images"] == SMALL["n_test"]).all()
    assert ((sweep["lower"] <= sweep["miou"]) & (sweep["miou"] <= sweep["upper"])).all()
    assert sweep["miou"].between(0, 100).all()  # points (%)


def test_each_domain_budget_and_seed_is_pretrained_once(first_sweep):
    sweep, pretrained, finetuned = first_sweep
    n_synthetic = 24  # the smoke preset's max_images; SMALL has 40 pool images
    n_folder = fake.FOLDER_SIZES["pretrain"]  # 12, below the cap
    assert sorted(pretrained) == sorted([("synthetic", n_synthetic // 2, 3741), ("synthetic", 24, 3741),
                                         ("folder", n_folder // 2, 3741), ("folder", 24, 3741)])
    assert len(finetuned) == 4 and {dataset for dataset, _ in finetuned} == {"synthetic"}
    assert sorted(sweep["images"]) == [6, 12, 12, 24]


def test_a_second_call_runs_nothing_and_gives_the_same_table(pair, first_sweep):
    sweep, _, _ = first_sweep
    pair["spy"].reset()
    again = sweep_of(pair)
    assert pair["spy"].pretrained == [] and pair["spy"].finetuned == []
    pd.testing.assert_frame_equal(again, sweep)


def test_the_other_direction_reuses_the_pairs_pretraining_runs(pair, first_sweep):
    sweep, _, _ = first_sweep
    pair["spy"].reset()
    other = sweep_of(pair, dataset="folder", partner="synthetic", fractions=(1.0,))
    assert pair["spy"].pretrained == []  # the self run of one is the cross run of the other
    assert len(pair["spy"].finetuned) == 2  # only the fine-tunings on the new downstream dataset
    runs = sweep[sweep["fraction"] == 1.0].set_index("pretrain_dataset")["pretrain_run"]
    assert dict(zip(other["pretrain_dataset"], other["pretrain_run"])) == runs.to_dict()
    assert set(zip(other["relation"], other["pretrain_dataset"])) == {("self", "folder"), ("cross", "synthetic")}


def test_budgets_scale_image_steps_as_documented():
    base = pretrain_preset("demo", "synthetic")  # 560 images, K = 4, E = 20, 2 warm-up epochs
    assert budget_config(base, 1.0, "images", 560) is base  # the preset's own run: same config hash
    half = budget_config(base, 0.5, "images", 560)
    assert (half.max_images, half.epochs, half.warmup_epochs) == (280, 20, 2)
    assert config_hash(half) != config_hash(base)
    # selective: K loops of E epochs on each partition's training images (90/10, at least one for val)
    assert image_steps(base, 560) == 20 * 4 * (140 - 14) == 10080
    assert image_steps(half, 560) == 20 * 4 * (70 - 7) == 5040
    quarter = budget_config(base, 0.3, "epochs", 560)
    assert (quarter.max_images, quarter.epochs, quarter.warmup_epochs) == (560, 6, 1)  # 0.6 rounds up
    assert image_steps(quarter, 560) == 6 * 4 * 126
    both = budget_config(base, 0.25, "both", 560)  # sqrt(0.25) = 0.5 of each
    assert (both.max_images, both.epochs) == (280, 10)
    assert image_steps(both, 560) == image_steps(base, 560) // 4


def test_the_table_counts_the_runs_image_steps(first_sweep):
    sweep, _, _ = first_sweep
    steps = sweep.set_index(["fraction", "relation"])["image_steps"]
    # smoke: K = 2, E = 1; 24 images -> 2 x (12 - 1), 12 -> 2 x (6 - 1), 6 -> 2 x (3 - 1)
    assert steps[(1.0, "self")] == 22 and steps[(0.5, "self")] == 10
    assert steps[(1.0, "cross")] == 10 and steps[(0.5, "cross")] == 4


def test_verdict_per_budget_is_the_paired_bootstrap_of_the_same_runs(first_sweep):
    sweep, _, _ = first_sweep
    gains = budget_gains(sweep)
    assert list(gains.columns) == GAIN_COLUMNS and list(gains["fraction"]) == list(FRACTIONS)
    for _, row in gains.iterrows():
        runs = sweep[sweep["fraction"] == row["fraction"]].set_index("relation")["path"]
        expected = statistics.paired_bootstrap_gain(read_per_image_confusions(runs["cross"]),
                                                    read_per_image_confusions(runs["self"]))
        assert row["gain"] == pytest.approx(100 * expected.estimate)
        assert (row["lower"], row["upper"]) == pytest.approx((100 * expected.lower, 100 * expected.upper))
        assert row["p_value"] == pytest.approx(expected.p_value)
        assert row["verdict"] == expected.verdict and row["n"] == SMALL["n_test"]
        assert row["method"] == statistics.PAIRED_BOOTSTRAP
        by_relation = sweep[sweep["fraction"] == row["fraction"]].set_index("relation")["miou"]
        assert row["gain"] == pytest.approx(by_relation["self"] - by_relation["cross"])


def test_curves_use_the_t_interval_over_seeds_with_two_seeds():
    rows = [dict(fraction=1.0, relation="self", seed=seed, image_steps=22, miou=miou, lower=0.0, upper=100.0)
            for seed, miou in ((1, 40.0), (2, 44.0))]
    curves = budget_curves(pd.DataFrame(rows))
    expected = statistics.t_interval([40.0, 44.0])
    assert curves.loc[0, ["miou", "lower", "upper", "n"]].tolist() == pytest.approx(
        [42.0, expected.lower, expected.upper, 2])
    one = budget_curves(pd.DataFrame(rows[:1]))
    assert one.loc[0, ["miou", "lower", "upper"]].tolist() == [40.0, 0.0, 100.0]  # the run's own bootstrap


def test_figure_draws_self_and_cross_with_bands_and_a_verdict_per_budget(first_sweep):
    from selmask_lib.plotting import budget_figure

    sweep, _, _ = first_sweep
    gains = budget_gains(sweep)
    figure = budget_figure(sweep, gains)
    axis = figure.axes[0]
    assert [line.get_label() for line in axis.lines] == ["self (pretrained on synthetic)",
                                                         "cross (pretrained on folder)"]
    assert len(axis.collections) == 2  # one interval band per line
    texts = [text.get_text() for text in axis.texts]
    assert len(texts) == len(FRACTIONS)
    assert [text.split("\n")[0] for text in texts] == list(gains["verdict"])
    assert list(axis.lines[0].get_xdata()) == [10, 22]  # self's image-steps


@pytest.mark.parametrize("fractions, named", [
    ((0, 1), "fractions' has 0, outside (0, 1]"),
    ((0.5, 1.5), "fractions' has 1.5, outside (0, 1]"),
    (("half", 1), "fractions' has 'half', which is not a number"),
    ((True,), "fractions' has True, which is not a number"),
    ("0.5", "fractions' must be a list"),
    ((), "fractions' is empty"),
])
def test_a_bad_fraction_is_one_line_naming_the_parameter(fractions, named):
    with pytest.raises(SelmaskError, match=re.escape(named)) as error:
        budget_sweep("synthetic", "folder", fractions=fractions)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("partner, named", [
    ("vocc", "parameter 'partner' is 'vocc', not one of"),
    ("synthetic", "parameter 'partner' is 'synthetic', the dataset itself"),
])
def test_an_unknown_or_identical_partner_is_one_line_naming_the_parameter(partner, named):
    with pytest.raises(SelmaskError, match=re.escape(named)) as error:
        budget_sweep("synthetic", partner)
    assert "\n" not in str(error.value)


def test_a_partner_without_data_is_refused_before_any_run(tmp_path):
    with pytest.raises(SelmaskError, match=re.escape("parameter 'data_roots' has no folder for 'voc'")):
        budget_sweep("synthetic", "voc", preset="smoke", runs_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_budget_too_small_for_the_partitions_names_the_fraction():
    base = pretrain_preset("smoke", "synthetic")  # K = 2: at least 4 images
    with pytest.raises(SelmaskError, match=r"'fractions' has 0.1, which leaves 2 of 24 synthetic images, fewer than 4"):
        budget_config(base, 0.1, "images", 24)


def test_cli_reuses_the_runs_and_writes_table_and_figure(pair, first_sweep, tmp_path, capsys):
    sweep, _, _ = first_sweep
    pair["spy"].reset()
    table, figure = tmp_path / "budget.csv", tmp_path / "budget.png"
    code = main(["budget", "--dataset", "synthetic", "--partner", "folder", "--fractions", "0.5", "1",
                 "--preset", "smoke", "--runs-root", str(pair["runs_root"]),
                 *[arg for name, root in pair["data_roots"].items() for arg in ("--data-root", f"{name}={root}")],
                 *[arg for key, value in FAST_FINETUNE.items() for arg in ("--set-finetune", f"{key}={value}")],
                 "--table", str(table), "--figure", str(figure)])
    assert code == 0 and pair["spy"].pretrained == [] and pair["spy"].finetuned == []
    written = pd.read_csv(table)
    assert written["miou"].tolist() == pytest.approx(sweep["miou"].tolist())
    assert figure.stat().st_size > 0
    out = capsys.readouterr().out
    assert all(verdict in out for verdict in budget_gains(sweep)["verdict"])


def test_cli_refuses_an_identical_partner_in_one_line(capsys):
    assert main(["budget", "--dataset", "synthetic", "--partner", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parameter 'partner'" in err


def test_no_nan_interval_where_every_run_kept_its_test_images(first_sweep):
    sweep, _, _ = first_sweep
    assert not sweep[["lower", "upper"]].isna().any().any()
    assert not any(math.isnan(value) for value in budget_gains(sweep)["lower"])


@pytest.mark.parametrize("scale", ["images", "epochs", "both"])
def test_a_fraction_that_rounds_to_the_whole_budget_reuses_the_presets_run(scale):
    base = pretrain_preset("demo", "synthetic", strategy="selective")
    almost = 1 - 1 / (4 * max(80, base.epochs))  # rounds to every image and every epoch
    assert budget_config(base, almost, scale, n_images=80) is base
    assert budget_config(base, 0.5, scale, n_images=80) != base


def test_gains_pair_self_with_cross_whatever_the_variants_are_called(monkeypatch):
    # Review finding: runs pretrained with a masking of one's own are keyed "<masking>_ir_self"
    # (results.ir_variant), and budget_gains, looking for "selective_ir_*", found nothing.
    import selmask_lib.budget as budget

    runs = pd.DataFrame({"dataset": ["d"] * 4, "pretrain_dataset": ["d", "p", "d", "p"], "seed": [1, 1, 2, 2],
                         "variant": ["mine_ir_self", "mine_ir_cross"] * 2, "miou": [0.60, 0.50, 0.64, 0.52]})
    monkeypatch.setattr(budget, "load_results", lambda paths: runs.copy())
    sweep = pd.DataFrame({"dataset": ["d"] * 4, "partner": ["p"] * 4, "fraction": [1.0] * 4,
                          "relation": ["self", "cross"] * 2, "seed": [1, 1, 2, 2], "path": ["a", "b", "c", "d"],
                          "image_steps": [10] * 4})
    gains = budget.budget_gains(sweep)
    assert gains.loc[0, "gain"] == pytest.approx(11.0)  # mean of (60 - 50, 64 - 52) points
    assert gains.loc[0, "n"] == 2
