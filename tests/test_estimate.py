"""``selmask estimate`` times the steps a run takes, on batches shaped as the run's loaders send them.

On CUDA, ``uint8_batches`` (the default there) and ``jitter_on_device``
make the loaders send uint8 images that the training step
finishes on the device (colour jitter, normalisation): part of what a step
costs, so the estimate must time it too; and the paper preset's selective
steps bake their masks into the images (uint8 with ``uint8_batches``, else float). Both keys are no-ops on a CPU, so
these tests force them (``defers_colour`` / ``sends_uint8_batches`` patched
to say yes, as ``bench_throughput.py --as-on-cuda`` does) and compare the
estimate's batches with the batches of real smoke runs: the same tensors, of
the same dtypes and shapes. The projection's arithmetic is tested in
``test_cli.py``.
"""

from __future__ import annotations

import pytest
import torch

import selmask_lib.engine as engine
import selmask_lib.finetuning as ft
import selmask_lib.pretraining as pt
from selmask_lib import estimate
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.data.base import UnlabelledImages
from selmask_lib.errors import SelmaskError
from selmask_lib.estimate import estimate_report
from selmask_lib.transforms import ColourJitterOnDevice

KEYS = {"usual": {}, "jitter_on_device": {"defers_colour": True}, "uint8_batches": {"sends_uint8_batches": True}}


def force(monkeypatch, keys: dict) -> None:
    """The CUDA-only batch keys in ``keys`` act on this CPU (``engine.training_batch_form`` reads them)."""
    for name, value in keys.items():
        monkeypatch.setattr(engine, name, lambda cfg, value=value: value)


def structure(batch) -> list:
    """What a batch is made of: each tensor's dtype and per-image shape; a dict's keys and tensors."""
    def of(element):
        if isinstance(element, dict):
            return {key: of(value) for key, value in element.items()}
        return (element.dtype, tuple(element.shape[1:]))
    return [of(element) for element in batch]


@pytest.fixture
def raw_training_batches(monkeypatch):
    """The batches the training steps of the runs inside the test received, before the device finished them."""
    seen, finish, train_one_epoch = [], engine.Trainer.finish_batch, engine.Trainer.train_one_epoch
    training = []

    def spy_finish(trainer, batch):
        if training:
            seen.append(batch)
        return finish(trainer, batch)

    def spy_epoch(trainer, *args, **kwargs):
        training.append(True)
        try:
            return train_one_epoch(trainer, *args, **kwargs)
        finally:
            training.pop()

    monkeypatch.setattr(engine.Trainer, "finish_batch", spy_finish)
    monkeypatch.setattr(engine.Trainer, "train_one_epoch", spy_epoch)
    return seen


@pytest.mark.parametrize("keys", KEYS, ids=list(KEYS))
@pytest.mark.parametrize("bake", [False, True], ids=["fixed masks", "baked masks"])
def test_pretraining_batches_are_the_loops_batches(keys, bake, small_synthetic_root, tmp_path, monkeypatch,
                                                   raw_training_batches):
    force(monkeypatch, KEYS[keys])
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), max_images=12, epochs=1,
                          device="cpu", bake_selective_masks=bake, uint8_batches=keys == "uint8_batches")
    pt.pretrain(cfg, out_dir=tmp_path / "run")  # a random-masking loop, then selective steps
    random_batch, selective_batch = raw_training_batches[0], raw_training_batches[-1]
    trainer = engine.Trainer(cfg, torch.nn.Identity())
    for selective, real in ((False, random_batch), (True, selective_batch)):
        train, val, item_seconds = estimate.pretraining_batches(cfg, trainer, selective)
        assert item_seconds > 0
        assert len(train) == estimate.BATCHES
        assert all(structure(batch) == structure(real) for batch in train), (selective, structure(real))
        assert val[0].dtype == torch.float32  # validation batches are never left to the device
    assert structure(random_batch)[0][0] == (torch.uint8 if keys != "usual" else torch.float32)
    assert len(selective_batch) == (3 if bake else 2 + (keys == "jitter_on_device"))


@pytest.mark.parametrize("keys", KEYS, ids=list(KEYS))
def test_finetuning_batches_are_the_loaders_batches(keys, small_synthetic_root, tmp_path, monkeypatch,
                                                    raw_training_batches, drop_checkpoints):
    force(monkeypatch, KEYS[keys])
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), epochs=1,
                          max_train_images=4, device="cpu", uint8_batches=keys == "uint8_batches")
    ft.finetune(cfg, tmp_path / "run", resume=False)
    real = raw_training_batches[0]
    train, (val_images, val_labels), _ = estimate.finetuning_batches(
        cfg, ft.load_splits(cfg).num_outputs, engine.Trainer(cfg, torch.nn.Identity()))
    assert all(structure(batch) == structure(real) for batch in train), structure(real)
    assert structure(real)[1][0] == (torch.uint8 if keys != "usual" else torch.int64)  # labels
    assert val_images.dtype == torch.float32 and val_labels.dtype == torch.int64


def test_labels_of_more_than_256_classes_stay_int64(monkeypatch):
    force(monkeypatch, KEYS["uint8_batches"])
    cfg = finetune_preset("smoke", "synthetic", image_size=32, batch_size=2, device="cpu")
    train, _, _ = estimate.finetuning_batches(cfg, 300, engine.Trainer(cfg, torch.nn.Identity()))
    images, labels = train[0]
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and int(labels[labels != 255].max()) >= 256


@pytest.fixture
def finished_batches(monkeypatch):
    """(dtype, draws) of the image batches that ``ColourJitterOnDevice`` finished, in call order."""
    seen, original = [], ColourJitterOnDevice.__call__

    def spy(self, images, draws=None):
        seen.append((images.dtype, None if draws is None else draws.clone()))
        return original(self, images, draws)

    monkeypatch.setattr(ColourJitterOnDevice, "__call__", spy)
    return seen


def small_pretraining(**settings):
    return pretrain_preset("smoke", "synthetic", image_size=32, score_size=32, n_patches=16, batch_size=4,
                           device="cpu", **settings)


def test_the_timed_training_steps_finish_their_batches_on_the_device(monkeypatch, finished_batches):
    force(monkeypatch, KEYS["jitter_on_device"])
    times = estimate.time_pretraining_step(small_pretraining(), steps=2, warmup=1)
    assert times.train > 0 and times.evaluate > 0
    # warm-up and timed training steps each finish their batch (evaluation steps get float batches),
    # and they take the batches in turn: their draws differ
    assert [dtype for dtype, _ in finished_batches] == [torch.uint8] * 3
    assert not torch.equal(finished_batches[1][1].nan_to_num(), finished_batches[2][1].nan_to_num())
    assert any(bool(draws[:, 0].any()) for _, draws in finished_batches)  # some images are jittered
    finished_batches.clear()
    force(monkeypatch, KEYS["uint8_batches"] | {"defers_colour": False})
    fine = finetune_preset("smoke", "synthetic", image_size=32, batch_size=2, device="cpu", uint8_batches=True)
    assert estimate.time_finetuning_step(fine, 3, steps=1, warmup=0).train > 0
    assert finished_batches == [(torch.uint8, None)]  # converted and normalised only: the workers jittered


def test_on_a_cpu_nothing_is_finished_on_the_device(finished_batches):
    assert estimate.time_pretraining_step(small_pretraining(), steps=1, warmup=0, selective=True).train > 0
    assert estimate.batch_format(small_pretraining()) == "float32, finished by the loader"
    assert finished_batches == []


SMALL = {"image_size": 32, "score_size": 32, "n_patches": 16, "batch_size": 2}


def test_the_paper_preset_times_each_strategy_with_its_own_config_and_batches(monkeypatch):
    """The paper preset's random masking uses MS-SSIM and random masks; its selective steps use ssim3 on
    images with their masks baked in (float batches of masked input, target and pixel mask)."""
    timed, built = [], estimate.pretraining_batches

    def spy(cfg, trainer, selective, pool=None):
        train, val, item_seconds = built(cfg, trainer, selective, pool)
        timed.append((cfg.strategy, cfg.recon_loss, cfg.bake_selective_masks, selective, structure(train[0])))
        return train, val, item_seconds

    monkeypatch.setattr(estimate, "pretraining_batches", spy)
    text = "\n".join(estimate_report(["sugarbeets"], "paper", SMALL, steps=1, warmup=0))
    float_image = (torch.float32, (3, 32, 32))
    assert timed == [("random", "ms_ssim", False, False, [float_image]),
                     ("selective", "ssim3", True, True, [float_image, float_image, (torch.bool, (32, 32))])]
    assert "random-masking step (batch 2, 32 px, ms_ssim, single-scale SSIM at this size)" in text
    assert "selective step (batch 2, 32 px, ssim3, baked masks)" in text
    assert "selective steps float32, masks baked into the images by the loader" in text


def test_selective_only_keys_apply_to_the_selective_steps_and_strategy_is_refused():
    text = "\n".join(estimate_report(["sugarbeets"], "smoke", {**SMALL, "bake_selective_masks": True},
                                      steps=1, warmup=0))
    assert "selective step (batch 2, 32 px, ms_ssim, single-scale SSIM at this size, baked masks)" in text
    with pytest.raises(SelmaskError, match="strategy"):
        estimate_report(["sugarbeets"], "smoke", {**SMALL, "strategy": "random"})


def test_a_training_step_counts_its_loader_as_the_run_would():
    """No workers: the main process builds a batch's items between steps, so they add up; with W workers
    they build beside the step, so the step takes the longer of the two."""
    assert estimate.StepTimes(0.5, 0.1, loader=0.2, workers=0).train_in_run == pytest.approx(0.7)
    assert estimate.StepTimes(0.5, 0.1, loader=0.8, workers=4).train_in_run == pytest.approx(0.5)
    assert estimate.StepTimes(0.5, 0.1, loader=4.0, workers=4).train_in_run == pytest.approx(1.0)
    # a CPU step takes every core: its workers do not build beside it
    assert estimate.StepTimes(0.5, 0.1, loader=0.8, workers=4, beside=False).train_in_run == pytest.approx(1.3)
    phase = estimate.Phase("p", train_steps=10, eval_steps=2, times=estimate.StepTimes(0.5, 0.1, 0.2, 0))
    assert phase.seconds == pytest.approx(10 * 0.7 + 2 * 0.1)


def test_a_loader_bound_step_says_how_many_workers_would_keep_up():
    """Beside an accelerator, a loader slower than the step sets the pace: the report names the workers
    that would build a batch within the step's time (ceil(loader / train)), and says nothing otherwise."""
    bound = estimate.StepTimes(0.083, 0.03, loader=0.96, workers=8)  # the paper's VOC random step on an H200 host
    assert bound.workers_to_keep_up == 12
    assert "[loader-bound: 12 workers would keep up" in bound.loader_words()
    assert estimate.StepTimes(0.1, 0.03, loader=1.0, workers=10).workers_to_keep_up == 10
    assert "loader-bound" not in estimate.StepTimes(0.1, 0.03, loader=1.0, workers=10).loader_words()
    assert "loader-bound" not in estimate.StepTimes(0.1, 0.03, loader=1.0, workers=0).loader_words()  # added
    assert "loader-bound" not in estimate.StepTimes(0.1, 0.03, loader=1.0, workers=4, beside=False).loader_words()


@pytest.mark.parametrize("workers", [0, 3])
def test_the_timed_steps_carry_the_seconds_of_building_their_items(workers, monkeypatch):
    """The loader's seconds are what building the training items took (one core), times the batch size."""
    seconds_a_call = []
    built = estimate._built

    def timed_build(make_item, *args):
        def as_in_a_worker(*item_args):
            assert torch.get_num_threads() == 1  # a loader worker's one thread
            return make_item(*item_args)

        item, took = built(as_in_a_worker, *args)
        seconds_a_call.append(took)
        return item, took

    monkeypatch.setattr(estimate, "_built", timed_build)
    cfg = small_pretraining(num_workers=workers)
    times = estimate.time_pretraining_step(cfg, steps=1, warmup=0)
    train_items = seconds_a_call[1:1 + estimate.BATCHES * cfg.batch_size]  # after an untimed first; then val's
    assert times.workers == workers and times.loader > 0 and not times.beside  # on a CPU
    assert times.loader == pytest.approx(cfg.batch_size * sum(train_items) / len(train_items))
    fine = finetune_preset("smoke", "synthetic", image_size=32, batch_size=2, device="cpu", num_workers=workers)
    seconds_a_call.clear()
    fine_times = estimate.time_finetuning_step(fine, 3, steps=1, warmup=0)
    train_items = seconds_a_call[1:1 + estimate.BATCHES * fine.batch_size]
    assert fine_times.loader > 0
    assert fine_times.loader == pytest.approx(fine.batch_size * sum(train_items) / len(train_items))
    assert fine_times.workers == workers


def test_a_data_root_times_the_items_of_that_folder(small_synthetic_root, monkeypatch):
    """With --set data_root the items are read and decoded from the folder's images, not made up in memory."""
    def not_made_up(*args, **kwargs):
        raise AssertionError("random items built although a data root was given")

    monkeypatch.setattr(estimate, "RandomImages", not_made_up)
    monkeypatch.setattr(estimate, "RandomSegmentationItems", not_made_up)
    read, real_decoded = [], UnlabelledImages.decoded

    def decoded(self, index):
        read.append(index)
        return real_decoded(self, index)

    monkeypatch.setattr(UnlabelledImages, "decoded", decoded)
    lines = estimate_report(["voc"], "smoke", {"data_root": str(small_synthetic_root), "device": "cpu",
                                               "batch_size": 2, "image_cache_mb": 0}, steps=1, warmup=0)
    assert read  # the pretraining items came from the folder's images
    assert any(f"items read, decoded and cropped from the first images of {small_synthetic_root}" in line
               for line in lines)
    assert lines[-1].startswith("  voc total on 1 device:")


def test_a_data_root_needs_one_dataset(small_synthetic_root):
    with pytest.raises(SelmaskError, match="name the one --dataset"):
        estimate_report(["voc", "nassar"], "smoke", {"data_root": str(small_synthetic_root)}, steps=1, warmup=0)
