"""Dataset registry and the three functions the rest of the kit calls.

    from selmask_lib.data import load_segmentation_split, load_pretraining_images
    train_set = load_segmentation_split("voc", "/data/voc", "train", transform=train_transform())
    pool = load_pretraining_images("cityscapes", "/data/cityscapes")

Each registered format (``get_dataset(name)``) is a module-like object with

* ``NAME``
* ``info(root) -> DatasetInfo``                class names and colours
* ``samples(root, split) -> list[Sample]``     split in {"train", "val", "test"}
* ``decode_label(path) -> int64 [H, W]``       class ids, 255 = ignore
* ``pretraining_images(root) -> list[Path]``   the pretraining pool, sorted

The embedded datasets (``synthetic``, ``toy_street``, ``toy_tabletop``,
``toy_beet_field``, ``toy_maize_field``) are drawn from a seed and written as
VOC trees by :mod:`selmask_lib.data.embedded`; they are read by the VOC code,
with their class names from ``<root>/classes.yaml``.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable

from selmask_lib.data import cityscapes, folder, nassar, sugarbeets, voc
from selmask_lib.data.base import (
    IGNORE_INDEX,
    SPLITS,
    DatasetInfo,
    Sample,
    SegmentationDataset,
    UnlabelledImages,
    check_split,
    check_split_nonempty,
)
from selmask_lib.config import EMBEDDED_DATASETS
from selmask_lib.errors import SelmaskError


def _embedded_format(name: str) -> SimpleNamespace:
    """An embedded dataset is read as a VOC tree, under its own name."""
    return SimpleNamespace(
        NAME=name,
        info=partial(voc.info, name=name),
        samples=voc.samples,
        decode_label=voc.decode_label,
        pretraining_images=voc.pretraining_images,
    )


DATASETS = {
    "voc": voc,
    "cityscapes": cityscapes,
    "nassar": nassar,
    "sugarbeets": sugarbeets,
    "folder": folder,
    **{name: _embedded_format(name) for name in EMBEDDED_DATASETS},
}


def get_dataset(name: str):
    """The format object registered under ``name`` (see the module docstring)."""
    if name not in DATASETS:
        raise SelmaskError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _existing_root(root: Path | str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SelmaskError(f"{root}: dataset folder not found")
    return root


def resolve_data_root(dataset: str, data_root: str | Path | None) -> Path:
    """The folder of ``dataset``; an embedded dataset is generated (once) when no root is given.

    Every other dataset lives where the user put it, so a missing root is an
    error that says which option to pass.
    """
    if data_root is not None:
        return Path(data_root)
    if dataset in EMBEDDED_DATASETS:
        from selmask_lib.data.embedded import ensure_embedded

        return ensure_embedded(dataset)
    raise SelmaskError(f"data_root is required for dataset {dataset!r} (pass --data-root DIR)")


def fingerprint(paths: Iterable[Path | str], root: Path | str, lists: Iterable[Path | str] = ()) -> str:
    """A 16-hex-digit id of a run's data: SHA-256 over each file's path (relative to ``root``) and size.

    Part of a run's identity, so a finished run is reused only on the data
    it was trained on: another data root with other files (or other sizes)
    gets another run, while the same files moved elsewhere keep their id.
    Sizes, not contents: reading every byte of a dataset would cost minutes;
    stat-ing every file costs milliseconds. ``lists`` are small files that
    choose the data (a ``split_list``): their content is hashed, not their
    path, so the same list anywhere is the same run and an edited one is not.
    """
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for path in lists:
        digest.update(f"list\t{file_sha256(path)}\n".encode())
    for path in paths:
        path = Path(path).resolve()
        try:
            size = path.stat().st_size
        except OSError as error:
            raise SelmaskError(f"{path}: cannot read ({error.strerror or error})") from None
        relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        digest.update(f"{relative}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, in hex (for small files such as split lists)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as error:
        raise SelmaskError(f"{path}: cannot read ({error.strerror or error})") from None


def dataset_info(name: str, root: Path | str) -> DatasetInfo:
    return get_dataset(name).info(_existing_root(root))


def load_segmentation_split(
    name: str, root: Path | str, split: str, transform: Callable | None = None,
    split_list: Path | str | None = None,
) -> SegmentationDataset:
    """The labelled ``split`` ("train", "val" or "test") of dataset ``name``
    stored under ``root``, yielding ``(image [3, H, W] float, mask [H, W] int64)``.

    ``split_list`` (sugarbeets only) names the file listing the downstream
    frames instead of the dataset's own list (see ``sugarbeets.py``).
    """
    dataset, root = get_dataset(name), _existing_root(root)
    check_split(split)
    info = dataset.info(root)
    if split_list is None:
        samples = dataset.samples(root, split)
    elif name == "sugarbeets":
        samples = dataset.samples(root, split, split_list=Path(split_list))
    else:
        raise SelmaskError(f"config key 'split_list' is for dataset sugarbeets only, not {name!r}")
    check_split_nonempty(samples, name, split, root)
    return SegmentationDataset(
        samples, dataset.decode_label, info.num_classes, transform, ignore_index=info.ignore_index, info=info
    )


def load_pretraining_images(name: str, root: Path | str, transform: Callable | None = None,
                            cityscapes_pool: str = "train") -> UnlabelledImages:
    """The unlabelled pretraining pool of dataset ``name``: float [3, H, W] in [0, 1].

    ``cityscapes_pool`` picks the Cityscapes folders (see ``cityscapes.py``).
    """
    root = _existing_root(root)
    if name == "cityscapes":
        paths = cityscapes.pretraining_images(root, cityscapes_pool)
    elif cityscapes_pool != "train":
        raise SelmaskError(f"config key 'cityscapes_pool' is for dataset cityscapes only, not {name!r}")
    else:
        paths = get_dataset(name).pretraining_images(root)
    if not paths:
        raise SelmaskError(f"{root}: no pretraining images found for dataset {name!r}")
    return UnlabelledImages(paths, transform)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "SPLITS",
    "DatasetInfo",
    "Sample",
    "SegmentationDataset",
    "UnlabelledImages",
    "dataset_info",
    "file_sha256",
    "fingerprint",
    "get_dataset",
    "load_pretraining_images",
    "load_segmentation_split",
    "resolve_data_root",
]
