"""The data and evaluation settings that reproduce the authors' code (METHOD.md, "Details of the
authors' code that change numbers", items 4 and 7-11): void_as_class, absent_class_iou, drop_last,
antialias, cityscapes_pool, split_list. Each test shows what its setting changes, and that the
kit's default leaves it as it was.

CPU, tiny fake datasets; one fine-tuning and one pretraining run of one epoch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

import fake_datasets as fake
import selmask_lib.finetuning as ft
import selmask_lib.pretrain_data as pretrain_data
import selmask_lib.pretraining as pretraining
from selmask_lib import data
from selmask_lib.config import (
    HASHED_WHEN_CHANGED,
    config_hash,
    describe_keys,
    finetune_preset,
    pretrain_preset,
)
from selmask_lib.data.base import UnlabelledImages
from selmask_lib.engine import Trainer, load_checkpoint, seeded_loader
from selmask_lib.errors import SelmaskError
from selmask_lib.metrics import SegmentationEvaluator, iou_from_confusion
from selmask_lib.models import HEAD_PREFIX
from selmask_lib.transforms import test_transform as make_test_transform  # not collected as a test
from selmask_lib.transforms import train_transform, val_transform

NEW_FINETUNE_KEYS = ("void_as_class", "absent_class_iou", "drop_last", "antialias", "split_list")
NEW_PRETRAIN_KEYS = ("drop_last", "antialias", "cityscapes_pool")


pytestmark = pytest.mark.usefixtures("one_thread_quiet", "drop_checkpoints")  # tests/conftest.py


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    return {"voc": fake.make_voc_tree(root / "voc"), "cityscapes": fake.make_cityscapes_tree(root / "cityscapes")}


def smoke_finetune(dataset, root, **overrides):
    values = dict(data_root=str(root), epochs=1, max_train_images=4, device="cpu")
    return finetune_preset("smoke", dataset, **{**values, **overrides})


# --------------------------------------------------------------------------- config


def test_every_setting_is_hashed_only_when_changed_and_listed():
    assert set(NEW_FINETUNE_KEYS) | set(NEW_PRETRAIN_KEYS) <= HASHED_WHEN_CHANGED
    assert set(NEW_FINETUNE_KEYS) <= {row["key"] for row in describe_keys("finetune")}
    assert set(NEW_PRETRAIN_KEYS) <= {row["key"] for row in describe_keys("pretrain")}
    smoke = finetune_preset("smoke", "voc")
    for key, value in [("void_as_class", True), ("absent_class_iou", "zero"), ("drop_last", True),
                       ("antialias", False)]:
        assert config_hash(smoke.updated(**{key: value})) != config_hash(smoke), key
    smoke = pretrain_preset("smoke", "cityscapes")
    for key, value in [("drop_last", True), ("antialias", False), ("cityscapes_pool", "all_fine_and_extra")]:
        assert config_hash(smoke.updated(**{key: value})) != config_hash(smoke), key


@pytest.mark.parametrize("dataset", ["voc", "cityscapes", "nassar", "sugarbeets", "folder", "synthetic"])
def test_paper_preset_follows_the_authors_code_and_cpu_presets_keep_the_defaults(dataset):
    paper = finetune_preset("paper", dataset)
    assert paper.void_as_class == (dataset in ("voc", "cityscapes"))
    assert (paper.absent_class_iou, paper.drop_last, paper.antialias, paper.split_list) == ("zero", True, False, None)
    paper = pretrain_preset("paper", dataset)
    assert (paper.drop_last, paper.antialias) == (True, False)
    assert paper.cityscapes_pool == ("all_fine_and_extra" if dataset == "cityscapes" else "train")
    for preset in ("demo", "smoke"):
        cfg = finetune_preset(preset, dataset)
        assert (cfg.void_as_class, cfg.absent_class_iou, cfg.drop_last, cfg.antialias, cfg.split_list) == \
            (False, "nan", False, True, None)
        cfg = pretrain_preset(preset, dataset)
        assert (cfg.drop_last, cfg.antialias, cfg.cityscapes_pool) == (False, True, "train")


@pytest.mark.parametrize("build, key", [
    (lambda: finetune_preset("smoke", "nassar", void_as_class=True), "void_as_class"),
    (lambda: finetune_preset("smoke", "sugarbeets", void_as_class=True), "void_as_class"),
    (lambda: finetune_preset("paper", "voc").updated(dataset="nassar"), "void_as_class"),
    (lambda: finetune_preset("smoke", "voc", absent_class_iou="none"), "absent_class_iou"),
    (lambda: finetune_preset("smoke", "voc", split_list="list.txt"), "split_list"),
    (lambda: pretrain_preset("smoke", "voc", cityscapes_pool="all_fine_and_extra"), "cityscapes_pool"),
    (lambda: pretrain_preset("smoke", "cityscapes", cityscapes_pool="everything"), "cityscapes_pool"),
])
def test_a_setting_the_dataset_cannot_honour_is_refused_naming_the_key(build, key):
    with pytest.raises(SelmaskError, match=f"config key '{key}'"):
        build()


# --------------------------------------------------------------------------- void_as_class (item 4)


def void_example():
    """Logits [1, 4, 1, 4] of 3 classes + void; target [1, 1, 4].

    Pixel 0: class 0, predicted 0. Pixel 1: class 0, predicted void (class 0 second best).
    Pixel 2: class 1, predicted 1. Pixel 3: void (255), predicted class 2.
    """
    logits = torch.tensor([[5.0, 2.0, 0.0, 0.0],   # class 0
                           [0.0, 0.0, 5.0, 0.0],   # class 1
                           [0.0, 0.0, 0.0, 5.0],   # class 2
                           [0.0, 9.0, 0.0, 0.0]])  # void
    return logits[None, :, None, :], torch.tensor([[[0, 0, 1, 255]]])


def test_a_labelled_pixel_predicted_as_void_lowers_its_class_iou():
    logits, target = void_example()
    evaluator = SegmentationEvaluator(3, ["a", "b", "c"], void_as_class=True)
    evaluator.update(logits, target)
    scores = evaluator.compute()
    # class a: 1 hit, 1 pixel predicted void (a miss); class c predicted only on a void pixel: not counted
    assert scores.per_class_iou == {"a": 0.5, "b": 1.0, "c": None}
    assert scores.miou == pytest.approx(0.75)
    assert scores.class_names == ["a", "b", "c"] and len(scores.confusion_matrix) == 3
    assert scores.predicted_void == [1, 0, 0]
    assert scores.pixel_accuracy == pytest.approx(2 / 3)

    without = SegmentationEvaluator(3, ["a", "b", "c"])  # the same model without its void output
    without.update(logits[:, :3], target)
    plain = without.compute()
    assert plain.per_class_iou == {"a": 1.0, "b": 1.0, "c": None} and plain.predicted_void is None
    with pytest.raises(SelmaskError, match="channels"):
        without.update(logits, target)  # a void output needs void_as_class


def test_void_as_class_loss_makes_void_pixels_negatives_of_every_class():
    logits, target = void_example()
    void_loss, plain_loss = ft.segmentation_loss(255, void_class=3), ft.segmentation_loss(255)
    assert void_loss.jaccard.classes.tolist() == [0, 1, 2]  # void's own IoU term is left out of the mean
    as_void, as_class_1 = logits.clone(), logits.clone()
    as_void[0, :, 0, 3] = torch.tensor([0.0, 0.0, 0.0, 9.0])  # the void pixel predicted as void ...
    as_class_1[0, :, 0, 3] = torch.tensor([0.0, 9.0, 0.0, 0.0])  # ... or as class 1
    # ignoring void, what the model says on a void pixel does not matter; as a class, class 1 there is a false alarm
    torch.testing.assert_close(plain_loss(as_void[:, :3], target), plain_loss(as_class_1[:, :3], target))
    assert void_loss(as_class_1, target) > void_loss(as_void, target) + 0.1
    manual = ft.smp.losses.JaccardLoss(mode="multiclass", from_logits=True, classes=[0, 1, 2])
    torch.testing.assert_close(void_loss(logits, target), manual(logits, torch.tensor([[[0, 0, 1, 3]]])))


def test_void_as_class_trains_one_more_output_and_reports_real_classes_only(trees, tmp_path):
    cfg = smoke_finetune("voc", trees["voc"], void_as_class=True)
    run = ft.finetune(cfg, out_dir=tmp_path / "void")
    head = next(v for k, v in load_checkpoint(run.best_checkpoint)["model"].items()
                if k.startswith(HEAD_PREFIX) and k.endswith("weight"))
    assert head.shape[0] == 22  # 21 VOC classes + void
    assert len(run.results["class_names"]) == 21 and "void" not in run.results["per_class_iou"]
    assert len(run.results["predicted_void"]) == 21
    assert ft.load_splits(smoke_finetune("cityscapes", trees["cityscapes"], void_as_class=True)).num_outputs == 20
    assert ft.load_splits(smoke_finetune("cityscapes", trees["cityscapes"])).num_outputs == 19


# --------------------------------------------------------------------------- absent_class_iou (item 7)


def test_absent_class_scores_zero_and_counts_only_with_the_zero_rule():
    confusion = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])  # class 2: in neither truth nor prediction
    nan_rule, zero_rule = iou_from_confusion(confusion, "nan"), iou_from_confusion(confusion, "zero")
    torch.testing.assert_close(nan_rule[:2], zero_rule[:2])  # present classes: the same IoU
    assert torch.isnan(nan_rule[2]) and zero_rule[2] == 0
    target = torch.tensor([[0, 0, 0, 0, 1, 1]])
    preds = torch.tensor([[0, 0, 0, 1, 0, 1]])
    scores = {}
    for rule in ("nan", "zero"):
        evaluator = SegmentationEvaluator(3, ["a", "b", "c"], absent_class_iou=rule)
        evaluator.update(preds, target)
        scores[rule] = evaluator.compute()
    assert scores["nan"].per_class_iou["c"] is None and scores["zero"].per_class_iou["c"] == 0.0
    assert scores["nan"].miou == pytest.approx((3 / 5 + 1 / 3) / 2)
    assert scores["zero"].miou == pytest.approx((3 / 5 + 1 / 3) / 3)


class ConstantModel(torch.nn.Module):
    """Predicts class 0 everywhere (3 classes)."""

    def forward(self, images):
        zeros = images[:, :1] * 0
        return torch.cat([zeros + 1, zeros, zeros - 1], dim=1)


def tiny_splits(n_images=3):
    image = torch.zeros(3, 4, 4)
    mask = torch.tensor([0, 0, 1, 1]).repeat(4, 1)  # half class 0, half class 1; class 2 absent
    items = [(image, mask)] * n_images
    return ft._Splits(items, items, items, ["a", "b", "c"], 255, Path("."), "x")


@pytest.mark.parametrize("rule, miou", [("nan", 0.25), ("zero", 0.5 / 3)])
def test_validation_miou_that_picks_the_checkpoint_follows_the_rule(rule, miou):
    cfg = finetune_preset("smoke", "voc", device="cpu", absent_class_iou=rule)
    trainer = Trainer(cfg, ConstantModel())
    scores, _ = ft.evaluate_split(trainer, tiny_splits(), ft.segmentation_loss(255), "val", cfg.batch_size)
    assert scores.miou == pytest.approx(miou)  # what _train's evaluate logs as val_miou for best.pt


# --------------------------------------------------------------------------- drop_last (item 8)


@pytest.mark.parametrize("shuffle", [True, False])
def test_drop_last_gives_whole_batches_only(shuffle):
    images = list(range(10))
    assert len(seeded_loader(images, 4, shuffle, 0, "e")) == 3
    assert len(seeded_loader(images, 4, shuffle, 0, "e", drop_last=True)) == 2  # floor(10 / 4)
    assert sorted(len(b) for b in seeded_loader(images, 4, shuffle, 0, "e", drop_last=True)) == [4, 4]
    with pytest.raises(SelmaskError, match=r"'batch_size' \(4\) is more than the 3 images.*drop_last"):
        seeded_loader(images[:3], 4, shuffle, 0, "e", drop_last=True)


def test_drop_last_drops_in_validation_never_in_test():
    cfg = finetune_preset("smoke", "voc", device="cpu", drop_last=True, batch_size=2)
    trainer = Trainer(cfg, ConstantModel())
    assert len(trainer.loader(list(range(5)), True, 0)) == 2
    splits, loss = tiny_splits(3), ft.segmentation_loss(255)
    val, _ = ft.evaluate_split(trainer, splits, loss, "val", 2)
    test, _ = ft.evaluate_split(trainer, splits, loss, "test", 2)
    assert (val.num_pixels, test.num_pixels) == (2 * 16, 3 * 16)
    keep = Trainer(cfg.updated(drop_last=False), ConstantModel())
    assert ft.evaluate_split(keep, splits, loss, "val", 2)[0].num_pixels == 3 * 16
    pretrain = Trainer(pretrain_preset("smoke", "synthetic", device="cpu", drop_last=True, batch_size=4),
                       ConstantModel())
    assert [len(pretrain.loader(list(range(10)), shuffle, "val")) for shuffle in (True, False)] == [2, 2]


def test_drop_last_with_fewer_images_than_a_batch_fails_before_anything_is_written(trees, tmp_path):
    cfg = smoke_finetune("voc", trees["voc"], drop_last=True, batch_size=5)  # 4 train images
    with pytest.raises(SelmaskError, match=r"'batch_size' \(5\) is more than the 4 images of the voc train split"):
        ft.finetune(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- antialias (item 9)


def high_frequency_pair(height=40, width=48):
    """A one-pixel checkerboard with noise (image) and class stripes (label)."""
    generator = torch.Generator().manual_seed(0)
    board = ((torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2) * 200
    image = (board + torch.randint(0, 50, (height, width), generator=generator)).to(torch.uint8)
    label = (torch.arange(width)[None, :] // 6).repeat(height, 1)
    return tv_tensors.Image(image.repeat(3, 1, 1)), tv_tensors.Mask(label)


@pytest.mark.parametrize("make", [
    lambda antialias: val_transform(15, antialias=antialias),
    lambda antialias: make_test_transform(15, antialias=antialias),
    lambda antialias: train_transform(15, scale=(0.5, 1.0), color_jitter=0, antialias=antialias),
])
def test_antialias_changes_resized_pixels_not_labels(make):
    outputs = {}
    for antialias in (True, False):
        torch.manual_seed(0)  # the same crop both times
        outputs[antialias] = make(antialias)(*high_frequency_pair())
    (smooth, smooth_label), (sharp, sharp_label) = outputs[True], outputs[False]
    assert torch.equal(smooth_label, sharp_label)  # labels: nearest either way
    assert (smooth - sharp).abs().mean() > 0.1  # normalised units
    assert sharp.std() > smooth.std()  # no low-pass filter: the checkerboard aliases instead of blurring


def test_antialias_reaches_the_scoring_view(tmp_path):
    path = tmp_path / "board.png"
    from PIL import Image

    Image.fromarray(high_frequency_pair()[0].permute(1, 2, 0).numpy()).save(path)
    pool = UnlabelledImages([path])
    smooth, sharp = (pretrain_data.scoring_view(pool, 0, 15, antialias) for antialias in (True, False))
    assert smooth.shape == sharp.shape == (3, 15, 18)
    assert (smooth - sharp).abs().mean() > 0.05


def test_every_resize_of_a_run_follows_the_config(small_synthetic_root, tmp_path, monkeypatch):
    """Finetuning's three transforms and pretraining's crops, val resize and scoring views."""
    splits = ft.load_splits(smoke_finetune("synthetic", small_synthetic_root, antialias=False))
    resizes = [splits.train.dataset.transform.transforms[0], splits.val.transform.transforms[0],
               splits.test.transform.transforms[0]]
    assert [step.antialias for step in resizes] == [False, False, False]

    seen = []
    real_view = pretrain_data.scoring_view

    def spy_view(pool, index, size, antialias=True):
        seen.append(("view", antialias))
        return real_view(pool, index, size, antialias)

    def spy(name, real):
        def wrapper(*args, antialias=True, **kwargs):
            seen.append((name, antialias))
            return real(*args, antialias=antialias, **kwargs)
        return wrapper

    monkeypatch.setattr(pretrain_data, "scoring_view", spy_view)
    monkeypatch.setattr(pretraining, "scoring_view", spy_view)
    monkeypatch.setattr(pretraining, "train_transform", spy("train", pretraining.train_transform))
    monkeypatch.setattr(pretraining, "val_transform", spy("val", pretraining.val_transform))
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=8,
                          device="cpu", antialias=False)
    pretraining.pretrain(cfg, out_dir=tmp_path / "pretrain")
    assert {name for name, _ in seen} == {"view", "train", "val"}
    assert all(antialias is False for _, antialias in seen)


# --------------------------------------------------------------------------- cityscapes_pool (item 10)


def test_cityscapes_pool_adds_the_val_and_test_frames(trees):
    root = trees["cityscapes"]
    default = pretrain_data.pretraining_pool(pretrain_preset("smoke", "cityscapes", data_root=str(root)))
    authors = pretrain_data.pretraining_pool(pretrain_preset("smoke", "cityscapes", data_root=str(root),
                                                             cityscapes_pool="all_fine_and_extra"))
    assert len(default) == fake.CITYSCAPES_POOL_SIZES["train"]
    assert len(authors) == fake.CITYSCAPES_POOL_SIZES["all_fine_and_extra"]
    folders = [path.parent.parent.name for path in authors.paths]
    assert folders == ["train"] * 5 + ["val"] * 2 + ["test"] + ["train_extra"] * 2
    assert set(default.paths) < set(authors.paths)
    downstream_test = {s.image_path for s in data.load_segmentation_split("cityscapes", root, "test").samples}
    assert downstream_test <= set(authors.paths) and not downstream_test & set(default.paths)
    with pytest.raises(SelmaskError, match="'cityscapes_pool'"):
        data.load_pretraining_images("voc", trees["voc"], cityscapes_pool="all_fine_and_extra")


# --------------------------------------------------------------------------- split_list (item 11)


@pytest.fixture
def sugarbeets(tmp_path):
    root = fake.make_sugarbeets_tree(tmp_path / "sugarbeets")
    frames = (root / "weed_frames.txt").read_text().split()
    return root, frames


def write_list(path, entries):
    path.write_text("".join(f"{entry}\n" for entry in entries))
    return path


def test_split_list_is_cut_70_10_20_in_its_own_order(sugarbeets, tmp_path):
    root, frames = sugarbeets
    order = frames[::-1]  # another order than the dataset's own list
    # the authors' list holds label paths of their machine; bare frame names work too
    entries = [f"/home/authors/data/{frame}" for frame in order[:5]] + [Path(f).stem for f in order[5:]]
    cfg = smoke_finetune("sugarbeets", root, max_train_images=None, split_list=str(write_list(tmp_path / "l", entries)))
    splits = ft.load_splits(cfg)
    stems = [Path(frame).stem for frame in order]
    assert (splits.train.ids, splits.val.ids, splits.test.ids) == (stems[:7], stems[7:8], stems[8:])
    default = ft.load_splits(cfg.updated(split_list=None))
    assert default.train.ids == [Path(frame).stem for frame in frames[:7]]
    assert splits.train.samples[0].image_path.is_file()


def test_split_list_with_an_unknown_frame_names_the_file_and_entry(sugarbeets, tmp_path):
    root, frames = sugarbeets
    list_path = write_list(tmp_path / "authors.txt", frames[:3] + ["CKA_160523/bonirob_nowhere.png"] + frames[3:])
    with pytest.raises(SelmaskError, match=r"authors\.txt: entry 'bonirob_nowhere' is not a labelled frame"):
        ft.load_splits(smoke_finetune("sugarbeets", root, split_list=str(list_path)))
    with pytest.raises(SelmaskError, match="'split_list'.*not found"):
        ft.load_splits(smoke_finetune("sugarbeets", root, split_list=str(tmp_path / "missing.txt")))


def test_split_list_identity_is_its_content_not_its_path(sugarbeets, tmp_path):
    root, frames = sugarbeets
    first = write_list(tmp_path / "a.txt", frames)
    (tmp_path / "elsewhere").mkdir()
    moved = write_list(tmp_path / "elsewhere" / "b.txt", frames)
    edited = write_list(tmp_path / "c.txt", frames[1:] + frames[:1])

    def identity(path):
        cfg = smoke_finetune("sugarbeets", root, split_list=None if path is None else str(path))
        return config_hash(cfg), ft.load_splits(cfg).fingerprint

    (hash_a, data_a), (hash_b, data_b), (hash_c, data_c), (hash_none, data_none) = map(
        identity, (first, moved, edited, None))
    assert hash_a == hash_b == hash_c == hash_none  # the path is not hashed
    assert data_a == data_b  # the same list elsewhere: the same run
    assert len({data_a, data_c, data_none}) == 3  # another list, or none: another run


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("args, message", [
    (["finetune", "--dataset", "nassar", "--set", "void_as_class=true"], "config key 'void_as_class'"),
    (["finetune", "--dataset", "voc", "--set", "split_list=authors.txt"], "config key 'split_list'"),
    (["pretrain", "--strategy", "random", "--dataset", "voc", "--set", "cityscapes_pool=all_fine_and_extra"],
     "config key 'cityscapes_pool'"),
])
def test_cli_refuses_a_setting_the_dataset_cannot_honour_in_one_line(args, message, tmp_path, capsys):
    from selmask_lib.cli import main

    argv = args + ["--data-root", str(tmp_path), "--preset", "smoke", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selmask: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
