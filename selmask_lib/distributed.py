"""Multi-GPU runs with ``torchrun`` and torch.distributed (DDP); every helper is a no-op in one process.

Launch one process per GPU with torchrun; the command is the usual one::

    torchrun --nproc_per_node=4 -m selmask_lib.cli pretrain --strategy selective --dataset voc \\
        --data-root /data/voc --preset paper --set batch_size=32 --out runs/x

(``torchrun --nproc_per_node=4 -m selmask_lib.cli finetune ...`` likewise.) Without torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK) nothing is initialised and a run is
exactly the single-process run. What changes under torchrun:

* **Batch size is per process.** ``batch_size`` in the config is what each
  process loads per step; the global batch is ``batch_size x world size``.
  The paper's pretraining batch 128 is a global batch: on 4 GPUs set
  ``--set batch_size=32`` (128 / 4). DDP averages the gradients, so the
  update equals one step on the global batch for the L1 + (1 - MS-SSIM)
  loss. Two departures from a true global batch: BatchNorm statistics are
  per process (plain BatchNorm, no SyncBatchNorm, as with Lightning's DDP
  default), and the fine-tuning Jaccard loss, whose class IoUs are taken
  over a batch, becomes the mean of per-process batch losses.
* **Data.** Each process trains on its shard of every epoch
  (``DistributedSampler``, shuffled with a seed derived from the run seed
  and the epoch, padded so all processes run the same number of steps).
  Evaluation shards are not padded, and losses and confusion matrices are
  summed over processes, so validation/test scores cover each image once.
  Augmentation, random masks and dropout draw per-process random streams.
* **Files.** Only rank 0 writes (run.json, config.yaml, checkpoints, masks,
  metrics, run.log, results.json); the other ranks wait at barriers and read
  what rank 0 wrote.
* **Selective scoring** runs on rank 0 alone, which saves ``masks.pt``;
  the others wait at a barrier and load it. Scoring is a few forward passes
  per image (S draws) against E epochs of training on the same images, so
  sharding it would save little, and this way the masks are the ones a
  single-process run would compute with that model and batch size.

Backend: NCCL for CUDA tensors when CUDA is available (with gloo for CPU
tensors, ``"cpu:gloo,cuda:nccl"``), gloo otherwise; each process uses GPU
``LOCAL_RANK``. The tests run the whole path on CPU with gloo.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

__all__ = [
    "all_reduce_mean",
    "sum_over_processes_",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "eval_shard",
    "gather_confusion",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "local_device",
    "main_only",
    "rank",
    "rank_key",
    "shard_sampler",
    "unwrap",
    "world_size",
    "wrap_model",
]


def init_distributed() -> bool:
    """Join the process group torchrun describes; return True if this is a multi-process run.

    Reads RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) from
    the environment. Without them, or with WORLD_SIZE 1, nothing is
    initialised. Safe to call more than once.
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"  # NCCL for the model, gloo for small CPU reductions
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def main_only(context: contextlib.AbstractContextManager) -> contextlib.AbstractContextManager:
    """``context`` on rank 0, a do-nothing context elsewhere (e.g. ``main_only(run_log(run_dir))``)."""
    return context if is_main_process() else contextlib.nullcontext()


def rank_key() -> tuple:
    """Extra seed keys that give each process its own random stream: ``()`` in one process.

    Add to :func:`~selmask_lib.engine.derive_seed` keys so single-process
    runs keep their seeds exactly.
    """
    return ("rank", rank()) if is_distributed() else ()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` under torchrun; other devices are kept."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# --------------------------------------------------------------------------- models


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` in a multi-process run, else ``model`` itself.

    Train through the wrapper (it averages gradients across processes);
    keep the plain module (or :func:`unwrap`) for state dicts, evaluation and
    scoring, so checkpoints have the same keys in every kind of run.
    """
    if not is_distributed():
        return model
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every process.

    DDP keeps parameters equal but each process updates its BatchNorm
    statistics from its own batches after the last broadcast; call this after
    a training epoch so evaluation and checkpoints use rank 0's model everywhere.
    """
    if not is_distributed():
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer.data, src=0)


# --------------------------------------------------------------------------- data


def shard_sampler(dataset, shuffle: bool, seed: int, epoch: int = 0) -> Optional[DistributedSampler]:
    """This process's shard of ``dataset`` for a training epoch, or None in one process.

    Every process gets the same number of samples (the list is padded by
    repeating a few, so DDP's gradient syncs line up). The order depends only
    on ``seed`` and ``epoch``; ``seed`` must fit in 63 bits (``derive_seed``).
    """
    if not is_distributed():
        return None
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return sampler


def eval_shard(dataset) -> Optional[list[int]]:
    """Indices ``rank, rank + W, ...`` of ``dataset`` (no padding: each item once overall), or None in one process."""
    if not is_distributed():
        return None
    return list(range(rank(), len(dataset), world_size()))


# --------------------------------------------------------------------------- reductions


def all_reduce_mean(value: float, count: int) -> float:
    """The mean over all processes of per-process means ``value`` over ``count`` items each.

    In one process ``value`` is returned unchanged. Every process must call it.
    A process with ``count == 0`` adds nothing (its ``value`` may be NaN);
    with no items anywhere the mean is NaN.
    """
    if not is_distributed():
        return value
    totals = torch.tensor([value * count if count else 0.0, float(count)], dtype=torch.float64)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan


def finite_on_every_process(loss: torch.Tensor, value: float) -> bool:
    """Whether one step's ``loss`` (``value`` is this process's, already read) is finite on every process.

    Why: the divergence guard must stop every process at the same step. A
    process that stopped alone would leave the others waiting forever in
    the next gradient all-reduce. Under torchrun: one scalar all-reduce on
    the loss's device; in one process no work at all.
    """
    if not is_distributed():
        return math.isfinite(value)
    total = loss.detach().float().reshape(1).clone()
    dist.all_reduce(total)  # NaN or infinity anywhere makes the sum non-finite
    return bool(torch.isfinite(total).item())


def sum_over_processes_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all processes, in place and on its own device; unchanged in one process.

    Unlike :func:`finite_on_every_process` nothing is read back: on a GPU
    the host queues the all-reduce and goes on without waiting for it.
    """
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (a CPU copy; ``tensor`` itself in one process)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().to("cpu").clone()
    dist.all_reduce(total)
    return total


def gather_confusion(evaluator) -> None:
    """Sum a :class:`~selmask_lib.metrics.SegmentationEvaluator`'s confusion matrix over processes, in place.

    Each process evaluates its shard; after this every process's
    ``evaluator.compute()`` scores the whole split (nothing is synced on its
    own: see ``SegmentationEvaluator.combine_counts``). Every process must call it.
    """
    if is_distributed():
        evaluator.combine_counts(all_reduce_sum)

