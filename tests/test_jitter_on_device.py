"""``jitter_on_device``: on CUDA the training batches get their colour jitter and normalisation on the GPU.

The key is a no-op on a CPU, so these tests force the deferred path here
(``defers_colour`` patched to say yes) and check that it gives the batches,
and the training, of the usual path in the loader workers: the same crops,
the same draws, the same jitter up to float rounding.
"""

from __future__ import annotations

import json

import pytest
import torch

import selmask_lib.finetuning as ft
import selmask_lib.pretraining as pt
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.engine import Trainer
from selmask_lib.pretrain_data import ReconstructionDataset, pretraining_pool
from selmask_lib.transforms import COLOUR_DRAWS, train_transform

DEFERRED_MODULES = (pt, ft)  # the two places that build a training transform


@pytest.fixture
def deferred(monkeypatch):
    for module in DEFERRED_MODULES:
        monkeypatch.setattr(module, "defers_colour", lambda cfg: True)


def first_batch(trainer, dataset):
    loader = trainer.loader(dataset, True, "epoch", 0)
    return next(iter(loader))


def assert_same_images(usual, finished, uint8_source):
    std = usual.new_tensor([0.4443, 0.4665, 0.4887]).view(1, 3, 1, 1)
    difference = (usual - finished).abs() * std  # in [0, 1] units
    if uint8_source:  # truncation to uint8 after each colour operation: a level now and then
        assert difference.max() <= 1.01 / 255 and (difference == 0).float().mean() > 0.999
    else:
        assert difference.max() < 1e-5


def test_deferred_pretraining_batches_are_the_workers_batches(small_synthetic_root):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=12, device="cpu")
    pool = pretraining_pool(cfg)
    trainer = Trainer(cfg, torch.nn.Identity())
    batches = {}
    for defer, uint8_images in ((False, False), (True, False), ("uint8", True)):
        transform = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std,
                                    defer_colour=bool(defer))
        dataset = ReconstructionDataset(pool, range(12), transform, cfg.score_size, cfg.n_patches,
                                        uint8_images=uint8_images)
        batches[defer] = first_batch(trainer, dataset)
    assert len(batches[True]) == 3 and batches[True][0].dtype == torch.float32
    assert batches[True][2][COLOUR_DRAWS].shape == (cfg.batch_size, 9)
    finished = trainer.finish_batch(batches[True])
    assert len(finished) == 2 and torch.equal(finished[1], batches[False][1])
    assert_same_images(batches[False][0], finished[0], uint8_source=False)
    assert trainer.finish_batch(batches[False]) is batches[False]  # a usual batch is left as it is
    # uint8 crops (what pretraining uses on the device path): the same crops and draws, a quarter of the
    # bytes; uint8 rounding of the crop and truncation after each colour operation, a level or so apart
    assert batches["uint8"][0].dtype == torch.uint8
    torch.testing.assert_close(batches["uint8"][2][COLOUR_DRAWS], batches[True][2][COLOUR_DRAWS], rtol=0, atol=0,
                               equal_nan=True)
    images, pixels = trainer.finish_batch(batches["uint8"])
    difference = (images - finished[0]).abs() * finished[0].new_tensor(cfg.std).view(1, 3, 1, 1) * 255
    assert difference.mean() < 1.5 and difference.max() < 8  # in uint8 levels


def test_deferred_finetuning_batches_are_the_workers_batches(small_synthetic_root, monkeypatch):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_train_images=8,
                          device="cpu")
    trainer = Trainer(cfg, torch.nn.Identity())
    usual = first_batch(trainer, ft.load_splits(cfg).train)
    monkeypatch.setattr(ft, "defers_colour", lambda cfg: True)
    deferred_batch = first_batch(trainer, ft.load_splits(cfg).train)
    assert deferred_batch[0].dtype == torch.uint8  # a quarter of the bytes from the workers
    images, labels = trainer.finish_batch(deferred_batch)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), usual[1])  # an eighth of the bytes
    assert_same_images(usual[0], images, uint8_source=True)


def train_losses(run_dir):
    rows = [json.loads(line) for path in sorted(run_dir.rglob("metrics.jsonl")) for line in path.read_text().splitlines()]
    return [row["train_loss"] for row in rows if "train_loss" in row]


@pytest.mark.slow
def test_runs_with_the_colour_on_the_device_train_as_usual(small_synthetic_root, tmp_path, monkeypatch):
    """Pretraining (random, then selective) and fine-tuning through the deferred path: the same losses."""
    root = str(small_synthetic_root)
    losses = {}
    for defer in (False, True):
        monkeypatch.setattr(pt, "defers_colour", lambda cfg: defer)
        monkeypatch.setattr(ft, "defers_colour", lambda cfg: defer)
        for strategy in ("random", "selective"):
            cfg = pretrain_preset("smoke", "synthetic", data_root=root, strategy=strategy, max_images=12, epochs=2,
                                  device="cpu", num_workers=1)
            pt.pretrain(cfg, out_dir=tmp_path / f"{strategy}-{defer}")
            losses[strategy, defer] = train_losses(tmp_path / f"{strategy}-{defer}")
        cfg = finetune_preset("smoke", "synthetic", data_root=root, epochs=2, max_train_images=4, device="cpu")
        ft.finetune(cfg, tmp_path / f"finetune-{defer}", resume=False)
        losses["finetune", defer] = train_losses(tmp_path / f"finetune-{defer}")
    # Pretraining on the device path crops uint8 images (a quarter of the bytes from each worker) and
    # jitters them in uint8, which truncates after each operation as torchvision does for uint8 images:
    # its batches sit about one level darker than float crops, and its first losses within 2 %. Fine-tuning
    # crops uint8 on both paths. Selective steps after the first score with weights that already differ,
    # so a top-k of patch losses may pick other patches: only the first step is compared.
    tolerance = {"random": (1, 2e-2), "selective": (1, 2e-2), "finetune": (2, 2e-3)}  # epochs compared, rtol
    for name, (epochs, rtol) in tolerance.items():
        assert len(losses[name, True]) == len(losses[name, False]) >= epochs
        torch.testing.assert_close(torch.tensor(losses[name, True][:epochs]),
                                   torch.tensor(losses[name, False][:epochs]), rtol=rtol, atol=0)
    assert all(torch.isfinite(torch.tensor(values)).all() for values in losses.values())
    for path in tmp_path.rglob("*.pt"):
        path.unlink()
