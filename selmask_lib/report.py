"""Every notebook of the kit, executed for a set of datasets, into one folder of figures and tables.

``selmask reproduce --figures figures`` calls :func:`write_report`. It runs
the notebooks with papermill, in order, each with the parameters it declares
(read from its ``parameters`` cell), so that:

- ``02_reproduce_tables`` makes the table of every dataset at once;
- ``01_selective_masking_explained`` and ``03_per_class_gains`` run once per
  dataset;
- ``04_budget_sweep`` runs once per dataset whose cross partner is among the
  datasets (both directions of a pair, which share their pretraining runs);
- ``00_walkthrough`` runs once, with its own defaults.

Every notebook writes its PNG figures and numeric CSV tables to the same
``figures_dir`` and shares one ``runs_root``, so no run is trained twice.
The executed notebooks are saved next to the figures, and ``README.md`` there
says for each one the command, preset, seeds, parameters, commit and wall
time: a reader can tell what made every file, and rerun it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .config import EMBEDDED_DATASETS, PAPER_SEED
from .errors import SelmaskError

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
README = "README.md"


@dataclass(frozen=True)
class NotebookRun:
    """One notebook to execute: which, under what name, with which parameters (before filtering)."""

    notebook: str                 # file name in the notebooks folder
    output: str                   # executed copy's file name in figures_dir
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ExecutedNotebook:
    run: NotebookRun
    parameters: dict[str, Any]    # what the notebook was given: the plan's values it declares
    seconds: float


def report_plan(datasets: Sequence[str], preset: str, seeds: Sequence[int], runs_root: str,
                figures_dir: str, cross_pairs: Mapping[str, str],
                data_roots: Optional[Mapping[str, Optional[str]]] = None,
                fractions: Optional[Sequence[float]] = None) -> list[NotebookRun]:
    """The notebooks to run for ``datasets``, in order, with the parameters each may take.

    Pure: nothing is executed. A parameter a notebook does not declare is
    dropped when it runs (:func:`declared_parameters`), so one plan fits
    notebooks that take fewer.
    """
    if not datasets:
        raise SelmaskError("reproduce --figures: no dataset given")
    given_roots = dict(data_roots or {})
    roots = {name: given_roots.get(name) for name in datasets}
    # The budget sweep runs for pairs whose both sides were asked for; the table's cross column
    # needs only that the partner can be pretrained on: listed, embedded, or given a data root.
    pairs = {name: partner for name, partner in cross_pairs.items() if name in datasets and partner in datasets}
    table_pairs = {name: partner for name, partner in cross_pairs.items() if name in datasets
                   and (partner in datasets or partner in EMBEDDED_DATASETS or given_roots.get(partner) is not None)}
    table_roots = {**roots, **{partner: given_roots.get(partner) for partner in table_pairs.values()}}
    # The preset as it is: a notebook's stored overrides size its own quick run, not the report's.
    shared = dict(preset=preset, seeds=list(seeds), runs_root=runs_root, figures_dir=figures_dir,
                  pretrain_overrides={}, finetune_overrides={})
    plan = [NotebookRun("00_walkthrough.ipynb", "00_walkthrough.ipynb",
                        dict(runs_root=runs_root, figures_dir=figures_dir)),
            NotebookRun("02_reproduce_tables.ipynb", "02_reproduce_tables.ipynb",
                        dict(shared, datasets=list(datasets), data_roots=table_roots, cross_pairs=table_pairs))]
    for dataset in datasets:
        one = dict(shared, dataset=dataset, data_root=roots[dataset], data_roots=roots)
        plan.append(NotebookRun("01_selective_masking_explained.ipynb",
                                f"01_selective_masking_explained-{dataset}.ipynb", one))
        plan.append(NotebookRun("03_per_class_gains.ipynb", f"03_per_class_gains-{dataset}.ipynb", one))
        if dataset in pairs:
            sweep = dict(one, partner=pairs[dataset], **({"fractions": list(fractions)} if fractions else {}))
            plan.append(NotebookRun("04_budget_sweep.ipynb", f"04_budget_sweep-{dataset}.ipynb", sweep))
    return plan


def declared_parameters(path: Path) -> set[str]:
    """Names in the notebook's ``parameters`` cell (papermill reads them without running anything)."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def write_report(datasets: Sequence[str], preset: str = "demo", seeds: Iterable[int] = (PAPER_SEED,),
                 runs_root: str | Path = "runs", figures_dir: str | Path = "figures",
                 cross_pairs: Optional[Mapping[str, str]] = None,
                 data_roots: Optional[Mapping[str, Optional[str]]] = None,
                 fractions: Optional[Sequence[float]] = None, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                 command: str = "") -> list[ExecutedNotebook]:
    """Execute every notebook of the plan into ``figures_dir`` and write its ``README.md``; return what ran.

    A notebook missing from ``notebooks_dir`` is skipped (a clone may hold
    fewer); a notebook that fails stops the report with its error, after the
    README lists what ran before it.
    """
    import papermill

    from .budget import check_fractions
    from .reproduction import CROSS_PAIRS

    fractions = None if fractions is None else check_fractions(fractions)  # before hours of the other notebooks
    check_data_roots(datasets, data_roots or {})
    figures_dir, notebooks_dir = Path(figures_dir), Path(notebooks_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    # The notebooks run in notebooks_dir: a folder given relative to here must reach them absolute.
    data_roots = {name: None if root is None else str(Path(root).expanduser().resolve())
                  for name, root in (data_roots or {}).items()}
    plan = report_plan(list(datasets), preset, list(seeds), path_from(notebooks_dir, runs_root),
                       path_from(notebooks_dir, figures_dir), CROSS_PAIRS if cross_pairs is None else cross_pairs,
                       data_roots, fractions)
    executed: list[ExecutedNotebook] = []
    try:
        for run in plan:
            source = notebooks_dir / run.notebook
            if not source.is_file():
                continue
            declared = declared_parameters(source)
            given = {name: value for name, value in run.parameters.items() if name in declared}
            started = time.perf_counter()
            try:
                papermill.execute_notebook(str(source), str(figures_dir / run.output), parameters=given,
                                           kernel_name="python3", progress_bar=False, cwd=str(notebooks_dir))
            except papermill.PapermillExecutionError as error:  # the cell's error, not the kernel's traceback
                raise SelmaskError(f"reproduce --figures: {run.notebook} failed: {error.ename}: {error.evalue} "
                                   f"(its executed copy: {figures_dir / run.output})") from error
            record_paths_as_in_a_clone(figures_dir / run.output, run)
            executed.append(ExecutedNotebook(run, given, time.perf_counter() - started))
    finally:
        write_readme(figures_dir, executed, command, preset, list(seeds), list(datasets))
    return executed


def record_paths_as_in_a_clone(executed: Path, run: NotebookRun) -> None:
    """Papermill records the absolute paths it read and wrote: keep the ones a clone has instead."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    record = notebook.metadata.get("papermill", {})
    record.update(input_path=f"notebooks/{run.notebook}", output_path=run.output)
    nbformat.write(notebook, executed)


def path_from(start: Path, path: str | Path) -> str:
    """``path`` as the notebooks running in ``start`` reach it: relative when it can be, else absolute.

    Relative, the executed notebooks and their tables name ``../runs/...``, not
    the folder of the machine that made them, and stay true in a clone.
    """
    target = Path(path).expanduser().resolve()
    try:
        return os.path.relpath(target, Path(start).resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return str(target)


def check_data_roots(datasets: Sequence[str], data_roots: Mapping[str, Optional[str]]) -> None:
    """Every dataset but the embedded ones needs its folder: refused before the first notebook, not inside one."""
    from .config import DATASET_NAMES, EMBEDDED_DATASETS

    for name in datasets:
        if name in DATASET_NAMES and name not in EMBEDDED_DATASETS and data_roots.get(name) is None:
            raise SelmaskError(f"reproduce --figures: dataset {name!r} has no data root; give --data-root {name}=DIR")


def write_readme(figures_dir: Path, executed: Sequence[ExecutedNotebook], command: str, preset: str,
                 seeds: Sequence[int], datasets: Sequence[str]) -> Path:
    """``figures_dir/README.md``: what made each file (command, preset, seeds, commit, parameters, time)."""
    from .provenance import git_state

    commit, dirty = git_state(Path(__file__).resolve().parent.parent)  # the checkout holding selmask_lib/
    made = "unknown commit" if commit is None else commit[:12] + (" with uncommitted changes" if dirty else "")
    lines = [
        "# Figures and tables",
        "",
        "Made by the kit's notebooks, executed with papermill; every PNG and CSV here comes from one of them.",
        "",
        f"- command: `{command or 'selmask_lib.report.write_report(...)'}`",
        f"- preset: `{preset}`; seeds: {', '.join(str(seed) for seed in seeds)}; "
        f"datasets: {', '.join(datasets)}",
        f"- code: {made}",
        f"- total time: {sum(item.seconds for item in executed) / 60:.1f} min "
        "(runs already in the runs folder are reused, not timed again)",
        "- paths in the notebooks and tables are relative to notebooks/, where the notebooks ran",
        "",
        "| executed notebook | from | parameters | minutes |",
        "|---|---|---|---|",
    ]
    for item in executed:
        shown = {name: value for name, value in item.parameters.items() if name not in ("runs_root", "figures_dir")}
        lines.append(f"| [{item.run.output}]({item.run.output}) | notebooks/{item.run.notebook} | "
                     f"`{json.dumps(shown)}` | {item.seconds / 60:.1f} |")
    figures = sorted(path.name for path in figures_dir.iterdir() if path.suffix in (".png", ".csv"))
    lines += ["", "Files: " + (", ".join(f"[{name}]({name})" for name in figures) or "none"), ""]
    path = figures_dir / README
    path.write_text("\n".join(lines))
    return path
