"""Tests for the embedded synthetic dataset: its scenes and the VOC tree written (small parameter set, tmp dirs only)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage.morphology import dilation

from selmask_lib.data import synthetic, synthetic_scenes
from selmask_lib.data.base import palette_colors
from selmask_lib.data.synthetic_scenes import CLASS_NAMES, NUM_CLASSES
from selmask_lib.errors import SelmaskError

SMALL = synthetic.SMALL


def _digests(root: Path) -> dict[str, str]:
    """md5 of every file under root, keyed by relative path."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` px in every direction (a square neighbourhood)."""
    return dilation(mask, np.ones((2 * radius + 1, 2 * radius + 1), bool), mode="ignore")


def _ids(root: Path, year: str, split: str) -> list[str]:
    return (root / "VOCdevkit" / year / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return synthetic.generate_synthetic_voc(tmp_path_factory.mktemp("syn") / "synthetic", seed=0, **SMALL)


def test_same_seed_is_byte_identical_and_other_seed_differs(tree, tmp_path):
    again = synthetic.generate_synthetic_voc(tmp_path / "again", seed=0, **SMALL)
    assert _digests(again) == _digests(tree)
    other = synthetic.generate_synthetic_voc(tmp_path / "other", seed=1, **SMALL)
    a, b = _digests(tree), _digests(other)
    labels = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != b.get(k) for k in labels) > len(labels) // 2


def test_draw_sample_is_pure():
    img1, lab1 = synthetic_scenes.draw_sample(3, "train", 5, (48, 64))
    img2, lab2 = synthetic_scenes.draw_sample(3, "train", 5, (48, 64))
    assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2)
    assert img1.dtype == np.uint8 and img1.shape[:2] == lab1.shape and img1.shape[2] == 3
    with pytest.raises(SelmaskError, match="split"):
        synthetic_scenes.draw_sample(3, "validation", 5)


def test_labels_keep_the_bytes_cached_datasets_were_made_with():
    """Seed 0 labels as the generator has always drawn them (1 and 2 px void bands, 2 px wires).

    Cached trees are reused while GENERATOR_VERSION is unchanged: if this digest
    has to change, bump GENERATOR_VERSION with it.
    """
    digest = hashlib.md5()
    for index in range(8):
        digest.update(synthetic_scenes.draw_sample(0, "train", index, (64, 128))[1].tobytes())
    assert digest.hexdigest() == "a47921dfd962c59acd1a204207a79777"


def test_tree_layout(tree):
    v12, v07 = tree / "VOCdevkit" / "VOC2012", tree / "VOCdevkit" / "VOC2007"
    train, val = _ids(tree, "VOC2012", "train"), _ids(tree, "VOC2012", "val")
    test = _ids(tree, "VOC2007", "test")
    assert (len(train), len(val), len(test)) == (SMALL["n_train"], SMALL["n_val"], SMALL["n_test"])
    assert _ids(tree, "VOC2012", "trainval") == train + val
    assert not set(train) & set(val) and not set(test) & set(train + val)
    for base, ids in ((v12, train + val), (v07, test)):
        for image_id in ids:
            assert (base / "JPEGImages" / f"{image_id}.jpg").is_file()
            assert (base / "SegmentationClass" / f"{image_id}.png").is_file()

    classes = yaml.safe_load((tree / "classes.yaml").read_text())
    assert [c["name"] for c in classes["classes"]] == CLASS_NAMES
    assert [tuple(c["color"]) for c in classes["classes"]] == [tuple(c) for c in synthetic.CLASS_COLORS]
    assert classes["ignore_index"] == 255
    assert CLASS_NAMES[0] == "background" and 7 <= NUM_CLASSES <= 11

    info = json.loads((tree / "SYNTHETIC_INFO.json").read_text())
    assert info["params"]["seed"] == 0 and info["params"]["n_train"] == SMALL["n_train"]
    assert info["counts"]["pretraining_pool"] == SMALL["n_train"] + SMALL["n_val"] + SMALL["n_unlabelled"]


def test_labels_are_voc_palette_pngs_with_void_borders(tree):
    v12 = tree / "VOCdevkit" / "VOC2012"
    allowed = set(range(NUM_CLASSES)) | {255}
    for image_id in _ids(tree, "VOC2012", "trainval"):
        with Image.open(v12 / "SegmentationClass" / f"{image_id}.png") as label:
            assert label.mode == "P"
            palette = label.getpalette()
            values = np.asarray(label)
        assert tuple(palette[3:6]) == synthetic.CLASS_COLORS[1] == (128, 0, 0)   # VOC colour map
        assert palette[:768] == [v for color in palette_colors(256) for v in color]
        assert set(np.unique(values)) <= allowed
        assert (values == 255).any(), f"{image_id}: no void band"
        # the void band hugs objects: 1 px bands at this size, stacked at most 3 deep in clutter
        objects = (values != 0) & (values != 255)
        assert np.all(_grow(objects, 3)[values == 255])
        assert (values == 255).mean() < 0.25
        assert not np.all(values[_grow(objects, 1) & ~objects] == 0)


def test_image_sizes_vary_within_range_and_match_labels(tree):
    lo, hi = SMALL["image_size"]
    sizes = []
    for year, split in (("VOC2012", "trainval"), ("VOC2007", "test")):
        base = tree / "VOCdevkit" / year
        for image_id in _ids(tree, year, split):
            with Image.open(base / "JPEGImages" / f"{image_id}.jpg") as im, \
                    Image.open(base / "SegmentationClass" / f"{image_id}.png") as lab:
                assert im.mode == "RGB" and im.size == lab.size
                assert lo <= im.width <= hi and lo <= im.height <= hi
                sizes.append(im.size)
    assert len(set(sizes)) > 1
    assert any(w != h for w, h in sizes)


def test_pretraining_pool_is_larger_than_labelled_split(tree):
    jpegs = {p.stem for p in (tree / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg")}
    listed = set(_ids(tree, "VOC2012", "trainval"))
    assert listed < jpegs
    assert len(jpegs) == SMALL["n_train"] + SMALL["n_val"] + SMALL["n_unlabelled"]
    assert len(jpegs) > SMALL["n_train"]
    unlabelled = jpegs - listed
    labels = tree / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    assert len(unlabelled) == SMALL["n_unlabelled"]
    assert not any((labels / f"{i}.png").exists() for i in unlabelled)
    test_ids = set(_ids(tree, "VOC2007", "test"))
    assert not test_ids & jpegs


def test_class_frequencies_show_strong_imbalance(tree):
    freq = synthetic.class_frequencies(tree, "train")
    assert list(freq) == CLASS_NAMES
    assert sum(freq.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in freq.values()), freq             # every class in the train split
    objects = [freq[n] for n in CLASS_NAMES[1:]]
    assert min(objects) < max(objects) / 10
    assert freq["background"] == max(freq.values())
    counts = synthetic.class_pixel_counts(tree, "test")
    assert counts["void"] > 0 and set(counts) == set(CLASS_NAMES) | {"void"}


def test_ensure_caches_and_regenerates_only_on_change(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate_synthetic_voc
    monkeypatch.setattr(synthetic, "generate_synthetic_voc",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    root = tmp_path / "cache"
    assert synthetic.ensure_synthetic_voc(root, seed=0, **SMALL) == root
    info = root / "SYNTHETIC_INFO.json"
    stamp = info.stat().st_mtime_ns
    assert synthetic.ensure_synthetic_voc(root, seed=0, **SMALL) == root
    assert len(calls) == 1 and info.stat().st_mtime_ns == stamp

    synthetic.ensure_synthetic_voc(root, seed=0, **{**SMALL, "n_unlabelled": 30})
    assert len(calls) == 2
    assert len(list((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))) == 12 + 4 + 30

    info.write_text("{not json")                                 # damaged info -> regenerate
    synthetic.ensure_synthetic_voc(root, seed=0, **SMALL)
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp/old dirs left


def test_interrupted_generation_leaves_no_tree(tmp_path, monkeypatch):
    real = synthetic.DOMAIN.draw
    seen = []

    def flaky(*args, **kwargs):
        seen.append(1)
        if len(seen) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "DOMAIN", dataclasses.replace(synthetic.DOMAIN, draw=flaky))
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic_voc(tmp_path / "syn", seed=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_default_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SELMASK_DATA_DIR", str(tmp_path / "data"))
    assert synthetic.default_root() == tmp_path / "data" / "synthetic"
    monkeypatch.delenv("SELMASK_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert synthetic.default_root() == tmp_path / "home" / ".cache" / "selmask" / "synthetic"


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    foreign = tmp_path / "realvoc"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(SelmaskError, match="refusing"):
        synthetic.ensure_synthetic_voc(foreign, seed=0, **SMALL)
    assert (foreign / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("kwargs, name", [
    ({"n_train": 0}, "n_train"),
    ({"n_unlabelled": -1}, "n_unlabelled"),
    ({"image_size": (64, 32)}, "image_size"),
    ({"image_size": 64}, "image_size"),
    ({"seed": -3}, "seed"),
])
def test_bad_arguments_raise_selmask_error(tmp_path, kwargs, name):
    with pytest.raises(SelmaskError, match=name):
        synthetic.ensure_synthetic_voc(tmp_path / "x", **{**SMALL, **kwargs})


def test_unknown_split_raises(tree):
    with pytest.raises(SelmaskError, match="split"):
        synthetic.class_frequencies(tree, "validation")
