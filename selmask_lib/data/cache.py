"""Decoded images kept in memory, up to a size: an epoch without decoding, for sets that fit.

Decoding a file gives the same array every epoch, so a small set need not
pay for it every epoch: at the demo preset (64 px crops of 100-130 px JPEGs
on 2 CPU cores) decoding is about a fifth of the data pipeline, and a
selective step's scoring view (decode, then a resize) about a third of its
items' cost. What is kept is exactly what would be computed again, so a run
with a cache trains the very same weights as one without (config key
``image_cache_mb``, not hashed; ``tests/test_pretrain.py`` checks it).

The cache fills as items are first read, or all at once with ``fill``. The
pre-training checks decode every image once anyway (``check_all``), and a
selective step computes its scoring views before its loaders start
(``ReconstructionDataset.fill_cache``): both fill their caches in the main
process, so with the ``fork`` start method (Linux) loader workers share those
pages. A dataset sent to a ``spawn`` worker (macOS, Windows) goes without its
entries, and each worker fills its own copy: with W workers that is up to
W + 1 budgets of memory.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import numpy as np
import torch


def nbytes(value: Any) -> int:
    """Bytes held by a NumPy array, a tensor, or a tuple / list of them."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(item) for item in value)
    raise TypeError(f"cannot size a {type(value).__name__} for the decoded-image cache")


class DecodedCache:
    """``get(key, load)``: ``load()`` the first time, the kept value afterwards, up to ``max_megabytes``.

    Once the budget is full, further values are returned but not kept (the
    first images of a large set stay cached; no eviction, so no churn). The
    caller must not change a returned value in place: it is the kept one.
    ``max_megabytes=0`` keeps nothing.
    """

    def __init__(self, max_megabytes: float):
        if max_megabytes < 0:
            raise ValueError(f"max_megabytes must be >= 0, got {max_megabytes}")
        self.max_bytes = int(max_megabytes * 2**20)
        self._kept: dict[Hashable, Any] = {}
        self.nbytes = 0

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if key in self._kept:
            return self._kept[key]
        value = load()
        size = nbytes(value)
        if self.nbytes + size <= self.max_bytes:
            self._kept[key] = value
            self.nbytes += size
        return value

    def fill(self, keys, load: Callable[[Hashable], Any]) -> int:
        """``get`` each key in order until a value does not fit; the number of keys kept.

        For filling in the main process before loader workers fork, so they share the values.
        """
        kept = 0
        for key in keys:
            self.get(key, lambda: load(key))
            if key not in self._kept:
                break  # the budget is full: computing the rest now would keep nothing
            kept += 1
        return kept

    def __len__(self) -> int:
        return len(self._kept)

    def __getstate__(self) -> dict:
        # Sent to a spawned worker (or pickled by a user): the budget goes, the entries do not.
        return {"max_bytes": self.max_bytes, "_kept": {}, "nbytes": 0}

    def __repr__(self) -> str:
        return f"DecodedCache({len(self)} items, {self.nbytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MB)"


def no_cache() -> DecodedCache:
    """A cache that keeps nothing: the default of a dataset built without one."""
    return DecodedCache(0)
