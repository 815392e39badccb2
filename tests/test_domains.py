"""The four embedded domains shaped like the paper's pairs (small trees in tmp dirs only)."""

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from skimage.morphology import opening

from selmask_lib import cli, data, reproduction
from selmask_lib.config import EMBEDDED_DATASETS, VOID_LABEL_DATASETS, finetune_preset, pretrain_preset
from selmask_lib.data import embedded
from selmask_lib.data.embedded import DOMAINS, SMALL
from selmask_lib.errors import SelmaskError
from selmask_lib.reproduction import CROSS_PAIRS, EMBEDDED_CROSS_PAIRS, PAPER_CROSS_PAIRS, reproduce

GENERAL = ("toy_street", "toy_tabletop")
FIELD = ("toy_beet_field", "toy_maize_field")
NEW = GENERAL + FIELD


def _digests(root: Path) -> dict[str, str]:
    """md5 of every image and label file under root, keyed by relative path (the info file records versions)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".jpg", ".png", ".txt")}


def _labels(name: str, split: str, count: int) -> list[np.ndarray]:
    return [DOMAINS[name].draw(0, split, i, SMALL["image_size"])[1] for i in range(count)]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """A small tree of every new domain, seed 0."""
    base = tmp_path_factory.mktemp("domains")
    return {name: embedded.ensure_embedded(name, base / name, seed=0, **SMALL) for name in NEW}


# --------------------------------------------------------------------------- registry and pairs
def test_every_embedded_dataset_is_registered_with_a_domain():
    assert tuple(DOMAINS) == EMBEDDED_DATASETS
    assert set(EMBEDDED_DATASETS) <= set(data.DATASETS)
    for name in NEW:
        assert pretrain_preset("demo", name).dataset == name
        assert finetune_preset("paper", name).void_as_class is False


def test_field_domains_have_three_classes_and_general_ones_at_least_seven():
    for name in FIELD:
        assert DOMAINS[name].class_names == ("background", "crop", "weed")
        assert not DOMAINS[name].void_band and name not in VOID_LABEL_DATASETS
    for name in GENERAL:
        assert len(DOMAINS[name].class_names) >= 7 and DOMAINS[name].class_names[0] == "background"
        assert DOMAINS[name].void_band and name in VOID_LABEL_DATASETS


def test_cross_pairs_are_symmetric_registered_and_of_one_kind():
    for name, partner in EMBEDDED_CROSS_PAIRS.items():
        assert partner != name and EMBEDDED_CROSS_PAIRS[partner] == name
        assert partner in data.DATASETS and partner in EMBEDDED_DATASETS
        assert (name in FIELD) == (partner in FIELD)
    assert set(EMBEDDED_CROSS_PAIRS) == set(NEW)
    assert CROSS_PAIRS == {**PAPER_CROSS_PAIRS, **EMBEDDED_CROSS_PAIRS}


def test_reproduce_pretrains_the_cross_column_on_the_partner_with_no_data_root(monkeypatch, tmp_path):
    pretrained, finetuned = [], []
    monkeypatch.setattr(reproduction, "pretrain", lambda cfg, **kw: pretrained.append(cfg.dataset)
                        or SimpleNamespace(run_dir=tmp_path / cfg.dataset))
    monkeypatch.setattr(reproduction, "finetune", lambda cfg, **kw: finetuned.append((cfg.dataset, cfg.pretrained))
                        or SimpleNamespace(results_path=tmp_path / "results.json"))
    monkeypatch.setattr(reproduction, "load_results", lambda files: pd.DataFrame())
    result = reproduce(list(NEW), runs_root=tmp_path, variants=("selective_ir_cross",))
    assert result.skipped == []
    assert pretrained == [EMBEDDED_CROSS_PAIRS[name] for name in NEW]
    assert finetuned == [(name, str(tmp_path / EMBEDDED_CROSS_PAIRS[name])) for name in NEW]


def test_a_partner_looks_different(trees):
    """The cross pair is a domain shift: the mean colours of the two domains' images differ clearly."""
    means = {}
    for name in NEW:
        images = [DOMAINS[name].draw(0, "unlabelled", i, SMALL["image_size"])[0] for i in range(12)]
        means[name] = np.mean([image.reshape(-1, 3).mean(0) for image in images], axis=0)
    for name, partner in EMBEDDED_CROSS_PAIRS.items():
        assert np.abs(means[name] - means[partner]).sum() > 60, (name, partner, means)


# --------------------------------------------------------------------------- content
@pytest.mark.parametrize("name", NEW)
def test_same_seed_is_byte_identical_and_other_seed_differs(name, trees, tmp_path):
    again = embedded.generate_embedded(name, tmp_path / "again", seed=0, **SMALL)
    assert _digests(again) == _digests(trees[name])
    other = _digests(embedded.generate_embedded(name, tmp_path / "other", seed=1, **SMALL))
    labels = [key for key in other if key.endswith(".png")]
    assert sum(other[key] != _digests(trees[name])[key] for key in labels) > len(labels) // 2


@pytest.mark.parametrize("name", NEW)
def test_every_class_is_in_every_split_of_eight_images(name):
    classes = set(range(len(DOMAINS[name].class_names)))
    for split in ("train", "val", "test"):
        present = set().union(*(np.unique(label) for label in _labels(name, split, 8)))
        assert classes <= present, (name, split, classes - present)


@pytest.mark.parametrize("name", NEW)
def test_labels_are_class_ids_or_void(name, trees):
    n = len(DOMAINS[name].class_names)
    counts = embedded.class_pixel_counts(trees[name], "trainval")
    assert list(counts) == [*DOMAINS[name].class_names, "void"]
    for label in _labels(name, "train", 8):
        assert label.dtype == np.uint8 and set(np.unique(label)) <= set(range(n)) | {255}
    if DOMAINS[name].void_band:
        assert 0 < counts["void"] < 0.2 * sum(counts.values())
    else:
        assert counts["void"] == 0


@pytest.mark.parametrize("name", NEW)
def test_classes_are_imbalanced_and_background_is_the_largest(name, trees):
    freq = embedded.class_frequencies(trees[name], "train")
    objects = [freq[c] for c in DOMAINS[name].class_names[1:]]
    assert sum(freq.values()) == pytest.approx(1.0)
    assert freq["background"] == max(freq.values()) and 0.6 < freq["background"] < 0.9
    assert min(objects) > 0.002 and min(objects) < max(objects) / 2      # rare classes, but present


@pytest.mark.parametrize("name", NEW)
def test_no_class_is_a_one_pixel_structure(name):
    """At least 90 % of every class's pixels survive an opening by a 2x2 square: nothing is 1 px thin.

    The demo fine-tuning cannot learn 1 px wires (synthetic's wire and fern
    score 0 IoU); these domains must stay learnable.
    """
    square = np.ones((2, 2), bool)
    for cls in range(1, len(DOMAINS[name].class_names)):
        kept = total = 0
        for label in _labels(name, "train", 12):
            mask = label == cls
            total += mask.sum()
            kept += opening(mask, square).sum()
        assert kept >= 0.9 * total, (name, DOMAINS[name].class_names[cls], kept / total)


# --------------------------------------------------------------------------- the kit reads them
@pytest.mark.parametrize("name", NEW)
def test_each_domain_loads_through_the_kit(name, trees):
    info = data.dataset_info(name, trees[name])
    assert info.name == name and info.class_names == DOMAINS[name].class_names
    train = data.load_segmentation_split(name, trees[name], "train")
    assert len(train) == SMALL["n_train"]
    image, mask = train[0]
    assert image.shape[0] == 3 and tuple(mask.shape) == tuple(image.shape[1:])
    assert len(data.load_segmentation_split(name, trees[name], "test")) == SMALL["n_test"]
    pool = data.load_pretraining_images(name, trees[name])
    assert len(pool) == SMALL["n_train"] + SMALL["n_val"] + SMALL["n_unlabelled"]


def test_resolve_data_root_generates_an_embedded_domain_under_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SELMASK_DATA_DIR", str(tmp_path))
    real = embedded.ensure_embedded
    monkeypatch.setattr(embedded, "ensure_embedded", lambda name: real(name, **SMALL))
    root = data.resolve_data_root("toy_maize_field", None)
    assert root == tmp_path / "toy_maize_field"
    assert data.dataset_info("toy_maize_field", root).class_names == ("background", "crop", "weed")
    with pytest.raises(SelmaskError, match="data_root is required"):
        data.resolve_data_root("nassar", None)


def test_the_synthetic_command_generates_the_named_domain(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(embedded, "ensure_embedded", lambda *args, **kwargs: calls.append((args, kwargs)) or "X")
    assert cli.main(["synthetic", "--dataset", "toy_tabletop", "--root", str(tmp_path), "--seed", "3"]) == 0
    assert calls == [(("toy_tabletop", str(tmp_path)), {"seed": 3})]
    assert capsys.readouterr().out.strip() == "X"


# --------------------------------------------------------------------------- caching
def test_ensure_regenerates_only_on_change(tmp_path, monkeypatch):
    calls = []
    real = embedded.write_tree
    monkeypatch.setattr(embedded, "write_tree", lambda *args: calls.append(args[0].name) or real(*args))
    root = tmp_path / "beet"
    embedded.ensure_embedded("toy_beet_field", root, seed=0, **SMALL)
    embedded.ensure_embedded("toy_beet_field", root, seed=0, **SMALL)
    assert calls == ["toy_beet_field"]
    embedded.ensure_embedded("toy_beet_field", root, seed=2, **SMALL)
    assert calls == ["toy_beet_field"] * 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp/old dirs left


def test_refuses_to_overwrite_another_domain(trees):
    with pytest.raises(SelmaskError, match="toy_street.*refusing"):
        embedded.ensure_embedded("toy_tabletop", trees["toy_street"], seed=0, **SMALL)
    assert data.dataset_info("toy_street", trees["toy_street"]).class_names == DOMAINS["toy_street"].class_names


def test_unknown_domain_and_bad_sizes_are_one_line_errors(tmp_path):
    with pytest.raises(SelmaskError, match="unknown embedded dataset 'toy_moon'"):
        embedded.ensure_embedded("toy_moon", tmp_path)
    with pytest.raises(SelmaskError, match="toy_street dataset: argument n_train"):
        embedded.ensure_embedded("toy_street", tmp_path, **{**SMALL, "n_train": 0})
