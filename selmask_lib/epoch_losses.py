"""An epoch's training losses: their mean, and the guard that stops a run whose loss is no longer finite.

The two ways to read the losses live side by side here because they must
agree: the same mean, and a diverged run stopped at the same batch with the
same weights.

* **Each step** (CPU, and CUDA with ``sync_free_steps: false``): the host
  reads each loss after its backward pass is queued and, if it is NaN or
  infinite, raises :class:`~selmask_lib.errors.DivergenceError` before the
  optimiser step. Reading a GPU value makes the host wait for the GPU, so
  on a GPU nothing prepares the next batch while the backward pass runs.
* **At the end of the epoch** (CUDA with ``sync_free_steps: true``, the
  default there): the losses' sum and count stay on the device and are read
  once per epoch, so the host no longer waits for the GPU to read a loss
  (a bare PyTorch loop reads none). A non-finite loss sets a flag on the
  device that stays set for the rest of the epoch. Fused Adam reads it (its
  ``found_inf``, the tensor a grad scaler hands fused optimisers) and skips
  that step and every later one, so the weights and Adam's state stay as
  they were before the bad batch, as with the first way (BatchNorm's running
  statistics go on moving in the forward passes; nothing of the epoch is
  saved). The error is raised when the epoch ends and names the first bad
  batch; the rest of the epoch is computed and thrown away (an epoch of the
  paper's runs is seconds).

With float16 loss scaling an overflowing batch is normal, either way: the
grad scaler skips its step and lowers its scale, so the batch is only left
out of the mean; :func:`~selmask_lib.engine.fit` stops a run whose scale
keeps falling.

Under torchrun every process stops at the same batch: each step's "not
finite" is summed over the processes (a process that stopped alone would
leave the others waiting in the next gradient all-reduce).
"""

from __future__ import annotations

import math

import torch

from .distributed import all_reduce_mean, finite_on_every_process, sum_over_processes_
from .errors import DivergenceError, SelmaskError


class EpochLosses:
    """Add each training batch's loss with :meth:`add`; :meth:`mean` ends the epoch (see the module doc).

    ``optimisation`` is the :class:`~selmask_lib.engine.Optimisation` whose
    step follows each :meth:`add`; ``read_late`` picks the second way, which
    needs its Adam fused (``engine.adam_optimizer(..., fused=True)``). Use it
    in a ``with`` block: however the epoch ends, the optimiser is left without
    the epoch's skip flag.
    """

    def __init__(self, optimisation, description: str, read_late: bool, device: torch.device | str):
        self.optimizer = optimisation.optimizer
        self.description = description
        self.read_late = read_late
        self.guards = not optimisation.scaler.is_enabled()  # with loss scaling the scaler skips bad steps
        self.total, self.count = 0.0, 0  # each step: on the host
        if not read_late:
            return
        if not all(group.get("fused") for group in self.optimizer.param_groups):
            raise SelmaskError("reading the losses at the end of the epoch needs a fused Adam: "
                               "only its step can be skipped on the device")
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.device_total, self.device_count = zero.clone(), zero.clone()
        self.first_bad_batch, self.first_bad_value = zero.clone().fill_(-1), zero.clone()
        self.skip = torch.zeros((), dtype=torch.float32, device=device)  # 1 = skip the step (fused Adam's found_inf)
        if self.guards:
            self.optimizer.found_inf, self.optimizer.grad_scale = self.skip, None

    def add(self, batch_index: int, loss: torch.Tensor, n_images: int) -> None:
        """One batch's mean ``loss`` over ``n_images``, its backward pass queued and its optimiser step not."""
        if self.read_late:
            self._add_on_device(batch_index, loss.detach().float(), n_images)
            return
        value = float(loss.detach())
        if self.guards and not finite_on_every_process(loss, value):
            raise self._divergence(batch_index, value)
        if math.isfinite(value):
            self.total += value * n_images
            self.count += n_images

    def _add_on_device(self, batch_index: int, loss: torch.Tensor, n_images: int) -> None:
        """Nothing here reads a device value or copies host memory to the device: the host does not wait."""
        finite = torch.isfinite(loss)
        self.device_total += torch.where(finite, loss.double() * n_images, 0.0)
        self.device_count += finite.double() * n_images
        if not self.guards:
            return
        bad = sum_over_processes_((~finite).float())  # > 0 if the loss is not finite on some process
        first = (bad > 0) & (self.skip == 0)  # this batch is the epoch's first bad one
        self.first_bad_batch.masked_fill_(first, batch_index)
        self.first_bad_value.copy_(torch.where(first, loss.double(), self.first_bad_value))
        torch.maximum(self.skip, bad.clamp(max=1.0), out=self.skip)  # stays set: later steps are skipped too

    def mean(self) -> float:
        """The epoch's mean loss per image over all processes; raises :class:`DivergenceError` if it diverged."""
        if self.read_late:
            total, count, bad_batch, bad_value = torch.stack(
                [self.device_total, self.device_count, self.first_bad_batch, self.first_bad_value]).tolist()
            self.close()
            if bad_batch >= 0:
                raise self._divergence(int(bad_batch), bad_value)
            self.total, self.count = total, int(count)
        return all_reduce_mean(self.total / self.count if self.count else math.nan, self.count)

    def close(self) -> None:
        """Take the epoch's skip flag off the optimiser (a later step must not read a stale one)."""
        if self.read_late and self.guards and getattr(self.optimizer, "found_inf", None) is self.skip:
            del self.optimizer.found_inf, self.optimizer.grad_scale

    def __enter__(self) -> "EpochLosses":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _divergence(self, batch_index: int, value: float) -> DivergenceError:
        lr = self.optimizer.param_groups[0]["lr"]
        which = f"is {value}" if not math.isfinite(value) else "of another process is not finite"
        return DivergenceError(f"{self.description}: training loss {which} at batch {batch_index} (lr {lr:g})")
