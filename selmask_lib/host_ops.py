"""Counting the ops a block of code dispatches: on a GPU, about one kernel launch each.

On a GPU the kit's training step and a bare loop were both found bound by the
host launching kernels, not by the GPU (benchmarks/README.md, H200 calls 5
and 6), so each op the host dispatches per step costs time there. A torch
dispatch mode sees every aten op of the thread that turned it on, and of
autograd's backward pass (which carries the mode), on any device: counted on
a CPU, they tell what a GPU's host would launch for the same steps, so a
change that adds launches shows without a GPU. It does not see other
processes (loader workers) or threads (the pin-memory thread), nor Python's
own time. ``benchmarks/bench_throughput.py --op-census`` and
``tests/test_host_ops.py`` use it.

    counts = collections.Counter()
    with OpCounter(counts):
        step()
    print(sum(counts.values()), counts.most_common(5))
"""

from __future__ import annotations

import collections

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Adds one to ``counts[op name]`` for each aten op dispatched while it is on."""

    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))
