"""Loader workers that run on into the next epoch, so its first batches are ready when it starts.

A DataLoader stops with its sampler: at the end of every epoch its workers
fall idle, and the next epoch starts by waiting while one worker builds a
whole batch (and, without persistent workers, while the workers start).
In this kit each epoch's order and augmentation depend on ``(seed, epoch)``
alone (:func:`selmask_lib.engine.seeded_loader`), so every epoch's batches
are known before the run reaches it. :class:`ReadAheadLoader` gives one
DataLoader a batch sampler that runs through all the epochs left
(:class:`EpochBatches`) and hands out their batches one epoch at a time from
its one iterator: the workers' prefetch flows from one epoch into the next,
through validation and checkpoints. The batches are exactly those of a
loader built per epoch (tested). What is left to wait for: each loader's
first epoch (the workers start there), the first epoch after a resume or
after an epoch left half-way, and any batch that the workers cannot build
as fast as the device trains.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import torch

Batch = list  # the sampler items of one batch, e.g. (index, item seed) pairs


class EpochBatches(torch.utils.data.Sampler):
    """The batches of the epochs ``epochs`` (their keys), one epoch after the other: a ``batch_sampler``.

    ``batches_of(keys)`` makes one epoch's batches when the loader reaches it,
    so a long run never holds every epoch's order at once.
    """

    def __init__(self, batches_of: Callable[[Hashable], Iterable[Batch]], epochs: Sequence[Hashable]):
        self.batches_of, self.epochs = batches_of, list(epochs)

    def __iter__(self) -> Iterator[Batch]:
        for keys in self.epochs:
            yield from self.batches_of(keys)


class ReadAheadLoader:
    """One DataLoader over the epochs ``epochs``; :meth:`next_epoch` hands out their batches an epoch at a time.

    ``make_loader(batch_sampler)`` builds the DataLoader (workers, pinning,
    prefetch); ``batches_per_epoch`` is the same for every epoch (one pass
    over the same set). The epochs must be taken in order and each to its
    end: an epoch left half-way (an error in a training step) leaves the
    stream out of step, and :meth:`is_next` then answers False, so that the
    caller builds a new one. Its workers live as long as it does, as
    persistent workers do (the Trainer keeps it).
    """

    def __init__(self, make_loader: Callable[[EpochBatches], Any],
                 batches_of: Callable[[Hashable], Iterable[Batch]], epochs: Sequence[Hashable],
                 batches_per_epoch: int):
        self._loader = make_loader(EpochBatches(batches_of, epochs))
        self._upcoming = list(epochs)[::-1]  # popped from the end
        self.batches_per_epoch = batches_per_epoch
        self._iterator: Iterator | None = None
        self._taken = self._handed_out = 0  # batches taken from the iterator; batches of the epochs handed out

    def is_next(self, keys: Hashable) -> bool:
        """Whether ``keys`` is the next epoch of this stream, and the epochs before it were taken to their end."""
        return bool(self._upcoming) and self._upcoming[-1] == keys and self._taken == self._handed_out

    def next_epoch(self, keys: Hashable, sampler: Any = None) -> "OneEpoch":
        """The batches of epoch ``keys`` (which must be :meth:`is_next`), read from the running workers.

        ``sampler`` is only carried along as ``.sampler`` of the result (its
        length: the images of the epoch), as a per-epoch DataLoader has one.
        """
        if not self.is_next(keys):
            raise RuntimeError(f"epoch {keys!r} is not the next one of this loader (next: "
                               f"{self._upcoming[-1] if self._upcoming else None!r}; {self._taken} of "
                               f"{self._handed_out} batches taken)")
        self._upcoming.pop()
        if self._iterator is None:  # the workers start here, and read ahead from now on
            self._iterator = iter(self._loader)
        self._handed_out += self.batches_per_epoch
        return OneEpoch(self, self.batches_per_epoch, sampler)

    def close(self) -> None:
        """Let the workers go now (the loader that replaces this one starts its own), whoever still holds an epoch."""
        self._iterator, self._upcoming = None, []

    def _next_batch(self) -> Any:
        if self._iterator is None:
            raise RuntimeError("this read-ahead loader was closed: a newer one took its place")
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise RuntimeError(f"the loader ended after {self._taken} batches; its epochs promised "
                               f"{self._handed_out}") from None
        self._taken += 1
        return batch


class OneEpoch:
    """One epoch's batches from a :class:`ReadAheadLoader`: iterate it once, like one epoch of a DataLoader."""

    def __init__(self, stream: ReadAheadLoader, n_batches: int, sampler: Any = None):
        self._stream, self._n_batches, self.sampler = stream, n_batches, sampler
        self._started = False

    def __len__(self) -> int:
        return self._n_batches

    def __iter__(self) -> Iterator[Any]:
        if self._started:  # a second pass would take the next epoch's batches
            raise RuntimeError("an epoch of a ReadAheadLoader is iterated once")
        self._started = True
        return (self._stream._next_batch() for _ in range(self._n_batches))


__all__ = ["EpochBatches", "OneEpoch", "ReadAheadLoader"]
