"""Dataset loaders: split sizes, label decoding and pool sizes for every on-disk
format (tiny fake trees from fake_datasets.py), and one clear SelmaskError
naming the file for each kind of bad input."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import fake_datasets as fake
from selmask_lib import data
from selmask_lib.config import DEFAULT_MEAN, DEFAULT_STD
from selmask_lib.data import base, cityscapes, nassar, sugarbeets
from selmask_lib.errors import SelmaskError
from selmask_lib.transforms import train_transform

FORMATS = {
    "voc": (fake.make_voc_tree, fake.VOC_SIZES, fake.VOC_EXPECTED, 21),
    "cityscapes": (fake.make_cityscapes_tree, fake.CITYSCAPES_SIZES, fake.CITYSCAPES_EXPECTED, 19),
    "nassar": (fake.make_nassar_tree, fake.NASSAR_SIZES, fake.NASSAR_EXPECTED, 3),
    "sugarbeets": (fake.make_sugarbeets_tree, fake.SUGARBEETS_SIZES, fake.SUGARBEETS_EXPECTED, 3),
    "folder": (fake.make_folder_tree, fake.FOLDER_SIZES, fake.FOLDER_EXPECTED, 3),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """One read-only tree per format, shared by the tests that only read."""
    root = tmp_path_factory.mktemp("trees")
    return {name: make(root / name) for name, (make, *_rest) in FORMATS.items()}


@pytest.fixture
def voc_root(tmp_path):
    """A fresh VOC tree that a test may break."""
    return fake.make_voc_tree(tmp_path / "voc")


@contextmanager
def raises_naming(path, match=None):
    """pytest.raises(SelmaskError) whose one-line message contains ``path``."""
    with pytest.raises(SelmaskError, match=match) as info:
        yield info
    message = str(info.value)
    assert str(path) in message, f"{path} not named in: {message}"
    assert "\n" not in message


# ------------------------------------------------------------ the five formats


@pytest.mark.parametrize("name", FORMATS)
def test_split_sizes(trees, name):
    sizes = FORMATS[name][1]
    for split in base.SPLITS:
        assert len(data.load_segmentation_split(name, trees[name], split)) == sizes[split], split


@pytest.mark.parametrize("name", FORMATS)
def test_splits_are_disjoint(trees, name):
    ids = [data.load_segmentation_split(name, trees[name], s).ids for s in base.SPLITS]
    assert sum(len(i) for i in ids) == len(set().union(*ids))


@pytest.mark.parametrize("name", FORMATS)
def test_label_mapping_exact(trees, name):
    expected = torch.from_numpy(fake.stripes(FORMATS[name][2], np.int64))
    for split in base.SPLITS:
        image, mask = data.load_segmentation_split(name, trees[name], split)[0]
        assert image.shape == (3, fake.HEIGHT, fake.WIDTH) and image.dtype == torch.float32
        assert mask.dtype == torch.int64
        assert torch.equal(mask, expected), split


@pytest.mark.parametrize("name", FORMATS)
def test_pretraining_pool(trees, name):
    pool = data.load_pretraining_images(name, trees[name])
    assert len(pool) == FORMATS[name][1]["pretrain"]
    assert len(set(pool.ids)) == len(pool)
    image = pool[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3
    assert 0.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("name", FORMATS)
def test_dataset_info(trees, name):
    info = data.dataset_info(name, trees[name])
    assert info.num_classes == FORMATS[name][3]
    assert len(info.class_colors) == info.num_classes
    assert info.ignore_index == 255


def test_class_names_and_colours(trees):
    assert data.dataset_info("voc", trees["voc"]).class_colors[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    city = data.dataset_info("cityscapes", trees["cityscapes"])
    assert city.class_names[0] == "road" and city.class_colors[0] == (128, 64, 128)
    assert city.class_names[-1] == "bicycle"
    folder_info = data.dataset_info("folder", trees["folder"])
    assert folder_info.class_names == fake.FOLDER_CLASSES
    assert folder_info.class_colors[1] == (0, 128, 0)


def test_image_is_normalised_without_transform(trees):
    dataset = data.load_segmentation_split("nassar", trees["nassar"], "test")
    image, _ = dataset[0]
    raw = torch.from_numpy(base.read_rgb(dataset.samples[0].image_path)).permute(2, 0, 1) / 255.0
    mean, std = torch.tensor(DEFAULT_MEAN)[:, None, None], torch.tensor(DEFAULT_STD)[:, None, None]
    torch.testing.assert_close(image, (raw - mean) / std)


def test_transform_is_applied(trees):
    dataset = data.load_segmentation_split("cityscapes", trees["cityscapes"], "train", train_transform(size=16))
    image, mask = dataset[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
    assert set(mask.unique().tolist()) <= set(fake.CITYSCAPES_EXPECTED)


def test_registry():
    assert set(data.DATASETS) == {"voc", "cityscapes", "nassar", "sugarbeets", "folder", "synthetic",
                                  "toy_street", "toy_tabletop", "toy_beet_field", "toy_maize_field"}
    with pytest.raises(SelmaskError, match="unknown dataset 'imagenet'"):
        data.get_dataset("imagenet")


# ------------------------------------------------------------ format details


def test_voc_root_may_be_the_devkit(trees):
    assert len(data.load_segmentation_split("voc", trees["voc"] / "VOCdevkit", "val")) == fake.VOC_SIZES["val"]


def test_voc_without_voc2007_fails_only_for_test(voc_root):
    shutil.rmtree(voc_root / "VOCdevkit" / "VOC2007")
    assert len(data.load_segmentation_split("voc", voc_root, "train")) == fake.VOC_SIZES["train"]
    with raises_naming(voc_root / "VOCdevkit" / "VOC2007", match="VOC2007 is needed"):
        data.load_segmentation_split("voc", voc_root, "test")


def test_synthetic_reads_a_voc_tree_with_its_class_names(voc_root):
    assert data.dataset_info("synthetic", voc_root).class_names == data.dataset_info("voc", voc_root).class_names
    names = [f"shape_{i}" for i in range(21)]
    (voc_root / "classes.yaml").write_text("classes: [" + ", ".join(names) + "]\n")
    info = data.dataset_info("synthetic", voc_root)
    assert info.name == "synthetic" and info.class_names == tuple(names)
    assert len(data.load_segmentation_split("synthetic", voc_root, "train")) == fake.VOC_SIZES["train"]


def test_cityscapes_train_val_cut_in_list_order(trees):
    train = data.load_segmentation_split("cityscapes", trees["cityscapes"], "train").ids
    val = data.load_segmentation_split("cityscapes", trees["cityscapes"], "val").ids
    assert train + val == sorted(train + val)  # sorted official train list, first 80% train
    assert val == ["bochum_000004_000019"]


def test_cityscapes_uses_the_authors_list_order_when_present(tmp_path):
    root = fake.make_cityscapes_tree(tmp_path / "cs")
    frames = sorted(p.name[: -len("_leftImg8bit.png")] for p in (root / "leftImg8bit" / "train").rglob("*.png"))
    listed = [f"{f.split('_')[0]}/{f}" for f in reversed(frames)]
    (root / "leftImg8bit" / "train" / "train.txt").write_text("\n".join(listed) + "\n")
    assert data.load_segmentation_split("cityscapes", root, "val").ids == [frames[0]]


def test_cityscapes_lookup_table_covers_every_byte():
    assert cityscapes.TRAIN_ID_LUT.shape == (256,)
    assert sorted(set(cityscapes.TRAIN_ID_LUT.tolist()) - {255}) == list(range(19))


def test_nassar_uses_first_fifth_rounded_down():
    assert len(base.split_in_order(list(range(757)), (0.7, 0.1, 0.2))[0]) == 529
    # paper lists 1784/168/266 -> 356/33/266 (a fifth, rounded down)
    assert [n // nassar.DOWNSTREAM_FRACTION_DIVISOR for n in (1784, 168)] == [356, 33]


def test_nassar_tiles_end_at_the_border(trees):
    assert nassar.tile_starts(600, 256) == [0, 256, 344]
    assert nassar.tile_starts(512, 256) == [0, 256]
    assert len(nassar.tile_starts(90599, 256)) * len(nassar.tile_starts(29395, 256)) == 40710
    mosaic = np.array(Image.open(trees["nassar"] / "orthomosaic" / "mosaic.png"))
    last = trees["nassar"] / "pretrain_tiles" / "mosaic_y000068_x000088.png"
    np.testing.assert_array_equal(np.array(Image.open(last)), mosaic[68:100, 88:120])


def test_nassar_pool_falls_back_to_downstream_tiles(tmp_path):
    root = fake.make_nassar_tree(tmp_path / "nassar")
    shutil.rmtree(root / "pretrain_tiles")
    with pytest.warns(UserWarning, match="pretrain_tiles not found"):
        pool = data.load_pretraining_images("nassar", root)
    assert len(pool) == sum(fake.NASSAR_LISTS.values())


def test_sugarbeets_write_weed_list(tmp_path):
    root = fake.make_sugarbeets_tree(tmp_path / "sb")
    original = set((root / sugarbeets.LIST_FILE).read_text().split())
    sugarbeets.write_weed_list(root)
    assert set((root / sugarbeets.LIST_FILE).read_text().split()) == original  # the crop-only frames are left out


def test_sugarbeets_accepts_the_authors_leading_slash(tmp_path):
    root = fake.make_sugarbeets_tree(tmp_path / "sb")
    list_path = root / sugarbeets.LIST_FILE
    list_path.write_text("".join(f"/{line}\n" for line in list_path.read_text().split()))
    assert len(data.load_segmentation_split("sugarbeets", root, "train")) == fake.SUGARBEETS_SIZES["train"]


def test_folder_explicit_split_lists(tmp_path):
    root = fake.make_folder_tree(tmp_path / "folder")
    (root / "splits").mkdir()
    for split, stems in {"train": ["field_00", "field_03"], "val": ["field_01"], "test": ["field_02"]}.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    train = data.load_segmentation_split("folder", root, "train")
    assert train.ids == ["field_00", "field_03"]
    assert train.samples[1].image_path.suffix == ".jpg"


def test_folder_seeded_split_and_inferred_classes(tmp_path):
    root = fake.make_folder_tree(tmp_path / "folder")
    (root / "classes.yaml").unlink()
    from selmask_lib.data import folder

    assert folder.samples(root, "train") == folder.samples(root, "train")  # same seed, same split
    assert folder.samples(root, "train", seed=1) != folder.samples(root, "train")
    info = data.dataset_info("folder", root)
    assert info.class_names == ("class_0", "class_1", "class_2")


# ------------------------------------------------------------------ bad input


def test_missing_split_list(voc_root):
    list_path = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    list_path.unlink()
    with raises_naming(list_path, match="split list not found"):
        data.load_segmentation_split("voc", voc_root, "train")


def test_list_entry_without_image(voc_root):
    list_path = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    list_path.write_text(list_path.read_text() + "2012_missing\n")
    expected = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2012_missing.jpg"
    with raises_naming(expected, match="'2012_missing' has no image"):
        data.load_segmentation_split("voc", voc_root, "val")


def test_image_without_label(tmp_path):
    root = fake.make_cityscapes_tree(tmp_path / "cs")
    label = next((root / "gtFine" / "val").rglob("*_labelIds.png"))
    label.unlink()
    with raises_naming(label, match="has no label"):
        data.load_segmentation_split("cityscapes", root, "test")


def test_image_label_size_mismatch(voc_root):
    dataset = data.load_segmentation_split("voc", voc_root, "train")
    label_path = dataset.samples[1].label_path
    fake.palette_png(np.zeros((20, 48), np.uint8)).save(label_path)
    with raises_naming(label_path, match="48x20 px but its image"):
        dataset[1]


def test_label_value_out_of_range(voc_root):
    dataset = data.load_segmentation_split("voc", voc_root, "train")
    label_path = dataset.samples[0].label_path
    fake.palette_png(fake.stripes([0, 30, 1, 1, 1, 1, 1, 1])).save(label_path)
    with raises_naming(label_path, match=r"label values \[30\]"):
        dataset[0]


def test_sugarbeets_unknown_label_value(tmp_path):
    root = fake.make_sugarbeets_tree(tmp_path / "sb")
    dataset = data.load_segmentation_split("sugarbeets", root, "test")
    label_path = dataset.samples[0].label_path
    Image.fromarray(fake.stripes([0, 500, 10000, 0, 0, 0, 0, 0], np.uint16)).save(label_path)
    with raises_naming(label_path, match=r"\[500\]"):
        dataset[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image(voc_root, damage):
    dataset = data.load_segmentation_split("voc", voc_root, "train")
    image_path = dataset.samples[0].image_path
    content = image_path.read_bytes()
    image_path.write_bytes(content[: len(content) // 2] if damage == "truncate" else b"not a jpeg at all")
    with raises_naming(image_path, match="corrupt or truncated"):
        dataset[0]


def test_truncated_pretraining_image(trees, tmp_path):
    broken = tmp_path / "broken.png"
    good = trees["cityscapes"] / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000019_leftImg8bit.png"
    broken.write_bytes(good.read_bytes()[:200])
    with raises_naming(broken, match="corrupt or truncated"):
        base.UnlabelledImages([broken])[0]


@pytest.mark.parametrize("name", ["voc", "sugarbeets"])
def test_rgb_label_where_index_label_expected(tmp_path, name):
    root = FORMATS[name][0](tmp_path / name)
    dataset = data.load_segmentation_split(name, root, "train")
    label_path = dataset.samples[0].label_path
    Image.new("RGB", (fake.WIDTH, fake.HEIGHT), (128, 0, 0)).save(label_path)
    with raises_naming(label_path, match="RGB"):
        dataset[0]


def test_empty_split_from_list(tmp_path):
    root = fake.make_folder_tree(tmp_path / "folder")
    (root / "splits").mkdir()
    for split in base.SPLITS:
        (root / "splits" / f"{split}.txt").write_text("field_00\n" if split != "val" else "")
    with raises_naming(root, match="'val' split of dataset 'folder' is empty"):
        data.load_segmentation_split("folder", root, "val")


def test_empty_split_from_short_nassar_list(tmp_path):
    root = fake.make_nassar_tree(tmp_path / "nassar")
    list_path = root / "tiled_dataset" / "train" / "data_list" / "val.txt"
    list_path.write_text("".join(line + "\n" for line in list_path.read_text().split()[:4]))
    with raises_naming(list_path, match="only its first fifth is used"):
        data.load_segmentation_split("nassar", root, "val")


def test_bad_split_name_and_missing_root(trees, tmp_path):
    with pytest.raises(SelmaskError, match="split must be one of"):
        data.load_segmentation_split("voc", trees["voc"], "training")
    with raises_naming(tmp_path / "nowhere", match="not found"):
        data.load_segmentation_split("voc", tmp_path / "nowhere", "train")


def test_empty_pretraining_pool(tmp_path):
    (tmp_path / "sb").mkdir()
    with raises_naming(tmp_path / "sb", match="no pretraining images"):
        data.load_pretraining_images("sugarbeets", tmp_path / "sb")


def test_bad_classes_yaml(tmp_path):
    root = fake.make_folder_tree(tmp_path / "folder")
    (root / "classes.yaml").write_text("classes:\n  - name: soil\n    color: [0, 0]\n")
    with raises_naming(root / "classes.yaml", match="three integers"):
        data.dataset_info("folder", root)
