"""The kit's training step dispatches about as many ops as the simplest loop that trains the same model.

On a GPU both the kit and a bare loop were bound by the host launching
kernels (benchmarks/README.md, H200 calls 5 and 6): each op the kit adds to a
step is time there, whatever the GPU. ``selmask_lib.host_ops.OpCounter``
counts the aten ops of a step (about one kernel launch each on a GPU,
backward included) on this CPU: the kit's real runs, with a loader worker so that the per-image
augmentation happens in another process, against a plain loop here on the
same model, batch size, loss and Adam. The kit may add only its bookkeeping
(reading the loss, the divergence guard) and, with ``uint8_batches``, the
batch's conversion and normalisation: at most ``EXTRA_OPS`` a step, what it
adds today plus a few ops of slack (torch versions differ by an op or two). A
change that adds more to every step has to raise them, on purpose.
``benchmarks/bench_throughput.py --op-census`` prints the same count per op.
"""

from __future__ import annotations

import collections

import pytest
import torch

import selmask_lib.engine as engine
import selmask_lib.finetuning as ft
import selmask_lib.pretraining as pt
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.engine import Trainer, adam_optimizer
from selmask_lib.host_ops import OpCounter
from selmask_lib.losses import ReconstructionLoss
from selmask_lib.masking import patch_grid, patch_index_map
from selmask_lib.models import build_reconstruction_model, build_segmentation_model

# Ops a step the kit may add, per loop and batch kind: what it added here (b9172c0) plus 6.
EXTRA_OPS = {("pretraining", False): 10 + 6, ("pretraining", True): 14 + 6,
             ("fine-tuning", False): 8 + 6, ("fine-tuning", True): 15 + 6}


def kit_ops_a_step(run, monkeypatch) -> tuple[float, collections.Counter, int]:
    """Ops a training step of ``run()``, counted inside ``Trainer.train_one_epoch`` only; the ops; the steps."""
    counts, steps, original = collections.Counter(), [], Trainer.train_one_epoch

    def counted(trainer, loader, *args, **kwargs):
        steps.append(len(loader))
        with OpCounter(counts):
            return original(trainer, loader, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_one_epoch", counted)
    run()
    monkeypatch.setattr(Trainer, "train_one_epoch", original)
    return sum(counts.values()) / sum(steps), counts, sum(steps)


def plain_ops_a_step(model, loss_of, cfg, steps: int) -> tuple[float, collections.Counter, int]:
    """Ops a step of ``steps`` of the plain loop (forward, loss, backward, Adam) on one in-memory batch.

    As many steps as the kit's: Adam's first step creates its state (ops the later ones do not run).
    """
    optimizer = adam_optimizer(model.parameters(), cfg.lr)
    counts = collections.Counter()
    for _ in range(steps):
        with OpCounter(counts):
            loss = loss_of(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return sum(counts.values()) / steps, counts, steps


def plain_pretraining(cfg, steps: int) -> tuple[float, collections.Counter, int]:
    torch.manual_seed(0)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    cell_of_pixel = patch_index_map(patch_grid(cfg.image_size, cfg.image_size, cfg.n_patches))
    n_patches = int(cell_of_pixel.max()) + 1
    loss_fn = ReconstructionLoss(cfg.recon_loss)

    def loss_of(model):
        chosen = torch.rand(len(images), n_patches).topk(int(cfg.mask_ratio * n_patches), dim=1).indices
        masked = torch.zeros(len(images), n_patches, dtype=torch.bool).scatter_(1, chosen, True)
        return loss_fn(model(images.masked_fill(masked[:, cell_of_pixel].unsqueeze(1), 0.0)), images)

    return plain_ops_a_step(build_reconstruction_model(cfg.dropout, cfg.pad_to_multiple).train(), loss_of, cfg, steps)


def plain_finetuning(cfg, num_classes: int, steps: int) -> tuple[float, collections.Counter, int]:
    torch.manual_seed(0)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    labels = torch.randint(0, num_classes, (cfg.batch_size, cfg.image_size, cfg.image_size))
    loss_fn = ft.segmentation_loss()
    model = build_segmentation_model(num_classes, cfg.dropout, cfg.pad_to_multiple).train()
    return plain_ops_a_step(model, lambda model: loss_fn(model(images), labels), cfg, steps)


def extra_ops(kit: tuple, plain: tuple) -> str:
    """The ops whose counts a step differ, for the failure message."""
    (kit_total, kit_counts, kit_steps), (plain_total, plain_counts, plain_steps) = kit, plain
    difference = {op: kit_counts[op] / kit_steps - plain_counts[op] / plain_steps
                  for op in set(kit_counts) | set(plain_counts)}
    largest = sorted(difference.items(), key=lambda item: -abs(item[1]))[:8]
    return f"kit {kit_total:.0f} ops a step, plain {plain_total:.0f}; most apart: " + ", ".join(
        f"{op} {value:+.1f}" for op, value in largest)


@pytest.mark.parametrize("uint8_batches", [False, True], ids=["usual batches", "uint8 batches"])
def test_a_pretraining_step_adds_only_bookkeeping_ops(uint8_batches, small_synthetic_root, tmp_path, monkeypatch):
    if uint8_batches:  # a no-op on a CPU: forced, as a GPU would take it
        monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), device="cpu", num_workers=1,
                          uint8_batches=uint8_batches)
    kit = kit_ops_a_step(lambda: pt.pretrain_random(cfg, tmp_path / "run", resume=False), monkeypatch)
    plain = plain_pretraining(cfg, steps=kit[2])
    assert plain[0] > 100  # the counter sees the steps (forward and backward)
    assert kit[0] <= plain[0] + EXTRA_OPS["pretraining", uint8_batches], extra_ops(kit, plain)


@pytest.mark.parametrize("uint8_batches", [False, True], ids=["usual batches", "uint8 batches"])
def test_a_finetuning_step_adds_only_bookkeeping_ops(uint8_batches, small_synthetic_root, tmp_path, monkeypatch,
                                                    drop_checkpoints):
    if uint8_batches:
        monkeypatch.setattr(engine, "sends_uint8_batches", lambda cfg: True)
    cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), device="cpu", num_workers=1,
                          epochs=1, uint8_batches=uint8_batches)
    kit = kit_ops_a_step(lambda: ft.finetune(cfg, tmp_path / "run", resume=False), monkeypatch)
    plain = plain_finetuning(cfg, ft.load_splits(cfg).num_outputs, steps=kit[2])
    assert plain[0] > 100
    assert kit[0] <= plain[0] + EXTRA_OPS["fine-tuning", uint8_batches], extra_ops(kit, plain)
