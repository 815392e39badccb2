"""``selmask estimate`` times the step a run takes, on batches shaped as the run's loaders send them.

On CUDA, ``jitter_on_device`` (pretraining's default there) and
``uint8_batches`` make the loaders send uint8 images that the training step
finishes on the device (colour jitter, normalisation): part of what a step
costs, so the estimate must time it too. Both keys are no-ops on a CPU, so
these tests force them (``engine.defers_colour`` / ``engine.sends_uint8_batches``
patched to say yes) and check the batches and that the timed steps finish them.
The projection's arithmetic is tested in ``test_cli.py``.
"""

from __future__ import annotations

import pytest
import torch

import selmask_lib.engine as engine
from selmask_lib import estimate
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.transforms import COLOUR_DRAWS, ColourJitterOnDevice

SIZE, BATCH, CLASSES = 32, 4, 3


def configs():
    shared = dict(image_size=SIZE, batch_size=BATCH, device="cpu")
    return pretrain_preset("smoke", "synthetic", n_patches=16, **shared), finetune_preset("smoke", "synthetic", **shared)


@pytest.fixture
def finished_batches(monkeypatch):
    """The image batches that ``ColourJitterOnDevice`` finished, in call order."""
    seen, original = [], ColourJitterOnDevice.__call__

    def spy(self, images, draws=None):
        seen.append((images.dtype, None if draws is None else draws.clone()))
        return original(self, images, draws)

    monkeypatch.setattr(ColourJitterOnDevice, "__call__", spy)
    return seen


def test_on_a_cpu_the_batches_are_float_and_nothing_is_finished_on_the_device(finished_batches):
    pre, fine = configs()
    trainer = engine.Trainer(pre, torch.nn.Identity())
    (images,), (val_images,) = estimate.pretraining_batches(pre, trainer)
    assert images.dtype == val_images.dtype == torch.float32 and images.shape == (BATCH, 3, SIZE, SIZE)
    assert images.mean().abs() < 1.0 and images.min() < 0  # normalised, as the loader sends them
    (images, labels), _ = estimate.finetuning_batches(fine, CLASSES, engine.Trainer(fine, torch.nn.Identity()))
    assert images.dtype == torch.float32 and labels.dtype == torch.int64 and int(labels.max()) < CLASSES
    assert estimate.batch_format(pre) == estimate.batch_format(fine) == "float32, finished by the loader"
    assert estimate.time_pretraining_step(pre, steps=1, warmup=0).train > 0
    assert estimate.time_finetuning_step(fine, CLASSES, steps=1, warmup=0).train > 0
    assert finished_batches == []


def test_with_jitter_on_device_the_timed_training_step_jitters_uint8_crops(monkeypatch, finished_batches):
    monkeypatch.setattr(engine, "defers_colour", lambda cfg: True)
    pre, _ = configs()
    train, (val_images,) = estimate.pretraining_batches(pre, engine.Trainer(pre, torch.nn.Identity()))
    images, draws = train[0], train[-1][COLOUR_DRAWS]
    assert images.dtype == torch.uint8 and images.shape == (BATCH, 3, SIZE, SIZE)
    assert draws.shape == (BATCH, 10) and bool((draws[:, 9] == 1).all())  # pretraining jitters in float
    assert val_images.dtype == torch.float32  # validation batches are never deferred
    assert "jitter_on_device" in estimate.batch_format(pre)

    times = estimate.time_pretraining_step(pre, steps=2, warmup=1)
    assert times.train > 0 and times.evaluate > 0
    # warm-up and timed training steps each finish their batch; evaluation steps get float batches
    assert [dtype for dtype, _ in finished_batches] == [torch.uint8] * 3
    assert any(bool(d[:, 0].any()) for _, d in finished_batches)  # some images are jittered


def test_with_uint8_batches_fine_tuning_sends_uint8_images_and_labels_that_the_step_normalises(
        monkeypatch, finished_batches):
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)
    _, fine = configs()
    (images, labels), (val_images, val_labels) = estimate.finetuning_batches(
        fine, CLASSES, engine.Trainer(fine, torch.nn.Identity()))
    assert images.dtype == labels.dtype == torch.uint8 and labels.shape == (BATCH, SIZE, SIZE)  # no draws
    assert val_images.dtype == torch.float32 and val_labels.dtype == torch.int64
    assert "uint8_batches" in estimate.batch_format(fine)

    assert estimate.time_finetuning_step(fine, CLASSES, steps=1, warmup=0).train > 0
    assert [(dtype, draws) for dtype, draws in finished_batches] == [(torch.uint8, None)]  # normalised only


def test_labels_that_do_not_fit_uint8_stay_int64(monkeypatch):
    monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)
    _, fine = configs()
    (_, labels), _ = estimate.finetuning_batches(fine, 300, engine.Trainer(fine, torch.nn.Identity()))
    assert labels.dtype == torch.int64 and int(labels.max()) >= 256
