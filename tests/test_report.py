"""`selmask reproduce --figures`: which notebooks run with which parameters, and the README that records them."""

import json

import pytest
from fake_notebooks import fake_notebook

from selmask_lib.cli import main
from selmask_lib.errors import SelmaskError
from selmask_lib.report import report_plan, write_report
from selmask_lib.reproduction import CROSS_PAIRS

PAIRS = {"a": "b", "b": "a", "c": "d", "d": "c"}


def plan_for(datasets, **changes):
    arguments = dict(preset="demo", seeds=[1, 2], runs_root="/runs", figures_dir="/figures", cross_pairs=PAIRS)
    return report_plan(datasets, **{**arguments, **changes})


def test_plan_runs_the_table_once_and_the_other_notebooks_per_dataset():
    plan = plan_for(["a", "b", "c"])
    assert [run.output for run in plan] == [
        "00_walkthrough.ipynb", "02_reproduce_tables.ipynb",
        "01_selective_masking_explained-a.ipynb", "03_per_class_gains-a.ipynb", "04_budget_sweep-a.ipynb",
        "01_selective_masking_explained-b.ipynb", "03_per_class_gains-b.ipynb", "04_budget_sweep-b.ipynb",
        "01_selective_masking_explained-c.ipynb", "03_per_class_gains-c.ipynb",  # c's partner d is not asked for
    ]
    table = plan[1].parameters
    assert table["datasets"] == ["a", "b", "c"] and table["cross_pairs"] == {"a": "b", "b": "a"}
    assert table["seeds"] == [1, 2] and table["preset"] == "demo" and table["figures_dir"] == "/figures"
    # every notebook runs the preset as it is, not the small runs its stored overrides make
    assert all(run.parameters["pretrain_overrides"] == {} for run in plan[1:])
    assert all(run.parameters["finetune_overrides"] == {} for run in plan[1:])
    sweep = plan[4].parameters
    assert sweep["dataset"] == "a" and sweep["partner"] == "b" and "fractions" not in sweep
    assert plan_for(["a", "b"], fractions=[0.5, 1.0])[4].parameters["fractions"] == [0.5, 1.0]


def test_the_table_keeps_the_cross_column_when_the_partner_can_be_pretrained_on():
    # Review finding: `--datasets toy_street` alone dropped the cross column although its
    # partner is embedded (generated when needed); a partner with a data root counts too.
    table = plan_for(["toy_street"], cross_pairs=CROSS_PAIRS)[1].parameters
    assert table["cross_pairs"] == {"toy_street": "toy_tabletop"}
    assert table["data_roots"] == {"toy_street": None, "toy_tabletop": None}
    plan = plan_for(["a", "c"], data_roots={"d": "/data/d"})
    assert plan[1].parameters["cross_pairs"] == {"c": "d"}  # a's partner b: not listed, no root
    assert plan[1].parameters["data_roots"] == {"a": None, "c": None, "d": "/data/d"}
    assert not any(run.notebook == "04_budget_sweep.ipynb" for run in plan)  # sweeps need both listed


def test_plan_needs_a_dataset():
    with pytest.raises(SelmaskError, match="no dataset"):
        plan_for([])


def test_write_report_executes_the_notebooks_it_finds_and_records_them(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    fake_notebook(notebooks / "02_reproduce_tables.ipynb",
                  'datasets = []\npreset = "smoke"\nseeds = [0]\nfigures_dir = None\nruns_root = "runs"',
                  'from pathlib import Path\n'
                  'Path(figures_dir, "table.csv").write_text(",".join(datasets) + f";{preset};{seeds}")')
    fake_notebook(notebooks / "01_selective_masking_explained.ipynb",  # declares no seeds: none is injected
                  'dataset = ""\nfigures_dir = None',
                  'from pathlib import Path\nPath(figures_dir, f"patches_{dataset}.png").write_bytes(b"png")')
    figures = tmp_path / "figures"
    executed = write_report(["a", "b"], preset="demo", seeds=[7], runs_root=tmp_path / "runs", figures_dir=figures,
                            cross_pairs=PAIRS, notebooks_dir=notebooks, command="selmask reproduce --figures f")

    assert [item.run.output for item in executed] == [
        "02_reproduce_tables.ipynb", "01_selective_masking_explained-a.ipynb",
        "01_selective_masking_explained-b.ipynb"]  # 00, 03 and 04 are not in this notebooks folder
    assert (figures / "table.csv").read_text() == "a,b;demo;[7]"
    assert (figures / "patches_a.png").is_file() and (figures / "patches_b.png").is_file()
    # Folders as the notebooks (run in notebooks/) reach them: no path of the machine that made them.
    assert executed[1].parameters == {"dataset": "a", "figures_dir": "../figures"}
    assert executed[0].parameters["runs_root"] == "../runs"
    assert str(tmp_path) not in (figures / "02_reproduce_tables.ipynb").read_text()
    injected = json.loads((figures / "01_selective_masking_explained-a.ipynb").read_text())["cells"][1]["source"]
    assert "seeds" not in "".join(injected) and "dataset = \"a\"" in "".join(injected)

    readme = (figures / "README.md").read_text()
    assert "`selmask reproduce --figures f`" in readme
    assert "preset: `demo`; seeds: 7; datasets: a, b" in readme
    assert "- code: " in readme and "unknown commit" not in readme  # the kit's own checkout is a git repo
    assert "[01_selective_masking_explained-b.ipynb](01_selective_masking_explained-b.ipynb)" in readme
    assert '`{"dataset": "b"}`' in readme  # parameters shown without this machine's paths
    assert str(tmp_path) not in readme
    assert "[patches_a.png](patches_a.png)" in readme and "[table.csv](table.csv)" in readme


def test_figures_refuses_the_table_only_options(tmp_path, capsys):
    code = main(["reproduce", "--figures", str(tmp_path / "f"), "--masking", "random_fixed"])
    assert code != 0
    assert "reproduce --figures runs the notebooks with their own settings; drop --masking" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_fractions_without_figures_is_refused_not_ignored(capsys):
    assert main(["reproduce", "--fractions", "0.5", "1"]) != 0
    assert "reproduce --fractions sets the budget sweep of --figures" in capsys.readouterr().err
