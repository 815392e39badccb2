"""Every notebook runs end to end (papermill), with smaller injected settings, and is committed clean."""

import ast
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# The walkthrough (00, under 3 minutes) and the patch notebook (01, about a minute) train for real
# with their stored defaults; the suite runs them with these smaller settings (same cells, seconds).
SMALL_PRETRAINING = {"image_size": 64, "score_size": 64, "n_patches": 64, "n_scoring_draws": 2, "max_images": 24,
                     "epochs": 1, "batch_size": 4, "warmup_epochs": 0}
# Notebooks 02-04 share their runs (same preset and overrides); the suite gives all three these smaller
# overrides, so the tables are filled by the same cells in about a quarter of the time. `make nbval` runs
# every notebook with its stored defaults.
SMALL_TABLE_RUNS = {"pretrain_overrides": {"max_images": 32, "epochs": 1, "batch_size": 8},
                    "finetune_overrides": {"max_train_images": 16, "epochs": 2, "batch_size": 8, "warmup_epochs": 1}}
SMALL_PARAMETERS = {
    "00_walkthrough.ipynb": {"pretrain_settings": {**SMALL_PRETRAINING, "n_partitions": 2}, "n_images": 2,
                             "finetune_settings": {"image_size": 64, "epochs": 1, "batch_size": 4, "warmup_epochs": 0,
                                                   "max_train_images": 8}},
    "01_selective_masking_explained.ipynb": {"pretrain_overrides": {**SMALL_PRETRAINING, "n_partitions": 3},
                                             "n_images": 2},
    "02_reproduce_tables.ipynb": SMALL_TABLE_RUNS,
    "03_per_class_gains.ipynb": SMALL_TABLE_RUNS,
    "04_budget_sweep.ipynb": SMALL_TABLE_RUNS,
}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """One runs folder for all notebooks, as a user has: later notebooks reuse earlier runs."""
    return tmp_path_factory.mktemp("runs")


def parameters_cell(notebook):
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell is tagged 'parameters'"
    return tagged[0]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_with_literal_parameters(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
    cell = parameters_cell(notebook)
    assert notebook.cells.index(cell) <= 2, "the parameters cell is near the top"
    for statement in ast.parse(cell.source).body:
        assert isinstance(statement, ast.Assign), f"only assignments in the parameters cell: {ast.dump(statement)}"
        ast.literal_eval(statement.value)  # literals only: derived values belong in the next cell
    assert "runs_root" in cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_end_to_end(path, runs_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SELMASK_NO_PROGRESS", "1")
    output = tmp_path / path.name
    parameters = {"runs_root": str(runs_root), **SMALL_PARAMETERS.get(path.name, {})}
    figures = tmp_path / "new" / "figures"  # a figures_dir that does not exist yet is created
    if path.name[:2] in ("00", "03", "04"):
        parameters["figures_dir"] = str(figures)
    papermill.execute_notebook(str(path), str(output), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(path.parent))
    executed = json.loads(output.read_text())
    outputs = [out for cell in executed["cells"] for out in cell.get("outputs", [])]
    assert [out for out in outputs if out.get("output_type") == "error"] == []
    # no widgets, progress bars or viewers (they stay behind as stale lines and weigh megabytes) ...
    assert not [out for out in outputs if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    assert "widgets" not in executed["metadata"], f"{path.name} saved widget state"
    # ... and every figure is kept, even under the Agg backend of a batch run
    if "plt.show()" in path.read_text():
        assert [out for out in outputs if "image/png" in out.get("data", {})], f"{path.name} kept no figure"
    text = "".join("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
                   for out in outputs)
    if path.name.startswith("02_"):  # every comparison has an interval method and a verdict
        assert "paired bootstrap over test images" in text
        assert any(word in text for word in ("better", "worse", "not distinguishable"))
    if path.name.startswith("03_"):  # claim (2) as a number, or why it is not computed
        assert "rank correlation of baseline IoU and gain:" in text
        assert [p.suffix for p in figures.iterdir()] == [".png"]
    if path.name.startswith("04_"):
        check_budget_numbers(text, figures)
    if path.name.startswith("00_"):
        check_walkthrough_numbers(text, figures, n_figures=count_figures(outputs))
    if path.name.startswith("01_"):  # the gallery stands in for the viewer; the overlap is a number
        assert "batch run: no interactive viewer" in text
        assert count_figures(outputs) >= 4  # the run's masks, the gallery, the overlap, the loss shares
        overlap = re.search(r"mean overlap between consecutive steps: selective ([0-9.]+), random ([0-9.]+)", text)
        assert overlap and all(0 <= float(value) <= 1 for value in overlap.groups())


def count_figures(outputs) -> int:
    return len([out for out in outputs if "image/png" in out.get("data", {})])


def check_walkthrough_numbers(text: str, figures: Path, n_figures: int) -> None:
    """The walkthrough's figures are kept, and the per-class IoU it saved is its run's, averaging to the printed mIoU."""
    from selmask_lib.data.synthetic_scenes import CLASS_NAMES
    from selmask_lib.results import read_results

    assert n_figures >= 6  # grid, loss curves, reconstruction, scoring, random vs selective, per-class IoU
    assert (figures / "walkthrough_reconstruction.png").stat().st_size > 0
    assert "selective mask:" in text and "random mask:" in text
    per_class = pd.read_csv(figures / "walkthrough_per_class_iou.csv", index_col="class")["IoU (%)"]
    assert list(per_class.index) == list(CLASS_NAMES)
    results = read_results(Path(re.search(r"run folder: (\S+)", text).group(1)) / "results.json")
    expected = pd.Series(results["per_class_iou"], dtype=float).mul(100).round(1)
    pd.testing.assert_series_equal(per_class, expected, check_names=False)
    printed = float(re.search(r"test mIoU: ([0-9.]+) %", text).group(1))
    assert printed == pytest.approx(100 * results["miou"], abs=0.05)
    assert printed == pytest.approx(per_class.mean(), abs=0.1)  # mIoU: the mean over the classes scored


def check_budget_numbers(text: str, figures: Path) -> None:
    """Notebook 04 saved the numbers it shows: one row per budget and relation, each mIoU inside its interval,
    and each gain the difference of the two runs of the other table, with its verdict."""
    from selmask_lib.statistics import verdict

    sweep = pd.read_csv(figures / "budget_sweep_toy_beet_field_toy_maize_field_smoke.csv")
    gains = pd.read_csv(figures / "budget_gains_toy_beet_field_toy_maize_field_smoke.csv")
    assert (figures / "budget_toy_beet_field_toy_maize_field_smoke.png").stat().st_size > 0
    assert sorted(zip(sweep["fraction"], sweep["relation"])) == [(0.5, "cross"), (0.5, "self"),
                                                                 (1.0, "cross"), (1.0, "self")]
    assert ((sweep["lower"] <= sweep["miou"]) & (sweep["miou"] <= sweep["upper"])).all()
    assert sweep.loc[sweep["fraction"] == 0.5, "image_steps"].max() < sweep.loc[sweep["fraction"] == 1.0,
                                                                                 "image_steps"].min()
    by_run = sweep.set_index(["fraction", "relation"])["miou"]
    for _, row in gains.iterrows():  # the gain is self - cross of the runs in the other table
        assert row["gain"] == pytest.approx(by_run[(row["fraction"], "self")] - by_run[(row["fraction"], "cross")])
        assert row["verdict"] == verdict(row["lower"], row["upper"])
    assert "claim (3), self-pretraining beats cross-pretraining at a small budget:" in text
    assert all(f"{fraction:.0%} of the budget" in text for fraction in gains["fraction"])


def run_expecting_error(path, tmp_path, parameters):
    """Execute a notebook that should stop; return the error's text (name and value)."""
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters=parameters,
                                   kernel_name="python3", progress_bar=False, cwd=str(path.parent))
    return f"{error.value.ename}: {error.value.evalue}", error.value.exec_count


def test_a_list_passed_as_text_stops_in_the_first_cell_after_the_parameters(tmp_path, runs_root):
    path = next(p for p in NOTEBOOKS if p.name.startswith("02_"))
    message, cell = run_expecting_error(path, tmp_path, {"runs_root": str(runs_root), "datasets": '["synthetic"]'})
    assert "SelmaskError" in message and "parameter 'datasets'" in message and "-y" in message
    assert cell == 3  # 1: the parameters, 2: the injected parameters, 3: the first cell after them


def test_an_unknown_dataset_and_a_missing_imagenet_baseline_name_their_parameter(tmp_path, runs_root):
    path = next(p for p in NOTEBOOKS if p.name.startswith("03_"))
    message, _ = run_expecting_error(path, tmp_path, {"runs_root": str(runs_root), "dataset": "vocc"})
    assert "parameter 'dataset'" in message and "vocc" in message
    message, _ = run_expecting_error(path, tmp_path, {"runs_root": str(runs_root), "baseline": "imagenet",
                                                      "imagenet_weights": str(tmp_path / "none.pth")})
    assert "parameter 'baseline' is 'imagenet'" in message and "none.pth" in message


def test_reproduce_notebook_compares_injected_maskings(runs_root, tmp_path, monkeypatch):
    # papermill -p extra_maskings '["random_fixed"]': one more column, the paper's runs reused from above
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SELMASK_NO_PROGRESS", "1")
    path = next(p for p in NOTEBOOKS if p.name.startswith("02_"))
    output = tmp_path / path.name
    papermill.execute_notebook(str(path), str(output),
                               parameters={"runs_root": str(runs_root), "extra_maskings": ["random_fixed"],
                                           **SMALL_TABLE_RUNS},
                               kernel_name="python3", progress_bar=False, cwd=str(path.parent))
    tables = [out["data"]["text/plain"] for cell in json.loads(output.read_text())["cells"]
              for out in cell.get("outputs", []) if out.get("output_type") == "execute_result"]
    assert any("random_fixed_ir_self" in "".join(text) and "Selective IR (self)" in "".join(text) for text in tables)


@pytest.mark.parametrize("parameters, named", [
    ({"partner": "toy_beet_field"}, "parameter 'partner' is 'toy_beet_field', the dataset itself"),
    ({"fractions": "[0.5, 1.0]"}, "parameter 'fractions' must be a list"),
    ({"fractions": [0.5, 2]}, "parameter 'fractions' has 2, outside (0, 1]"),
])
def test_budget_notebook_stops_at_a_bad_parameter_naming_it(tmp_path, runs_root, parameters, named):
    path = next(p for p in NOTEBOOKS if p.name.startswith("04_"))
    message, cell = run_expecting_error(path, tmp_path, {"runs_root": str(runs_root), **parameters})
    assert "SelmaskError" in message and named in message
    assert cell == 3  # the first cell after the (injected) parameters


def test_a_wrong_walkthrough_setting_stops_in_the_first_cell_after_the_parameters(tmp_path, runs_root):
    path = next(p for p in NOTEBOOKS if p.name.startswith("00_"))
    message, cell = run_expecting_error(path, tmp_path, {"runs_root": str(runs_root),
                                                         "pretrain_settings": {"epoch": 1}})
    assert "SelmaskError" in message and "parameter 'pretrain_settings'" in message and "epoch" in message
    assert cell == 3


def test_patches_notebook_at_two_partitions_says_why_there_is_no_overlap(tmp_path, runs_root, monkeypatch):
    # Review finding: at K = 2 only one selective step saves masks, and the overlap cell drew an
    # empty plot and printed "nan". It now says why there is nothing to compare.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SELMASK_NO_PROGRESS", "1")
    path = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    parameters = {"runs_root": str(runs_root), "n_images": 2, "pretrain_overrides": {**SMALL_PRETRAINING, "n_partitions": 2}}
    output = tmp_path / path.name
    papermill.execute_notebook(str(path), str(output), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(path.parent))
    executed = json.loads(output.read_text())
    text = "".join("".join(out.get("text", "")) for cell in executed["cells"] for out in cell.get("outputs", []))
    assert "no two consecutive steps to compare" in text and "nan" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_sees_every_parameter(path):
    # Found making figures/: papermill could not parse `pretrain_overrides = {...}  # ... {} = ...`
    # (an "=" in the comment), so the report's empty overrides were dropped and small runs trained.
    names = {statement.targets[0].id for statement in ast.parse(parameters_cell(nbformat.read(path, 4)).source).body}
    assert names <= set(papermill.inspect_notebook(str(path)))


def stored_parameters(path) -> dict:
    cell = parameters_cell(nbformat.read(path, 4))
    return {statement.targets[0].id: ast.literal_eval(statement.value) for statement in ast.parse(cell.source).body}


def test_stored_defaults_of_the_table_notebooks_share_their_runs_and_make_valid_configs():
    # The suite runs 02-04 with SMALL_TABLE_RUNS: their stored defaults are checked here, without training,
    # and in full by `make nbval`.
    from selmask_lib.config import finetune_preset, pretrain_preset

    stored = {path.name[:2]: stored_parameters(path) for path in NOTEBOOKS if path.name[:2] in ("02", "03", "04")}
    shared = ("preset", "seeds", "pretrain_overrides", "finetune_overrides", "runs_root", "data_roots")
    assert len(stored) == 3
    for name in shared:  # so 03 and 04 reuse 02's runs, as README says
        assert stored["03"][name] == stored["02"][name] == stored["04"][name], name
    assert stored["03"]["dataset"] in stored["02"]["datasets"] and stored["04"]["dataset"] == stored["03"]["dataset"]
    dataset = stored["03"]["dataset"]
    assert stored["04"]["partner"] == stored["02"]["cross_pairs"][dataset]  # 04's full-budget cross run is 02's
    pretraining = pretrain_preset(stored["02"]["preset"], dataset, **stored["02"]["pretrain_overrides"])
    finetuning = finetune_preset(stored["02"]["preset"], dataset, **stored["02"]["finetune_overrides"])
    assert pretraining.epochs == stored["02"]["pretrain_overrides"]["epochs"]
    assert finetuning.epochs == stored["02"]["finetune_overrides"]["epochs"]
    for name, value in SMALL_TABLE_RUNS.items():  # the suite's settings are smaller, over the same keys
        assert set(value) == set(stored["02"][name])
