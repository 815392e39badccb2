"""``jitter_on_device``: on CUDA the training batches get their colour jitter and normalisation on the GPU.

The key is a no-op on a CPU, so these tests force the deferred path here
(``defers_colour`` patched to say yes) and check that it gives the batches,
and the training, of the usual path in the loader workers: the same crops,
the same draws, the same jitter up to float rounding.
"""

from __future__ import annotations

import pytest
import torch

import selmask_lib.engine as engine
import selmask_lib.finetuning as ft
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.engine import Trainer
from selmask_lib.masking import patch_grid
from selmask_lib.pretrain_data import ReconstructionDataset, pretraining_pool, scoring_view
from selmask_lib.transforms import COLOUR_DRAWS, train_transform


def first_batch(trainer, dataset):
    loader = trainer.loader(dataset, True, "epoch", 0)
    return next(iter(loader))


def assert_same_images(usual, finished, uint8_source):
    std = usual.new_tensor([0.4443, 0.4665, 0.4887]).view(1, 3, 1, 1)
    difference = (usual - finished).abs() * std  # in [0, 1] units
    if uint8_source:  # the same arithmetic, truncated to uint8 after each colour operation as torchvision does
        assert difference.max() == 0
    else:
        assert difference.max() < 1e-5


def test_deferred_pretraining_batches_are_the_workers_batches(small_synthetic_root):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=12, device="cpu")
    pool = pretraining_pool(cfg)
    trainer = Trainer(cfg, torch.nn.Identity())
    batches = {}
    for defer, uint8_images in ((False, False), (True, False), ("uint8", True)):
        transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std,
                                    defer_colour=bool(defer), jitter_in_float=uint8_images)
        dataset = ReconstructionDataset(pool, range(12), transform, cfg.score_size, cfg.n_patches,
                                        uint8_images=uint8_images)
        batches[defer] = first_batch(trainer, dataset)
    # a random-masking item is its image alone (the loop draws the masks), and the draws when deferred
    assert len(batches[False]) == 1 and len(batches[True]) == 2 and batches[True][0].dtype == torch.float32
    assert batches[True][1][COLOUR_DRAWS].shape == (cfg.batch_size, 10)
    finished = trainer.finish_batch(batches[True])
    assert len(finished) == 1
    assert_same_images(batches[False][0], finished[0], uint8_source=False)
    assert trainer.finish_batch(batches[False]) is batches[False]  # a usual batch is left as it is
    # uint8 crops jittered in float (pretraining's device path): the same crops and draws, a quarter of
    # the bytes, and only the crop's rounding to uint8 between them and the workers' float crops
    assert batches["uint8"][0].dtype == torch.uint8
    torch.testing.assert_close(batches["uint8"][1][COLOUR_DRAWS][:, :9], batches[True][1][COLOUR_DRAWS][:, :9],
                               rtol=0, atol=0, equal_nan=True)
    (images,) = trainer.finish_batch(batches["uint8"])
    difference = (images - finished[0]) * finished[0].new_tensor(cfg.std).view(1, 3, 1, 1) * 255  # in levels
    assert difference.mean().abs() < 0.1 and difference.abs().mean() < 0.5 and difference.abs().max() < 4


def test_deferred_fixed_mask_batches_are_the_workers_batches(small_synthetic_root):
    """A selective step's items: the pixel masks move with the crop exactly, the images as above."""
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=12, device="cpu")
    pool = pretraining_pool(cfg)
    generator = torch.Generator().manual_seed(0)
    patch_masks = {}
    for index in range(12):
        grid = patch_grid(*scoring_view(pool, index, cfg.score_size).shape[-2:], cfg.n_patches)
        patch_masks[index] = torch.rand(len(grid), generator=generator) < 0.5
    trainer = Trainer(cfg, torch.nn.Identity())
    batches = {}
    for defer in (False, True):
        transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std, defer_colour=defer,
                                    jitter_in_float=True)
        dataset = ReconstructionDataset(pool, range(12), transform, cfg.score_size, cfg.n_patches, patch_masks,
                                        uint8_images=defer)
        batches[defer] = first_batch(trainer, dataset)
    assert batches[True][0].dtype == torch.uint8
    images, pixels = trainer.finish_batch(batches[True])
    assert torch.equal(pixels, batches[False][1]) and pixels.any()
    difference = (images - batches[False][0]) * images.new_tensor(cfg.std).view(1, 3, 1, 1) * 255  # in levels
    assert difference.mean().abs() < 0.1 and difference.abs().mean() < 0.5 and difference.abs().max() < 4


def test_deferred_finetuning_batches_are_the_workers_batches(small_synthetic_root, monkeypatch):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_train_images=8,
                          device="cpu")
    trainer = Trainer(cfg, torch.nn.Identity())
    usual = first_batch(trainer, ft.load_splits(cfg).train)
    monkeypatch.setattr(engine, "defers_colour", lambda cfg: True)
    deferred_batch = first_batch(trainer, ft.load_splits(cfg).train)
    assert deferred_batch[0].dtype == torch.uint8  # a quarter of the bytes from the workers
    images, labels = trainer.finish_batch(deferred_batch)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), usual[1])  # an eighth of the bytes
    assert_same_images(usual[0], images, uint8_source=True)


@pytest.mark.slow
def test_runs_with_the_colour_on_the_device_train_as_usual(smoke_runs, usual_smoke_losses, monkeypatch):
    """Random pretraining and fine-tuning through the deferred path: the same losses. Selective runs, with
    and without baked masks (never deferred), go through it to the end."""
    pretraining, finetuning = smoke_runs.pretraining, smoke_runs.finetuning
    usual = usual_smoke_losses
    monkeypatch.setattr(engine, "defers_colour", lambda cfg: True)  # as on CUDA (training_batch_form reads it)
    deferred = {"random": pretraining("random-deferred"), "finetune": finetuning("finetune-deferred")}
    # Pretraining on the device path crops uint8 images (a quarter of the bytes from each worker), which
    # rounds each crop to uint8 levels (about 0.3 of a level on average): its first epoch's loss sits within
    # 0.5 % (later epochs of a 12-image smoke run drift apart by a few %). Fine-tuning crops uint8 on both.
    assert len(deferred["random"]) == len(usual["random"]) > 0  # random runs as many image-epochs as selective
    torch.testing.assert_close(deferred["random"][0], usual["random"][0], rtol=5e-3, atol=0)
    torch.testing.assert_close(torch.tensor(deferred["finetune"]), torch.tensor(usual["finetune"]), rtol=2e-3,
                               atol=0)
    for name, settings in {"selective": {}, "baked": dict(bake_selective_masks=True)}.items():
        losses = pretraining(name, strategy="selective", **settings)  # two steps of one epoch
        assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all()


@pytest.mark.slow
def test_the_key_changes_nothing_on_a_cpu(small_synthetic_root, tmp_path):
    """jitter_on_device is not hashed: on a CPU, fine-tuning with it on must train the very same model."""
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), epochs=1, max_train_images=4,
                          device="cpu", num_workers=1)
    runs = [ft.finetune(cfg.updated(jitter_on_device=on), tmp_path / str(on), resume=False) for on in (False, True)]
    weights = [torch.load(run.run_dir / "best.pt", map_location="cpu", weights_only=False)["model"] for run in runs]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    for path in tmp_path.rglob("*.pt"):
        path.unlink()
