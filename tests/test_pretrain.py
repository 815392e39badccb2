"""Random and selective masking pretraining (selmask_lib.pretraining), on the small synthetic set."""

import os
import shutil

import pytest
import torch
from torchvision.transforms import v2

from selmask_lib.config import pretrain_preset
from selmask_lib.engine import load_checkpoint
from selmask_lib.errors import SelmaskError
from selmask_lib.masking import patch_grid, pixel_mask, selective_mask
from selmask_lib.engine import Trainer
from selmask_lib.pretraining import (
    load_step_masks,
    pretrain,
    pretrain_random,
    pretrain_selective,
)
from selmask_lib.pretrain_data import (
    RandomPixelMasks,
    ReconstructionDataset,
    check_patch_size,
    masked_inputs,
    min_shorter_side,
    partition_indices,
    pretraining_pool,
    scoring_size,
    scoring_view,
    train_val_split,
)
from selmask_lib.strategies import SelectiveMasking
from selmask_lib.transforms import val_transform


@pytest.fixture(scope="module")
def data_root(small_synthetic_root):
    return small_synthetic_root


def smoke(data_root, **overrides):
    return pretrain_preset("smoke", "synthetic", data_root=str(data_root), **overrides)


def weights_of(path):
    return load_checkpoint(path)["model"]


def test_partitions_interleave_and_cover_every_image_once():
    partitions = partition_indices(23, 4)
    assert partitions[0] == [0, 4, 8, 12, 16, 20]
    assert partitions[3] == [3, 7, 11, 15, 19]
    assert sorted(i for part in partitions for i in part) == list(range(23))
    train, val = train_val_split(partitions[0], 0.1)
    assert train == [0, 4, 8, 12, 16] and val == [20]
    assert train_val_split(range(20), 0.1) == (list(range(18)), [18, 19])
    with pytest.raises(SelmaskError, match="n_partitions=10"):
        partition_indices(7, 10)


def test_fixed_masks_move_with_a_horizontal_flip(data_root):
    cfg = smoke(data_root)
    pool = pretraining_pool(cfg)
    view = scoring_view(pool, 0, cfg.score_size)
    grid = patch_grid(*view.shape[-2:], cfg.n_patches)
    patch_masks = {0: torch.arange(grid.shape[0]) % 3 == 0}  # an asymmetric pattern
    expected = pixel_mask(patch_masks[0][None], grid)[0]
    flip = v2.RandomHorizontalFlip(p=1.0)
    identity = v2.Identity()
    plain_image, plain_mask = ReconstructionDataset(pool, [0], identity, cfg.score_size, cfg.n_patches,
                                                    patch_masks)[0]
    flipped_image, flipped_mask = ReconstructionDataset(pool, [0], flip, cfg.score_size, cfg.n_patches,
                                                        patch_masks)[0]
    assert torch.equal(plain_mask, expected)
    assert torch.equal(flipped_mask, plain_mask.flip(-1))
    assert torch.equal(flipped_image, plain_image.flip(-1))


def test_fixed_masks_stay_fixed_while_random_masks_change_every_load(data_root):
    cfg = smoke(data_root)
    pool = pretraining_pool(cfg)
    transform = val_transform(cfg.image_size, cfg.mean, cfg.std)
    view = scoring_view(pool, 1, cfg.score_size)
    grid = patch_grid(*view.shape[-2:], cfg.n_patches)
    fixed = {1: torch.arange(grid.shape[0]) < grid.shape[0] // 2}
    dataset = ReconstructionDataset(pool, [1], transform, cfg.score_size, cfg.n_patches, fixed)
    assert torch.equal(dataset[0][1], dataset[0][1])
    crop_grid = patch_grid(cfg.image_size, cfg.image_size, cfg.n_patches)
    image, pixels = dataset[0]
    assert pixels.any()
    fixed_input = masked_inputs(image[None], pixels[None])[0]
    assert torch.equal(fixed_input == 0, pixels.expand_as(image) | (image == 0))  # exactly the fixed pixels
    random_set = ReconstructionDataset(pool, [1, 1], transform, cfg.score_size, cfg.n_patches)
    images = torch.stack([random_set[0][0], random_set[1][0]])
    random_masks = RandomPixelMasks(crop_grid, cfg.mask_ratio, "cpu")
    generator = torch.Generator().manual_seed(0)
    first = masked_inputs(images, random_masks(2, generator))
    second = masked_inputs(images, random_masks(2, generator))
    assert not torch.equal(first, second)  # a fresh mask on every load
    assert not torch.equal(first[0], first[1])  # and per image
    assert (first == 0).float().mean() > 0.4  # about half of the pixels are masked


class SpyStrategy(SelectiveMasking):
    """Selective masking that records which images it scored and with which weights."""

    def __init__(self, n_draws):
        super().__init__(n_draws)
        self.calls = []

    def __call__(self, model, images, grid, mask_ratio, generator):
        self.calls.append({"images": images.clone(), "weights": {k: v.clone() for k, v in model.state_dict().items()}})
        return super().__call__(model, images, grid, mask_ratio, generator)


def test_selective_run_scores_partition_k_with_step_k_minus_1_weights(data_root, tmp_path):
    cfg = smoke(data_root, n_partitions=3, epochs=1)
    spy = SpyStrategy(cfg.n_scoring_draws)
    run = pretrain_selective(cfg, out_dir=tmp_path / "run", masking=spy)
    pool = pretraining_pool(cfg)
    partitions = partition_indices(len(pool), 3)
    assert [d.name for d in sorted(run.run_dir.glob("step_*"))] == ["step_00", "step_01", "step_02"]
    assert not (run.run_dir / "step_00" / "masks.pt").exists()  # step 0: random masking
    for step in (1, 2):
        artefact = load_step_masks(run.run_dir / f"step_{step:02d}")
        assert artefact["indices"].tolist() == partitions[step]
        assert artefact["ids"] == [pool.ids[i] for i in partitions[step]]
        assert artefact["scored_by"] == step - 1
        previous = weights_of(run.run_dir / f"step_{step - 1:02d}" / "model.pt")
        # every image scored at this step went through the step k-1 weights
        scored = [c for c in spy.calls if torch.equal(c["weights"]["encoder.conv1.weight"],
                                                     previous["encoder.conv1.weight"])]
        n_scored = sum(c["images"].shape[0] for c in scored)
        assert n_scored == len(partitions[step])
        # masks saved for the step equal selective_mask of the saved loss maps
        for row in range(len(artefact["ids"])):
            n = int(artefact["n_patches"][row])
            assert n == artefact["grids"][row].shape[0]
            h, w = artefact["score_sizes"][row].tolist()
            assert torch.equal(artefact["grids"][row], patch_grid(h, w, cfg.n_patches))
            losses = artefact["losses"][row, :n]
            assert torch.equal(artefact["masks"][row, :n], selective_mask(losses[None], cfg.mask_ratio)[0])
            assert not artefact["masks"][row, n:].any()
    assert len(spy.calls) >= 2
    # the final pretrained weights are the last step's
    final = weights_of(run.weights)
    last_step = weights_of(run.run_dir / "step_02" / "model.pt")
    assert all(torch.equal(final[k], last_step[k]) for k in final)


@pytest.mark.parametrize("strategy", ["random", "selective"])
def test_smoke_run_completes_and_reconstruction_loss_goes_down(data_root, tmp_path, strategy):
    cfg = smoke(data_root, strategy=strategy, epochs=4, n_partitions=2, max_images=None, batch_size=8)
    run = pretrain(cfg, out_dir=tmp_path / strategy)
    log_dir = run.run_dir if strategy == "random" else run.run_dir / "step_00"
    rows = (log_dir / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[2]) for row in rows]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert (run.run_dir / "pretrained.pt").exists()
    # a second call reuses the finished run instead of training again
    before = (run.run_dir / "pretrained.pt").stat().st_mtime_ns
    assert pretrain(cfg, out_dir=tmp_path / strategy).weights == run.weights
    assert (run.run_dir / "pretrained.pt").stat().st_mtime_ns == before


class Crash(Exception):
    pass


REAL_TRAIN_ONE_EPOCH = Trainer.train_one_epoch


def crash_in(description_part):
    """A Trainer.train_one_epoch that crashes on the epoch whose progress label contains ``description_part``."""
    def crashing(self, loader, batch_loss, optimisation, description=""):
        if description_part in description:
            raise Crash("simulated crash")
        return REAL_TRAIN_ONE_EPOCH(self, loader, batch_loss, optimisation, description)
    return crashing


def test_resume_after_a_crash_mid_step_gives_the_same_weights(data_root, tmp_path, monkeypatch):
    cfg = smoke(data_root, epochs=2, n_partitions=2, checkpoint_every=1)  # a resumable checkpoint inside the step
    reference = pretrain(cfg, out_dir=tmp_path / "reference")

    monkeypatch.setattr(Trainer, "train_one_epoch", crash_in("step_01 epoch 1"))
    with pytest.raises(Crash):
        pretrain(cfg, out_dir=tmp_path / "crashed")
    masks_before = (tmp_path / "crashed" / "step_01" / "masks.pt").stat().st_mtime_ns
    assert load_checkpoint(tmp_path / "crashed" / "step_01" / "last.pt")["epoch"] == 0  # resumed inside the step
    monkeypatch.undo()

    with pytest.raises(SelmaskError, match="--resume"):
        pretrain(cfg, out_dir=tmp_path / "crashed", resume=False)
    resumed = pretrain(cfg, out_dir=tmp_path / "crashed", resume=True)
    # no re-scoring: the saved masks were reused
    assert (tmp_path / "crashed" / "step_01" / "masks.pt").stat().st_mtime_ns == masks_before
    expected, got = weights_of(reference.weights), weights_of(resumed.weights)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_bad_inputs_are_clear_errors_and_destroy_nothing(data_root, tmp_path):
    empty = tmp_path / "empty"
    (empty / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(SelmaskError, match="no pretraining images"):
        pretrain(smoke(empty), out_dir=tmp_path / "a")
    with pytest.raises(SelmaskError, match="n_partitions"):
        pretrain(smoke(data_root, max_images=3, n_partitions=5), out_dir=tmp_path / "b")
    # a run directory of another config is refused and left as it was
    first = pretrain(smoke(data_root, strategy="random"), out_dir=tmp_path / "run")
    for path in [first.run_dir, *first.run_dir.rglob("*")]:  # back-dated: a rewrite moves the mtime
        os.utime(path, ns=(10**18, 10**18))

    def state():
        return {p: (p.is_dir() or p.read_bytes(), p.stat().st_mtime_ns)
                for p in [first.run_dir, *first.run_dir.rglob("*")]}

    before = state()
    with pytest.raises(SelmaskError, match="different config"):
        pretrain(smoke(data_root, strategy="random", lr=1e-3), out_dir=tmp_path / "run")
    assert state() == before
    # a folder that is not a run is not written into
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(SelmaskError, match="not empty"):
        pretrain(smoke(data_root), out_dir=stranger)
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]
    # an output path under a regular file cannot be created
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SelmaskError, match=str(blocker)):
        pretrain(smoke(data_root), out_dir=blocker / "run")


def test_checkpoint_from_a_different_config_is_rejected(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "train_one_epoch", crash_in("epoch 1"))
    cfg = smoke(data_root, strategy="random", epochs=2, checkpoint_every=1)
    for config, folder in ((cfg, "run"), (cfg.updated(lr=1e-3), "other")):
        with pytest.raises(Crash):
            pretrain(config, out_dir=tmp_path / folder)
    # the unfinished run now holds the other config's resumable checkpoint
    shutil.copy(tmp_path / "other" / "last.pt", tmp_path / "run" / "last.pt")
    monkeypatch.undo()
    with pytest.raises(SelmaskError, match="different config"):
        pretrain(cfg, out_dir=tmp_path / "run", resume=True)


def test_finished_runs_keep_weights_not_resume_state(data_root, tmp_path):
    run = pretrain(smoke(data_root, n_partitions=2), out_dir=tmp_path / "run")
    assert not list(run.run_dir.rglob("last.pt"))
    assert sorted(p.name for p in run.run_dir.rglob("model.pt")) == ["model.pt", "model.pt"]
    assert (run.run_dir / "run.log").read_text().count("single-scale SSIM") == 1


def test_pretrain_random_forces_the_strategy(data_root, tmp_path):
    run = pretrain_random(smoke(data_root, strategy="selective"), out_dir=tmp_path / "r")
    assert run.config.strategy == "random"
    assert not list(run.run_dir.glob("step_*"))


@pytest.mark.parametrize("height, width", [(1, 1), (200, 3), (3, 200), (23, 40), (63, 1000)])
def test_an_image_whose_patches_hold_under_3x3_of_its_pixels_is_too_small(height, width):
    # At its scoring size every image holds the grid (a 3x200 one becomes 256x17066, patches 12x755 px),
    # but 12 rows of that view are 0.14 rows of the image: the rule counts the image's own pixels.
    with pytest.raises(SelmaskError, match=rf"^/d/x.jpg: image is {width}x{height} px, too small .* at least 64 px"):
        check_patch_size("/d/x.jpg", height, width, score_size=256, n_patches=512)


def test_the_patch_rule_needs_a_shorter_side_of_64_px_at_the_papers_settings():
    assert min_shorter_side(256, 512) == 64  # 12 px patches of a 256 px view: 3 image px at 64 px
    assert min_shorter_side(64, 64) == 24    # smoke: 8 px patches of a 64 px view
    for height, width in [(64, 64), (64, 65), (64, 5000), (5000, 64), (375, 500)]:
        check_patch_size("x.jpg", height, width, score_size=256, n_patches=512)  # no error
    with pytest.raises(SelmaskError, match="score_size=32 is too small for n_patches=1024"):
        min_shorter_side(32, 1024)  # 1 px patches: no image could pass, so the keys are named


@pytest.mark.parametrize("height, width", [(3, 200), (375, 500), (500, 375), (333, 517), (97, 31)])
def test_scoring_size_is_the_size_of_the_scoring_view(height, width):
    pool = [torch.zeros(3, height, width)]
    assert tuple(scoring_view(pool, 0, 256).shape[-2:]) == scoring_size(height, width, 256)


def test_pretraining_refuses_a_tiny_image_before_writing_anything(data_root, tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    tiny = pretraining_pool(smoke(root)).paths[2]
    Image.new("RGB", (1, 1)).save(tiny, format="JPEG")
    with pytest.raises(SelmaskError, match=rf"{tiny}: image is 1x1 px"):
        pretrain(smoke(root, strategy="random"), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


SPEED_ONLY = dict(persistent_workers=False, prefetch_factor=3,  # used on CPU too (with workers)
                  channels_last=True, compile=True, compile_mode="reduce-overhead", pin_memory=False, precision="bf16",
                  jitter_on_device=True, uint8_batches=False, sync_free_steps=False)  # no-ops on CPU by design


def test_the_speed_keys_tested_below_each_differ_from_the_default():
    """Otherwise the weights test would leave a key as it is and prove nothing about it."""
    default = pretrain_preset("smoke", "synthetic")
    assert [key for key, value in SPEED_ONLY.items() if getattr(default, key) == value] == []


@pytest.mark.parametrize("strategy, speed_settings", [
    ("random", dict(num_workers=2)),
    ("random", dict(num_workers=1, **SPEED_ONLY)),
    ("selective", dict(num_workers=1, **SPEED_ONLY)),  # kept workers must see each step's new masks
    ("selective", dict(image_cache_mb=0)),  # the default keeps decoded images and scoring views
], ids=["2 workers", "speed keys", "selective, speed keys", "selective, no cache"])
def test_speed_settings_do_not_change_the_weights(data_root, tmp_path, strategy, speed_settings):
    """num_workers, the GPU speed keys and the image cache are not hashed: on a CPU they must train the very same model."""
    cfg = smoke(data_root, strategy=strategy, max_images=12, epochs=2)
    in_process = pretrain(cfg, out_dir=tmp_path / "default")
    fast = pretrain(cfg.updated(**speed_settings), out_dir=tmp_path / "fast")
    expected, got = weights_of(in_process.weights), weights_of(fast.weights)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_random_masking_items_crop_and_flip_as_with_a_mask(data_root):
    """A random-masking item is its image alone (the loop draws masks per batch), transformed without a
    mask: it must come out as the same image transformed with one (the same crop and flip draws)."""
    from torchvision import tv_tensors

    from selmask_lib.transforms import train_transform

    cfg = smoke(data_root, max_images=4)
    pool = pretraining_pool(cfg)
    transforms = [train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std, antialias=antialias)
                  for antialias in (True, False)] + [val_transform(cfg.image_size, cfg.mean, cfg.std, antialias=False)]
    for transform in transforms:
        dataset = ReconstructionDataset(pool, range(4), transform, cfg.score_size, cfg.n_patches)
        for index in range(4):
            torch.manual_seed(index)
            (image,) = dataset[index]
            torch.manual_seed(index)
            want, want_pixels = transform(tv_tensors.Image(pool[index]),
                                          tv_tensors.Mask(torch.zeros(pool[index].shape[-2:], dtype=torch.bool)))
            assert torch.equal(image, want.as_subclass(torch.Tensor))
            assert want_pixels.shape == image.shape[-2:]  # the mask went through the same geometry
