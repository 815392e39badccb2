"""How long the whole paper run would take here: measured step times times the paper's step counts.

``selmask estimate --preset paper --dataset voc`` times a few training
steps of each loop (after warm-up steps) on synthetic tensors at the
preset's batch and image size, on the current device, through the kit's own
step (:meth:`Trainer.train_one_epoch`), and an evaluation step (no
gradients). The training batch is made by the run's own training transform
from random images and collated as its loader collates it (pinned where the
loader pins): float images, or on CUDA with ``jitter_on_device`` or
``uint8_batches`` uint8 images (with the colour-jitter draws where the jitter
is left to the device), which the step then finishes on the device as in a
run; that work is part of a step's cost. The evaluation batch is float, as a
validation loader's. The step counts of the paper's runs follow from
the dataset sizes in :data:`selmask_lib.config.PAPER_DATASET_SIZES`:

* random masking: E epochs of the 90 % training images + validation;
* selective masking: K steps of E epochs on 1/K of the images each + their
  validation, plus scoring (S reconstructions per image of partitions
  1..K-1, ``batch_size`` reconstructions per forward pass, counted as
  evaluation steps);
* fine-tuning: every init of ``config.INITS`` (four runs) of E epochs on the
  train split + validation. The test pass (batch 1, any size), data loading
  beyond the step, checkpoints and start-up are not counted.

``gpus > 1`` divides by the number of GPUs: linear scaling, an assumption.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .config import INITS, PAPER_DATASET_SIZES, FinetuneConfig, PretrainConfig
from .errors import SelmaskError


@dataclass(frozen=True)
class StepTimes:
    """Seconds of one training step and one evaluation step (same batch) of a loop."""

    train: float
    evaluate: float


@dataclass(frozen=True)
class Phase:
    """One part of the paper run: how many steps of each kind, and their seconds."""

    name: str
    train_steps: int
    eval_steps: int
    times: StepTimes

    @property
    def seconds(self) -> float:
        return self.train_steps * self.times.train + self.eval_steps * self.times.evaluate


def _batches(images: int, batch_size: int) -> int:
    return math.ceil(images / batch_size) if images > 0 else 0


def paper_phases(dataset: str, pre: PretrainConfig, fine: FinetuneConfig, pre_times: StepTimes,
                 fine_times: StepTimes) -> list[Phase]:
    """The phases of the paper run on ``dataset`` (module docstring) with their step counts."""
    if dataset not in PAPER_DATASET_SIZES:
        raise SelmaskError(f"dataset {dataset!r} has no paper sizes; estimate one of {', '.join(PAPER_DATASET_SIZES)}")
    sizes = PAPER_DATASET_SIZES[dataset]
    n_val = int(sizes["pretrain"] * pre.val_fraction)
    random_masking = Phase("pretraining, random masking", pre.epochs * _batches(sizes["pretrain"] - n_val, pre.batch_size),
                           pre.epochs * _batches(n_val, pre.batch_size), pre_times)
    part = sizes["pretrain"] / pre.n_partitions
    part_val = int(part * pre.val_fraction)
    scored = sizes["pretrain"] - math.ceil(part)  # partitions 1..K-1
    per_forward = max(1, pre.batch_size // pre.n_scoring_draws)
    selective = Phase("pretraining, selective masking",
                      pre.n_partitions * pre.epochs * _batches(round(part) - part_val, pre.batch_size),
                      pre.n_partitions * pre.epochs * _batches(part_val, pre.batch_size)
                      + _batches(scored, per_forward), pre_times)
    finetuning = Phase(f"fine-tuning, {len(INITS)} inits", len(INITS) * fine.epochs * _batches(sizes["train"], fine.batch_size),
                       len(INITS) * fine.epochs * _batches(sizes["val"], fine.batch_size), fine_times)
    return [random_masking, selective, finetuning]


# --------------------------------------------------------------------------- timing


def _time_steps(trainer, train_batch, eval_batch, batch_loss, steps: int, warmup: int) -> StepTimes:
    """Seconds per training step and per evaluation step, after ``warmup`` untimed steps of each."""
    optimisation = trainer.new_optimisation()

    def seconds_per_step(run, batch, count: int) -> float:
        _synchronise(trainer.device)
        started = time.perf_counter()
        run([batch] * count)
        _synchronise(trainer.device)
        return (time.perf_counter() - started) / count

    def train(items):
        trainer.train_model.train()
        trainer.train_one_epoch(items, batch_loss, optimisation)

    def evaluate(items):
        trainer.model.eval()
        trainer.mean_loss(items, batch_loss)

    for run, batch in ((train, train_batch), (evaluate, eval_batch)):
        if warmup:
            seconds_per_step(run, batch, warmup)
    return StepTimes(seconds_per_step(train, train_batch, steps), seconds_per_step(evaluate, eval_batch, steps))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_format(cfg) -> str:
    """How the run's training loader sends a batch on this device (the estimate times the same)."""
    from .engine import defers_colour, sends_uint8_batches

    if defers_colour(cfg):
        return "uint8, colour jitter and normalisation on the device (jitter_on_device)"
    if sends_uint8_batches(cfg):
        return "uint8, normalisation on the device (uint8_batches)"
    return "float32, finished by the loader"


def _as_loaded(trainer, items: list) -> Any:
    """``items`` collated as the trainer's loaders collate them, in pinned memory where they pin it."""
    from torch.utils.data import default_collate

    batch = default_collate(items)
    return _pinned(batch) if trainer._pins_memory() else batch


def _pinned(batch: Any) -> Any:
    if torch.is_tensor(batch):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {key: _pinned(value) for key, value in batch.items()}
    return [_pinned(value) for value in batch]


def _random_images(count: int, size: int, as_float: bool) -> list:
    """``count`` random RGB images, uint8 or float [0, 1] as the datasets give them, wrapped for v2 transforms."""
    from torchvision import tv_tensors

    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8)
    return [tv_tensors.Image(image.float() / 255 if as_float else image) for image in images]


def pretraining_batches(cfg: PretrainConfig, trainer) -> tuple[Any, Any]:
    """A random-masking training batch as its loader sends it for ``cfg`` here, and a float evaluation batch.

    Through the run's own training transform (``pretraining._train_on``): the pool's float image, or the
    decoded uint8 image where the colour jitter is left to the device.
    """
    from .engine import defers_colour, sends_uint8_batches
    from .transforms import as_outputs, train_transform, val_transform

    defer = defers_colour(cfg)
    train = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std, antialias=cfg.antialias,
                            defer_colour=defer, jitter_in_float=True, uint8_batch=sends_uint8_batches(cfg))
    evaluation = val_transform(cfg.image_size, cfg.mean, cfg.std, antialias=cfg.antialias)
    images = _random_images(cfg.batch_size, cfg.image_size, as_float=not defer)
    return (_as_loaded(trainer, [as_outputs(train(image)) for image in images]),
            _as_loaded(trainer, [(evaluation(image.float() / 255 if defer else image),) for image in images]))


def finetuning_batches(cfg: FinetuneConfig, num_classes: int, trainer) -> tuple[Any, Any]:
    """A training batch (images, labels) as the fine-tuning loader sends it for ``cfg`` here, and a float
    evaluation batch; labels as the dataset gives them (``data.base``: uint8 in a batch the device finishes)."""
    from torchvision import tv_tensors

    from .engine import defers_colour, sends_uint8_batches
    from .transforms import train_transform, val_transform

    train = train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std, antialias=cfg.antialias,
                            defer_colour=defers_colour(cfg), uint8_batch=sends_uint8_batches(cfg))
    evaluation = val_transform(cfg.image_size, cfg.mean, cfg.std, antialias=cfg.antialias)
    images = _random_images(cfg.batch_size, cfg.image_size, as_float=False)
    labels = [tv_tensors.Mask(torch.randint(0, num_classes, (cfg.image_size, cfg.image_size)))
              for _ in images]

    def sent(image, label):
        image, label, *extra = train(image, label)
        finished_on_device = image.dtype == torch.uint8 and num_classes <= 256
        return image, label.to(torch.uint8 if finished_on_device else torch.int64), *extra

    return (_as_loaded(trainer, [sent(image, label) for image, label in zip(images, labels)]),
            _as_loaded(trainer, [evaluation(image, label) for image, label in zip(images, labels)]))


def time_pretraining_step(cfg: PretrainConfig, steps: int, warmup: int) -> StepTimes:
    """The kit's random-masking step (finish the batch, mask, forward, the config's reconstruction loss, Adam)."""
    from .engine import Trainer, epoch_generator
    from .losses import ReconstructionLoss
    from .masking import patch_grid
    from .models import build_reconstruction_model
    from .pretrain_data import RandomPixelMasks, masked_inputs

    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, build_reconstruction_model(cfg.dropout, cfg.pad_to_multiple))
    crop_grid = patch_grid(cfg.image_size, cfg.image_size, cfg.n_patches)
    loss_fn, generator = ReconstructionLoss(cfg.recon_loss), epoch_generator(cfg.seed, "estimate")
    random_masks = RandomPixelMasks(crop_grid, cfg.mask_ratio, trainer.device)

    def batch_loss(model, batch):  # as pretraining's: the batch's first tensor, on the device
        images = batch[0].to(trainer.device, non_blocking=True)
        inputs = masked_inputs(images, random_masks(len(images), generator))
        return loss_fn(trainer.forward(model, inputs), images)

    return _time_steps(trainer, *pretraining_batches(cfg, trainer), batch_loss, steps, warmup)


def time_finetuning_step(cfg: FinetuneConfig, num_classes: int, steps: int, warmup: int) -> StepTimes:
    """The kit's fine-tuning step (finish the batch, forward, Jaccard loss, Adam)."""
    from .engine import Trainer
    from .finetuning import segmentation_batch_loss, segmentation_loss
    from .models import build_segmentation_model

    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, build_segmentation_model(num_classes, cfg.dropout, cfg.pad_to_multiple))
    batch_loss = segmentation_batch_loss(trainer, segmentation_loss())
    return _time_steps(trainer, *finetuning_batches(cfg, num_classes, trainer), batch_loss, steps, warmup)


# --------------------------------------------------------------------------- report


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s = {seconds / 3600:.2f} h = {seconds / 86400:.2f} days"


def _keys_of(config_class, overrides: dict) -> dict:
    """The overrides that are keys of ``config_class``; a key of neither config is an error."""
    names = {field.name for field in dataclasses.fields(config_class)}
    for key in overrides:
        if not any(key in {field.name for field in dataclasses.fields(cls)} for cls in (PretrainConfig, FinetuneConfig)):
            raise SelmaskError(f"--set {key}: unknown config key (`selmask config pretrain` lists the keys)")
    return {key: value for key, value in overrides.items() if key in names}


def estimate_report(datasets: list[str], preset: str, overrides: dict, steps: int = 20, warmup: int = 3,
                    gpus: int = 1) -> list[str]:
    """The lines ``selmask estimate`` prints: measured step times, then each dataset's phases and total."""
    from .config import finetune_preset, pretrain_preset
    from .device import pick_device

    if steps < 1 or warmup < 0 or gpus < 1:
        raise SelmaskError(f"--steps and --gpus must be >= 1 and --warmup >= 0, got {steps}, {gpus}, {warmup}")
    lines, measured = [], {}
    for dataset in datasets:
        pre = pretrain_preset(preset, dataset, **_keys_of(PretrainConfig, overrides))
        fine = finetune_preset(preset, dataset, **_keys_of(FinetuneConfig, overrides))
        # the model's outputs: one more where void is trained as a class (the paper preset on VOC, Cityscapes)
        classes = PAPER_DATASET_SIZES.get(dataset, {}).get("classes", 2) + int(fine.void_as_class)
        # timed with the selective arm's loss (ssim3 at the paper preset), slightly cheaper than MS-SSIM
        for key, timer in (((pre.batch_size, pre.image_size, "pre"), lambda: time_pretraining_step(pre, steps, warmup)),
                           ((fine.batch_size, fine.image_size, classes), lambda: time_finetuning_step(fine, classes,
                                                                                                       steps, warmup))):
            if key not in measured:
                measured[key] = timer()
        if not lines:
            lines.append(f"device {pick_device(pre.device)}, torch {torch.__version__}; "
                         f"{steps} timed steps after {warmup} warm-up steps each")
            lines.append(f"training batches as the loaders send them here: pretraining {batch_format(pre)}; "
                         f"fine-tuning {batch_format(fine)}")
        pre_times, fine_times = measured[(pre.batch_size, pre.image_size, "pre")], \
            measured[(fine.batch_size, fine.image_size, classes)]
        sizes = PAPER_DATASET_SIZES.get(dataset)
        lines.append(f"{dataset}: pretraining step (batch {pre.batch_size}, {pre.image_size} px) "
                     f"train {pre_times.train:.6g} s, eval {pre_times.evaluate:.6g} s; fine-tuning step "
                     f"(batch {fine.batch_size}, {fine.image_size} px) train {fine_times.train:.6g} s, "
                     f"eval {fine_times.evaluate:.6g} s"
                     + ("" if sizes is None else f"; images: pool {sizes['pretrain']}, fine-tuning "
                        f"{sizes['train']} / {sizes['val']} / {sizes['test']}"))
        phases = paper_phases(dataset, pre, fine, pre_times, fine_times)
        for phase in phases:
            lines.append(f"  {phase.name}: {phase.train_steps} train steps x {phase.times.train:.6g} s + "
                         f"{phase.eval_steps} eval steps x {phase.times.evaluate:.6g} s = {phase.seconds:.1f} s")
        total = sum(phase.seconds for phase in phases)
        lines.append(f"  {dataset} total on 1 device: {_duration(total)}")
        if gpus > 1:
            lines.append(f"  {dataset} total on {gpus} GPUs: {_duration(total / gpus)} "
                         f"(linear scaling assumed, not measured)")
    return lines
