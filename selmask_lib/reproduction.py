"""Batch reproduction of the paper's tables: every pretraining and fine-tuning run a table needs.

For each downstream dataset D and each seed (METHOD.md, "Pretrain/downstream
pairs"):

- pretraining: random masking on D, selective masking on D (self) and
  selective masking on D's partner (cross: VOC <-> Cityscapes,
  Nassar <-> Sugarbeets; for the embedded domains toy_street <-> toy_tabletop,
  toy_beet_field <-> toy_maize_field);
- fine-tuning on D from: no pretraining, ImageNet, random-IR (self),
  selective-IR (self), selective-IR (cross).

``maskings`` adds other maskings of the selective loop (``"random_fixed"``,
or functions of your own, see ``selmask_lib.strategies``) to the comparison:
each is run through the same iterative loop on D and fine-tuned like
selective IR, in a column ``<name>_ir_self`` of its own
(:attr:`Reproduction.extra_columns`).

``same_loss_control`` adds the controlled comparison: random masking
trained on the selective arm's reconstruction loss (column
``random_ir_<loss>_self``, e.g. ``random_ir_ssim3_self`` at the ``paper``
preset, where the authors' selective runs train on SSIM 3x3 and their random
baseline on MS-SSIM). The table then shows the authors' gap and how much of
it masking alone explains. Where both arms already train on the same loss
(the CPU presets) it is not run, and ``skipped`` says why.

Every run is cached in ``runs_root`` by its config hash, so calling this again
(from the CLI, a notebook, or after a crash) only runs what is missing. A
column that cannot be produced (no cross partner given, no ImageNet weights
on disk) is skipped with a logged reason and shows as n/a in the tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import pandas as pd

from .config import EMBEDDED_DATASETS, PAPER_SEED, finetune_preset, pretrain_preset
from .errors import SelmaskError
from .finetuning import finetune
from .models import imagenet_weights_path
from .pretraining import pretrain
from .results import ir_variant, load_results
from .strategies import MaskingFunction, masking_name
from .tables import PAPER_COLUMNS

log = logging.getLogger(__name__)

PAPER_CROSS_PAIRS = {"voc": "cityscapes", "cityscapes": "voc", "nassar": "sugarbeets", "sugarbeets": "nassar"}
# The embedded domains' pairs, shaped like the paper's: general <-> general, field <-> field.
EMBEDDED_CROSS_PAIRS = {"toy_street": "toy_tabletop", "toy_tabletop": "toy_street",
                        "toy_beet_field": "toy_maize_field", "toy_maize_field": "toy_beet_field"}
CROSS_PAIRS = {**PAPER_CROSS_PAIRS, **EMBEDDED_CROSS_PAIRS}
VARIANTS = tuple(PAPER_COLUMNS)  # the paper's table columns, in order


@dataclass
class Reproduction:
    """What :func:`reproduce` ran: the results table rows and why any column is missing."""

    results: pd.DataFrame
    result_files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)  # table variants of ``maskings``, e.g. "mine_ir_self"

    @property
    def columns(self) -> list[str]:
        """The table columns of this reproduction: the paper's, then one per extra masking."""
        return [*PAPER_COLUMNS, *self.extra_columns]


def _data_root(data_roots: Mapping[str, Optional[str]], dataset: str) -> Optional[str]:
    return None if data_roots.get(dataset) is None else str(data_roots[dataset])


def reproduce(
    datasets: Iterable[str],
    preset: str = "smoke",
    data_roots: Optional[Mapping[str, Optional[str]]] = None,
    seeds: Iterable[int] = (PAPER_SEED,),
    runs_root: str | Path = "runs",
    variants: Iterable[str] = VARIANTS,
    cross_pairs: Mapping[str, str] = CROSS_PAIRS,
    imagenet_weights: Optional[str] = None,
    pretrain_overrides: Optional[dict] = None,
    finetune_overrides: Optional[dict] = None,
    maskings: Iterable[Union[MaskingFunction, str]] = (),
    same_loss_control: bool = False,
) -> Reproduction:
    """Run (or reuse) the runs behind the paper's table for ``datasets``; return their results.

    ``data_roots`` maps dataset name -> folder (the embedded datasets need
    none). A cross partner is pretrained on only if it has a data root (or is
    embedded, generated when needed). The ImageNet column needs torchvision's ResNet-34 weights
    at ``imagenet_weights`` or in the torch hub cache; nothing is downloaded.
    ``maskings``: other maskings of the selective loop (callables, or
    "random_fixed"), each compared in a column of its own (module docstring).
    ``same_loss_control``: also random masking on the selective arm's loss (module docstring).
    """
    data_roots = dict(data_roots or {})
    variants = list(variants)
    runs_root = Path(runs_root)
    pretrain_overrides, finetune_overrides = dict(pretrain_overrides or {}), dict(finetune_overrides or {})
    files, skipped = [], []

    def pretrain_config(dataset: str, strategy: str, seed: int, **changes):
        return pretrain_preset(preset, dataset, strategy=strategy, seed=seed,
                               data_root=_data_root(data_roots, dataset), **{**pretrain_overrides, **changes})

    def pretrained_run(dataset: str, strategy: str, seed: int, masking: MaskingFunction | str = "selective",
                       **changes) -> str:
        cfg = pretrain_config(dataset, strategy, seed, **changes)
        return str(pretrain(cfg, runs_root=runs_root, masking=masking).run_dir)

    # the selective loop's maskings to compare besides the paper's, by the name that keys their runs
    maskings = list(maskings)
    extra = {masking_name(masking): masking for masking in maskings}
    if "selective" in extra:
        raise SelmaskError("the paper's selective masking is already the selective_ir_self column; "
                           "pass only other maskings (e.g. random_fixed or a function of your own)")
    if len(extra) < len(maskings):
        raise SelmaskError(f"two maskings share a name: {[masking_name(m) for m in maskings]}; "
                           "give each its own `name` attribute")
    extra_columns = [ir_variant("selective_ir", "self", name) for name in extra]

    for seed in seeds:
        for dataset in datasets:
            base = dict(seed=seed, data_root=_data_root(data_roots, dataset), **finetune_overrides)
            inits: list[dict] = []
            if "none" in variants:
                inits.append(dict(init="none"))
            if "imagenet" in variants:
                if imagenet_weights_path(imagenet_weights).is_file():
                    inits.append(dict(init="imagenet", imagenet_weights=imagenet_weights))
                else:
                    skipped.append(f"{dataset}: ImageNet column skipped, no weights at "
                                   f"{imagenet_weights_path(imagenet_weights)}")
            if "random_ir_self" in variants:
                inits.append(dict(init="random_ir", pretrained=pretrained_run(dataset, "random", seed)))
            if "selective_ir_self" in variants:
                inits.append(dict(init="selective_ir", pretrained=pretrained_run(dataset, "selective", seed)))
            if "selective_ir_cross" in variants:
                partner = cross_pairs.get(dataset)
                if partner is not None and (partner in EMBEDDED_DATASETS or data_roots.get(partner) is not None):
                    inits.append(dict(init="selective_ir", pretrained=pretrained_run(partner, "selective", seed)))
                else:
                    skipped.append(f"{dataset}: cross column skipped, no data root for its partner "
                                   f"{partner!r}" if partner else f"{dataset}: cross column skipped, no partner")
            for masking in extra.values():
                inits.append(dict(init="selective_ir", pretrained=pretrained_run(dataset, "selective", seed, masking)))
            if same_loss_control:
                selective_loss = pretrain_config(dataset, "selective", seed).recon_loss
                random_loss = pretrain_config(dataset, "random", seed).recon_loss
                if selective_loss == random_loss:
                    skipped.append(f"{dataset}: random-IR same-loss column not run: random and selective "
                                   f"masking already train on the same loss ({selective_loss})")
                else:
                    column = ir_variant("random_ir", "self", pretrain_recon_loss=selective_loss)
                    extra_columns += [column] if column not in extra_columns else []
                    inits.append(dict(init="random_ir", pretrained=pretrained_run(
                        dataset, "random", seed, recon_loss=selective_loss)))
            for init in inits:
                cfg = finetune_preset(preset, dataset, **base, **init)
                files.append(finetune(cfg, runs_root=runs_root).results_path)
    for reason in skipped:
        log.warning(reason)
    return Reproduction(load_results(files) if files else pd.DataFrame(), files, skipped, extra_columns)
