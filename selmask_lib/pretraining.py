"""Masked image reconstruction pretraining: the random-masking baseline and iterative selective masking.

Random masking (``pretrain_random``): a fresh random 50% patch mask for every
image every time it is loaded, E epochs on the whole pretraining set.

Selective masking (``pretrain_selective``, METHOD.md step by step):

1. split the pretraining list into K interleaved partitions, each 90/10
   train/val;
2. step 0 trains on partition 0 with random masking;
3. step k >= 1 scores partition k with the step k-1 model (S random draws,
   per-patch L1 + 1 - SSIM, averaged), fixes the top-50% loss patches as the
   masks of the step, and trains from the step k-1 weights with a fresh
   optimiser and schedule on partition k.

Both do the same work: K steps x E epochs on 1/K of the data = E epochs on all.

Run directory (everything a notebook needs, nothing written next to the data)::

    config.yaml               the run's config
    run.json                  status, config hash, steps, final weights
    .lock                     held by the process training here (selmask_lib.runs.run_lock)
    pretrained.pt             final reconstruction weights (what fine-tuning loads)
    run.log                   what the run decided and how long it took
    metrics.csv               random masking: per-epoch log
    step_00/ ... step_K-1/    selective masking, one folder per step:
        metrics.csv           per-epoch log
        model.pt              the step's final weights
        masks.pt              ids, pool indices, masks [N, P], loss maps [N, P], scoring sizes

While a loop runs, ``last.pt`` holds its resumable state (model, Adam,
schedule, RNG), written every ``checkpoint_every`` epochs (never at the
``demo`` and ``smoke`` presets, whose loops are shorter than their 30);
it is deleted once the loop's final weights are saved.

Multi-GPU (see ``selmask_lib.distributed``): launch with torchrun, e.g.
``torchrun --nproc_per_node=4 -m selmask_lib.cli pretrain --strategy selective
--dataset voc --data-root DIR --preset paper --set batch_size=32 --out runs/x``.
``batch_size`` is per process: the paper's 128 is the global batch, so set
128 / world size (32 on 4 GPUs). Each process trains on its shard of every
epoch, DDP averages gradients, rank 0 alone scores selective steps and
writes every file, and the others wait at barriers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import PretrainConfig, config_hash, load_config
from .data import UnlabelledImages, fingerprint, resolve_data_root
from .data.cache import DecodedCache
from .device import pick_device
from .distributed import barrier, init_distributed, is_main_process, rank_key
from .engine import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    Optimisation,
    Trainer,
    epoch_generator,
    load_checkpoint,
    progress,
    require_finite_weights,
    save_checkpoint,
    seed_everything,
    training_batch_form,
)
from .errors import SelmaskError
from .files import ensure_writable_dir
from .losses import ReconstructionLoss
from .masking import patch_grid
from .models import build_reconstruction_model
from .pretrain_data import (
    BakedMasks,
    RandomPixelMasks,
    ReconstructionDataset,
    TargetLevels,
    check_pool,
    masked_inputs,
    partition_indices,
    pretraining_pool,
    scoring_view,
    train_val_split,
)
from .runs import (
    CONFIG_FILE,
    RUN_INFO_FILE,
    check_run_dir,
    failed_if_diverged,
    read_run_info,
    training_run,
    update_run_info,
)
from .strategies import RANDOM_BASELINE, MaskingFunction, build_masking, masking_name
from .transforms import normalise, train_transform, val_transform

log = logging.getLogger(__name__)

RUN_KIND = "pretrain"
PRETRAINED_FILE = "pretrained.pt"
STEP_MODEL_FILE = "model.pt"
MASKS_FILE = "masks.pt"


@dataclass
class PretrainRun:
    """A finished pretraining run: where it is and what it holds."""

    run_dir: Path
    config: PretrainConfig
    weights: Path  # pretrained.pt
    masking: str  # "random", "selective", "random_fixed" or a user masking's name

    def load_masks(self, step: int) -> dict:
        """The saved masks artefact of selective step ``step`` (see :func:`load_step_masks`)."""
        return load_step_masks(self.run_dir / step_name(step))


def step_name(step: int) -> str:
    return f"step_{step:02d}"


# --------------------------------------------------------------------------- run directories


def default_run_dir(cfg: PretrainConfig, runs_root: str | Path = "runs", masking: str | None = None,
                    data_fingerprint: str | None = None) -> Path:
    """``runs/pretrain-<strategy>[-<masking>]-<dataset>-<hash>[-d<data>]``: cached under its config hash.

    A masking other than the strategy's own (e.g. a user's function) gets
    its name in the folder too, so it never reuses a selective run; the
    data's fingerprint (:func:`selmask_lib.data.fingerprint`) keeps runs on
    other data apart.
    """
    name = cfg.strategy if masking in (None, cfg.strategy) else f"{cfg.strategy}-{masking}"
    data = "" if data_fingerprint is None else f"-d{data_fingerprint[:8]}"
    return Path(runs_root) / f"pretrain-{name}-{cfg.dataset}-{config_hash(cfg)}{data}"


def load_pretrain_run(run_dir: str | Path) -> PretrainRun:
    """A finished pretraining run from its directory (what fine-tuning's ``pretrained`` names)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info is None or info.get("kind") != RUN_KIND:
        raise SelmaskError(f"{run_dir}: not a pretraining run (no {RUN_INFO_FILE} of a pretraining run)")
    if info.get("status") != "complete":
        raise SelmaskError(f"{run_dir}: pretraining run is not finished (status {info.get('status')!r})")
    cfg = load_config(run_dir / CONFIG_FILE, kind="pretrain")
    return PretrainRun(run_dir, cfg, run_dir / info["weights"], info.get("masking", cfg.strategy))


# --------------------------------------------------------------------------- training


def reconstruction_batch_loss(trainer: Trainer, loss_fn: ReconstructionLoss, random_masks: Optional[RandomPixelMasks],
                              mask_generator: torch.Generator):
    """``batch_loss(model, batch)`` for the engine: the reconstruction loss of a pretraining batch.

    A batch (finished by ``Trainer.finish_batch``) is ``(images,)`` with random masking, a fresh mask
    per image and batch drawn here from ``random_masks`` and ``mask_generator``; ``(images, pixel
    masks)`` with fixed masks (a selective step); or ``(masked inputs, images, pixel masks)`` with baked
    masks. The loss compares the model's output on the masked input with the whole image.
    """
    target_levels = TargetLevels(trainer.cfg.mean, trainer.cfg.std)  # baked uint8 targets, normalised

    def batch_loss(model: torch.nn.Module, batch) -> torch.Tensor:
        if len(batch) == 3:  # baked masks: the dataset gives (masked input, target, pixel mask)
            inputs, images, _ = (tensor.to(trainer.device, non_blocking=True) for tensor in batch)
            if images.dtype == torch.uint8:  # uint8_batches: the worker left the target to the device
                images = target_levels(images)
        else:
            images = batch[0].to(trainer.device, non_blocking=True)
            if random_masks is not None:
                pixels = random_masks(len(images), mask_generator)
            else:
                pixels = batch[1].to(trainer.device, non_blocking=True)
            inputs = masked_inputs(images, pixels)
        return loss_fn(trainer.forward(model, inputs), images)
    return batch_loss


def loop_batch_form(cfg: PretrainConfig, fixed_masks: bool) -> str:
    """How a pretraining loop's training loader sends its batches here: a selective step's masks baked into
    the images (``bake_selective_masks``) as ``"baked_uint8"`` where the run sends uint8 batches
    (``"uint8_batches"``), else ``"baked"`` (floats); any other loop as
    :func:`engine.training_batch_form` says.

    Baked masks keep their colour jitter in the worker (the jitter changes the fill too). Their input is
    uint8 and jittered in uint8, so a uint8 batch carries exactly the worker's levels, and its target
    goes uint8 too (the device normalises both, the target by ``TargetLevels``): the same batches as
    floats, a quarter of the bytes. The random-masking loop of such a run (``fixed_masks`` False) bakes
    nothing.
    """
    form = training_batch_form(cfg)
    if fixed_masks and cfg.bake_selective_masks:
        return "baked_uint8" if form == "uint8_batches" else "baked"
    return form


def loop_datasets(cfg: PretrainConfig, pool: UnlabelledImages, train_indices: Sequence[int],
                  val_indices: Sequence[int], patch_masks: Optional[dict[int, torch.Tensor]] = None,
                  ) -> tuple[ReconstructionDataset, ReconstructionDataset]:
    """The training and validation items of one pretraining loop (random masking without ``patch_masks``).

    ``selmask estimate`` builds its timed batches from these too, so that they are what a run's loaders send.
    """
    form = loop_batch_form(cfg, fixed_masks=patch_masks is not None)

    def dataset(indices, transform, uint8_images=False, uint8_targets=False) -> ReconstructionDataset:
        baked = BakedMasks(cfg.mean, cfg.std, cfg.baked_image_quality, uint8_targets) \
            if cfg.bake_selective_masks else None
        items = ReconstructionDataset(pool, indices, transform, cfg.score_size, cfg.n_patches, patch_masks, baked,
                                      antialias=cfg.antialias, cache=DecodedCache(cfg.image_cache_mb),
                                      uint8_images=uint8_images)
        items.fill_cache()  # before any loader worker forks: they share the views
        return items

    # Colour jitter on the GPU (jitter_on_device): the workers send uint8 crops, the GPU jitters them in float
    # as the workers would. Or (uint8_batches) the workers jitter as usual and send the result as uint8 for
    # the GPU to normalise (baked masks too).
    defer = form == "jitter_on_device"
    train_set = dataset(train_indices, train_transform(cfg.image_size, tuple(cfg.crop_scale), cfg.mean, cfg.std,
                                                       antialias=cfg.antialias, defer_colour=defer,
                                                       jitter_in_float=True,
                                                       uint8_batch=form in ("uint8_batches", "baked_uint8")),
                        uint8_images=defer, uint8_targets=form == "baked_uint8")
    val_set = dataset(val_indices, val_transform(cfg.image_size, cfg.mean, cfg.std, antialias=cfg.antialias))
    return train_set, val_set


def _train_on(trainer: Trainer, loss_fn: ReconstructionLoss, pool: UnlabelledImages, run_dir: Path,
              train_indices: Sequence[int], val_indices: Sequence[int],
              patch_masks: Optional[dict[int, torch.Tensor]], step_key: tuple,
              track_best: bool = False) -> Optional[Path]:
    """E epochs of masked reconstruction on ``train_indices`` from the model's current weights.

    Fresh Adam and warm-up + cosine schedule (:meth:`Trainer.fit`); resumes
    inside the loop. ``patch_masks`` fixes each image's mask (a selective
    step); without it every batch gets fresh random masks. ``step_key``
    keeps each loop's random streams apart (("random",) or ("step", k)).
    ``track_best``: also keep the weights of the epoch with the lowest
    validation loss (``best.pt``) and return that file's path.
    """
    cfg = trainer.cfg
    crop_grid = patch_grid(cfg.image_size, cfg.image_size, cfg.n_patches)  # [P, 4] of a training crop
    train_set, val_set = loop_datasets(cfg, pool, train_indices, val_indices, patch_masks)
    random_masks = RandomPixelMasks(crop_grid, cfg.mask_ratio, trainer.device) if patch_masks is None else None

    def reconstruction_loss(mask_generator: torch.Generator):
        return reconstruction_batch_loss(trainer, loss_fn, random_masks, mask_generator)

    def train_epoch(epoch: int, optimisation: Optimisation) -> dict:
        trainer.seed_torch("augment", *step_key, epoch)
        masks = epoch_generator(cfg.seed, "mask", *step_key, epoch, *rank_key())
        loader = trainer.epoch_loader(train_set, epoch, *step_key)
        loss = trainer.train_one_epoch(loader, reconstruction_loss(masks), optimisation,
                                       f"{run_dir.name} epoch {epoch}")
        return {"train_loss": loss}

    def evaluate(epoch: int) -> dict:
        if len(val_set) == 0:
            return {}
        trainer.seed_torch("val")
        masks = epoch_generator(cfg.seed, "val-mask", *step_key, *rank_key())  # the same masks every epoch
        loader = trainer.loader(val_set, False, "val")
        return {"val_loss": trainer.mean_loss(loader, reconstruction_loss(masks), "val")}

    if track_best and len(val_set) == 0:
        raise SelmaskError(f"{run_dir}: pretrained_checkpoint 'best_val_loss' needs validation images, "
                           f"but this loop has none (val_fraction {cfg.val_fraction}, {len(train_indices)} images)")
    result = trainer.fit(run_dir, train_epoch, evaluate,
                         best_metric="val_loss" if track_best else None, best_mode="min",
                         checkpoint_final=False)  # the caller saves the weights at once; a fresh Adam follows
    return result.best_checkpoint


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def select_masks(
    model: torch.nn.Module,
    pool: UnlabelledImages,
    indices: Sequence[int],
    cfg: PretrainConfig,
    masking: MaskingFunction,
    generator: torch.Generator,
    device: torch.device,
) -> dict:
    """Run ``masking`` on the scoring view of every image in ``indices``.

    Images of the same scoring size are batched together (``batch_size // S``
    images, so ``batch_size`` reconstructions per forward pass). Returns the
    masks artefact: masks and scores padded to the largest patch count
    (False / NaN), with each image's scoring size so its grid can be rebuilt.
    """
    model.eval()
    views = {index: scoring_view(pool, index, cfg.score_size, cfg.antialias) for index in indices}
    by_size: dict[tuple[int, int], list[int]] = {}
    for index in indices:
        by_size.setdefault(tuple(views[index].shape[-2:]), []).append(index)
    per_batch = max(1, cfg.batch_size // cfg.n_scoring_draws)
    masks, scores = {}, {}
    batches = [(size, members[i : i + per_batch]) for size, members in by_size.items()
               for i in range(0, len(members), per_batch)]
    for size, members in progress(batches, desc="scoring", leave=False):
        grid = patch_grid(*size, cfg.n_patches)
        images = normalise(torch.stack([views[index] for index in members]), cfg.mean, cfg.std).to(device)
        batch_masks, batch_scores = masking(model, images, grid, cfg.mask_ratio, generator)  # [b, P] each
        for row, index in enumerate(members):
            masks[index] = batch_masks[row].cpu()
            scores[index] = None if batch_scores is None else batch_scores[row].float().cpu()
    return _masks_artefact(pool, list(indices), masks, scores, views, cfg.n_patches)


def _masks_artefact(pool, indices, masks, scores, views, n_patches: int) -> dict:
    counts = [masks[index].numel() for index in indices]
    width = max(counts)
    padded_masks = torch.zeros(len(indices), width, dtype=torch.bool)
    padded_scores = torch.full((len(indices), width), float("nan"))
    for row, index in enumerate(indices):
        padded_masks[row, : counts[row]] = masks[index]
        if scores[index] is not None:
            padded_scores[row, : counts[row]] = scores[index]
    sizes = torch.tensor([list(views[index].shape[-2:]) for index in indices], dtype=torch.long)
    has_scores = any(scores[index] is not None for index in indices)
    return {
        "ids": [pool.ids[index] for index in indices],
        "indices": torch.tensor(indices, dtype=torch.long),
        "masks": padded_masks,  # [N, P_max], True = masked
        "losses": padded_scores if has_scores else None,  # [N, P_max], NaN padding
        "n_patches": torch.tensor(counts, dtype=torch.long),  # [N] patches of each image's grid
        "score_sizes": sizes,  # [N, 2] (h, w) of the scoring view; grid = patch_grid(h, w, n)
        "grid_by_size": {f"{h}x{w}": patch_grid(h, w, n_patches)  # the [P, 4] grid of each scoring size
                         for h, w in sorted(set(map(tuple, sizes.tolist())))},
    }


def load_step_masks(step_dir: str | Path) -> dict:
    """The ``masks.pt`` artefact of a selective step, with a ``grids`` helper list added.

    Keys: ids, indices [N], masks Bool [N, P_max], losses [N, P_max] or None,
    n_patches [N], score_sizes [N, 2], grid_by_size ("HxW" -> [P, 4]),
    nominal_patches, step, masking, scored_by, and ``grids`` (added here:
    the [P, 4] grid of each image, in row order).
    """
    path = Path(step_dir) / MASKS_FILE
    artefact = load_checkpoint(path)
    artefact["grids"] = [artefact["grid_by_size"][f"{h}x{w}"] for h, w in artefact["score_sizes"].tolist()]
    return artefact


def _patch_masks_by_index(artefact: dict) -> dict[int, torch.Tensor]:
    return {int(index): artefact["masks"][row, : int(artefact["n_patches"][row])]
            for row, index in enumerate(artefact["indices"].tolist())}


# --------------------------------------------------------------------------- public entry points


def pretrain_random(cfg: PretrainConfig, out_dir: str | Path | None = None, resume: bool = True,
                    runs_root: str | Path = "runs") -> PretrainRun:
    """Random-masking IR baseline: E epochs on the whole pretraining set (90/10 train/val)."""
    return pretrain(cfg.updated(strategy="random"), out_dir, resume, runs_root)


def pretrain_selective(cfg: PretrainConfig, out_dir: str | Path | None = None, resume: bool = True,
                       runs_root: str | Path = "runs",
                       masking: MaskingFunction | str = "selective") -> PretrainRun:
    """Iterative selective-masking IR (module docstring). ``masking`` picks the masks of steps >= 1:
    "selective" (the paper), "random_fixed" (ablation) or your own callable (see strategies.py)."""
    return pretrain(cfg.updated(strategy="selective"), out_dir, resume, runs_root, masking)


def pretrain(cfg: PretrainConfig, out_dir: str | Path | None = None, resume: bool = True,
             runs_root: str | Path = "runs", masking: MaskingFunction | str = "selective") -> PretrainRun:
    """Run (or resume, or reuse) the pretraining ``cfg`` describes; returns the finished run.

    ``cfg.strategy`` is the loop (random | selective); ``masking`` picks the
    masks of a selective run's steps >= 1 and is ignored by random masking.
    A finished run of the same config and masking in ``out_dir`` (default
    :func:`default_run_dir`) is reused as it is. Under torchrun every
    process calls this; ``cfg.batch_size`` is per process (module docstring).
    """
    init_distributed()  # no-op without torchrun
    name = RANDOM_BASELINE if cfg.strategy == "random" else masking_name(masking)
    pool = pretraining_pool(cfg)  # fails early, before anything is written, on a bad data root
    data_root = resolve_data_root(cfg.dataset, cfg.data_root)
    data = fingerprint(pool.paths, data_root)  # the run's identity includes its data
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(cfg, runs_root, name, data)
    identity = {"masking": name, "data_fingerprint": data}
    finished = check_run_dir(run_dir, RUN_KIND, cfg, resume, identity=identity, data_root=data_root)
    if finished is not None:
        log.info("reusing finished pretraining run %s", run_dir)
        return PretrainRun(run_dir, cfg, run_dir / finished["weights"], name)
    pick_device(cfg.device)  # and on a device this machine does not have
    check_pool(pool, cfg)  # a corrupt or too small image fails now, naming itself, not in a loader worker
    with training_run(run_dir, RUN_KIND, cfg, resume, identity=identity,  # locked, begun, logged
                      strategy=cfg.strategy, dataset=cfg.dataset,
                      data_root=str(data_root)):
        log.info("pretraining %s (%s masking) on %d images, config hash %s",
                 run_dir, name, len(pool), config_hash(cfg))
        started = time.perf_counter()
        seed_everything(cfg.seed)  # the initial weights
        trainer = Trainer(cfg, build_reconstruction_model(cfg.dropout, cfg.pad_to_multiple))
        loss_fn = ReconstructionLoss(cfg.recon_loss)
        track_best = cfg.pretrained_checkpoint == "best_val_loss"
        with failed_if_diverged(run_dir, "pretraining", "checkpoints written before are kept"):
            if cfg.strategy == "random":
                train_indices, val_indices = train_val_split(range(len(pool)), cfg.val_fraction)
                best = _train_on(trainer, loss_fn, pool, run_dir, train_indices, val_indices, None, ("random",),
                                 track_best)
                steps = 1
            else:
                steps, best = _run_selective_steps(trainer, loss_fn, pool, run_dir, build_masking(masking, cfg),
                                                   name, track_best)
            require_finite_weights(trainer.model, f"{run_dir}: pretrained weights")
        if is_main_process():
            save_checkpoint(run_dir / PRETRAINED_FILE, _pretrained_weights(trainer, best))

            update_run_info(run_dir, status="complete", steps=steps, images=len(pool), weights=PRETRAINED_FILE,
                            seconds=round(time.perf_counter() - started, 3), device=str(trainer.device))
            _drop_resume_state(run_dir)
            if best is not None:  # a copy lives in pretrained.pt; kept until the run is marked complete
                best.unlink()
            log.info("finished in %.1f s", time.perf_counter() - started)
        barrier()
    return PretrainRun(run_dir, cfg, run_dir / PRETRAINED_FILE, name)


def _pretrained_weights(trainer: Trainer, best: Optional[Path]) -> dict:
    """What ``pretrained.pt`` holds: the last weights, or (``best``) those of the final loop's best
    validation epoch, which is what the authors' code hands to fine-tuning."""
    if best is None:
        return {"model": trainer.model.state_dict(), "config_hash": trainer.config_hash, "weights": "last"}
    state = load_checkpoint(best)
    return {"model": state["model"], "config_hash": trainer.config_hash, "weights": "best_val_loss",
            "epoch": state["epoch"], "val_loss": state["best_value"]}


def _run_selective_steps(trainer: Trainer, loss_fn: ReconstructionLoss, pool: UnlabelledImages, run_dir: Path,
                         masking: MaskingFunction, name: str, track_best: bool = False) -> tuple[int, Optional[Path]]:
    """Steps 0..K-1 of selective masking; resumes inside an interrupted step without re-scoring.

    Returns the number of steps and, with ``track_best``, the last step's
    best-validation-loss checkpoint (scoring always uses each step's last weights).
    """
    cfg = trainer.cfg
    partitions = partition_indices(len(pool), cfg.n_partitions)
    best = None
    for step, partition in enumerate(partitions):
        step_dir = ensure_writable_dir(run_dir / step_name(step)) if is_main_process() else run_dir / step_name(step)
        final_step = step == len(partitions) - 1
        if (step_dir / STEP_MODEL_FILE).exists():  # finished before a crash: its weights are all we need
            trainer.model.load_state_dict(load_checkpoint(step_dir / STEP_MODEL_FILE)["model"])
            if final_step and track_best:
                best = step_dir / BEST_CHECKPOINT
            continue
        patch_masks = None
        if step > 0:
            masks_path = step_dir / MASKS_FILE
            if not is_main_process():
                pass  # torchrun: rank 0 alone scores and saves the masks; the barrier below waits for them
            elif not masks_path.exists():
                # trainer.model holds the step k-1 weights here (trained or resumed below)
                generator = epoch_generator(cfg.seed, "score", step)
                scoring_started = time.perf_counter()
                artefact = select_masks(trainer.model, pool, partition, cfg, masking, generator, trainer.device)
                artefact.update(step=step, nominal_patches=cfg.n_patches, config_hash=trainer.config_hash,
                                masking=name, scored_by=step - 1)
                save_checkpoint(masks_path, artefact)
                log.info("step %d: scored %d images with the step %d model in %.1f s",
                         step, len(partition), step - 1, time.perf_counter() - scoring_started)
            else:
                log.info("step %d: reusing saved masks %s", step, masks_path)
            barrier()
            patch_masks = _patch_masks_by_index(load_step_masks(step_dir))
        train_indices, val_indices = train_val_split(partition, cfg.val_fraction)
        best = _train_on(trainer, loss_fn, pool, step_dir, train_indices, val_indices, patch_masks, ("step", step),
                         track_best and final_step)
        require_finite_weights(trainer.model, f"{step_dir}: the step's weights")  # step k+1 would start from them
        if is_main_process():
            save_checkpoint(step_dir / STEP_MODEL_FILE, {"model": trainer.model.state_dict(), "step": step,
                                                         "config_hash": trainer.config_hash})
            _drop_resume_state(step_dir)
    return len(partitions), best


def _drop_resume_state(directory: Path) -> None:
    """Delete a finished loop's resumable checkpoint (model + Adam state, ~300 MB at ResNet-34 size).

    Its final weights were saved just before, so nothing is lost.
    """
    (directory / LAST_CHECKPOINT).unlink(missing_ok=True)
