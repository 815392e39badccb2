"""Second reading of the budget sweep, the report, the walkthrough helpers: defects found, each pinned by a test."""

import dataclasses
import json

import nbformat
import pytest
from fake_notebooks import fake_notebook

import selmask_lib.data.embedded as embedded
from selmask_lib.budget import budget_sweep, same_domain_partner
from selmask_lib.config import pretrain_preset
from selmask_lib.errors import SelmaskError
from selmask_lib.reconstruction import held_out_indices
from selmask_lib.report import write_report


# --------------------------------------------------------------------------- the same-domain control


@pytest.fixture
def small_generator(monkeypatch):
    """Embedded trees at the tests' tiny size (same_domain_partner writes the generator's default size)."""
    generate = embedded.generate_embedded
    monkeypatch.setattr(embedded, "generate_embedded",
                        lambda name, root, seed=0, **_: generate(name, root, seed=seed, **embedded.SMALL))


def test_the_same_domain_control_draws_the_datasets_own_domain(small_generator, tmp_path):
    """Notebook 04's default dataset is toy_beet_field: its control partner must be beet fields, not shapes."""
    partner = same_domain_partner(tmp_path / "control", seed=1, dataset="toy_beet_field")
    reference = embedded.ensure_embedded("toy_beet_field", tmp_path / "reference", seed=1, **embedded.SMALL)
    drawn = (partner / "images" / "train_00000.jpg").read_bytes()
    assert drawn == (reference / "VOCdevkit" / "VOC2012" / "JPEGImages" / "train_00000.jpg").read_bytes()


def test_the_same_domain_control_is_drawn_again_when_its_generator_changed(small_generator, tmp_path, monkeypatch):
    """Review finding: a control folder written by an older generator was reused forever."""
    partner = same_domain_partner(tmp_path / "control", seed=1, dataset="toy_beet_field")
    first = (partner / "images" / "train_00000.jpg").read_bytes()
    assert same_domain_partner(tmp_path / "control", seed=1, dataset="toy_beet_field") == partner  # reused
    old_domain = embedded.get_domain("toy_beet_field")
    changed = dataclasses.replace(old_domain, version=old_domain.version + 1,
                                  draw=lambda seed, *args: old_domain.draw(seed + 1, *args))
    monkeypatch.setitem(embedded.DOMAINS, "toy_beet_field", changed)
    again = same_domain_partner(tmp_path / "control", seed=1, dataset="toy_beet_field")
    assert again == partner and (again / "images" / "train_00000.jpg").read_bytes() != first
    assert json.loads((again / "CONTROL_INFO.json").read_text())["generator_version"] == old_domain.version + 1
    assert [path.name for path in tmp_path.iterdir()] == ["control"]  # nothing left behind


def test_the_same_domain_control_of_a_dataset_without_generator_names_the_parameter(tmp_path):
    with pytest.raises(SelmaskError, match="parameter 'dataset'.*'voc'"):
        same_domain_partner(tmp_path / "control", dataset="voc")


def test_notebook_04_builds_its_control_from_the_swept_dataset(small_generator, tmp_path, monkeypatch):
    """Its checks cell (nothing trains there) with the control on: the partner folder is the dataset's own."""
    import papermill

    monkeypatch.setenv("SELMASK_DATA_DIR", str(tmp_path / "data"))
    same_domain_partner(dataset="toy_beet_field")  # cached small, where the notebook looks for it
    notebook = nbformat.read("notebooks/04_budget_sweep.ipynb", 4)
    notebook.cells = notebook.cells[:next(i for i, cell in enumerate(notebook.cells) if "budget_sweep(" in cell.source)]
    nbformat.write(notebook, tmp_path / "04_head.ipynb")
    papermill.execute_notebook(str(tmp_path / "04_head.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path),
                               parameters={"partner": "folder", "same_domain_control": True})
    printed = json.dumps([cell.get("outputs") for cell in nbformat.read(tmp_path / "out.ipynb", 4).cells])
    assert "partner: the same-domain control" in printed and "toy_beet_field_seed1_folder" in printed


# --------------------------------------------------------------------------- bad parameters, one line


@pytest.mark.parametrize("key", ["seed", "strategy", "data_root"])
def test_a_pretrain_override_the_sweep_sets_itself_is_one_line_naming_it(key, tmp_path):
    with pytest.raises(SelmaskError, match=f"parameter 'pretrain_overrides'.*'{key}'"):
        budget_sweep("synthetic", "toy_street", fractions=[1.0], preset="smoke", runs_root=tmp_path,
                     data_roots={"synthetic": str(tmp_path), "toy_street": str(tmp_path)},
                     pretrain_overrides={key: 1})


@pytest.mark.parametrize("key", ["seed", "init", "pretrained", "data_root"])
def test_a_finetune_override_the_sweep_sets_itself_is_refused_not_ignored(key, tmp_path):
    with pytest.raises(SelmaskError, match=f"parameter 'finetune_overrides'.*'{key}'"):
        budget_sweep("synthetic", "toy_street", fractions=[1.0], preset="smoke", runs_root=tmp_path,
                     data_roots={"synthetic": str(tmp_path), "toy_street": str(tmp_path)},
                     finetune_overrides={key: 1})


def test_a_run_without_held_out_images_is_one_line_naming_val_fraction(small_synthetic_root):
    """val_fraction = 0 is a valid run; the walkthrough and the viewer then have no held-out image to show."""
    cfg = pretrain_preset("smoke", "synthetic", strategy="selective", data_root=str(small_synthetic_root),
                          val_fraction=0.0)
    with pytest.raises(SelmaskError, match="val_fraction"):
        held_out_indices(cfg)


def test_walkthrough_shows_the_mask_of_another_patch_count(small_synthetic_root, tmp_path):
    """Its cell 'random_masks[0].view(8, 8)' broke for any n_patches but 64 (pretrain_settings is a parameter).

    The notebook's cells up to the first exercise (nothing trains there), run with 100 nominal patches.
    """
    import papermill

    notebook = nbformat.read("notebooks/00_walkthrough.ipynb", 4)
    first_exercise = next(i for i, cell in enumerate(notebook.cells) if "your code for exercise 1" in cell.source)
    notebook.cells = notebook.cells[:first_exercise]
    nbformat.write(notebook, tmp_path / "00_head.ipynb")
    settings = {"image_size": 64, "score_size": 64, "n_patches": 100, "n_partitions": 2, "max_images": 24}
    papermill.execute_notebook(str(tmp_path / "00_head.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path),
                               parameters={"data_root": str(small_synthetic_root), "runs_root": str(tmp_path),
                                           "pretrain_settings": settings})
    mask_cell = next(cell for cell in nbformat.read(tmp_path / "out.ipynb", 4).cells
                     if "random_masks = sm.random_mask" in cell.source)
    printed = mask_cell.outputs[-1]["data"]["text/plain"]  # the mask as a 9 x 9 tensor of 0 / 1
    assert printed.count("[") == 1 + 9 and all(row.count(",") == 8 for row in printed.split("],")[:-1])


# --------------------------------------------------------------------------- the report's relative paths


def test_report_data_roots_are_read_from_where_the_command_ran(tmp_path, monkeypatch):
    """The notebooks run in the notebooks folder: a relative --data-root must not be read from there."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    fake_notebook(notebooks / "01_selective_masking_explained.ipynb",
                  'dataset = ""\ndata_root = None\ndata_roots = {}\nfigures_dir = None',
                  'import json\nfrom pathlib import Path\n'
                  'Path(figures_dir, "roots.json").write_text(json.dumps([data_root, data_roots]))')
    monkeypatch.chdir(tmp_path)
    write_report(["a"], preset="smoke", runs_root="runs", figures_dir="figures", cross_pairs={},
                 data_roots={"a": "mydata"}, notebooks_dir=notebooks)
    data_root, data_roots = json.loads((tmp_path / "figures" / "roots.json").read_text())
    expected = str((tmp_path / "mydata").resolve())
    assert data_root == expected and data_roots == {"a": expected}


def test_report_refuses_a_bad_fraction_before_running_any_notebook(tmp_path):
    """--fractions is read by the last notebook (04): checked at the end, it cost every run before it."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    fake_notebook(notebooks / "00_walkthrough.ipynb", 'figures_dir = None',
                  'from pathlib import Path\nPath(figures_dir, "ran").write_text("yes")')
    with pytest.raises(SelmaskError, match="parameter 'fractions'"):
        write_report(["a", "b"], runs_root=tmp_path / "runs", figures_dir=tmp_path / "figures",
                     cross_pairs={"a": "b", "b": "a"}, fractions=[0.5, 1.5], notebooks_dir=notebooks)
    assert not (tmp_path / "figures" / "ran").exists()


def test_report_refuses_a_dataset_without_data_before_running_any_notebook(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    fake_notebook(notebooks / "00_walkthrough.ipynb", 'figures_dir = None',
                  'from pathlib import Path\nPath(figures_dir, "ran").write_text("yes")')
    with pytest.raises(SelmaskError, match="'voc'.*--data-root voc=DIR"):
        write_report(["voc"], runs_root=tmp_path / "runs", figures_dir=tmp_path / "figures",
                     notebooks_dir=notebooks)
    assert not (tmp_path / "figures" / "ran").exists()


def test_a_failing_notebook_is_one_line_naming_it_and_its_error(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    fake_notebook(notebooks / "00_walkthrough.ipynb", 'figures_dir = None',
                  'from selmask_lib.errors import SelmaskError\nraise SelmaskError("parameter \'x\' is wrong")')
    named = r"00_walkthrough.ipynb failed: SelmaskError: parameter 'x' is wrong"
    with pytest.raises(SelmaskError, match=named) as error:
        write_report(["a"], runs_root=tmp_path / "runs", figures_dir=tmp_path / "figures", cross_pairs={},
                     notebooks_dir=notebooks)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("seeds", [[1, 1], [1.5, 2], ["1"], [True]])
def test_repeated_or_non_integer_seeds_are_one_line_naming_the_parameter(seeds, tmp_path):
    """[1, 1] ran one run twice and budget_curves gave it a t-interval of zero width; 1.5 became seed 1."""
    with pytest.raises(SelmaskError, match="parameter 'seeds'"):
        budget_sweep("synthetic", "toy_street", fractions=[1.0], preset="smoke", runs_root=tmp_path, seeds=seeds,
                     data_roots={"synthetic": str(tmp_path), "toy_street": str(tmp_path)})
