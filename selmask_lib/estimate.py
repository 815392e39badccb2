"""How long the whole paper run would take here: measured step times times the paper's step counts.

``selmask estimate --preset paper --dataset voc`` times a few training
steps (after warm-up steps) of each kind the run takes, at the preset's
batch and image size on the current device, through the kit's own step
(:meth:`Trainer.train_one_epoch`), and an evaluation step (no gradients):
a random-masking step, a selective step (fixed masks, baked into the images
where the strategy's config bakes them, as the paper preset's does) and a
fine-tuning step, each with its strategy's own config (the paper preset's
losses differ). Each step's batches are made from random images by the
loop's own datasets and collated as its loader collates them (pinned where
it pins): float images, or on CUDA with ``jitter_on_device`` or
``uint8_batches`` uint8 images (with the colour-jitter draws where the
jitter is left to the device), which the step then finishes on the device
as in a run, so that work is timed too. The step counts of the paper's runs
follow from the dataset sizes in :data:`selmask_lib.config.PAPER_DATASET_SIZES`:

* random masking: E epochs of the 90 % training images + validation;
* selective masking: K steps of E epochs on 1/K of the images each + their
  validation, plus scoring (S reconstructions per image of partitions
  1..K-1, ``batch_size`` reconstructions per forward pass, counted as
  evaluation steps);
* fine-tuning: every init of ``config.INITS`` (four runs) of E epochs on the
  train split + validation. The test pass (batch 1, any size), checkpoints
  and start-up are not counted.

A training step also counts its loader: the time one core takes to build a
batch's items (timed as the timed batches are built, on one torch thread as
in a loader worker, after one untimed item) is added to the step where the
config has no loader workers (the main process builds them between steps)
or where the step runs on the CPU (the workers share its cores); on an
accelerator with ``W`` workers the step takes the longer of itself and a
batch's items over ``W`` (workers build while the device trains; that the
host has ``W`` free cores is assumed). The items are random images of the
crop's size held in memory, so this is a lower bound: a run also reads and
decodes its files and crops from larger images. With ``--set data_root=DIR``
(and one ``--dataset``) the items are that folder's first images instead,
read, decoded and cropped as in a run's first epoch. Not counted: collating
and pinning a batch, and the items of validation and scoring.

``gpus > 1`` divides by the number of GPUs: linear scaling, an assumption.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import INITS, PAPER_DATASET_SIZES, FinetuneConfig, PretrainConfig
from .data.base import UnlabelledImages, labels_fit_uint8, segmentation_item
from .errors import SelmaskError


@dataclass(frozen=True)
class StepTimes:
    """Seconds of one training step and one evaluation step of a loop (each on batches of its own kind),
    and of building one training batch's items on one core (``loader``) for a run of ``workers`` loader
    workers; ``beside``: the workers have cores of their own (the step runs on an accelerator)."""

    train: float
    evaluate: float
    loader: float = 0.0
    workers: int = 0
    beside: bool = True

    @property
    def train_in_run(self) -> float:
        """A training step with its loader: after it without workers, or where the workers share the step's
        cores (a CPU run); else beside it (module docstring)."""
        if self.workers == 0 or not self.beside:
            return self.train + self.loader
        return max(self.train, self.loader / self.workers)

    @property
    def workers_to_keep_up(self) -> int:
        """The fewest loader workers beside the step that build a batch's items within the step's time."""
        return max(1, math.ceil(self.loader / self.train)) if self.train > 0 else 1

    def loader_words(self) -> str:
        """How the report names this step's loader, and whether the step waits for it: with too few workers
        beside an accelerator the loader sets the pace, and more workers (cores permitting) would not."""
        how = "" if self.workers == 0 or self.beside else ", on the cores the step uses: added"
        words = f"loader {self.loader:.6g} s a batch on one core ({self.workers} workers{how})"
        if self.workers and self.beside and self.workers < self.workers_to_keep_up:
            words += f" [loader-bound: {self.workers_to_keep_up} workers would keep up, given the cores]"
        return words


@dataclass(frozen=True)
class Phase:
    """One part of the paper run: how many steps of each kind, and their seconds."""

    name: str
    train_steps: int
    eval_steps: int
    times: StepTimes

    @property
    def seconds(self) -> float:
        return self.train_steps * self.times.train_in_run + self.eval_steps * self.times.evaluate


def _batches(images: int, batch_size: int) -> int:
    return math.ceil(images / batch_size) if images > 0 else 0


def paper_phases(dataset: str, pre: PretrainConfig, fine: FinetuneConfig, random_times: StepTimes,
                 selective_times: StepTimes, fine_times: StepTimes) -> list[Phase]:
    """The phases of the paper run on ``dataset`` (module docstring) with their step counts.

    ``pre`` gives the sizes both strategies share (epochs, batch, K, S, validation share).
    """
    if dataset not in PAPER_DATASET_SIZES:
        raise SelmaskError(f"dataset {dataset!r} has no paper sizes; estimate one of {', '.join(PAPER_DATASET_SIZES)}")
    sizes = PAPER_DATASET_SIZES[dataset]
    n_val = int(sizes["pretrain"] * pre.val_fraction)
    random_masking = Phase("pretraining, random masking", pre.epochs * _batches(sizes["pretrain"] - n_val, pre.batch_size),
                           pre.epochs * _batches(n_val, pre.batch_size), random_times)
    part = sizes["pretrain"] / pre.n_partitions
    part_val = int(part * pre.val_fraction)
    scored = sizes["pretrain"] - math.ceil(part)  # partitions 1..K-1
    per_forward = max(1, pre.batch_size // pre.n_scoring_draws)
    selective = Phase("pretraining, selective masking",
                      pre.n_partitions * pre.epochs * _batches(round(part) - part_val, pre.batch_size),
                      pre.n_partitions * pre.epochs * _batches(part_val, pre.batch_size)
                      + _batches(scored, per_forward), selective_times)
    finetuning = Phase(f"fine-tuning, {len(INITS)} inits", len(INITS) * fine.epochs * _batches(sizes["train"], fine.batch_size),
                       len(INITS) * fine.epochs * _batches(sizes["val"], fine.batch_size), fine_times)
    return [random_masking, selective, finetuning]


# --------------------------------------------------------------------------- timing


BATCHES = 2  # distinct training batches the timed steps take in turn (their colour-jitter draws differ)
DISTINCT_ITEMS = 32  # at most this many items are made per batch, repeated up to its size: building
                     # the paper's batches of up to 256 selective (scored, baked) items would take minutes


def _time_steps(trainer, train_batches: list, eval_batch, batch_loss, steps: int, warmup: int) -> StepTimes:
    """Seconds per training step (on ``train_batches`` in turn) and per evaluation step, after ``warmup``
    untimed steps of each."""
    optimisation = trainer.new_optimisation()

    def seconds_per_step(run, batches: list, count: int) -> float:
        _synchronise(trainer.device)
        started = time.perf_counter()
        run([batches[i % len(batches)] for i in range(count)])
        _synchronise(trainer.device)
        return (time.perf_counter() - started) / count

    def train(items):
        trainer.train_model.train()
        trainer.train_one_epoch(items, batch_loss, optimisation)

    def evaluate(items):
        trainer.model.eval()
        trainer.mean_loss(items, batch_loss)

    for run, batches in ((train, train_batches), (evaluate, [eval_batch])):
        if warmup:
            seconds_per_step(run, batches, warmup)
    return StepTimes(seconds_per_step(train, train_batches, steps), seconds_per_step(evaluate, [eval_batch], steps))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BATCH_FORMS = {  # pretraining.loop_batch_form / engine.training_batch_form -> what the report says
    "baked": "float32, masks baked into the images by the loader",
    "baked_uint8": "uint8, masks baked into the images by the loader, normalisation on the device (uint8_batches)",
    "jitter_on_device": "uint8, colour jitter and normalisation on the device (jitter_on_device)",
    "uint8_batches": "uint8, normalisation on the device (uint8_batches)",
    "float": "float32, finished by the loader",
}


def batch_format(cfg, selective: bool = False) -> str:
    """How the run's training loader sends a batch on this device (the estimate times the same)."""
    from .engine import training_batch_form
    from .pretraining import loop_batch_form

    return BATCH_FORMS[loop_batch_form(cfg, fixed_masks=True) if selective else training_batch_form(cfg)]


def _loaded(trainer, items: list) -> Any:
    """``items`` as one batch of the trainer's loaders: collated, and in pinned memory where they pin it.

    A DataLoader over the items does both, with torch's own collate and pinning, as the run's loaders do.
    """
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(items, batch_size=len(items), pin_memory=trainer.pins_memory(),
                                generator=torch.Generator())))  # its base seed: not from torch's global RNG


def _built(make_item, *args) -> tuple[Any, float]:
    """``make_item(*args)`` and its seconds, on one torch thread as a loader worker builds an item."""
    from .engine import one_torch_thread

    with one_torch_thread():
        began = time.perf_counter()
        item = make_item(*args)
        return item, time.perf_counter() - began


def _batches_of(trainer, dataset, batch_size: int, count: int) -> tuple[list, float]:
    """``count`` batches of ``batch_size`` from ``dataset``'s items in order: ``DISTINCT_ITEMS`` items a
    batch at most, repeated to fill it (the step's cost depends on the batch's form, not its pixels);
    and the mean seconds of building one item."""
    distinct = min(batch_size, DISTINCT_ITEMS)
    batches, seconds = [], []
    # Untimed: a first item pays one-off costs a worker pays once a run. The dataset's last item, so that a
    # folder's first timed image is not one already decoded (and kept in the image cache) by this call.
    _built(dataset.__getitem__, len(dataset) - 1)
    for start in range(0, distinct * count, distinct):
        items = []
        for index in range(start, start + distinct):
            item, took = _built(dataset.__getitem__, index % len(dataset))  # a small folder's items come round again
            items.append(item)
            seconds.append(took)
        batches.append(_loaded(trainer, [items[i % distinct] for i in range(batch_size)]))
    return batches, float(np.mean(seconds))


class RandomImages(UnlabelledImages):
    """A pretraining pool of random uint8 images held in memory: items to time, with no files to read."""

    def __init__(self, count: int, size: int, generator: torch.Generator):
        super().__init__([])
        self.images = [torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
                       for _ in range(count)]
        self.ids = [f"random-{index}" for index in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def decoded(self, index: int) -> np.ndarray:
        return self.images[index]


def pretraining_batches(cfg: PretrainConfig, trainer, selective: bool,
                        pool: UnlabelledImages | None = None) -> tuple[list, Any, float]:
    """``BATCHES`` training batches and one validation batch of a random-masking loop, or of a selective
    step (random fixed masks), as that loop's loaders send them for ``cfg`` here; and the seconds one
    training item took to build (on one torch thread, as in a loader worker).

    The items come from the loop's own datasets (``pretraining.loop_datasets``) over random images, or
    over the first images of ``pool`` (a ``data_root``'s ``pretrain_data.pretraining_pool``: read,
    decoded and cropped as in a run): uint8 crops with the draws of a colour jitter left to the device, uint8 images for
    ``uint8_batches`` (masks baked into them or not: ``bake_selective_masks``), or float images.
    """
    from .pretraining import loop_datasets

    generator = torch.Generator().manual_seed(cfg.seed)
    count = min(cfg.batch_size, DISTINCT_ITEMS) * BATCHES
    pool = RandomImages(count, cfg.image_size, generator) if pool is None else pool
    indices = list(range(min(count, len(pool))))
    patch_masks = random_fixed_masks(cfg, pool, indices, generator) if selective else None
    train_set, val_set = loop_datasets(cfg, pool, indices, indices[:max(1, len(indices) // BATCHES)], patch_masks)
    return _training_and_validation_batches(trainer, train_set, val_set, cfg.batch_size)


def random_fixed_masks(cfg: PretrainConfig, pool: UnlabelledImages, indices, generator: torch.Generator
                       ) -> dict[int, torch.Tensor]:
    """A selective step's fixed masks, drawn at random: for each pool image of ``indices``, a patch mask
    (``cfg.mask_ratio`` of the patches) on its scoring view's grid. What a step costs does not depend on
    which patches its scoring picked."""
    from .masking import patch_grid, random_mask
    from .pretrain_data import scoring_view

    def patches_of(index: int) -> int:
        return len(patch_grid(*scoring_view(pool, index, cfg.score_size, cfg.antialias).shape[-2:], cfg.n_patches))

    return {index: random_mask(1, patches_of(index), cfg.mask_ratio, generator)[0] for index in indices}


class RandomSegmentationItems(Dataset):
    """Random uint8 images and labels held in memory (about 5 % of the pixels void, 255), each item through
    ``transform`` as a segmentation split's (``data.base.segmentation_item``): items to time, no files."""

    def __init__(self, count: int, size: int, classes: int, transform, uint8_labels: bool,
                 generator: torch.Generator):
        self.samples = []
        for _ in range(count):
            image = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator)
            label = torch.randint(0, classes, (size, size), generator=generator)
            label[torch.rand((size, size), generator=generator) < 0.05] = 255
            self.samples.append((image.numpy(), label.numpy()))
        self.transform, self.uint8_labels = transform, uint8_labels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return segmentation_item(*self.samples[index], self.transform, self.uint8_labels)


def _training_and_validation_batches(trainer, train_items, val_items, batch_size: int) -> tuple[list, Any, float]:
    """``BATCHES`` training batches, one validation batch, and the seconds one training item took to build."""
    train, item_seconds = _batches_of(trainer, train_items, batch_size, BATCHES)
    (val,), _ = _batches_of(trainer, val_items, batch_size, 1)
    return train, val, item_seconds


def finetuning_batches(cfg: FinetuneConfig, num_classes: int, trainer, splits=None) -> tuple[list, Any, float]:
    """``BATCHES`` training batches and one validation batch as the fine-tuning loaders send them for
    ``cfg`` here: the dataset's own items of random images and labels (:class:`RandomSegmentationItems`),
    through the run's transforms, or with ``splits`` (``finetuning.load_splits`` of a ``data_root``)
    the first items of that folder's train and val splits; and the seconds one training item took to
    build (on one torch thread). ``num_classes``: the model's outputs, the void class among them where
    ``void_as_class``."""
    from .finetuning import sends_uint8_labels, training_transform
    from .transforms import val_transform

    if splits is not None:
        return _training_and_validation_batches(trainer, splits.train, splits.val, cfg.batch_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    classes = num_classes - int(cfg.void_as_class)  # the dataset's classes (void is 255 in its labels)
    count = min(cfg.batch_size, DISTINCT_ITEMS)
    train_items = RandomSegmentationItems(count * BATCHES, cfg.image_size, classes, training_transform(cfg),
                                          labels_fit_uint8(classes, 255) and sends_uint8_labels(cfg), generator)
    val_items = RandomSegmentationItems(count, cfg.image_size, classes,
                                        val_transform(cfg.image_size, cfg.mean, cfg.std, antialias=cfg.antialias),
                                        False, generator)
    return _training_and_validation_batches(trainer, train_items, val_items, cfg.batch_size)


def time_pretraining_step(cfg: PretrainConfig, steps: int, warmup: int, selective: bool = False,
                          pool: UnlabelledImages | None = None) -> StepTimes:
    """The kit's random-masking step, or with ``selective`` a selective step's (fixed masks, baked where
    the config bakes them): finish the batch, mask, forward, the config's reconstruction loss, Adam; on
    random items or on the first images of ``pool`` (:func:`pretraining_batches`)."""
    from .engine import Trainer, epoch_generator
    from .losses import ReconstructionLoss
    from .masking import patch_grid
    from .models import build_reconstruction_model
    from .pretrain_data import RandomPixelMasks
    from .pretraining import reconstruction_batch_loss

    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, build_reconstruction_model(cfg.dropout, cfg.pad_to_multiple))
    random_masks = None if selective else RandomPixelMasks(
        patch_grid(cfg.image_size, cfg.image_size, cfg.n_patches), cfg.mask_ratio, trainer.device)
    batch_loss = reconstruction_batch_loss(trainer, ReconstructionLoss(cfg.recon_loss), random_masks,
                                           epoch_generator(cfg.seed, "estimate"))
    train, val, item_seconds = pretraining_batches(cfg, trainer, selective, pool)
    return _with_loader(_time_steps(trainer, train, val, batch_loss, steps, warmup), cfg, trainer.device,
                        item_seconds)


def time_finetuning_step(cfg: FinetuneConfig, num_classes: int, steps: int, warmup: int, splits=None) -> StepTimes:
    """The kit's fine-tuning step (finish the batch, forward, the run's Jaccard loss, Adam), on random items
    or on the first items of ``splits`` (:func:`finetuning_batches`)."""
    from .engine import Trainer
    from .finetuning import segmentation_batch_loss, segmentation_loss
    from .models import build_segmentation_model

    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, build_segmentation_model(num_classes, cfg.dropout, cfg.pad_to_multiple))
    void_class = num_classes - 1 if cfg.void_as_class else None
    batch_loss = segmentation_batch_loss(trainer, segmentation_loss(void_class=void_class))
    train, val, item_seconds = finetuning_batches(cfg, num_classes, trainer, splits)
    return _with_loader(_time_steps(trainer, train, val, batch_loss, steps, warmup), cfg, trainer.device,
                        item_seconds)


def _with_loader(times: StepTimes, cfg, device: torch.device, item_seconds: float) -> StepTimes:
    """``times`` with the loader's seconds a training batch (``batch_size`` items on one core) and workers.

    On a CPU the workers run on the cores the step uses (it takes them all), so they do not build beside
    it: on 2 cores a worker made the kit's training slower (benchmarks/README.md).
    """
    return dataclasses.replace(times, loader=item_seconds * cfg.batch_size, workers=cfg.num_workers,
                               beside=device.type != "cpu")


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


def _loss_name(cfg: PretrainConfig) -> str:
    from .losses import uses_ms_ssim

    if cfg.recon_loss == "ms_ssim" and not uses_ms_ssim(cfg.image_size, cfg.image_size):
        return "ms_ssim, single-scale SSIM at this size"
    return cfg.recon_loss


SELECTIVE_ONLY_KEYS = ("bake_selective_masks", "baked_image_quality")  # a random-masking config refuses them


def _timing_keys(cfg) -> tuple:
    """The keys a step's or its items' time depends on that both loops have: datasets equal in these (and in
    the loop's own keys) share their measurements."""
    return (cfg.batch_size, cfg.image_size, tuple(cfg.crop_scale), cfg.antialias, cfg.num_workers,
            cfg.jitter_on_device, cfg.uint8_batches, cfg.precision, cfg.channels_last, cfg.compile, cfg.compile_mode)


def estimate_report(datasets: list[str], preset: str, overrides: dict, steps: int = 20, warmup: int = 3,
                    gpus: int = 1) -> list[str]:
    """The lines ``selmask estimate`` prints: measured step times, then each dataset's phases and total."""
    from .config import finetune_preset, pretrain_preset
    from .device import pick_device

    if steps < 1 or warmup < 0 or gpus < 1:
        raise SelmaskError(f"--steps and --gpus must be >= 1 and --warmup >= 0, got {steps}, {gpus}, {warmup}")
    lines, measured = [], {}

    def timed(key: tuple, timer) -> StepTimes:  # datasets with the same sizes share their measurements
        if key not in measured:
            measured[key] = timer()
        return measured[key]

    if "strategy" in overrides:
        raise SelmaskError("--set strategy: the estimate times both strategies (each with its own config)")
    data_root = overrides.get("data_root")
    if data_root is not None and len(datasets) != 1:
        raise SelmaskError(f"--set data_root={data_root}: name the one --dataset whose folder it is "
                           f"(got {len(datasets)} datasets)")
    pretrain_keys = _keys_of(PretrainConfig, overrides)
    random_keys = {key: value for key, value in pretrain_keys.items() if key not in SELECTIVE_ONLY_KEYS}
    for dataset in datasets:
        # Each strategy's own config: the paper preset's differ (loss; the selective steps bake their masks).
        random_cfg = pretrain_preset(preset, dataset, strategy="random", **random_keys)
        selective_cfg = pretrain_preset(preset, dataset, strategy="selective", **pretrain_keys)
        fine = finetune_preset(preset, dataset, **_keys_of(FinetuneConfig, overrides))
        # the model's outputs: one more where void is trained as a class (the paper preset on VOC, Cityscapes)
        classes = PAPER_DATASET_SIZES.get(dataset, {}).get("classes", 2) + int(fine.void_as_class)
        pool, splits = None, None
        if data_root is not None:  # the folder's pool and splits, read once: the items timed, its own classes
            from .finetuning import load_splits
            from .pretrain_data import pretraining_pool

            pool, splits = pretraining_pool(random_cfg), load_splits(fine)
            classes = splits.num_outputs
        times = {}
        for name, cfg, selective in (("random", random_cfg, False), ("selective", selective_cfg, True)):
            key = (name, *_timing_keys(cfg), cfg.recon_loss, cfg.score_size, cfg.bake_selective_masks,
                   cfg.baked_image_quality)
            times[name] = timed(key, lambda: time_pretraining_step(cfg, steps, warmup, selective, pool))
        times["fine-tuning"] = timed(("fine-tuning", *_timing_keys(fine), classes, fine.void_as_class),
                                     lambda: time_finetuning_step(fine, classes, steps, warmup, splits))
        if not lines:
            lines.append(f"device {pick_device(fine.device)}, torch {torch.__version__}; "
                         f"{steps} timed steps after {warmup} warm-up steps each")
            lines.append(f"training batches as the loaders send them here: random masking "
                         f"{batch_format(random_cfg)}; selective steps {batch_format(selective_cfg, selective=True)}; "
                         f"fine-tuning {batch_format(fine)}")
            lines.append("a training step counts its loader (the seconds one core takes to build a batch's items): "
                         "added to the step without loader workers or on a CPU (the workers share its cores), else "
                         "the longer of the step and those seconds over the workers; "
                         + ("items of in-memory images of the crop's size, so a lower bound (a run also reads and "
                            "decodes its files, and crops from larger images; --set data_root=DIR times them)"
                            if data_root is None else
                            f"items read, decoded and cropped from the first images of {data_root}, as in a run's "
                            f"first epoch (later epochs may find them in the image cache)")
                         + "; collating, pinning, validation and scoring items not counted; a selective step's items "
                           "are timed from views (and baked masks) kept by its image cache: a run rebuilds those "
                           "beyond image_cache_mb every epoch")
        sizes = PAPER_DATASET_SIZES.get(dataset)
        step_lines = [f"random-masking step (batch {random_cfg.batch_size}, {random_cfg.image_size} px, "
                      f"{_loss_name(random_cfg)})", f"selective step (batch {selective_cfg.batch_size}, "
                      f"{selective_cfg.image_size} px, {_loss_name(selective_cfg)}"
                      f"{', baked masks' if selective_cfg.bake_selective_masks else ''})",
                      f"fine-tuning step (batch {fine.batch_size}, {fine.image_size} px)"]
        lines.append(f"{dataset}: " + "; ".join(
            f"{what} train {step.train:.6g} s, eval {step.evaluate:.6g} s, {step.loader_words()}"
            for what, step in zip(step_lines, times.values()))
            + ("" if sizes is None else f"; images: pool {sizes['pretrain']}, fine-tuning "
               f"{sizes['train']} / {sizes['val']} / {sizes['test']}"))
        phases = paper_phases(dataset, selective_cfg, fine, times["random"], times["selective"], times["fine-tuning"])
        for phase in phases:
            lines.append(f"  {phase.name}: {phase.train_steps} train steps x {phase.times.train_in_run:.6g} s + "
                         f"{phase.eval_steps} eval steps x {phase.times.evaluate:.6g} s = {phase.seconds:.1f} s")
        total = sum(phase.seconds for phase in phases)
        lines.append(f"  {dataset} total on 1 device: {_duration(total)}")
        if gpus > 1:
            lines.append(f"  {dataset} total on {gpus} GPUs: {_duration(total / gpus)} "
                         f"(linear scaling assumed, not measured)")
    return lines
