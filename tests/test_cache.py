"""The decoded-image cache (config key image_cache_mb): faster epochs, never other numbers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from selmask_lib import finetuning as ft
from selmask_lib.config import config_hash, finetune_preset, pretrain_preset
from selmask_lib.data import load_segmentation_split
from selmask_lib.data.cache import DecodedCache
from selmask_lib.engine import load_checkpoint
from selmask_lib.errors import SelmaskError
from selmask_lib.masking import patch_grid
from selmask_lib.pretrain_data import ReconstructionDataset, pretraining_pool, scoring_view
from selmask_lib.transforms import train_transform


def test_a_value_is_loaded_once_and_kept_while_the_budget_allows():
    cache = DecodedCache(max_megabytes=1)
    loads = []

    def load(value):
        loads.append(value)
        return np.full(400_000, value, dtype=np.uint8)  # 0.38 MB

    first = cache.get("a", lambda: load(1))
    assert cache.get("a", lambda: load(2)) is first  # kept: not loaded again
    cache.get("b", lambda: load(3))
    third = cache.get("c", lambda: load(4))  # 1.14 MB in all: over the budget, returned but not kept
    assert third[0] == 4 and len(cache) == 2 and cache.nbytes == 800_000
    cache.get("c", lambda: load(5))
    assert loads == [1, 3, 4, 5]


def test_fill_keeps_values_in_order_until_the_budget_is_full():
    cache = DecodedCache(max_megabytes=1)
    loaded = []

    def load(key):
        loaded.append(key)
        return np.zeros(400_000, dtype=np.uint8)

    assert cache.fill(["a", "b", "c", "d"], load) == 2
    assert loaded == ["a", "b", "c"]  # "c" did not fit: "d" is not computed for nothing
    assert cache.fill(["a", "b"], load) == 2 and loaded == ["a", "b", "c"]


def test_a_zero_budget_keeps_nothing_and_a_negative_one_is_refused():
    cache = DecodedCache(0)
    assert cache.get("a", lambda: np.zeros(3)).shape == (3,)
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_megabytes"):
        DecodedCache(-1)
    with pytest.raises(SelmaskError, match="'image_cache_mb'"):
        pretrain_preset("smoke", "synthetic", image_cache_mb=-1)


def test_a_pickled_cache_keeps_its_budget_but_not_its_entries():
    """What a spawned loader worker receives: no copy of the main process's images."""
    cache = DecodedCache(1)
    cache.get("a", lambda: (np.zeros(10, np.uint8), torch.zeros(5)))
    assert cache.nbytes == 10 + 20
    copy = pickle.loads(pickle.dumps(cache))
    assert len(copy) == 0 and copy.nbytes == 0 and copy.max_bytes == cache.max_bytes


def test_the_cache_size_is_not_hashed():
    cfg = pretrain_preset("smoke", "synthetic")
    assert config_hash(cfg.updated(image_cache_mb=0)) == config_hash(cfg)
    fine = finetune_preset("smoke", "synthetic")
    assert config_hash(fine.updated(image_cache_mb=0)) == config_hash(fine)


def test_the_checks_fill_the_pool_cache_and_items_are_the_callers(small_synthetic_root):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=6)
    pool = pretraining_pool(cfg)
    pool.check_all()
    assert len(pool.cache) == 6
    assert torch.equal(pool[2], pretraining_pool(cfg.updated(image_cache_mb=0))[2])


def test_fixed_mask_items_are_the_same_with_and_without_the_cache(small_synthetic_root):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=6)
    pool = pretraining_pool(cfg)
    indices = [5, 2, 0]  # item i is pool image indices[i]: the cache is keyed by pool index
    masks = {index: torch.arange(len(patch_grid(*scoring_view(pool, index, cfg.score_size).shape[-2:],
                                                  cfg.n_patches))) % (index + 2) == 0 for index in indices}
    transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std)

    def items(cache, fill=False):
        dataset = ReconstructionDataset(pool, indices, transform, cfg.score_size, cfg.n_patches, masks, cache=cache)
        if fill:
            dataset.fill_cache()
            assert len(cache) == len(indices)
        torch.manual_seed(0)
        return [dataset[i] for i in range(len(indices))]

    expected = items(None)
    cache = DecodedCache(10)
    for fill in (False, True, False):  # filled as read, then all at once, then read from what is kept
        got = items(cache, fill)
        assert len(cache) == len(indices)
        for (image, pixels), (want_image, want_pixels) in zip(got, expected):
            assert torch.equal(image, want_image) and torch.equal(pixels, want_pixels)
            image.zero_()  # a caller changing its item in place must not change the kept view
            pixels.fill_(True)

    def unchanged(image, pixels):  # a transform that hands its inputs on, as a user's may
        return image, pixels

    as_is = ReconstructionDataset(pool, range(1), unchanged, cfg.score_size, cfg.n_patches, masks,
                                  cache=DecodedCache(10))
    image, pixels = as_is[0]
    image.zero_()
    assert as_is[0][0].abs().sum() > 0


def test_segmentation_items_are_the_callers_and_labels_keep_their_values(small_synthetic_root):
    dataset = load_segmentation_split("synthetic", small_synthetic_root, "train")
    plain = [dataset[i] for i in range(3)]
    dataset.cache = DecodedCache(10)
    dataset.check_all(range(3))
    assert len(dataset.cache) == 3
    assert all(label.dtype == np.uint8 for _, label in dataset.cache._kept.values())  # an eighth of int64
    for i, (want_image, want_label) in enumerate(plain):
        image, label = dataset[i]
        assert torch.equal(image, want_image) and torch.equal(label, want_label) and label.dtype == torch.int64
        raw_image, raw_label = dataset.load(i)
        raw_image[:] = 0  # changed in place by a caller: the kept arrays stay as they were
        raw_label[:] = 0
    again = [dataset[i] for i in range(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, plain))


@pytest.mark.usefixtures("one_thread_quiet", "drop_checkpoints")
def test_finetuning_trains_the_same_model_with_and_without_the_cache(small_synthetic_root, tmp_path):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), epochs=2, max_train_images=4,
                          device="cpu")
    cached = ft.finetune(cfg, out_dir=tmp_path / "cached")
    plain = ft.finetune(cfg.updated(image_cache_mb=0), out_dir=tmp_path / "plain")
    for key in ("miou", "per_class_iou", "confusion_matrix", "val_miou", "test_loss"):
        assert cached.results[key] == plain.results[key], key
    expected = load_checkpoint(plain.run_dir / "best.pt")["model"]
    got = load_checkpoint(cached.run_dir / "best.pt")["model"]
    assert all(torch.equal(expected[name], got[name]) for name in expected)
