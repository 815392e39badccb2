"""The embedded default dataset: a small synthetic segmentation set written as a VOC tree.

Why it exists
-------------
The paper's datasets (Pascal VOC, Cityscapes, Nassar 2020, Sugarbeets 2016) are
large downloads. Every command of the kit must also run out of the box, on one
CPU core, in seconds. This module writes a small dataset, drawn from a seed,
that is a fair miniature of the paper's setting, exactly like Pascal VOC so the
ordinary VOC loader (``selmask_lib.data.voc``) reads it with no special case.

What is drawn
-------------
:mod:`selmask_lib.data.synthetic_scenes` draws each image and its label map
(the classes, their shapes and frequencies are listed there). Labels are saved
as palette ('P') PNGs with the VOC colour map, 255 = void.

How it is written and cached
----------------------------
By the writer every embedded dataset shares, :mod:`selmask_lib.data.embedded`
(the tree, the cache folder ``$SELMASK_DATA_DIR/synthetic`` or
``~/.cache/selmask/synthetic``, regeneration only when the seed, the
parameters or the generator version change, the atomic swap-in). This module
keeps the names the kit has always used for it.

Determinism: every image is a pure function of (seed, split, index), see
:func:`selmask_lib.data.synthetic_scenes.draw_sample`. The same seed gives
byte-identical label PNGs and JPEGs (with the same Pillow/zlib/libjpeg).
"""

from __future__ import annotations

import os
from pathlib import Path

from selmask_lib.data import embedded
from selmask_lib.data.embedded import CLASSES_FILE, DEFAULTS, INFO_FILE, SMALL, class_frequencies, class_pixel_counts

#: The synthetic domain (its name, classes, colours and drawing function) as the writer sees it.
DOMAIN = embedded.DOMAINS["synthetic"]
# Bumped when the drawing code (synthetic_scenes.py) changes, so cached trees are regenerated.
GENERATOR_VERSION = DOMAIN.version
#: RGB label colours in index order (the VOC palette entries 0..NUM_CLASSES-1).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = DOMAIN.class_colors


def default_root() -> Path:
    """``$SELMASK_DATA_DIR/synthetic`` if that variable is set, else ``~/.cache/selmask/synthetic``."""
    return embedded.default_root(DOMAIN.name)


def generate_synthetic_voc(root: str | os.PathLike, seed: int = 0, n_train: int = DEFAULTS["n_train"],
                           n_val: int = DEFAULTS["n_val"], n_test: int = DEFAULTS["n_test"],
                           n_unlabelled: int = DEFAULTS["n_unlabelled"],
                           image_size: tuple[int, int] = DEFAULTS["image_size"]) -> Path:
    """Always (re)generate the synthetic VOC tree at ``root``; return ``root``.

    An existing synthetic tree at ``root`` is replaced; any other existing
    non-empty directory raises :class:`SelmaskError`.
    """
    params = embedded.check_params(DOMAIN.name, seed, n_train, n_val, n_test, n_unlabelled, image_size)
    return embedded.write_tree(DOMAIN, Path(root), params)


def ensure_synthetic_voc(root: str | os.PathLike | None = None, seed: int = 0,
                         n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                         n_test: int = DEFAULTS["n_test"], n_unlabelled: int = DEFAULTS["n_unlabelled"],
                         image_size: tuple[int, int] = DEFAULTS["image_size"]) -> Path:
    """Return the root of a synthetic VOC tree with these parameters, generating it if needed.

    ``root`` defaults to :func:`default_root`. Generation happens only when
    the tree is missing or its ``SYNTHETIC_INFO.json`` records other
    parameters or another generator version; otherwise this is a cheap check.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    params = embedded.check_params(DOMAIN.name, seed, n_train, n_val, n_test, n_unlabelled, image_size)
    if embedded.is_current(DOMAIN, root, params):
        return root
    return generate_synthetic_voc(root, **params)


__all__ = [
    "CLASSES_FILE", "CLASS_COLORS", "DEFAULTS", "DOMAIN", "INFO_FILE", "SMALL", "GENERATOR_VERSION",
    "ensure_synthetic_voc", "generate_synthetic_voc", "default_root", "class_frequencies", "class_pixel_counts",
]
