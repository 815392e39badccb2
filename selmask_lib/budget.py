"""Claim (3) as a budget sweep: at a small pretraining budget, does self-pretraining beat cross-pretraining?

For a downstream dataset D, its partner P, and each budget and seed, two
selective-masking pretraining runs are fine-tuned on D with the preset's
fine-tuning: one pretrained on D (self), one on P (cross). The gain self -
cross per budget, with its 95 % interval and verdict, is claim (3) as
numbers (:func:`budget_gains`).

A **budget** is a fraction of the preset's selective pretraining budget,
counted in *image-steps*: training images seen, summed over the K steps'
epochs (validation images not counted). ``scale`` says what shrinks:

* ``"images"`` (default): the pool, ``max_images = fraction x N``, same
  epochs. The default because it keeps everything else of the preset as
  it is: the warm-up and cosine schedule, and the share of the run spent
  scoring (about 1/E of it, sized per preset so selective masking costs
  what random masking costs, see ``config.pretrain_preset``); fewer
  epochs would make scoring a larger share of a smaller run. It is also
  the paper's low-budget case: a small pretraining set.
* ``"epochs"``: E (and the warm-up) times the fraction, all the images.
* ``"both"``: images and epochs each times sqrt(fraction), so image-steps
  still scale by about the fraction.

Image-steps are counted on each run's own pool, so a fraction is of each
domain's own budget (as in the paper, where the cross partner's pool has its
own size); the table keeps the count of every run.

Every run goes through the kit's own :func:`~selmask_lib.pretraining.pretrain`
and :func:`~selmask_lib.finetuning.finetune`, cached in ``runs_root`` by
config hash: calling again only runs what is missing. A pretraining run on
a domain depends only on (domain, budget, seed), so it is D's self run and
the cross run of every dataset that has D as partner: sweeping both
directions of a pair pretrains nothing twice. At fraction 1 the preset's
config is used unchanged, so notebook 02's selective runs are reused too.
"""

from __future__ import annotations

import json
import math
import numbers
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import pandas as pd

from .config import DATASET_NAMES, PAPER_SEED, PRESET_NAMES, PretrainConfig, finetune_preset, pretrain_preset
from .errors import SelmaskError
from .results import load_results

SCALES = ("images", "epochs", "both")
DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)
RELATIONS = ("self", "cross")
SWEEP_COLUMNS = ["dataset", "partner", "fraction", "scale", "relation", "pretrain_dataset", "seed", "images",
                 "epochs", "image_steps", "miou", "lower", "upper", "n_test_images", "pretrain_run", "path"]
GAIN_COLUMNS = ["dataset", "partner", "fraction", "image_steps_self", "image_steps_cross", "gain", "lower",
                "upper", "n", "p_value", "method", "verdict", "note"]


# --------------------------------------------------------------------------- checks


def check_fractions(fractions) -> list[float]:
    """Each budget a number in (0, 1]: a budget above the preset's is another preset, not a fraction."""
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Iterable):
        raise SelmaskError(f"budget sweep: parameter 'fractions' must be a list of numbers in (0, 1], "
                           f"got {fractions!r}")
    checked = []
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise SelmaskError(f"budget sweep: parameter 'fractions' has {fraction!r}, which is not a number")
        if not 0 < fraction <= 1:
            raise SelmaskError(f"budget sweep: parameter 'fractions' has {fraction}, outside (0, 1]")
        checked.append(float(fraction))
    if not checked:
        raise SelmaskError("budget sweep: parameter 'fractions' is empty")
    if len(set(checked)) < len(checked):
        raise SelmaskError(f"budget sweep: parameter 'fractions' repeats a value: {checked}")
    return sorted(checked)


def check_pair(dataset: str, partner: str) -> None:
    """Both registered datasets, and two of them: cross-pretraining on the dataset itself is self."""
    for name, value in (("dataset", dataset), ("partner", partner)):
        if value not in DATASET_NAMES:
            raise SelmaskError(f"budget sweep: parameter '{name}' is {value!r}, not one of "
                               f"{', '.join(DATASET_NAMES)}")
    if partner == dataset:
        raise SelmaskError(f"budget sweep: parameter 'partner' is {partner!r}, the dataset itself; "
                           "cross-pretraining needs another dataset")


def check_data_roots(data_roots: Mapping[str, Optional[str]], datasets: Sequence[str]) -> None:
    """Each dataset has its folder before any run starts, not after the self runs of the first budget."""
    from .data import resolve_data_root

    for name in datasets:
        try:
            resolve_data_root(name, _data_root(data_roots, name))
        except SelmaskError:
            raise SelmaskError(f"budget sweep: parameter 'data_roots' has no folder for {name!r}; "
                               f"give one, e.g. data_roots={{{name!r}: DIR}} (--data-root {name}=DIR)") from None


def check_seeds(seeds) -> list[int]:
    """Integers, none twice: a repeated seed is one run counted twice (a t-interval of zero width)."""
    seeds = list(seeds)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise SelmaskError(f"budget sweep: parameter 'seeds' has {seed!r}, which is not an integer")
    if not seeds:
        raise SelmaskError("budget sweep: parameter 'seeds' is empty")
    if len(set(seeds)) < len(seeds):
        raise SelmaskError(f"budget sweep: parameter 'seeds' repeats a value: {seeds}")
    return [int(seed) for seed in seeds]


# Keys every run of the sweep sets itself: an override of one would collide with it or be lost.
SWEEP_SET_KEYS = {"pretrain_overrides": ("seed", "strategy", "data_root"),
                  "finetune_overrides": ("seed", "init", "pretrained", "data_root")}


def check_overrides(name: str, overrides: Mapping) -> None:
    """Refuse an override of a key the sweep sets per run (the seed, the data folder, what is pretrained)."""
    taken = [key for key in SWEEP_SET_KEYS[name] if key in overrides]
    if taken:
        raise SelmaskError(f"budget sweep: parameter '{name}' sets {', '.join(map(repr, taken))}, which the sweep "
                           "sets for every run (seeds come from 'seeds', folders from 'data_roots')")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SelmaskError(f"budget sweep: parameter '{name}' is {value!r}, not one of {', '.join(choices)}")


# --------------------------------------------------------------------------- budgets


def _half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() sends 2.5 to 2)."""
    return int(math.floor(value + 0.5))


def pool_size(cfg: PretrainConfig) -> int:
    """How many images a run of ``cfg`` pretrains on: the pool, capped at ``max_images``."""
    from .pretrain_data import pretraining_pool

    return len(pretraining_pool(cfg))


def budget_config(base: PretrainConfig, fraction: float, scale: str = "images",
                  n_images: Optional[int] = None) -> PretrainConfig:
    """``base`` shrunk to ``fraction`` of its image-steps (module docstring); ``base`` itself at 1.

    ``n_images``: the pool size of ``base`` (read from its data when None).
    Only the keys that change are set, so a budget equal to the preset's
    keeps the preset's config hash and reuses its runs.
    """
    _check_choice("scale", scale, SCALES)
    if fraction == 1:
        return base
    per_axis = math.sqrt(fraction) if scale == "both" else fraction
    changes = {}
    if scale in ("images", "both"):
        n_images = pool_size(base) if n_images is None else n_images
        wanted = _half_up(per_axis * n_images)
        least = 2 * base.n_partitions if base.val_fraction > 0 else base.n_partitions
        if wanted < least:
            raise SelmaskError(f"budget sweep: parameter 'fractions' has {fraction}, which leaves {wanted} of "
                               f"{n_images} {base.dataset} images, fewer than {least} (K = {base.n_partitions} "
                               "partitions, each with a training and a validation image)")
        if wanted < n_images:  # rounded up to the whole pool it is the preset's run: reuse it
            changes["max_images"] = wanted
    if scale in ("epochs", "both"):
        epochs = max(1, _half_up(per_axis * base.epochs))
        if epochs < base.epochs:
            changes["epochs"] = epochs
            changes["warmup_epochs"] = min(_half_up(per_axis * base.warmup_epochs), epochs - 1)
    return base.updated(**changes) if changes else base


def image_steps(cfg: PretrainConfig, n_images: int) -> int:
    """Training images seen by a run of ``cfg`` on ``n_images`` images: epochs x training images of each loop."""
    from .pretrain_data import partition_indices, train_val_split

    n_images = min(n_images, cfg.max_images or n_images)
    loops = (partition_indices(n_images, cfg.n_partitions) if cfg.strategy == "selective"
             else [list(range(n_images))])
    return sum(cfg.epochs * len(train_val_split(loop, cfg.val_fraction)[0]) for loop in loops)


# --------------------------------------------------------------------------- the sweep


def _data_root(data_roots: Mapping[str, Optional[str]], dataset: str) -> Optional[str]:
    return None if data_roots.get(dataset) is None else str(data_roots[dataset])


def _pretrain_budget(domain: str, fraction: float, seed: int, preset: str, scale: str,
                     data_roots: Mapping[str, Optional[str]], runs_root: Path, overrides: dict) -> dict:
    """The selective run on ``domain`` at this budget (run or reused), and its budget in numbers."""
    from .pretraining import pretrain

    base = pretrain_preset(preset, domain, strategy="selective", seed=seed,
                           data_root=_data_root(data_roots, domain), **overrides)
    n_base = pool_size(base)
    cfg = budget_config(base, fraction, scale, n_base)
    run = pretrain(cfg, runs_root=runs_root)
    n_images = min(n_base, cfg.max_images or n_base)
    return dict(run_dir=str(run.run_dir), images=n_images, epochs=cfg.epochs,
                image_steps=image_steps(cfg, n_images))


def budget_sweep(
    dataset: str,
    partner: str,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    preset: str = "demo",
    seeds: Iterable[int] = (PAPER_SEED,),
    runs_root: str | Path = "runs",
    scale: str = "images",
    data_roots: Optional[Mapping[str, Optional[str]]] = None,
    pretrain_overrides: Optional[dict] = None,
    finetune_overrides: Optional[dict] = None,
) -> pd.DataFrame:
    """Self vs cross selective pretraining on ``dataset`` at each budget and seed (module docstring).

    ``fractions``: budgets as fractions in (0, 1] of the preset's selective
    pretraining budget; ``scale``: what shrinks, "images" (default), "epochs"
    or "both". ``data_roots`` maps dataset name -> folder (the embedded
    ``synthetic`` needs none); the partner needs only pretraining images.
    Returns one row per (budget, seed, relation) with the test mIoU and its
    95 % bootstrap interval over test images, in points (%): columns
    ``SWEEP_COLUMNS``. ``path`` is each fine-tuning run's results.json, which
    :func:`budget_gains` reads.
    """
    check_pair(dataset, partner)
    fractions = check_fractions(fractions)
    _check_choice("preset", preset, PRESET_NAMES)
    _check_choice("scale", scale, SCALES)
    seeds = check_seeds(seeds)
    pretrain_overrides, finetune_overrides = dict(pretrain_overrides or {}), dict(finetune_overrides or {})
    check_overrides("pretrain_overrides", pretrain_overrides)
    check_overrides("finetune_overrides", finetune_overrides)
    data_roots, runs_root = dict(data_roots or {}), Path(runs_root)
    check_data_roots(data_roots, (dataset, partner))
    domains = {"self": dataset, "cross": partner}
    rows = []
    for seed in seeds:
        for fraction in fractions:
            for relation, domain in domains.items():
                budget = _pretrain_budget(domain, fraction, seed, preset, scale, data_roots, runs_root,
                                          pretrain_overrides)
                rows.append(dict(dataset=dataset, partner=partner, fraction=fraction, scale=scale,
                                 relation=relation, pretrain_dataset=domain, seed=seed,
                                 **_finetuned(dataset, seed, preset, data_roots, runs_root, budget,
                                              finetune_overrides)))
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def _finetuned(dataset: str, seed: int, preset: str, data_roots: Mapping[str, Optional[str]], runs_root: Path,
               budget: dict, overrides: dict) -> dict:
    """Fine-tune ``dataset`` from one pretraining run (or reuse it); its mIoU and 95 % interval in points."""
    from .finetuning import finetune
    from .tables import cell_estimate

    cfg = finetune_preset(preset, dataset, **{**overrides, "seed": seed, "init": "selective_ir",
                                              "pretrained": budget["run_dir"],
                                              "data_root": _data_root(data_roots, dataset)})
    run = finetune(cfg, runs_root=runs_root)
    found = cell_estimate(load_results([run.results_path]))  # the bootstrap over this run's test images
    return dict(images=budget["images"], epochs=budget["epochs"], image_steps=budget["image_steps"],
                miou=100 * found.estimate, lower=100 * found.lower, upper=100 * found.upper,
                n_test_images=found.n, pretrain_run=budget["run_dir"], path=str(run.results_path))


# --------------------------------------------------------------------------- the verdict per budget


def budget_gains(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per budget: self - cross mIoU in points, its 95 % interval, n, p and the verdict.

    The interval is :func:`selmask_lib.tables.compare`'s: paired t over the
    seeds both arms ran when there are two or more, else the paired bootstrap
    over the test images of the two runs (:mod:`selmask_lib.statistics`).
    ``sweep`` is :func:`budget_sweep`'s table (its ``path`` column names the
    runs' results files).
    """
    from .tables import compare

    missing = [column for column in ("dataset", "fraction", "relation", "seed", "path") if column not in sweep]
    if missing:
        raise SelmaskError(f"budget_gains: the sweep table lacks column(s) {missing}; pass budget_sweep's table")
    records = []
    for (dataset, partner, fraction), rows in sweep.groupby(["dataset", "partner", "fraction"], sort=True):
        runs = load_results(list(rows["path"]))
        # Keyed by what was pretrained on, not by the variant's name: a masking or loss of one's
        # own renames the variant (results.ir_variant), and the sweep would find no runs.
        runs["variant"] = ["selective_ir_self" if str(pretrained_on) == str(dataset) else "selective_ir_cross"
                           for pretrained_on in runs["pretrain_dataset"]]
        gain = compare(runs, baseline="selective_ir_cross", other="selective_ir_self", datasets=[dataset]).iloc[0]
        steps = rows.groupby("relation")["image_steps"].first()
        records.append({"dataset": dataset, "partner": partner, "fraction": fraction,
                        "image_steps_self": steps.get("self"), "image_steps_cross": steps.get("cross"),
                        **{key: gain[key] for key in GAIN_COLUMNS if key in gain.index}})
    return pd.DataFrame(records, columns=GAIN_COLUMNS)


def budget_curves(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, relation): mean mIoU over seeds and its 95 % interval, for the figure.

    With one seed the interval is that run's bootstrap over test images (the
    sweep's ``lower`` / ``upper``); with two or more, the t-interval over seeds
    (:func:`selmask_lib.statistics.t_interval`).
    """
    from .statistics import BOOTSTRAP, t_interval

    records = []
    for (fraction, relation), rows in sweep.groupby(["fraction", "relation"], sort=True):
        if len(rows) == 1:
            row = rows.iloc[0]
            found = dict(miou=row["miou"], lower=row["lower"], upper=row["upper"], n=1, method=BOOTSTRAP)
        else:
            seeds = t_interval(rows["miou"])
            found = dict(miou=seeds.estimate, lower=seeds.lower, upper=seeds.upper, n=seeds.n, method=seeds.method)
        records.append(dict(fraction=fraction, relation=relation, image_steps=rows["image_steps"].iloc[0], **found))
    return pd.DataFrame(records, columns=["fraction", "relation", "image_steps", "miou", "lower", "upper", "n",
                                          "method"])


CLAIM_WORDS = {"better": "shown", "worse": "contradicted (cross better)",
               "not distinguishable": "not distinguishable", "no interval": "no interval"}


def budget_conclusion(gains: pd.DataFrame) -> list[str]:
    """What :func:`budget_gains` shows, in sentences: one per budget, then claim (3)'s tally, whatever the sign."""
    lines = []
    for _, row in gains.iterrows():
        interval = ("no interval" if math.isnan(row["lower"])
                    else f"95 % interval [{row['lower']:+.1f}, {row['upper']:+.1f}], {row['method']}, n = {row['n']}")
        verdict = f"self is {row['verdict']}" if row["verdict"] in ("better", "worse") else row["verdict"]
        lines.append(f"{row['fraction']:.0%} of the budget ({row['image_steps_self']} image-steps self, "
                     f"{row['image_steps_cross']} cross): self - cross = {row['gain']:+.1f} points "
                     f"({interval}): {verdict}")
    tally = [f"{words} at {', '.join(f'{f:.0%}' for f in gains.loc[gains['verdict'] == verdict, 'fraction'])}"
             for verdict, words in CLAIM_WORDS.items() if (gains["verdict"] == verdict).any()]
    lines.append("claim (3), self-pretraining beats cross-pretraining at a small budget: " + "; ".join(tally))
    return lines


# --------------------------------------------------------------------------- an offline partner


CONTROL_STAMP = "CONTROL_INFO.json"  # what drew a same-domain control folder: dataset, seed, generator version


def same_domain_partner(root: str | Path | None = None, seed: int = 1, dataset: str = "synthetic") -> Path:
    """A stand-in partner of the embedded ``dataset``: a ``folder`` dataset of its generator's images drawn
    from another ``seed`` (images only: a partner is only pretrained on).

    Same domain, other images: self vs cross should come out "not
    distinguishable", so a sweep against it is a control of the sweep, not a
    test of claim (3). Written once, next to the dataset's cache folder
    unless ``root`` is given, and written again when the generator's version
    changed since (as the embedded trees are); returns the folder.
    """
    from .config import EMBEDDED_DATASETS
    from .data import embedded

    if dataset not in EMBEDDED_DATASETS:
        raise SelmaskError(f"same-domain control: parameter 'dataset' is {dataset!r}, which has no generator; "
                           f"one of {', '.join(EMBEDDED_DATASETS)}")
    root = Path(root) if root is not None else embedded.default_root(dataset).with_name(f"{dataset}_seed{seed}_folder")
    stamp = {"dataset": dataset, "seed": int(seed), "generator_version": embedded.get_domain(dataset).version}
    if (root / "images").is_dir() and _read_stamp(root) == stamp:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    set_aside = staging.with_name(staging.name + "-old")
    try:
        tree = embedded.generate_embedded(dataset, staging / "tree", seed=seed)
        (tree / "VOCdevkit" / "VOC2012" / "JPEGImages").rename(staging / "images")
        shutil.rmtree(tree)
        (staging / CONTROL_STAMP).write_text(json.dumps(stamp, indent=1))
        if root.exists():  # an older generator's images: set aside, then replaced in one rename
            root.rename(set_aside)
        staging.rename(root)  # complete or absent, never half written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(set_aside, ignore_errors=True)
    return root


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / CONTROL_STAMP).read_text())
    except (OSError, ValueError):
        return None  # written before stamps existed, or damaged: draw it again
