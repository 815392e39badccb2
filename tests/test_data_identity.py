"""A run's identity includes its data: a finished run is reused only on the files it was trained on."""

from __future__ import annotations

import json
import shutil

import pytest

from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.data import fingerprint
from selmask_lib.errors import SelmaskError
from selmask_lib.finetuning import finetune
from selmask_lib.pretraining import pretrain
from selmask_lib.results import FORMAT_VERSION, read_results


@pytest.fixture(scope="module")
def two_roots(small_synthetic_root, tmp_path_factory):
    """The small synthetic tree, an identical copy elsewhere, and a copy with one pretraining image changed."""
    base = tmp_path_factory.mktemp("roots")
    same, other = base / "same", base / "other"
    shutil.copytree(small_synthetic_root, same)
    shutil.copytree(small_synthetic_root, other)
    image = sorted((other / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # still a JPEG, one byte longer
    return small_synthetic_root, same, other


def test_fingerprint_follows_names_and_sizes_not_the_folder(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "x.png").write_bytes(b"12345")
    a, b = (fingerprint([tmp_path / root / "x.png"], tmp_path / root) for root in ("a", "b"))
    assert a == b  # the same files moved elsewhere
    (tmp_path / "b" / "x.png").write_bytes(b"123456")
    assert fingerprint([tmp_path / "b" / "x.png"], tmp_path / "b") != a  # another size
    with pytest.raises(SelmaskError, match="missing.png"):
        fingerprint([tmp_path / "a" / "missing.png"], tmp_path / "a")


def test_pretraining_on_other_data_is_another_run(two_roots, tmp_path):
    original, same, other = two_roots
    cfg = pretrain_preset("smoke", "synthetic", strategy="random")
    first = pretrain(cfg.updated(data_root=str(original)), runs_root=tmp_path)
    info = json.loads((first.run_dir / "run.json").read_text())
    assert info["data_root"] == str(original) and first.run_dir.name.endswith("-d" + info["data_fingerprint"][:8])
    weights = first.weights.read_bytes()
    # the same files elsewhere: the finished run is reused, nothing trained
    assert pretrain(cfg.updated(data_root=str(same)), runs_root=tmp_path).run_dir == first.run_dir
    assert first.weights.read_bytes() == weights
    # other files: another default folder, and an explicit --out holding the first run is refused
    second = pretrain(cfg.updated(data_root=str(other)), runs_root=tmp_path)
    assert second.run_dir != first.run_dir
    before = {p: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()}
    with pytest.raises(SelmaskError, match=rf"on other data \(data root {original}.*data root {other}"):
        pretrain(cfg.updated(data_root=str(other)), out_dir=first.run_dir)
    assert {p: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()} == before


def test_finetuning_records_its_data_and_refuses_other_data(two_roots, tmp_path):
    original, _, other = two_roots
    label = sorted((other / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))[0]
    cfg = finetune_preset("smoke", "synthetic", data_root=str(original), epochs=1, max_train_images=4, device="cpu")
    run = finetune(cfg, out_dir=tmp_path / "ft")
    results = read_results(run.results_path)
    assert results["format_version"] == FORMAT_VERSION == 2 and len(results["data_fingerprint"]) == 16
    shutil.copy(label, tmp_path / "label.png")
    label.write_bytes(label.read_bytes() + b"\0")  # a label of the other tree differs in size now too
    try:
        with pytest.raises(SelmaskError, match="on other data"):
            finetune(cfg.updated(data_root=str(other)), out_dir=tmp_path / "ft")
    finally:
        shutil.copy(tmp_path / "label.png", label)


def test_a_bad_label_in_the_test_split_is_found_before_training(small_synthetic_root, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import selmask_lib.engine as engine

    root = tmp_path / "data"
    shutil.copytree(small_synthetic_root, root)
    test_ids = (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Segmentation" / "test.txt").read_text().split()
    label = root / "VOCdevkit" / "VOC2007" / "SegmentationClass" / f"{test_ids[-1]}.png"
    with Image.open(label) as image:
        bad = Image.fromarray(np.full((image.height, image.width), 77, dtype=np.uint8), mode="P")
        bad.putpalette(image.getpalette())
    bad.save(label)

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the data was checked")

    monkeypatch.setattr(engine, "fit", no_training)
    cfg = finetune_preset("smoke", "synthetic", data_root=str(root), device="cpu")
    with pytest.raises(SelmaskError, match=rf"{label.name}.*77"):
        finetune(cfg, out_dir=tmp_path / "ft")
    assert not (tmp_path / "ft").exists()


def test_a_reused_finetuning_run_decodes_no_data(small_synthetic_root, tmp_path, monkeypatch):
    from selmask_lib.data.base import SegmentationDataset

    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), epochs=1, max_train_images=4,
                          device="cpu")
    first = finetune(cfg, out_dir=tmp_path / "ft")

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("a finished run was reused, yet every sample was decoded again")

    monkeypatch.setattr(SegmentationDataset, "check_all", no_decoding)
    assert finetune(cfg, out_dir=tmp_path / "ft").results == first.results
