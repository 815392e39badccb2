"""Small results.json files and run trees, for the results and tables tests.

``fields()`` gives valid ``write_results`` arguments (override any of them);
``write_run`` writes one run with given per-class IoUs; ``make_runs_tree``
writes a tree of nine runs over two downstream datasets (its comments say which).
"""

from __future__ import annotations

from pathlib import Path

from selmask_lib.results import write_results

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


def write_run(root, name, dataset, init, pretrain_dataset, seed, ious, miou=None) -> Path:
    ious = dict(zip(NAMES, ious))
    defined = [v for v in ious.values() if v is not None]
    m = miou if miou is not None else sum(defined) / len(defined)
    return write_results(
        root / name, **fields(dataset=dataset, init=init, pretrain_dataset=pretrain_dataset,
                              pretrain_run=None if pretrain_dataset is None else f"pre/{pretrain_dataset}",
                              seed=seed, per_class_iou=ious, miou=m))


def make_runs_tree(root: Path) -> Path:
    # nassar: none, imagenet, random_ir self (2 seeds), selective self (2 seeds), selective cross
    write_run(root, "nassar/none/s1", "nassar", "none", None, 1, [0.90, 0.30, 0.10])
    write_run(root, "nassar/imagenet/s1", "nassar", "imagenet", None, 1, [0.92, 0.40, 0.15])
    write_run(root, "nassar/random/s1", "nassar", "random_ir", "nassar", 1, [0.95, 0.50, 0.20])
    write_run(root, "nassar/random/s2", "nassar", "random_ir", "nassar", 2, [0.93, 0.60, 0.10])
    write_run(root, "nassar/sel_self/s1", "nassar", "selective_ir", "nassar", 1, [0.96, 0.55, 0.30])
    write_run(root, "nassar/sel_self/s2", "nassar", "selective_ir", "nassar", 2, [0.94, 0.61, 0.26])
    write_run(root, "nassar/sel_cross/s1", "nassar", "selective_ir", "sugarbeets", 1, [0.95, 0.52, None])
    # sugarbeets: only random-IR self and selective-IR cross (from nassar)
    write_run(root, "deep/er/sb/random", "sugarbeets", "random_ir", "sugarbeets", 1, [0.8, 0.7, 0.6])
    write_run(root, "sb/cross", "sugarbeets", "selective_ir", "nassar", 1, [0.81, 0.72, 0.65])
    return root
