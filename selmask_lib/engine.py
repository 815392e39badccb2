"""The training engine shared by pretraining and fine-tuning (plain PyTorch).

Two layers. :class:`Trainer` sets up what both loops share once per run
(device, DDP, AMP, seeded loaders, the per-epoch seeding) and runs one
optimisation pass with :meth:`Trainer.train_one_epoch`; each loop brings
only its data and its ``batch_loss(model, batch)``. :func:`fit` is the epoch
loop under it: for each epoch it calls ``train_one_epoch(epoch) -> dict``
and optional ``evaluate(epoch) -> dict``, steps the schedule, appends a
metrics row and writes an atomic checkpoint. Called again on the same
``run_dir`` it resumes after the last checkpointed epoch, and a finished run
is a no-op::

    trainer = Trainer(cfg, model)

    def train_epoch(epoch, optimisation):
        trainer.seed_torch("augment", epoch)
        loader = trainer.epoch_loader(train_set, epoch)
        return {"train_loss": trainer.train_one_epoch(loader, batch_loss, optimisation)}

    trainer.fit(run_dir, train_epoch)   # fresh Adam + warm-up/cosine, resumable

Files in ``run_dir``: ``last.pt`` (resumable state), ``best.pt`` (model
weights at the best ``best_metric``, if one is chosen), ``metrics.csv`` and
``metrics.jsonl`` (one row per epoch). Use one run directory per ``fit``
(e.g. ``step_03/`` for each selective step).

Resume is exact on CPU: the checkpoint holds the model, optimiser,
schedule, grad scaler and every RNG state (Python, NumPy, torch, CUDA), and
randomness drawn from :func:`epoch_generator` depends on (seed, epoch) alone;
the augmentation of each sample on (seed, epoch, sample index) alone
(:func:`seeded_loader`), whatever the number of loader workers.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from .device import pick_device
from .distributed import (
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    eval_shard,
    is_distributed,
    is_main_process,
    local_device,
    rank_key,
    shard_sampler,
    wrap_model,
)
from .epoch_losses import EpochLosses
from .errors import DivergenceError, SelmaskError
from .files import append_text, atomic_write, ensure_writable_dir, write_text_atomic
from .read_ahead import ReadAheadLoader
from .transforms import COLOUR_DRAWS, ColourJitterOnDevice

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


# ---------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------


def warmup_cosine_lambda(
    warmup_epochs: int, total_epochs: int, min_ratio: float
) -> Callable[[int], float]:
    """The lr multiplier for epoch ``e`` (0-based), for ``LambdaLR``.

    Linear warm-up from ``min_ratio`` at epoch 0 to 1.0 at epoch
    ``warmup``, then cosine decay to ``min_ratio`` at the last epoch
    (``total_epochs - 1``); later epochs stay at ``min_ratio``. The schedule
    is stepped once per epoch (METHOD.md counts epochs; per-iteration
    stepping would tie the curve to the dataset size).

    Short runs: the warm-up is cut to ``total_epochs - 1`` epochs so the run
    always reaches the peak lr once; a 1-epoch run trains at the full lr.
    Example (warmup 2, total 5, min 0.01): 0.01, 0.505, 1.0, 0.505, 0.01.
    """
    if total_epochs < 1:
        raise SelmaskError(f"total_epochs must be >= 1, got {total_epochs}")
    if warmup_epochs < 0:
        raise SelmaskError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    warmup = min(warmup_epochs, total_epochs - 1)
    decay_epochs = total_epochs - 1 - warmup  # epochs from the peak to the last one

    def lr_multiplier(epoch: int) -> float:
        if epoch < warmup:
            return min_ratio + (1.0 - min_ratio) * epoch / warmup
        if decay_epochs == 0:
            return 1.0
        progress = min(1.0, (epoch - warmup) / decay_epochs)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return lr_multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_epochs: int, total_epochs: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`warmup_cosine_lambda`; call ``step()`` once per epoch."""
    lr_lambda = warmup_cosine_lambda(warmup_epochs, total_epochs, min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


# ---------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (e.g. "order", epoch).

    SHA-256 of their ``repr``, so it is the same on every machine and run,
    unlike Python's salted ``hash``.
    """
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_generator(seed: int, *keys: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *keys)``.

    Use one per purpose and epoch, e.g. ``epoch_generator(seed, "order",
    epoch)`` for the data order and ``epoch_generator(seed, "mask", step,
    epoch)`` for random masks: the draws then do not depend on what ran
    before, which is what makes resume exact.
    """
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *keys))
    return generator


class SeededItems(torch.utils.data.Sampler):
    """The indices of ``order``, each paired with its own augmentation seed: ``(index, item_seed)``.

    ``item_seed`` depends only on ``(seed, "augment", *keys, index)``, so a
    sample is augmented the same way whichever worker loads it, with 0, 1 or
    8 workers, in one process or under torchrun. The sampler runs in the main
    process; the seed travels to the worker with the index.
    """

    def __init__(self, order: Iterable[int], seed: int, *keys: Any):
        self.order, self.seed, self.keys = order, seed, keys

    def reorder(self, order: Iterable[int], *keys: Any) -> None:
        """The next epoch of a loader that keeps its workers: its order and keys."""
        self.order, self.keys = order, keys

    def __iter__(self):
        for index in self.order:
            yield index, derive_seed(self.seed, "augment", *self.keys, index)

    def __len__(self) -> int:
        return len(self.order)


class SeededAugmentation(torch.utils.data.Dataset):
    """``dataset[(index, item_seed)]`` is ``dataset[index]`` with torch's RNG seeded by ``item_seed``.

    torchvision's transforms draw from torch's global RNG. Seeding it per
    item (inside ``fork_rng``, so the caller's stream is left as it was)
    makes augmentation independent of worker count and of what the main
    process drew before, e.g. dropout.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, item_seed = key
        with one_torch_thread(), torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed)
            return self.dataset[index]


def defers_colour(cfg) -> bool:
    """Whether a run's training transform leaves colour jitter to the device: ``jitter_on_device`` on CUDA.

    Elsewhere the key is a no-op (the loader workers jitter each image, as always), so CPU results stay
    the same with it on or off.
    """
    return bool(cfg.jitter_on_device) and local_device(pick_device(cfg.device)).type == "cuda"


def sends_uint8_batches(cfg) -> bool:
    """Whether the loader workers jitter each training image and send it as uint8, for the device to convert
    and normalise the batch: ``uint8_batches`` on CUDA where the jitter is not left to the device already
    (its batches are uint8 anyway). A no-op elsewhere, as ``jitter_on_device``.
    """
    return bool(cfg.uint8_batches) and not defers_colour(cfg) and local_device(pick_device(cfg.device)).type == "cuda"


def training_batch_form(cfg) -> str:
    """How a run's training loader sends its batches on this device: ``"jitter_on_device"`` (uint8 crops and
    the colour jitter's draws), ``"uint8_batches"`` (jittered uint8 images) or ``"float"`` (finished by the
    workers). Both loops build their training transform from it, and ``selmask estimate`` names it."""
    if defers_colour(cfg):
        if cfg.uint8_batches:
            log.info("uint8_batches: no effect while jitter_on_device is on (those batches are uint8 already); "
                     "set jitter_on_device: false to jitter in the loader workers and send uint8")
        return "jitter_on_device"
    if sends_uint8_batches(cfg):
        return "uint8_batches"
    return "float"


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread inside, as loader workers do, then restore the thread count.

    Some CPU kernels (bilinear resize without antialiasing) round differently
    on two threads, so data items computed in the main process use one too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seeded_order(dataset, shuffle: bool, seed: int, *keys: Any) -> Iterable[int]:
    """The indices of one pass over ``dataset``: this process's shard under torchrun, shuffled from ``(seed, keys)``."""
    order = shard_sampler(dataset, True, derive_seed(seed, "order", *keys)) if shuffle else eval_shard(dataset)
    if order is None and shuffle:  # one process; drawn now, so iterating twice gives the same order
        order = torch.randperm(len(dataset), generator=epoch_generator(seed, "order", *keys)).tolist()
    elif order is None:
        order = range(len(dataset))
    return order


def seeded_loader(dataset, batch_size: int, shuffle: bool, seed: int, *keys: Any, num_workers: int = 0,
                  pin_memory: bool = False, drop_last: bool = False,
                  **worker_options: Any) -> "torch.utils.data.DataLoader":
    """A DataLoader whose order and augmentation depend only on ``(seed, keys)``: exact resume.

    Pass the epoch among ``keys`` for a new order and new augmentations every
    epoch. Each item is augmented from its own seed (:class:`SeededItems`),
    so ``num_workers`` changes the speed, never the batches. Under torchrun
    it loads this process's shard (training: shuffled and padded;
    evaluation: strided, each item once). ``worker_options``
    (``persistent_workers``, ``prefetch_factor``) apply with workers only.
    ``drop_last`` (config key) skips the last partial batch, as the authors'
    loaders do; a set smaller than one batch is then refused, since an epoch
    would have no batch at all.
    """
    from torch.utils.data import DataLoader

    order = seeded_order(dataset, shuffle, seed, *keys)
    if drop_last:
        where = "training set" if shuffle else "validation set"
        check_fills_a_batch(len(order), batch_size, where + (" (this process's shard)" if is_distributed() else ""))
    sampler = SeededItems(order, seed, *keys)
    return DataLoader(SeededAugmentation(dataset), batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                      generator=epoch_generator(seed, "workers", *keys),  # worker seeds: not from torch's RNG
                      **(worker_options if num_workers else {}))


def check_fills_a_batch(n_images: int, batch_size: int, what: str) -> None:
    """With drop_last, a set of fewer images than ``batch_size`` would give epochs of no batch: refuse it."""
    if 0 < n_images < batch_size:
        raise SelmaskError(f"config key 'batch_size' ({batch_size}) is more than the {n_images} images of the {what}: "
                           f"with drop_last true no batch is left; lower batch_size or set drop_last false")


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state, as plain Python values and tensors (checkpoint-safe)."""
    name, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, cached_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`; CUDA state is restored only where CUDA exists."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------
# Files: run directories and checkpoints
# ---------------------------------------------------------------------------


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(
    path: str | Path,
    expected_config_hash: Optional[str] = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Loads with ``weights_only=True`` (tensors and plain Python values only;
    nothing is executed). Raises :class:`SelmaskError` naming ``path`` if it
    is missing, unreadable or corrupt, or if ``expected_config_hash`` is
    given and differs from the checkpoint's ``config_hash``.
    """
    path = Path(path)
    if not path.is_file():
        raise SelmaskError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for bad files
        # Only torch's first sentence: the rest of a weights-only failure advises weights_only=False,
        # which would run code from the file; a corrupt file needs replacing instead.
        reason = str(err).strip().splitlines()[0].split(". ")[0][:200] if str(err).strip() else ""
        raise SelmaskError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {reason})") from err
    if not isinstance(state, dict):
        raise SelmaskError(f"checkpoint {path} is corrupt: expected a dict, got {type(state).__name__}")
    if expected_config_hash is not None and state.get("config_hash") != expected_config_hash:
        raise SelmaskError(
            f"checkpoint {path} was written by a different config "
            f"(config_hash {state.get('config_hash')}, expected {expected_config_hash}); "
            f"use a new run directory or delete the old one"
        )
    return state


def latest_checkpoint(run_dir: str | Path, ckpt_name: str = LAST_CHECKPOINT) -> Optional[Path]:
    """``run_dir / ckpt_name`` if it exists, else None (temporary files are ignored)."""
    path = Path(run_dir) / ckpt_name
    return path if path.is_file() else None


# ---------------------------------------------------------------------------
# Metrics log
# ---------------------------------------------------------------------------


class MetricsLogger:
    """One row per epoch in ``<name>.csv`` and ``<name>.jsonl`` inside ``run_dir``.

    The JSONL file is the record; the CSV is the same rows for spreadsheets
    and pandas. Rows are appended; logging an epoch that is already in the
    log (re-run after a resume) first drops that epoch and every later one,
    so the log never holds an epoch twice. When a row brings a new column
    the CSV is rewritten with the wider header.
    """

    def __init__(self, run_dir: str | Path, name: str = "metrics") -> None:
        self.run_dir = ensure_writable_dir(run_dir)
        self.jsonl_path = self.run_dir / f"{name}.jsonl"
        self.csv_path = self.run_dir / f"{name}.csv"
        self._rows = self._read_jsonl()
        self._columns = _columns_of(self._rows)

    def read(self) -> list[dict[str, Any]]:
        """All logged rows, oldest first."""
        return [dict(row) for row in self._rows]

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` (it must have an ``epoch`` key)."""
        if "epoch" not in row:
            raise SelmaskError("a metrics row needs an 'epoch' key")
        row = {key: _json_value(value) for key, value in row.items()}
        if any(old["epoch"] >= row["epoch"] for old in self._rows):
            self.truncate(row["epoch"])
        append_text(self.jsonl_path, json.dumps(row) + "\n")  # a full disk: one line naming the file
        self._rows.append(row)
        new_columns = [key for key in row if key not in self._columns]
        if new_columns or not self.csv_path.exists():
            self._columns += new_columns
            self._rewrite_csv()
        else:
            line = io.StringIO()
            csv.DictWriter(line, self._columns, lineterminator="\n").writerow(row)
            append_text(self.csv_path, line.getvalue())

    def truncate(self, epoch: int) -> None:
        """Drop the rows of ``epoch`` and later (called by :func:`fit` on resume)."""
        self._rows = [row for row in self._rows if row["epoch"] < epoch]
        self._columns = _columns_of(self._rows)
        if not self._rows:
            for path in (self.jsonl_path, self.csv_path):
                path.unlink(missing_ok=True)
            return
        write_text_atomic(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in self._rows))
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self._columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        write_text_atomic(self.csv_path, text.getvalue())

    def _read_jsonl(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.exists():
            return []
        lines = [line for line in self.jsonl_path.read_text().splitlines() if line.strip()]
        rows = []
        for line_number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if line_number < len(lines):
                    raise SelmaskError(
                        f"metrics log {self.jsonl_path} is corrupt at line {line_number}"
                    ) from None
                # A run killed mid-write left half a row at the end: drop it for good.
                write_text_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows


class _UnsavedLog:
    """The metrics rows of a torchrun process other than rank 0, kept in memory only."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._rows]

    def log(self, row: dict[str, Any]) -> None:
        self.truncate(row["epoch"])
        self._rows.append({key: _json_value(value) for key, value in row.items()})

    def truncate(self, epoch: int) -> None:
        self._rows = [row for row in self._rows if row["epoch"] < epoch]


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def _json_value(value: Any) -> Any:
    """Tensors and NumPy scalars become Python numbers so rows serialise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------
# Mixed precision and progress bars
# ---------------------------------------------------------------------------


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def autocast(device: str | torch.device, enabled: bool = True,
             dtype: torch.dtype = torch.float16) -> contextlib.AbstractContextManager:
    """``dtype`` autocast on CUDA when ``enabled``; a no-op context elsewhere.

    CPU/MPS runs stay in float32: bfloat16 on CPU is slow on most laptops and
    would make CPU results depend on the hardware.
    """
    if enabled and _device_type(device) == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, amp: bool, device_type: str, bf16_supported: bool) -> Optional[torch.dtype]:
    """The autocast dtype of a run (None = float32) from config keys ``precision`` and ``amp``.

    Only CUDA runs use one. ``precision: auto`` follows ``amp``: bfloat16
    where the GPU supports it (same range as float32, no loss scaling),
    float16 with a grad scaler otherwise; an explicit precision wins over
    ``amp``.
    """
    if device_type != "cuda":
        return None
    if precision == "auto":
        precision = ("bf16" if bf16_supported else "fp16") if amp else "fp32"
    if precision == "bf16" and not bf16_supported:
        raise SelmaskError("config key 'precision' is bf16 but this GPU does not support bfloat16; use fp16 or auto")
    return AUTOCAST_DTYPES[precision]


def make_grad_scaler(device: str | torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A ``GradScaler`` active only on CUDA with AMP; elsewhere a pass-through.

    A disabled scaler's ``scale(loss)`` returns ``loss`` and ``step(opt)``
    calls ``opt.step()``, so one training loop serves both cases.
    """
    return torch.amp.GradScaler("cuda", enabled=enabled and _device_type(device) == "cuda")


def progress(iterable: Iterable, **kwargs: Any):
    """A ``tqdm.auto`` bar (widget in notebooks, text in terminals).

    ``SELMASK_NO_PROGRESS=1`` turns every bar off (CI logs, papermill runs).
    """
    from tqdm.auto import tqdm

    if os.environ.get("SELMASK_NO_PROGRESS", "") not in ("", "0") or not is_main_process():
        return iterable  # also off on every torchrun process but rank 0
    # tqdm.auto calls iter() on an iterable in __init__ and again to loop: a DataLoader given as it
    # is would start its workers twice per epoch. Hand it one iterator and the length.
    kwargs.setdefault("total", len(iterable) if hasattr(iterable, "__len__") else None)
    return tqdm(iter(iterable), **kwargs)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


# A mixed-precision loss scale this small means about 40 more overflowing (skipped) steps than good ones
# since the start (it halves on each overflow, from 2**16, and doubles only after 2000 good steps in a row):
# the run is not recovering.
MIN_LOSS_SCALE = 2.0 ** -24


def require_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise :class:`DivergenceError` if any weight or buffer of ``model`` is NaN or infinite.

    Called before weights are saved as a checkpoint or a run's result, so a
    broken model is never written where a later step or run would load it.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DivergenceError(f"{what}: weight {name!r} is not finite (NaN or infinite)")


def _require_finite_losses(row: dict[str, Any], what: str) -> None:
    """Raise :class:`DivergenceError` if a loss of an epoch's metrics row is NaN or infinite."""
    for key, value in row.items():
        if key.endswith("_loss") and value is not None and not math.isfinite(float(value)):
            raise DivergenceError(f"{what}: epoch {row['epoch']} {key} is {value} (lr {row['lr']:g})")


def adam_optimizer(parameters: Iterable[torch.nn.Parameter], lr: float, fused: bool = False) -> torch.optim.Adam:
    """Adam at ``lr`` with torch's multi-tensor ("foreach") update, or its fused one.

    On a CPU torch's default update is a Python loop over the parameter
    tensors: its interpreter time was about 4 % of a demo pretraining step
    (cProfile). The multi-tensor update does the same arithmetic in the same
    order, so the weights are bit-identical (``tests/test_engine.py``); on
    CUDA it is torch's default already. ``fused=True`` (CUDA with
    ``sync_free_steps``) does the same arithmetic in one kernel, whose
    rounding may differ in the last bit, and can skip a step on a flag held
    on the device (``epoch_losses``).
    """
    if fused:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    return torch.optim.Adam(parameters, lr=lr, foreach=True)


def load_optimiser_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)``, keeping this run's kind of update (foreach or fused).

    torch's loader takes each param group's flags from the checkpoint. A
    checkpoint of the other kind (``sync_free_steps`` switched, or a GPU run
    resumed on a CPU) would bring its own: a foreach Adam that cannot skip a
    step on the device, or a fused one on a CPU. Adam's step counters go where
    this run's kind keeps them: on the parameter's device when fused (or
    capturable), on the CPU otherwise.
    """
    kind = {key: optimizer.defaults[key] for key in ("foreach", "fused") if key in optimizer.defaults}
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        group.update(kind)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if torch.is_tensor(state.get("step")):
                step = state["step"].to(parameter.device if on_device else "cpu")
                state["step"] = step.float() if group.get("fused") else step  # fused Adam counts in float32


@dataclass
class Optimisation:
    """What a resumable checkpoint saves besides the model: optimiser, schedule and AMP scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    scaler: torch.amp.GradScaler

    @classmethod
    def adam(cls, model: torch.nn.Module, cfg, device: str | torch.device, use_amp: bool,
             fused: bool = False) -> "Optimisation":
        """The paper's recipe for both loops: Adam at ``cfg.lr``, warm-up + cosine per epoch."""
        optimizer = adam_optimizer(model.parameters(), cfg.lr, fused)
        scheduler = build_scheduler(optimizer, cfg.warmup_epochs, cfg.epochs, cfg.min_lr_ratio)
        return cls(optimizer, scheduler, make_grad_scaler(device, use_amp))

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (scaled on CUDA with AMP, plain elsewhere)."""
        self.backward(loss)
        self.apply_gradients()

    def backward(self, loss: torch.Tensor) -> None:
        """Fresh gradients of ``loss``; the weights are not touched yet (:meth:`apply_gradients`)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def apply_gradients(self) -> None:
        """The optimiser step on the gradients of :meth:`backward` (skipped by the scaler if they overflowed)."""
        self.scaler.step(self.optimizer)
        self.scaler.update()


@dataclass
class FitResult:
    """What :func:`fit` did: where things are and the best value seen."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Optional[Path]   # None unless best_metric was given and seen
    best_value: Optional[float]
    best_epoch: Optional[int]
    start_epoch: int                  # first epoch run by this call (0 = fresh)
    history: list[dict[str, Any]] = field(default_factory=list)  # all metrics rows


def fit(
    model: torch.nn.Module,
    optimisation: Optimisation,
    train_one_epoch: Callable[[int], Optional[dict[str, Any]]],
    epochs: int,
    run_dir: str | Path,
    *,
    evaluate: Optional[Callable[[int], dict[str, Any]]] = None,
    resume: bool = True,
    config_hash: Optional[str] = None,
    best_metric: Optional[str] = None,
    best_mode: str = "max",
    checkpoint_every: int = 1,
    checkpoint_final: bool = True,
) -> FitResult:
    """Train for ``epochs`` epochs with checkpoints, resume and a metrics log.

    Each epoch: ``model.train()``; ``train_one_epoch(epoch)`` -> metrics dict
    (or None); if given, ``evaluate(epoch)`` -> metrics dict, called after
    ``model.eval()`` under ``torch.no_grad()``; the schedule steps; a row
    ``{"epoch", "lr", **train, **val, "seconds"}`` is appended to the log; then
    checkpoints. ``lr`` is the rate the epoch trained with.

    Checkpoints: ``last.pt`` every ``checkpoint_every`` epochs and at the
    last one, holding the model, ``optimisation`` (optimiser, schedule,
    scaler), RNG states, epoch, best value and ``config_hash``. If
    ``best_metric`` names a key of the row, the weights of each new best
    epoch (``best_mode`` "max" or "min") are kept in memory (a CPU copy) and
    written to ``best.pt`` just before the next ``last.pt``, and when ``fit``
    ends. So a short epoch that improves costs a copy, not a ~300 MB
    resumable write. Where ``best.pt`` is newer than ``last.pt`` (the final
    write without ``checkpoint_final``, or a crash between the two writes),
    a resume keeps it as the best so far.

    ``checkpoint_final=False`` skips the resumable checkpoint after the last
    epoch, for callers that save the final weights themselves right after
    ``fit`` returns and have no use for the optimiser state then (pretraining:
    the next step starts a fresh Adam). It saves a ~300 MB write per loop.

    ``resume=True`` continues after the epoch of an existing ``last.pt``
    (its ``config_hash`` must match); ``resume=False`` starts over and
    replaces the old log and checkpoints.

    Under torchrun every process calls ``fit``; only rank 0 writes the log
    and checkpoints, the others keep their rows in memory (``history`` then
    holds only this call's epochs), and all return together once the files
    are written.
    """
    if epochs < 1:
        raise SelmaskError(f"epochs must be >= 1, got {epochs}")
    if best_mode not in ("max", "min"):
        raise SelmaskError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if checkpoint_every < 1:
        raise SelmaskError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    is_main = is_main_process()
    run_dir = ensure_writable_dir(run_dir) if is_main else Path(run_dir)
    last_path, best_path = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
    logger = MetricsLogger(run_dir) if is_main else _UnsavedLog()
    optimizer, scheduler, scaler = optimisation.optimizer, optimisation.scheduler, optimisation.scaler

    start_epoch, best_value, best_epoch = 0, None, None
    previous = latest_checkpoint(run_dir) if resume else None
    if previous is not None:
        state = load_checkpoint(previous, expected_config_hash=config_hash)
        model.load_state_dict(state["model"])
        load_optimiser_state(optimizer, state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
        best_value, best_epoch = state.get("best_value"), state.get("best_epoch")
        if best_metric is not None:
            best_value, best_epoch = _newer_best(best_path, state["epoch"], config_hash) or (best_value, best_epoch)
    elif is_main and best_path.exists():
        best_path.unlink()  # a best model from an older, abandoned run
    logger.truncate(start_epoch)

    def full_state(epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "rng": capture_rng_state(),
            "best_value": best_value,
            "best_epoch": best_epoch,
            "config_hash": config_hash,
        }

    unsaved_best: Optional[dict[str, Any]] = None  # best.pt's next content, written with the next last.pt
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **(train_one_epoch(epoch) or {})}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update(evaluate(epoch) or {})
        # A diverged epoch is neither logged nor saved.
        _require_finite_losses(row, str(run_dir))
        if scaler.is_enabled() and scaler.get_scale() < MIN_LOSS_SCALE:
            raise DivergenceError(f"{run_dir}: epoch {epoch}: the mixed-precision loss scale fell to "
                                  f"{scaler.get_scale():g}, every step overflows (lr {lr:g})")
        value = row.get(best_metric) if best_metric is not None else None
        if value is not None:
            value = float(_json_value(value))
        improved = value is not None and not math.isnan(value) and (
            best_value is None or (value > best_value if best_mode == "max" else value < best_value)
        )
        due = checkpoint_final if epoch == epochs - 1 else (epoch + 1) % checkpoint_every == 0
        if is_main and (improved or due):
            require_finite_weights(model, f"{run_dir}: epoch {epoch}")
        if scheduler is not None:
            scheduler.step()
        row["seconds"] = round(time.perf_counter() - started, 3)
        logger.log(row)

        if improved:
            best_value, best_epoch = value, epoch
        if improved and is_main:
            unsaved_best = {
                "epoch": epoch, "model": _cpu_copy(model.state_dict()), "best_metric": best_metric,
                "best_value": value, "config_hash": config_hash, "metrics": logger.read()[-1],
            }
        if is_main and due:
            # The best first: if the second write fails, a resume still finds the best of every epoch it skips.
            if unsaved_best is not None:
                save_checkpoint(best_path, unsaved_best)
                unsaved_best = None
            save_checkpoint(last_path, full_state(epoch))

    if unsaved_best is not None:  # a best epoch after the last resumable checkpoint
        save_checkpoint(best_path, unsaved_best)
    barrier()  # torchrun: the other processes wait until rank 0's files are written
    return FitResult(
        run_dir=run_dir,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.exists() else None,
        best_value=best_value,
        best_epoch=best_epoch,
        start_epoch=start_epoch,
        history=logger.read(),
    )


def _cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state dict that later optimiser steps cannot change (on the CPU: device memory stays free).

    It keeps the state dict's ``_metadata`` (each module's version), as ``model.state_dict()`` itself would.
    """
    copied = type(state)((name, value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value)
                         for name, value in state.items())
    if hasattr(state, "_metadata"):
        copied._metadata = state._metadata
    return copied


def _newer_best(best_path: Path, resumed_epoch: int, config_hash: Optional[str]) -> Optional[tuple[float, int]]:
    """(best value, epoch) of a ``best.pt`` written after the checkpoint a run resumes from, else None.

    :func:`fit`'s final write without ``checkpoint_final`` leaves one, and
    so does a crash between writing ``best.pt`` and ``last.pt``. The resumed
    run keeps it as the best so far, so ``best.pt`` and the returned best
    agree even where a GPU's re-run of those epochs does not repeat them
    exactly. (There the metrics log holds the re-run's values of those
    epochs, and the best value is the first run's.)
    """
    if not best_path.is_file():
        return None
    best = load_checkpoint(best_path, expected_config_hash=config_hash)
    if best["epoch"] <= resumed_epoch:
        return None
    return best["best_value"], best["epoch"]


BatchLoss = Callable[[torch.nn.Module, Any], torch.Tensor]


class Trainer:
    """One model on one device with what pretraining and fine-tuning share.

    Set up once per run: the device (cuda, then mps, then cpu), the model on
    it (wrapped in DDP under torchrun), AMP (CUDA only), seeded loaders and
    the config hash that guards resume. The two loops bring only what
    differs: their data and a ``batch_loss(model, batch) -> loss``. In the
    spirit of MAE's ``train_one_epoch(model, loader, optimizer, device,
    epoch, loss_scaler)``::

        trainer = Trainer(cfg, model)
        def train_epoch(epoch, optimisation):
            trainer.seed_torch("augment", epoch)
            loader = trainer.epoch_loader(train_set, epoch)
            return {"train_loss": trainer.train_one_epoch(loader, batch_loss, optimisation, f"epoch {epoch}")}
        trainer.fit(run_dir, train_epoch)

    ``cfg`` is a :class:`~selmask_lib.config.PretrainConfig` or
    :class:`~selmask_lib.config.FinetuneConfig`: both carry the fields used
    here (device, amp, seed, batch_size, num_workers, lr, epochs, ...).
    """

    def __init__(self, cfg, model: torch.nn.Module):
        from .config import config_hash

        self.cfg = cfg
        self.device = local_device(pick_device(cfg.device))
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = autocast_dtype(cfg.precision, cfg.amp, self.device.type,
                                        on_cuda and torch.cuda.is_bf16_supported())
        self.use_amp = self.amp_dtype is not None
        # The GPU speed settings (config.GPU_SPEED_FIELDS) are no-ops elsewhere: CPU results stay bit-identical.
        self.channels_last = cfg.channels_last and on_cuda
        self.sync_free_steps = cfg.sync_free_steps and on_cuda  # losses read once per epoch, fused Adam
        self.colour_on_device = ColourJitterOnDevice(cfg.mean, cfg.std)  # batches the device finishes only
        self.model = model.to(self.device, memory_format=torch.channels_last) if self.channels_last \
            else model.to(self.device)
        self.train_model = wrap_model(self.model, self.device)  # DDP under torchrun, else self.model
        if cfg.compile and on_cuda:
            self.train_model = torch.compile(self.train_model, mode=cfg.compile_mode)  # evaluation: the plain model
        self.config_hash = config_hash(cfg)
        self._kept_loaders: dict[tuple, tuple[Any, Any]] = {}  # persistent_workers: loaders reused per dataset

    def loader(self, dataset, shuffle: bool, *keys: Any, batch_size: Optional[int] = None,
               drop_last: Optional[bool] = None):
        """A :func:`seeded_loader` over ``dataset`` whose order and augmentation depend on ``(seed, keys)`` only.

        ``drop_last`` defaults to ``cfg.drop_last`` (train and validation); pass False for a test split.
        With ``persistent_workers`` (and workers) the loader of a dataset is
        kept and given each epoch's order, so its workers start once per
        dataset, not once per epoch; the last three datasets' loaders are kept.
        """
        cfg, batch_size = self.cfg, batch_size or self.cfg.batch_size
        drop_last = cfg.drop_last if drop_last is None else drop_last
        options = dict(num_workers=cfg.num_workers, pin_memory=self.pins_memory(),
                       prefetch_factor=cfg.prefetch_factor, drop_last=drop_last)
        if not self._keeps_workers():
            return seeded_loader(dataset, batch_size, shuffle, cfg.seed, *keys, **options)
        cache_key = (id(dataset), shuffle, batch_size, drop_last)
        if cache_key in self._kept_loaders:  # its workers live on: give them this epoch's order
            loader = self._kept_loaders[cache_key][1]
            loader.sampler.reorder(seeded_order(dataset, shuffle, cfg.seed, *keys), *keys)
            return loader
        loader = seeded_loader(dataset, batch_size, shuffle, cfg.seed, *keys, persistent_workers=True, **options)
        self._keep(cache_key, dataset, loader)
        return loader

    def epoch_loader(self, dataset, epoch: int, *prefix: Any):
        """The shuffled training loader of ``epoch``: :meth:`loader` with keys ``(*prefix, epoch)``.

        With persistent workers (and workers) one loader reads ahead through
        the epochs up to ``cfg.epochs`` (:class:`~selmask_lib.read_ahead.ReadAheadLoader`):
        the next epoch's first batches are built while this one trains,
        validates and checkpoints, so an epoch after the first does not
        start by waiting for a worker to build its first batch. The batches
        are the same either way.
        """
        cfg, keys = self.cfg, (*prefix, epoch)
        if not self._keeps_workers():
            return self.loader(dataset, True, *keys)
        order = seeded_order(dataset, True, cfg.seed, *keys)
        if cfg.drop_last:
            check_fills_a_batch(len(order), cfg.batch_size,
                                "training set" + (" (this process's shard)" if is_distributed() else ""))
        cache_key = (id(dataset), "read ahead", *prefix)
        stream = self._kept_loaders[cache_key][1] if cache_key in self._kept_loaders else None
        if stream is None or not stream.is_next(keys):  # a new run, a resume, or an epoch left half-way
            epochs = [(*prefix, later) for later in range(epoch, max(cfg.epochs, epoch + 1))]
            stream = self._read_ahead_loader(dataset, epochs, len(order))
            self._keep(cache_key, dataset, stream)
        return stream.next_epoch(keys, SeededItems(order, cfg.seed, *keys))

    def _read_ahead_loader(self, dataset, epochs: list[tuple], n_images: int) -> ReadAheadLoader:
        """A :class:`ReadAheadLoader` over ``epochs`` of ``dataset``: each epoch's batches as :func:`seeded_loader`'s."""
        from torch.utils.data import BatchSampler, DataLoader

        cfg = self.cfg

        def batches_of(keys: tuple) -> BatchSampler:  # what seeded_loader's DataLoader batches, drawn lazily
            items = SeededItems(seeded_order(dataset, True, cfg.seed, *keys), cfg.seed, *keys)
            return BatchSampler(items, cfg.batch_size, cfg.drop_last)

        def make_loader(batch_sampler) -> DataLoader:
            return DataLoader(SeededAugmentation(dataset), batch_sampler=batch_sampler,
                              num_workers=cfg.num_workers, pin_memory=self.pins_memory(),
                              prefetch_factor=cfg.prefetch_factor,
                              generator=epoch_generator(cfg.seed, "workers", *epochs[0]))

        batches_per_epoch = len(BatchSampler(range(n_images), cfg.batch_size, cfg.drop_last))
        return ReadAheadLoader(make_loader, batches_of, epochs, batches_per_epoch)

    def _keeps_workers(self) -> bool:
        return bool(self.cfg.persistent_workers and self.cfg.num_workers)

    def pins_memory(self) -> bool:
        """Whether this trainer's loaders copy batches into pinned memory (``pin_memory``, on CUDA)."""
        return bool(self.cfg.pin_memory) and self.device.type == "cuda"

    def _keep(self, cache_key: tuple, dataset, loader) -> None:
        """Keep ``loader`` (and its workers) for ``dataset``; the oldest of three goes, its workers with it."""
        replaced = [self._kept_loaders.pop(cache_key)[1]] if cache_key in self._kept_loaders else []
        while len(self._kept_loaders) >= 3:
            replaced.append(self._kept_loaders.pop(next(iter(self._kept_loaders)))[1])
        for old in replaced:  # a read-ahead loader's workers go at once, even if an epoch of it is still held
            if isinstance(old, ReadAheadLoader):
                old.close()
        self._kept_loaders[cache_key] = (dataset, loader)  # the dataset is held so its id stays its own

    def seed_torch(self, *keys: Any) -> None:
        """Seed torch's global RNG from ``(seed, keys, rank)``.

        Dropout draws from it (augmentation has its own seed per sample,
        :func:`seeded_loader`): seeding it per epoch makes a resumed run
        replay exactly the epochs it lost.
        """
        torch.manual_seed(derive_seed(self.cfg.seed, *keys, *rank_key()))

    def finish_batch(self, batch: Any) -> Any:
        """A batch whose images the loader left to the device is finished here: ``(images, ...)`` as float,
        normalised, and first colour-jittered where its last element holds the draws
        (``jitter_on_device``: ``transforms.DeferredColourJitter``). With ``uint8_batches`` a batch of
        uint8 images and no draws was jittered by the workers already: it is only converted and
        normalised. Any other batch is returned as it is: a uint8 batch too, unless the run's loaders
        send uint8 batches on this device (``sends_uint8_batches``: on CUDA by default). A loop of your
        own uint8 images passes through untouched on a CPU; on CUDA set ``uint8_batches: false`` for it.
        Only the first tensor is finished: a baked selective batch's uint8 target stays uint8 here and
        is normalised by the pretraining loss (``pretrain_data.TargetLevels``).
        """
        if not (isinstance(batch, (list, tuple)) and torch.is_tensor(batch[0])):
            return batch
        with_draws = isinstance(batch[-1], dict) and COLOUR_DRAWS in batch[-1]
        if not with_draws and not (batch[0].dtype == torch.uint8 and sends_uint8_batches(self.cfg)):
            return batch
        images = batch[0].to(self.device, non_blocking=True)
        if with_draws:
            return (self.colour_on_device(images, batch[-1][COLOUR_DRAWS]), *batch[1:-1])
        return (self.colour_on_device(images), *batch[1:])

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``model(inputs)`` on the device, under autocast with AMP; the output in float32."""
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.use_amp, self.amp_dtype or torch.float16):
            outputs = model(inputs)
        return outputs.float()

    def train_one_epoch(self, loader, batch_loss: BatchLoss, optimisation: Optimisation,
                        description: str = "") -> float:
        """One optimisation pass over ``loader``; the mean loss per image over all processes.

        Divergence guard: a NaN or infinite loss stops the run before it
        reaches the weights (:class:`DivergenceError`). The losses are read
        each step, or on CUDA with ``sync_free_steps`` once at the end of the
        epoch, so that the host does not wait for the GPU to read each one:
        both ways, and why, in :mod:`selmask_lib.epoch_losses`.
        """
        with EpochLosses(optimisation, description, self.sync_free_steps, self.device) as losses:
            for batch_index, batch in enumerate(progress(loader, desc=description, leave=False)):
                batch = self.finish_batch(batch)
                loss = batch_loss(self.train_model, batch)
                optimisation.backward(loss)
                losses.add(batch_index, loss, len(batch[0]))  # may raise before the step reaches the weights
                optimisation.apply_gradients()  # skipped on a non-finite loss (scaler, or fused Adam's flag)
            mean = losses.mean()
        broadcast_buffers(self.model)  # torchrun: every process evaluates rank 0's BatchNorm stats
        return mean

    @torch.no_grad()
    def mean_loss(self, loader, batch_loss: BatchLoss, description: str = "") -> float:
        """The mean loss per image of the current model over ``loader`` (no training)."""
        total, count = 0.0, 0
        for batch in progress(loader, desc=description, leave=False):
            batch = self.finish_batch(batch)
            n = len(batch[0])
            total += float(batch_loss(self.model, batch)) * n
            count += n
        return all_reduce_mean(total / max(count, 1), count)

    def new_optimisation(self) -> Optimisation:
        """A fresh Adam, schedule and grad scaler for this trainer's model (fused Adam with ``sync_free_steps``)."""
        # Loss scaling for float16 only: bfloat16 has float32's range.
        return Optimisation.adam(self.model, self.cfg, self.device, self.amp_dtype == torch.float16,
                                 fused=self.sync_free_steps)

    def fit(self, run_dir: str | Path, train_epoch: Callable[[int, Optimisation], dict],
            evaluate: Optional[Callable[[int], dict]] = None, *, resume: bool = True,
            best_metric: Optional[str] = None, best_mode: str = "max",
            checkpoint_final: bool = True) -> FitResult:
        """:func:`fit` ``cfg.epochs`` epochs with a fresh Adam and warm-up + cosine schedule."""
        optimisation = self.new_optimisation()
        return fit(self.model, optimisation, lambda epoch: train_epoch(epoch, optimisation), self.cfg.epochs,
                   run_dir, evaluate=evaluate, resume=resume, config_hash=self.config_hash,
                   best_metric=best_metric, best_mode=best_mode, checkpoint_every=self.cfg.checkpoint_every,
                   checkpoint_final=checkpoint_final)


class _RunLogHandler(logging.FileHandler):
    """run.log's handler: a line the disk refuses (full, read-only) is dropped without a word.

    logging would print a traceback to stderr for it; the run's next
    checkpoint or metrics row meets the same disk and stops the run with one
    clear line instead (files.atomic_write, files.append_text).
    """

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


@contextlib.contextmanager
def run_log(run_dir: str | Path, name: str = "run.log"):
    """Copy the kit's log messages (INFO and up) into ``run_dir/name`` while a run lasts.

    This is where a run says what it decided on its own, e.g. that images are
    too small for MS-SSIM and single-scale SSIM is used instead.
    """
    package_logger = logging.getLogger("selmask_lib")
    handler = _RunLogHandler(Path(run_dir) / name)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous_level = package_logger.level
    if previous_level == logging.NOTSET or previous_level > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        handler.close()
