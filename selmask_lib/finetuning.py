"""Downstream semantic segmentation: fine-tune the U-Net from one of four inits, test the best model.

METHOD.md, "Downstream segmentation": the same U-Net with a class head,
initialised from nothing (``none``), a supervised ImageNet ResNet-34 encoder
(``imagenet``, encoder only), or the encoder + decoder of a random-masking
(``random_ir``) or selective-masking (``selective_ir``) pretraining run
(self- or cross-dataset). Multiclass Jaccard loss, Adam, warm-up + cosine
schedule; the checkpoint with the best validation mIoU is evaluated on the
test split (shorter side ``image_size``, batch 1, any size)::

    cfg = finetune_preset("demo", "synthetic", init="selective_ir",
                          pretrained="runs/pretrain-selective-synthetic-0123abcd")
    run = finetune(cfg)                 # or resume / reuse the run of this config
    run.results["miou"], run.results_path

The loss (smp 0.6.0, checked in this venv and pinned by a test):
``smp.losses.JaccardLoss(mode="multiclass", ignore_index=255)`` really
excludes void pixels: it zeroes the softmax probabilities and the one-hot
target at every ignored pixel before summing, so those pixels add nothing to
intersection, prediction or target sums, and their logits get zero gradient
(the loss equals the loss of the same batch with the void pixels cropped
out). No extra masking is needed. Two properties of that loss worth knowing:
the IoU of each class is computed over the whole batch (not per image), and a
class absent from the batch's ground truth contributes 0 but still counts in
the mean over the C classes (so the loss of a batch showing 3 of 21 classes
is at most 3/21). That is the pytorch-toolbelt / smp behaviour the authors'
code inherits; it is kept as is.

``void_as_class`` (the authors' VOC and Cityscapes runs, METHOD.md item 4):
the model gets one more output, void (255) pixels are relabelled to that
class, so they take part in the softmax and are negatives of every other
class, and the loss averages over the real classes only (smp's ``classes``).
Evaluation then counts a labelled pixel predicted as void as a miss of its
class (``selmask_lib.metrics``); void itself is never scored.

Run directory::

    config.yaml               the run's config
    run.json                  status, config hash, init, pretraining run
    .lock                     held by the process training here (selmask_lib.runs.run_lock)
    best.pt                   weights at the best val mIoU (tested)
    last.pt                   resumable state while training; deleted once results.json is written
    run.log                   what the run did
    metrics.csv, .jsonl       one row per epoch: lr, train_loss, val_loss, val_miou, seconds
    results.json              test scores and provenance (selmask_lib.results format)

A finished run of the same config is reused as it is; a directory holding
another config's run (or anything else) is refused without touching it.

Multi-GPU: ``torchrun --nproc_per_node=N -m selmask_lib.cli finetune ...``
(see ``selmask_lib.distributed``). ``batch_size`` is per process (the paper's
8 is global: per-GPU = 8 / N); the Jaccard loss is then the mean of the N
per-process batch losses. Validation and test are sharded and their
confusion matrices summed, so the scores cover every image once (the test
split's per-image counts, kept for the bootstrap of selmask_lib.statistics,
are gathered in the split's order); rank 0 alone writes files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import segmentation_models_pytorch as smp
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from .config import IR_INIT_STRATEGY, FinetuneConfig, config_hash
from .data import dataset_info, fingerprint, load_segmentation_split, resolve_data_root
from .data.cache import DecodedCache
from .device import pick_device
from .distributed import all_reduce_sum, barrier, eval_shard, gather_confusion, init_distributed, is_main_process
from .engine import (
    LAST_CHECKPOINT,
    Optimisation,
    Trainer,
    check_fills_a_batch,
    load_checkpoint,
    require_finite_weights,
    seed_everything,
    training_batch_form,
)
from .errors import SelmaskError
from .metrics import SegmentationEvaluator, SegmentationScores
from .models import (
    ENCODER_STRIDE,
    HEAD_PREFIX,
    IMAGENET_RESNET34_URL,
    UNet,
    build_segmentation_model,
    imagenet_weights_path,
    load_imagenet_encoder,
    transfer_weights,
)
from .pretraining import PretrainRun, load_pretrain_run
from .results import RESULTS_FILENAME, per_image_entries, read_results, write_results
from .runs import check_run_dir, failed_if_diverged, training_run, update_run_info
from .transforms import test_transform, train_transform, val_transform

log = logging.getLogger(__name__)

RUN_KIND = "finetune"


@dataclass
class FinetuneRun:
    """A finished fine-tuning run: where it is and what ``results.json`` holds."""

    run_dir: Path
    results_path: Path  # run_dir / results.json
    results: dict

    @property
    def miou(self) -> Optional[float]:
        return self.results.get("miou")

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


# --------------------------------------------------------------------------- loss


def segmentation_loss(ignore_index: int = 255, void_class: Optional[int] = None) -> torch.nn.Module:
    """The paper's loss: smp's multiclass Jaccard loss on logits, void pixels excluded (module docstring).

    With ``void_class`` (the index of a trained void output) void pixels are that class instead.
    """
    if void_class is None:
        return smp.losses.JaccardLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
    return VoidAsClassJaccardLoss(void_class, ignore_index)


class VoidAsClassJaccardLoss(torch.nn.Module):
    """Jaccard loss over ``void_class + 1`` outputs with void pixels as class ``void_class``.

    Void competes in the softmax and counts against every real class, but its
    own IoU term is left out of the mean (the authors' class list excludes it).
    """

    def __init__(self, void_class: int, ignore_index: int = 255):
        super().__init__()
        self.void_class, self.ignore_index = void_class, ignore_index
        self.jaccard = smp.losses.JaccardLoss(mode="multiclass", from_logits=True, classes=list(range(void_class)))

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.jaccard.classes.device != logits.device:
            # smp keeps the class list on the CPU and indexes the loss with it: on a GPU that would copy
            # it there from pageable memory every call, making the host wait for the GPU. Once, here.
            self.jaccard.classes = self.jaccard.classes.to(logits.device)
        return self.jaccard(logits, masks.masked_fill(masks == self.ignore_index, self.void_class))


# --------------------------------------------------------------------------- run directories


def default_run_dir(cfg: FinetuneConfig, runs_root: str | Path = "runs",
                    pretrain_dataset: Optional[str] = None, data_fingerprint: Optional[str] = None) -> Path:
    """``runs/finetune-<dataset>-<init>[-<pretrain dataset>]-<hash>[-d<data>]``."""
    parts = ["finetune", cfg.dataset, cfg.init]
    if cfg.init in IR_INIT_STRATEGY and pretrain_dataset is not None:
        parts.append(pretrain_dataset)
    data = "" if data_fingerprint is None else f"-d{data_fingerprint[:8]}"
    return Path(runs_root) / f"{'-'.join(parts)}-{config_hash(cfg)}{data}"


# --------------------------------------------------------------------------- data


@dataclass
class _Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    class_names: list[str]
    ignore_index: int
    root: Path
    fingerprint: str  # of every image and label file the run reads (selmask_lib.data.fingerprint)
    void_as_class: bool = False  # the model has one more output, void

    @property
    def num_outputs(self) -> int:
        """Channels of the segmentation head: the classes, plus void when it is trained as a class."""
        return len(self.class_names) + int(self.void_as_class)

    @property
    def void_class(self) -> Optional[int]:
        return len(self.class_names) if self.void_as_class else None


def training_transform(cfg: FinetuneConfig) -> v2.Compose:
    """The training split's augmentation: finished by the loader workers, or left to the device as
    :func:`engine.training_batch_form` says (``selmask estimate`` builds its batches with it too)."""
    form = training_batch_form(cfg)
    return train_transform(cfg.image_size, tuple(cfg.crop_scale), tuple(cfg.mean), tuple(cfg.std),
                           antialias=cfg.antialias, defer_colour=form == "jitter_on_device",
                           uint8_batch=form == "uint8_batches")


def sends_uint8_labels(cfg: FinetuneConfig) -> bool:
    """Whether the training split sends its labels as uint8 (where every value fits): only where the device
    finishes the batch (``jitter_on_device``, ``uint8_batches``); else int64, the loss's dtype."""
    return training_batch_form(cfg) != "float"


def load_splits(cfg: FinetuneConfig) -> _Splits:
    """Train (first ``max_train_images``, augmented), val (centre crop) and test (shorter side) splits.

    With ``cfg.split_list`` the list's content joins the data fingerprint (its path is not hashed).
    """
    root = resolve_data_root(cfg.dataset, cfg.data_root)
    info = dataset_info(cfg.dataset, root)
    mean, std, antialias = tuple(cfg.mean), tuple(cfg.std), cfg.antialias

    def split(name: str, transform):
        dataset = load_segmentation_split(cfg.dataset, root, name, transform, split_list=cfg.split_list)
        dataset.cache = DecodedCache(cfg.image_cache_mb)  # checked arrays, kept from the first read on
        return dataset

    train = split("train", training_transform(cfg))
    train.sends_uint8_labels = sends_uint8_labels(cfg)
    used = list(train.samples)
    if cfg.max_train_images is not None and cfg.max_train_images < len(train):
        train, used = Subset(train, range(cfg.max_train_images)), used[: cfg.max_train_images]
    val = split("val", val_transform(cfg.image_size, mean, std, antialias=antialias))
    test = split("test", test_transform(cfg.image_size, mean, std, antialias=antialias))
    samples = [*used, *val.samples, *test.samples]
    files = [path for sample in samples for path in (sample.image_path, sample.label_path)]
    lists = [] if cfg.split_list is None else [cfg.split_list]
    return _Splits(train, val, test, list(info.class_names), info.ignore_index, root,
                   fingerprint(files, root, lists=lists), void_as_class=cfg.void_as_class)


def check_every_sample(splits: _Splits, dataset: str) -> None:
    """Decode every sample a run will read (images, labels, sizes, class ids) once, before training.

    Not part of :func:`load_splits`: a finished run that is reused reads no data. An image with a
    side under 32 px (``models.ENCODER_STRIDE``) is refused too.
    """
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        base, indices = (split.dataset, split.indices) if isinstance(split, Subset) else (split, None)
        base.check_all(indices, f"checking {dataset} {name} split", min_side=ENCODER_STRIDE)


# --------------------------------------------------------------------------- initialisation


def check_pretrain_run(cfg: FinetuneConfig) -> Optional[PretrainRun]:
    """The finished pretraining run an IR init names, checked to be of the right strategy; None otherwise."""
    if cfg.init not in IR_INIT_STRATEGY:
        return None
    run = load_pretrain_run(cfg.pretrained)
    needed, found = IR_INIT_STRATEGY[cfg.init], run.config.strategy
    if found != needed:
        other = next(init for init, strategy in IR_INIT_STRATEGY.items() if strategy == found)
        raise SelmaskError(
            f"init '{cfg.init}' needs a {needed}-masking pretraining run, but {run.run_dir} was pretrained "
            f"with {found} masking; pass a {needed}-masking run as 'pretrained' (or use init '{other}')"
        )
    if (tuple(run.config.mean), tuple(run.config.std)) != (tuple(cfg.mean), tuple(cfg.std)):
        log.warning("pretraining run %s normalised images with mean %s / std %s, this run uses %s / %s",
                    run.run_dir, list(run.config.mean), list(run.config.std), list(cfg.mean), list(cfg.std))
    return run


def _load_imagenet(model: UNet, weights: Optional[str]) -> list[str]:
    """ImageNet encoder from ``weights`` or the torch hub cache (downloaded there if online)."""
    try:
        return load_imagenet_encoder(model, weights, download=weights is None)
    except SelmaskError:
        raise
    except Exception as error:  # offline: URLError, HTTPError, socket errors, ...
        raise SelmaskError(
            f"ImageNet ResNet-34 weights are not in {imagenet_weights_path()} and could not be downloaded "
            f"({type(error).__name__}: {error}); download {IMAGENET_RESNET34_URL}, then place it there or pass "
            f"its path as imagenet_weights (--imagenet-weights FILE)"
        ) from None


def build_initialised_model(cfg: FinetuneConfig, num_classes: int,
                            pretrain_run: Optional[PretrainRun]) -> tuple[UNet, dict]:
    """The segmentation U-Net initialised as ``cfg.init`` says, and a JSON-ready transfer summary.

    The random weights (head, and everything for ``none``) come from
    ``cfg.seed``, so two runs of one config start from the same model.
    """
    seed_everything(cfg.seed)
    model = build_segmentation_model(num_classes, dropout=cfg.dropout, pad_to_multiple=cfg.pad_to_multiple)
    if cfg.init == "none":
        return model, {"source": None, "summary": "random initialisation (seeded)"}
    if cfg.init == "imagenet":
        copied = _load_imagenet(model, cfg.imagenet_weights)
        source = imagenet_weights_path(cfg.imagenet_weights)
        return model, {"source": str(source), "copied": len(copied), "skipped": 0, "missing": 0,
                       "summary": f"copied {len(copied)} ImageNet encoder tensors (encoder only)"}
    weights = load_checkpoint(pretrain_run.weights)
    state = weights.get("model")
    if not isinstance(state, dict):
        raise SelmaskError(f"{pretrain_run.weights}: no 'model' state dict in the pretrained weights")
    # The authors' code copies every tensor whose name and shape match, the RGB head into a
    # 3-class head included; the paper's text (and the kit's default) leaves the head random.
    report = transfer_weights(state, model, exclude_prefixes=() if cfg.transfer_head_if_shapes_match else (HEAD_PREFIX,))
    head_copied = any(name.startswith(HEAD_PREFIX) for name in report.copied)
    not_copied = report.missing + [name for name in report.skipped if not name.startswith(HEAD_PREFIX)]
    if not_copied:
        raise SelmaskError(
            f"{pretrain_run.weights}: does not match the segmentation U-Net "
            f"({report.summary()}; e.g. {not_copied[0]!r}); was it written by another model version?"
        )
    require_finite_weights(model, f"pretrained weights {pretrain_run.weights}")  # e.g. a run saved before the guard
    log.info("init %s from %s: %s", cfg.init, pretrain_run.weights, report.summary())
    return model, {"source": str(pretrain_run.weights), "copied": len(report.copied),
                   "skipped": len(report.skipped), "missing": len(report.missing),
                   "summary": report.summary() + (" (encoder, decoder and head)" if head_copied
                                                  else " (encoder and decoder; head left random)")}


# --------------------------------------------------------------------------- training and evaluation


def segmentation_batch_loss(trainer: Trainer, loss_fn: torch.nn.Module,
                            evaluator: Optional[SegmentationEvaluator] = None):
    """``batch_loss(model, (images, masks))`` for the engine; also counts pixels into ``evaluator``."""
    def batch_loss(model: torch.nn.Module, batch) -> torch.Tensor:
        images, masks = batch
        logits = trainer.forward(model, images)
        masks = masks.to(trainer.device, non_blocking=True).long()  # uint8 from a batch finished on the device
        if evaluator is not None:
            evaluator.update(logits, masks)
        return loss_fn(logits, masks)
    return batch_loss


def evaluate_split(trainer: Trainer, splits: _Splits, loss_fn: torch.nn.Module, split: str,
                   batch_size: int, per_image: bool = False) -> tuple[SegmentationScores, float]:
    """Scores and mean Jaccard loss of the current model on ``split`` ("val" or "test").

    ``per_image``: the scores also hold each image's confusion counts, in the split's order.
    """
    trainer.model.eval()
    evaluator = SegmentationEvaluator(len(splits.class_names), splits.class_names, ignore_index=splits.ignore_index,
                                      absent_class_iou=trainer.cfg.absent_class_iou,  # val too: it picks best.pt
                                      void_as_class=splits.void_as_class, per_image=per_image)
    dataset = getattr(splits, split)
    loader = trainer.loader(dataset, False, split, batch_size=batch_size,
                            drop_last=None if split == "val" else False)  # cfg.drop_last never drops test images
    loss = trainer.mean_loss(loader, segmentation_batch_loss(trainer, loss_fn, evaluator), split)
    gather_confusion(evaluator)  # torchrun: sum the shards' counts so every process scores the whole split
    try:
        scores = evaluator.compute()
    except SelmaskError as error:
        raise SelmaskError(f"{split} split of dataset {trainer.cfg.dataset!r}: {error}") from None
    if per_image:
        scores.per_image_confusions = _gather_per_image(scores.per_image_confusions, len(dataset))
    return scores, loss


def _gather_per_image(local: torch.Tensor, n_images: int) -> torch.Tensor:
    """Every image's counts in split order: under torchrun each process holds its shard (eval_shard's indices)."""
    shard = eval_shard(range(n_images))
    full = torch.zeros(n_images, *local.shape[1:], dtype=torch.int64)
    full[list(range(n_images)) if shard is None else shard] = local
    return all_reduce_sum(full)


def _train(trainer: Trainer, splits: _Splits, loss_fn: torch.nn.Module, run_dir: Path):
    """Fine-tune ``cfg.epochs`` epochs (resumable), keeping the best val-mIoU weights in best.pt."""
    cfg = trainer.cfg

    def train_epoch(epoch: int, optimisation: Optimisation) -> dict:
        trainer.seed_torch("augment", epoch)
        loader = trainer.epoch_loader(splits.train, epoch)
        loss = trainer.train_one_epoch(loader, segmentation_batch_loss(trainer, loss_fn), optimisation,
                                       f"finetune epoch {epoch}")
        return {"train_loss": loss}

    def evaluate(epoch: int) -> dict:
        scores, loss = evaluate_split(trainer, splits, loss_fn, "val", cfg.batch_size)
        return {"val_loss": loss, "val_miou": scores.miou}

    return trainer.fit(run_dir, train_epoch, evaluate, best_metric="val_miou", best_mode="max")


# --------------------------------------------------------------------------- public entry point


def finetune(cfg: FinetuneConfig, out_dir: str | Path | None = None, resume: bool = True,
             runs_root: str | Path = "runs") -> FinetuneRun:
    """Fine-tune, pick the best epoch by val mIoU, evaluate it on the test split; write ``results.json``.

    ``out_dir`` defaults to ``runs_root/finetune-<dataset>-<init>[-<pretrain
    dataset>]-<hash>``. A finished run of the same config there is reused
    as it is; an unfinished one is continued if ``resume`` (else refused).
    Every check (pretraining run, data, ImageNet file) runs before anything
    is written. Under torchrun every process calls this (module docstring).
    """
    init_distributed()  # no-op without torchrun
    if not isinstance(cfg, FinetuneConfig):
        raise SelmaskError(f"finetune() needs a FinetuneConfig, got {type(cfg).__name__}")
    pretrain_run = check_pretrain_run(cfg)  # as named by the caller: messages show the path it gave
    if cfg.pretrained is not None:  # stored absolute, so results.json finds it from any folder
        cfg = cfg.updated(pretrained=str(Path(cfg.pretrained).resolve()))
    pretrain_dataset = None if pretrain_run is None else pretrain_run.config.dataset
    splits = load_splits(cfg)  # the data is part of the run's identity
    run_dir = (Path(out_dir) if out_dir is not None
               else default_run_dir(cfg, runs_root, pretrain_dataset, splits.fingerprint))
    # The config hashes only the pretraining folder's name; its content is checked here.
    identity = {"data_fingerprint": splits.fingerprint,
                **({} if pretrain_run is None else {"pretrain_config_hash": config_hash(pretrain_run.config)})}
    finished = check_run_dir(run_dir, RUN_KIND, cfg, resume, identity=identity, data_root=splits.root)
    if finished is not None and (run_dir / RESULTS_FILENAME).is_file():
        log.info("reusing finished fine-tuning run %s", run_dir)
        return FinetuneRun(run_dir, run_dir / RESULTS_FILENAME, read_results(run_dir / RESULTS_FILENAME))

    pick_device(cfg.device)  # an unavailable device fails before anything is written
    check_every_sample(splits, cfg.dataset)  # a bad test label fails now, not after all the training
    if cfg.drop_last:  # an epoch of no batch fails now, not inside the first epoch
        for name in ("train", "val"):
            check_fills_a_batch(len(getattr(splits, name)), cfg.batch_size, f"{cfg.dataset} {name} split")
    model, transfer = build_initialised_model(cfg, splits.num_outputs, pretrain_run)
    with training_run(run_dir, RUN_KIND, cfg, resume, identity=identity, finished=finished,
                      data_root=str(splits.root), dataset=cfg.dataset, init=cfg.init,
                      pretrain_run=None if pretrain_run is None else cfg.pretrained):  # locked, begun, logged
        return _train_and_test(cfg, run_dir, splits, model, transfer, pretrain_run)


def _train_and_test(cfg: FinetuneConfig, run_dir: Path, splits: _Splits, model: UNet, transfer: dict,
                    pretrain_run: Optional[PretrainRun]) -> FinetuneRun:
    """Train with resume, test the best checkpoint at batch 1, write results.json."""
    pretrain_dataset = None if pretrain_run is None else pretrain_run.config.dataset
    trainer = Trainer(cfg, model)
    loss_fn = segmentation_loss(splits.ignore_index, splits.void_class)
    with failed_if_diverged(run_dir, "fine-tuning", "no results are written"):
        fitted = _train(trainer, splits, loss_fn, run_dir)  # check_run_dir refused an unfinished run unless resume

    best_path = fitted.best_checkpoint or fitted.last_checkpoint
    trainer.model.load_state_dict(load_checkpoint(best_path, expected_config_hash=trainer.config_hash,
                                                  map_location=trainer.device)["model"])
    started = time.perf_counter()
    scores, test_loss = evaluate_split(trainer, splits, loss_fn, "test", batch_size=1, per_image=True)
    test_seconds = time.perf_counter() - started

    relation = None
    if pretrain_run is not None:
        relation = "self" if pretrain_dataset == cfg.dataset else "cross"
    if not is_main_process():  # torchrun: rank 0 writes the results, the others wait for them and read them
        barrier()
        return FinetuneRun(run_dir, run_dir / RESULTS_FILENAME, read_results(run_dir / RESULTS_FILENAME))
    results_path = write_results(
        run_dir,
        dataset=cfg.dataset,
        init=cfg.init,
        pretrain_run=None if pretrain_run is None else cfg.pretrained,
        pretrain_dataset=pretrain_dataset,
        pretrain_relation=relation,
        pretrain_config_hash=None if pretrain_run is None else config_hash(pretrain_run.config),
        pretrain_masking=None if pretrain_run is None else pretrain_run.masking,
        pretrain_recon_loss=None if pretrain_run is None else pretrain_run.config.recon_loss,
        seed=cfg.seed,
        data_fingerprint=splits.fingerprint,
        scores=scores,
        per_image_confusions=per_image_entries(splits.test.ids, scores.per_image_confusions),  # statistics
        test_loss=test_loss,
        val_miou=fitted.best_value,
        best_epoch=fitted.best_epoch,
        transfer=transfer,
        config=cfg.to_dict(),
        config_hash=trainer.config_hash,
        timings={"train_seconds": round(sum(row.get("seconds", 0.0) for row in fitted.history), 3),
                 "test_seconds": round(test_seconds, 3)},
        images={"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        device=str(trainer.device),
        **({} if scores.predicted_void is None else {"predicted_void": scores.predicted_void}),
    )
    update_run_info(run_dir, status="complete", results=RESULTS_FILENAME, best_epoch=fitted.best_epoch,
                    miou=scores.miou)
    (run_dir / LAST_CHECKPOINT).unlink(missing_ok=True)  # resumable state (~300 MB); best.pt stays
    log.info("fine-tuning %s: test mIoU %.4f (best epoch %s)", run_dir, scores.miou, fitted.best_epoch)
    barrier()
    return FinetuneRun(run_dir, results_path, read_results(results_path))


__all__ = [
    "FinetuneRun",
    "build_initialised_model",
    "check_pretrain_run",
    "default_run_dir",
    "evaluate_split",
    "finetune",
    "load_splits",
    "segmentation_loss",
    "VoidAsClassJaccardLoss",
]
