"""``uint8_batches``: on CUDA the loader workers jitter as usual and send uint8; the GPU converts and normalises.

The key is a no-op on a CPU, so these tests force it here
(``sends_uint8_batches`` patched to say yes) and check the batches against
the usual float batches of the workers: the same crops, jitter and masks;
fine-tuning's uint8 images and baked selective items exactly, pretraining's
float images within half a level of 255 (the one rounding to uint8, after the jitter).
"""

from __future__ import annotations


import pytest
import torch
from torchvision import tv_tensors

import selmask_lib.engine as engine
import selmask_lib.finetuning as ft
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.engine import Trainer, sends_uint8_batches
from selmask_lib.masking import patch_grid
from selmask_lib.pretrain_data import (
    ReconstructionDataset,
    TargetLevels,
    normalised_targets,
    pretraining_pool,
    scoring_view,
)
from selmask_lib.transforms import ImageAsUint8, train_transform

HALF_A_LEVEL = 0.5 / 255


def first_batch(trainer, dataset):
    return next(iter(trainer.loader(dataset, True, "epoch", 0)))


def in_levels_of_255(images: torch.Tensor, cfg) -> torch.Tensor:
    """Normalised images back in [0, 1] units times 255."""
    return images * images.new_tensor(cfg.std).view(1, 3, 1, 1) * 255


def test_image_as_uint8_rounds_float_images_and_leaves_uint8_images_and_masks():
    image = tv_tensors.Image(torch.tensor([0.0, 0.1 / 255, 0.6 / 255, 127.5 / 255, 1.0, 1.2]).view(1, 2, 3))
    mask = tv_tensors.Mask(torch.ones(2, 3, dtype=torch.bool))
    rounded, same_mask = ImageAsUint8()(image, mask)
    assert isinstance(rounded, tv_tensors.Image) and rounded.dtype == torch.uint8
    assert rounded.flatten().tolist() == [0, 0, 1, 128, 255, 255]  # nearest level; clamped to [0, 255]
    assert same_mask is mask
    uint8 = tv_tensors.Image(torch.arange(6, dtype=torch.uint8).view(1, 2, 3))
    assert ImageAsUint8()(uint8) is uint8  # fine-tuning's jittered uint8 image: exactly as it is


def test_the_key_is_a_no_op_on_a_cpu(small_synthetic_root):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), device="cpu",
                          uint8_batches=True)
    assert not sends_uint8_batches(cfg)
    image, label = ft.load_splits(cfg).train[0]  # the usual item: a normalised float image, int64 class ids
    assert image.dtype == torch.float32 and label.dtype == torch.int64


def test_finetuning_uint8_batches_are_the_workers_batches_exactly(small_synthetic_root, monkeypatch):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_train_images=8,
                          device="cpu", uint8_batches=True)
    trainer = Trainer(cfg, torch.nn.Identity())
    usual = first_batch(trainer, ft.load_splits(cfg).train)
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)
    sent = first_batch(trainer, ft.load_splits(cfg).train)
    assert sent[0].dtype == torch.uint8 and sent[1].dtype == torch.uint8  # a quarter and an eighth of the bytes
    assert len(sent) == 2  # no draws travel: the workers jittered, and the dtype says the device finishes it
    images, labels = trainer.finish_batch(sent)
    assert torch.equal(labels.long(), usual[1])
    assert images.dtype == torch.float32 and torch.equal(images, usual[0])  # the same arithmetic, uint8 throughout


def test_finetuning_labels_that_do_not_fit_uint8_stay_int64(small_synthetic_root, monkeypatch):
    """Class ids above 255 (or a negative ignore index) are sent as int64, and the batch is the usual one."""
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_train_images=8,
                          device="cpu", uint8_batches=True)
    train = ft.load_splits(cfg).train
    dataset = train.dataset if hasattr(train, "dataset") else train  # a Subset of the first max_train_images
    monkeypatch.setattr(type(dataset), "labels_fit_uint8", property(lambda self: False))
    trainer = Trainer(cfg, torch.nn.Identity())
    usual = first_batch(trainer, ft.load_splits(cfg).train)
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)
    sent = first_batch(trainer, ft.load_splits(cfg).train)
    assert sent[0].dtype == torch.uint8 and sent[1].dtype == torch.int64
    images, labels = trainer.finish_batch(sent)
    assert torch.equal(labels, usual[1]) and torch.equal(images, usual[0])


@pytest.mark.parametrize("fixed_masks", [False, True], ids=["random masks", "fixed masks"])
def test_pretraining_uint8_batches_are_the_workers_batches_within_half_a_level(small_synthetic_root, fixed_masks,
                                                                               monkeypatch):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=12, device="cpu",
                          uint8_batches=True)
    pool = pretraining_pool(cfg)
    patch_masks = None
    if fixed_masks:  # a selective step's items: pixel masks that move with the crop
        generator = torch.Generator().manual_seed(0)
        patch_masks = {index: torch.rand(len(patch_grid(*scoring_view(pool, index, cfg.score_size).shape[-2:],
                                                        cfg.n_patches)), generator=generator) < 0.5
                       for index in range(12)}
    trainer = Trainer(cfg, torch.nn.Identity())
    batches = {}
    for as_uint8 in (False, True):
        transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std, jitter_in_float=True,
                                    uint8_batch=as_uint8)
        dataset = ReconstructionDataset(pool, range(12), transform, cfg.score_size, cfg.n_patches, patch_masks)
        batches[as_uint8] = first_batch(trainer, dataset)
    assert batches[True][0].dtype == torch.uint8
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)  # as on CUDA
    finished = trainer.finish_batch(batches[True])
    assert len(finished) == len(batches[False]) == (2 if fixed_masks else 1)  # a random item is its image alone
    images = finished[0]
    if fixed_masks:
        assert torch.equal(finished[1], batches[False][1]) and finished[1].any()
    difference = in_levels_of_255(images - batches[False][0], cfg)
    # Rounded once, after the jitter: at most half a level (plus float noise), no bias, and not all zero
    # (a test of images that were uint8 all along would prove nothing).
    assert difference.abs().max() <= 0.5 + 1e-3 and difference.mean().abs() < 0.05
    assert difference.abs().mean() > 0.05


def test_target_levels_are_the_workers_normalised_targets_for_every_level():
    """The device's table gives, for every level and channel, what a worker computes; in any layout."""
    mean, std = (0.4529, 0.4317, 0.3999), (0.4443, 0.4665, 0.4887)
    statistics = [torch.tensor(values).view(-1, 1, 1) for values in (mean, std)]
    targets = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    targets[0, :, 0, :3] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    looked_up = TargetLevels(mean, std)(targets)
    assert looked_up.dtype == torch.float32 and torch.equal(looked_up, normalised_targets(targets, *statistics))
    every_level = torch.arange(256, dtype=torch.uint8).view(16, 16).expand(3, 16, 16)  # each channel: all levels
    assert torch.equal(TargetLevels(mean, std)(every_level), normalised_targets(every_level, *statistics))


def test_baked_uint8_batches_are_the_workers_float_batches_exactly(small_synthetic_root, monkeypatch):
    """A selective step's baked items (the paper preset's): the masked input is jittered in uint8 by the
    worker, so once the device has normalised it and the uint8 target, the batch and its loss are the
    float batch's to the bit, and the target's arithmetic is the worker's (``normalised_targets``)."""
    import functools

    import selmask_lib.pretraining as pt
    from selmask_lib.losses import ReconstructionLoss
    from selmask_lib.pretraining import loop_datasets, reconstruction_batch_loss

    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: cfg.uint8_batches)  # as on CUDA
    # every image colour-jittered (in uint8, hue included), so that equal batches prove the jitter exact too
    monkeypatch.setattr(pt, "train_transform", functools.partial(pt.train_transform, jitter_p=1.0))
    indices = list(range(12))
    batches, losses, targets_of_the_loss = {}, {}, {}
    for uint8 in (False, True):
        cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=12,
                              device="cpu", strategy="selective", bake_selective_masks=True, baked_image_quality=75,
                              uint8_batches=uint8)
        pool = pretraining_pool(cfg)
        generator = torch.Generator().manual_seed(0)
        patch_masks = {index: torch.rand(len(patch_grid(*scoring_view(pool, index, cfg.score_size).shape[-2:],
                                                        cfg.n_patches)), generator=generator) < 0.5
                       for index in indices}
        train_set, _ = loop_datasets(cfg, pool, indices, indices[:1], patch_masks)
        trainer = Trainer(cfg, torch.nn.Identity())
        sent = first_batch(trainer, train_set)
        assert [tensor.dtype for tensor in sent] == ([torch.uint8] * 2 if uint8 else [torch.float32] * 2) + [torch.bool]
        batches[uint8] = trainer.finish_batch(sent)
        loss_fn = ReconstructionLoss(cfg.recon_loss)

        def recording_loss(outputs, targets, uint8=uint8):
            targets_of_the_loss[uint8] = targets
            return loss_fn(outputs, targets)

        batch_loss = reconstruction_batch_loss(trainer, recording_loss, None, torch.Generator())
        losses[uint8] = batch_loss(torch.nn.Identity(), batches[uint8])
    (usual_input, usual_target, usual_pixels), (inputs, targets, pixels) = batches[False], batches[True]
    assert torch.equal(inputs, usual_input) and torch.equal(pixels, usual_pixels) and pixels.any()
    assert torch.equal(TargetLevels(cfg.mean, cfg.std)(targets), usual_target)
    assert torch.equal(targets_of_the_loss[True], usual_target) and torch.equal(targets_of_the_loss[False], usual_target)
    assert torch.equal(losses[True], losses[False])


@pytest.mark.slow
def test_runs_with_uint8_batches_train_as_usual(smoke_runs, usual_smoke_losses, monkeypatch):
    """Fine-tuning: the very same losses; random pretraining: within the rounding; selective runs with and
    without baked masks go through it to the end."""
    pretraining, finetuning = smoke_runs.pretraining, smoke_runs.finetuning
    usual = usual_smoke_losses
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: cfg.uint8_batches)  # as on CUDA, both loops
    finished = []  # the dtype of each batch's images before the device finished it: proof that a run took the path
    baked_items = []  # the dtype of each batch of baked items (masked input, target, pixel mask)
    fixed_masks = []  # the pixel masks of uint8 batches of a selective step
    finish_batch = Trainer.finish_batch

    def spy(trainer, batch):
        if not trainer.model.training:
            return finish_batch(trainer, batch)  # validation batches: finished by the workers
        if len(batch) == 3 and not isinstance(batch[-1], dict):
            baked_items.append(batch[0].dtype)
        else:
            finished.append(batch[0].dtype)
            if batch[0].dtype == torch.uint8 and len(batch) == 2 and batch[1].dtype == torch.bool and batch[1].any():
                fixed_masks.append(batch[1])  # a selective step's items: pixel masks of high-loss patches
        return finish_batch(trainer, batch)

    monkeypatch.setattr(Trainer, "finish_batch", spy)
    sent = {"random": pretraining("random-uint8", uint8_batches=True)}
    assert torch.uint8 in finished
    finished.clear()
    sent["finetune"] = finetuning("finetune-uint8", uint8_batches=True)
    assert torch.uint8 in finished
    assert sent["finetune"] == usual["finetune"] and len(sent["finetune"]) > 0
    assert len(sent["random"]) == len(usual["random"]) > 0
    torch.testing.assert_close(sent["random"][0], usual["random"][0], rtol=5e-3, atol=0)
    # A selective run's steps train on fixed masks through the same path, baked masks too (their batches are
    # the float ones exactly: test_baked_uint8_batches_are_the_workers_float_batches_exactly; the runs differ
    # from the usual ones by their random first step's rounding).
    for name, settings in {"selective": {}, "baked": dict(bake_selective_masks=True)}.items():
        losses = pretraining(name, strategy="selective", uint8_batches=True, **settings)  # two steps of one epoch
        assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()
    assert fixed_masks  # the selective step's batches took the path, not only its random first step
    assert baked_items and set(baked_items) == {torch.uint8}  # the baked run's selective step did too


def test_a_uint8_batch_is_finished_only_where_the_config_sends_uint8_batches(small_synthetic_root, monkeypatch):
    """A user's own loop that feeds uint8 images (and converts them itself) must get them as they are."""
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), device="cpu")
    assert cfg.uint8_batches  # the default: on a CPU it sends nothing as uint8
    batch = (torch.full((2, 3, 4, 4), 200, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8))
    assert Trainer(cfg, torch.nn.Identity()).finish_batch(batch) is batch
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: cfg.uint8_batches)  # as on CUDA
    assert Trainer(cfg.updated(uint8_batches=False), torch.nn.Identity()).finish_batch(batch) is batch
    images, labels = Trainer(cfg, torch.nn.Identity()).finish_batch(batch)
    expected = (200 / 255 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(images[0, :, 0, 0], expected)
    assert labels is batch[1]


def test_segmentation_labels_are_uint8_only_for_batches_the_device_finishes(small_synthetic_root):
    from torchvision.transforms import v2

    from selmask_lib.data import load_segmentation_split

    keep_uint8 = v2.Compose([v2.CenterCrop(16)])  # a transform that leaves the image uint8
    split = load_segmentation_split("synthetic", small_synthetic_root, "train", keep_uint8)
    assert split[0][0].dtype == torch.uint8 and split[0][1].dtype == torch.int64  # a user's dataset: as documented
    split.sends_uint8_labels = True  # as fine-tuning sets it with jitter_on_device or uint8_batches
    assert split[0][1].dtype == torch.uint8
