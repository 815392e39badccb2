"""The kit's training step against the simplest loop that trains the same model: images per second.

Kit: the real entry points, ``pretrain_random`` and ``finetune`` (init none),
with their data pipeline (decoding, augmentation, seeded loaders, masks drawn
per batch, the divergence guard, progress bars off). Only training epochs are
timed: the wall time inside ``Trainer.train_one_epoch`` (validation, test,
checkpoints and set-up are left out).

Bare: a loop written here, on the same U-Net (``selmask_lib.models``), batch,
image size, loss (``ReconstructionLoss`` / the Jaccard loss) and Adam
(``engine.adam_optimizer``, fused where the kit's is: CUDA with ``sync_free_steps``; so the ratio
measures the kit's overhead, not its optimiser), on
images already in memory as tensors (the same training images, centre-cropped
once): shuffle, mask, forward, loss, backward, step. No checks, no loader.

Each round runs both sides back to back on fresh models (order alternating)
and prints kit images/s divided by bare images/s; the medians close the
output, the last line reading ``kit/bare: pretraining 0.97x, fine-tuning 0.98x``.
Target: >= 0.95x, over all timed epochs. Each round also gives the ratio over
the epochs after each run's first (``Speed``), which leaves out the one-off
start of a run on both sides (loader workers, first kernels).

    .venv/bin/python benchmarks/bench_throughput.py                 # demo preset size, this CPU
    .venv/bin/python benchmarks/bench_throughput.py --device cuda --image-size 256 --batch-size 32
    .venv/bin/python benchmarks/bench_throughput.py --profile       # where the kit's epoch time goes
    .venv/bin/python benchmarks/bench_throughput.py --device cuda --set channels_last=true   # one speed key
    .venv/bin/python benchmarks/bench_throughput.py --device cuda --sync-census   # where the host waits
    .venv/bin/python benchmarks/bench_throughput.py --workers 1 --op-census --as-on-cuda   # host ops a step

``--set KEY=VALUE`` changes the kit's configs only (each loop where it has the
key). The bare loop stays plain (it only follows the run's precision and Adam kind), so
the kit's images/s with and without a speed key (channels_last, compile,
num_workers, pin_memory, ...) is that key's measured effect.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ["SELMASK_NO_PROGRESS"] = "1"

import torch  # noqa: E402
from torch.utils.data import BatchSampler  # noqa: E402

import selmask_lib.engine as engine_module  # noqa: E402
from selmask_lib.cli import parse_overrides  # noqa: E402
from selmask_lib.config import FinetuneConfig, PretrainConfig, finetune_preset, pretrain_preset  # noqa: E402
from selmask_lib.data import load_segmentation_split, resolve_data_root  # noqa: E402
from selmask_lib.data.synthetic import default_root, ensure_synthetic_voc  # noqa: E402
from selmask_lib.engine import Trainer, adam_optimizer  # noqa: E402
from selmask_lib.finetuning import finetune, segmentation_loss  # noqa: E402
from selmask_lib.host_ops import OpCounter  # noqa: E402
from selmask_lib.losses import ReconstructionLoss  # noqa: E402
from selmask_lib.masking import patch_grid, patch_index_map  # noqa: E402
from selmask_lib.models import build_reconstruction_model, build_segmentation_model  # noqa: E402
from selmask_lib.pretrain_data import ReconstructionDataset, pretraining_pool, train_val_split  # noqa: E402
from selmask_lib.pretraining import pretrain_random  # noqa: E402
from selmask_lib.transforms import val_transform  # noqa: E402

TARGET = 0.95


@dataclass
class Speed:
    """Images per second of one run: over all its timed epochs, and over those after its first.

    A run's first epoch also pays one-off costs (the kit's loader workers
    starting, CUDA's first kernels on both sides); at the paper's hundreds of
    epochs a run is nearly all "after the first". The target is read on all
    epochs; the second figure says how much of a gap is start-up.
    """

    all_epochs: float
    after_first: Optional[float]  # None for a run of one epoch

    @classmethod
    def of(cls, epochs: list[tuple[float, int]]) -> "Speed":
        """From ``(seconds, images)`` of each epoch."""
        def rate(part):
            return sum(images for _, images in part) / sum(seconds for seconds, _ in part)
        return cls(rate(epochs), rate(epochs[1:]) if len(epochs) > 1 else None)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the kit


@contextlib.contextmanager
def around_training_epochs(around):
    """While the block runs, each ``Trainer.train_one_epoch`` call runs inside ``around(trainer, loader)``."""
    original = Trainer.train_one_epoch

    def wrapped(trainer, loader, *args, **kwargs):
        with around(trainer, loader):
            return original(trainer, loader, *args, **kwargs)

    Trainer.train_one_epoch = wrapped
    try:
        yield
    finally:
        Trainer.train_one_epoch = original


class EpochTimer:
    """Seconds and images of each training epoch of the runs inside ``with timer.timing():``."""

    def __init__(self):
        self.epochs: list[tuple[float, int]] = []

    def timing(self):
        return around_training_epochs(self._timed)

    @contextlib.contextmanager
    def _timed(self, trainer, loader):
        synchronise(trainer.device)
        started = time.perf_counter()
        yield
        synchronise(trainer.device)
        self.epochs.append((time.perf_counter() - started, len(loader.sampler)))

    def report(self) -> Speed:
        """Images/s; also prints each epoch's seconds (the first pays the loader workers' start)."""
        print("    kit epochs (s): " + " ".join(f"{seconds:.3f}" for seconds, _ in self.epochs), flush=True)
        return Speed.of(self.epochs)


def kit_pretraining(cfg, out_dir: Path) -> Speed:
    timer = EpochTimer()
    with timer.timing():
        pretrain_random(cfg, out_dir, resume=False)
    return timer.report()


def kit_finetuning(cfg, out_dir: Path) -> Speed:
    timer = EpochTimer()
    with timer.timing():
        finetune(cfg, out_dir, resume=False)
    return timer.report()


# --------------------------------------------------------------------------- the bare loop


def in_memory_pretraining_images(cfg) -> torch.Tensor:
    """The kit's training images of a random-masking run, centre-cropped once: [N, 3, S, S]."""
    pool = pretraining_pool(cfg)
    train, _ = train_val_split(range(len(pool)), cfg.val_fraction)
    dataset = ReconstructionDataset(pool, train, val_transform(cfg.image_size, cfg.mean, cfg.std),
                                    cfg.score_size, cfg.n_patches)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def in_memory_segmentation_split(cfg) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The kit's fine-tuning training images and labels, centre-cropped once; and the class count."""
    root = resolve_data_root(cfg.dataset, cfg.data_root)
    split = load_segmentation_split(cfg.dataset, root, "train", val_transform(cfg.image_size, cfg.mean, cfg.std))
    count = min(len(split), cfg.max_train_images or len(split))
    images, labels = zip(*(split[i] for i in range(count)))
    return torch.stack(images), torch.stack(labels), split.num_classes


def bare_epochs(model, images, targets, loss_of, cfg, device, epochs: int,
                around_epoch=lambda epoch: contextlib.nullcontext()) -> Speed:
    """``epochs`` plain epochs (shuffle, forward, loss, backward, Adam); images per second.

    On CUDA it uses the kit's resolved precision (autocast dtype, float16 loss scaling) and Adam kind.
    As in the kit (``Trainer.forward``), autocast covers the model only, and the loss is computed in
    float32 (under autocast MS-SSIM's convolutions would run in bfloat16: cheaper than the kit's).
    It never reads a loss. ``around_epoch(epoch)`` is a context manager around each epoch's steps
    (the sync census and the device profile use it).
    """
    model = model.to(device).train()
    kit = Trainer(cfg, torch.nn.Identity())
    # the kit's Adam (fused with sync_free_steps on CUDA): the same update, the same speed
    optimizer = adam_optimizer(model.parameters(), cfg.lr, fused=kit.sync_free_steps)
    amp_dtype = kit.amp_dtype

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model(inputs).float()

    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    images, targets = images.to(device), targets.to(device)
    generator = torch.Generator().manual_seed(0)
    synchronise(device)
    timed = []  # (seconds, images) of each epoch
    for epoch in range(epochs):
        with around_epoch(epoch):
            started = time.perf_counter()
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), cfg.batch_size):
                batch = order[start:start + cfg.batch_size].to(device)
                loss = loss_of(forward, images[batch], targets[batch])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            synchronise(device)  # one wait an epoch, as the kit reads its losses once an epoch
        timed.append((time.perf_counter() - started, len(images)))
    return Speed.of(timed)


def bare_pretraining(cfg, images: torch.Tensor, device: torch.device, **options) -> Speed:
    torch.manual_seed(cfg.seed)
    loss_fn = ReconstructionLoss()
    cell_of_pixel = patch_index_map(patch_grid(cfg.image_size, cfg.image_size, cfg.n_patches)).to(device)
    n_patches = int(cell_of_pixel.max()) + 1
    n_masked = int(cfg.mask_ratio * n_patches)

    def loss_of(forward, batch, target):
        chosen = torch.rand(len(batch), n_patches, device=device).topk(n_masked, dim=1).indices
        masked_patches = torch.zeros(len(batch), n_patches, dtype=torch.bool, device=device).scatter_(1, chosen, True)
        pixels = masked_patches[:, cell_of_pixel].unsqueeze(1)  # [B, 1, S, S]
        return loss_fn(forward(batch.masked_fill(pixels, 0.0)), target)

    return bare_epochs(build_reconstruction_model(cfg.dropout), images, images, loss_of, cfg, device, cfg.epochs,
                       **options)


def bare_finetuning(cfg, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    device: torch.device, **options) -> Speed:
    torch.manual_seed(cfg.seed)
    loss_fn = segmentation_loss()

    def loss_of(forward, batch, target):
        return loss_fn(forward(batch), target)

    model = build_segmentation_model(num_classes, cfg.dropout)
    return bare_epochs(model, images, labels, loss_of, cfg, device, cfg.epochs, **options)


# --------------------------------------------------------------------------- rounds


def load() -> str:
    return "load " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def one_round(round_: int, configs, data, device, tmp: Path) -> dict[str, float]:
    """Kit and bare, back to back (order alternating), for pretraining and fine-tuning: kit/bare ratios."""
    pre_cfg, fine_cfg = configs
    images, seg_images, seg_labels, num_classes = data
    sides = {
        "pretraining": (lambda: kit_pretraining(pre_cfg, tmp / f"pretrain-{round_}"),
                        lambda: bare_pretraining(pre_cfg, images, device)),
        "fine-tuning": (lambda: kit_finetuning(fine_cfg, tmp / f"finetune-{round_}"),
                        lambda: bare_finetuning(fine_cfg, seg_images, seg_labels, num_classes, device)),
    }
    ratios = {}
    for loop, (kit, bare) in sides.items():
        speed = {}
        for side in (("kit", "bare") if round_ % 2 == 0 else ("bare", "kit")):
            speed[side] = (kit if side == "kit" else bare)()
        ratios[loop] = speed["kit"].all_epochs / speed["bare"].all_epochs
        line = (f"  round {round_} {loop:11s} kit {speed['kit'].all_epochs:8.2f} img/s  "
                f"bare {speed['bare'].all_epochs:8.2f} img/s  kit/bare {ratios[loop]:.3f}x")
        if speed["kit"].after_first and speed["bare"].after_first:
            ratios[f"{loop} after the first epoch"] = speed["kit"].after_first / speed["bare"].after_first
            line += (f"; after the first epoch {speed['kit'].after_first:.2f} / {speed['bare'].after_first:.2f} "
                     f"= {ratios[f'{loop} after the first epoch']:.3f}x")
        print(f"{line}  ({load()})", flush=True)
    return ratios


def profile_kit(configs, tmp: Path, top: int, sort: str = "cumulative") -> None:
    """cProfile of one kit run of each loop (training epochs dominate): the functions with the most time.

    Sorted by ``tottime``, waiting shows as the self time of the call that waits:
    ``poll``/``get`` of the loader's queue (data-bound), or a call that makes
    the host wait for the GPU (GPU-bound: ``--sync-census`` names them).
    """
    for name, run in (("pretraining", lambda: kit_pretraining(configs[0], tmp / "profile-pretrain")),
                      ("fine-tuning", lambda: kit_finetuning(configs[1], tmp / "profile-finetune"))):
        profiler, timer = cProfile.Profile(), EpochTimer()
        with timer.timing():
            profiler.enable()
            run()
            profiler.disable()
        print(f"\nprofile of a kit {name} run ({sum(s for s, _ in timer.epochs):.1f} s in training epochs), "
              f"top {top} by {sort}:")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(sort).print_stats(top)


def loop_runs(configs, data, device: torch.device, tmp: Path, folder: str):
    """For each loop: (name, config, images an epoch, a kit run, a bare run taking ``around_epoch``)."""
    pre, fine = configs
    images, seg_images, seg_labels, num_classes = data
    return (("pretraining", pre, len(images),
             lambda: pretrain_random(pre, tmp / f"{folder}-pretrain", resume=False),
             lambda around_epoch: bare_pretraining(pre, images, device, around_epoch=around_epoch)),
            ("fine-tuning", fine, len(seg_images),
             lambda: finetune(fine, tmp / f"{folder}-finetune", resume=False),
             lambda around_epoch: bare_finetuning(fine, seg_images, seg_labels, num_classes, device,
                                                  around_epoch=around_epoch)))


class SyncCensus:
    """Each time the host waits for the GPU while it is on: torch's sync debug mode, counted by call site.

    A host that waits for the GPU cannot queue the next step's work while the
    GPU runs this one (``torch.cuda.set_sync_debug_mode``: a blocking copy
    between host and device, reading a device value, ...; it does not see a
    ``non_blocking`` copy from pageable memory, nor a wait inside NCCL).
    CUDA only. The warnings name the innermost Python line that called into
    torch.
    """

    def __init__(self):
        self.sites: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def recording(self):
        """Collect the warnings of everything run inside; the debug mode is switched on by :meth:`on`."""
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            yield
        for record in records:
            if "called a synchronizing CUDA operation" in str(record.message):
                self.sites[f"{Path(record.filename).parent.name}/{Path(record.filename).name}:{record.lineno}"] += 1

    @contextlib.contextmanager
    def on(self):
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    def report(self, title: str, steps: int, top: int = 10) -> None:
        total = sum(self.sites.values())
        print(f"  {title}: {total} host waits in {steps} training steps ({total / max(steps, 1):.1f} a step)")
        for site, count in self.sites.most_common(top):
            print(f"    {count / max(steps, 1):6.2f} a step  {site}")


def sync_census(configs, data, device: torch.device, tmp: Path) -> None:
    """Host waits per training step of one kit run and one bare run of each loop (1 epoch each)."""
    if device.type != "cuda":
        print("sync census: CUDA only (torch.cuda.set_sync_debug_mode); nothing to count on", device)
        return
    def steps(cfg, n_images: int) -> int:  # as the kit's loaders batch an epoch
        return cfg.epochs * len(BatchSampler(range(n_images), cfg.batch_size, cfg.drop_last))

    print("\nsync census (torch.cuda.set_sync_debug_mode 'warn'; training epochs only):")
    for name, cfg, n_images, kit, bare in loop_runs([cfg.updated(epochs=1) for cfg in configs], data, device,
                                                    tmp, "census"):
        kit_census, bare_census = SyncCensus(), SyncCensus()
        with kit_census.recording(), around_training_epochs(lambda trainer, loader: kit_census.on()):
            kit()
        with bare_census.recording():
            bare(lambda epoch: bare_census.on())
        kit_census.report(f"kit {name}", steps(cfg, n_images))
        bare_census.report(f"bare {name}", steps(cfg, n_images))


class EpochProfile:
    """torch.profiler over one training epoch: its wall time, how long the GPU was busy, and its top ops.

    Busy is the union of the intervals in which a kernel, copy or fill ran on
    the device. A side whose GPU is busy for most of the epoch is bound by
    the GPU (then its extra kernels are what it pays for); a side whose GPU
    idles is bound by the host (launches, Python, waiting for data). The
    profiler adds a few microseconds to each op on the host, so both sides'
    wall times are a little longer than unprofiled.
    """

    def __init__(self, device: torch.device, epoch: int = 1):
        self.device, self.epoch = device, epoch
        self.seen = 0  # epochs entered so far
        self.profile = self.wall = self.steps = None

    @contextlib.contextmanager
    def around(self, steps: int):
        """Profile the block if it is the ``epoch``-th (0-based) one entered; ``steps`` training steps in it."""
        self.seen += 1
        if self.seen - 1 != self.epoch:
            yield
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        synchronise(self.device)
        with torch.profiler.profile(activities=activities) as profile:
            started = time.perf_counter()
            yield
            synchronise(self.device)
            self.wall = time.perf_counter() - started
        self.profile, self.steps = profile, steps

    def report(self, title: str, top: int) -> None:
        if self.profile is None:
            print(f"  {title}: fewer than {self.epoch + 1} epochs ran; nothing profiled")
            return
        device_events = [event for event in self.profile.events()
                         if event.device_type == torch.autograd.DeviceType.CUDA]
        busy = _union_length([(event.time_range.start, event.time_range.end) for event in device_events]) / 1e6
        per_step = 1e3 / self.steps
        line = f"  {title}: {self.steps} steps, {self.wall * per_step:.2f} ms a step"
        if self.device.type == "cuda":
            line += (f"; GPU busy {busy * per_step:.2f} ms a step ({busy / self.wall:.0%} of the epoch); "
                     f"{len(device_events) / self.steps:.0f} kernels, copies and fills a step")
        print(line)
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(self.profile.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=50))


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals that may overlap (kernels on several streams)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def device_profile(configs, data, device: torch.device, tmp: Path, top: int) -> None:
    """One kit run and one bare run of each loop, 2 epochs each; the second epoch of each is profiled."""
    print(f"\nprofile of the second training epoch of each side (torch.profiler; top {top} ops by "
          f"{'device' if device.type == 'cuda' else 'host'} self time):")
    for name, cfg, n_images, kit, bare in loop_runs([cfg.updated(epochs=2) for cfg in configs], data, device,
                                                    tmp, "profile"):
        kit_profile, bare_profile = EpochProfile(device), EpochProfile(device)
        with around_training_epochs(lambda trainer, loader: kit_profile.around(len(loader))):
            kit()
        bare_steps = len(BatchSampler(range(n_images), cfg.batch_size, drop_last=False))  # the bare loop's batches
        bare(lambda epoch: bare_profile.around(bare_steps))
        kit_profile.report(f"kit {name}", top)
        bare_profile.report(f"bare {name}", top)


@contextlib.contextmanager
def batch_keys_as_on_cuda():
    """``jitter_on_device`` and ``uint8_batches`` act as on CUDA, whatever the device (they are no-ops
    elsewhere): the batches are finished on this device as a GPU would finish them."""
    def defers(cfg) -> bool:
        return bool(cfg.jitter_on_device)

    def sends_uint8(cfg) -> bool:
        return bool(cfg.uint8_batches) and not defers(cfg)

    saved = engine_module.defers_colour, engine_module.sends_uint8_batches  # what training_batch_form reads
    engine_module.defers_colour, engine_module.sends_uint8_batches = defers, sends_uint8
    try:
        yield
    finally:
        engine_module.defers_colour, engine_module.sends_uint8_batches = saved


def op_census(configs, data, device: torch.device, tmp: Path, as_on_cuda: bool, top: int = 15) -> None:
    """Aten ops a training step of one kit run and one bare run of each loop (1 epoch each), and the ops
    whose counts differ most (``selmask_lib.host_ops``: on a GPU about one kernel launch each). With loader
    workers the kit's augmentation runs elsewhere and is not counted."""
    print(f"\nop census (aten ops a training step on the host thread; {device}"
          + (", jitter_on_device and uint8_batches acting as on CUDA" if as_on_cuda else "") + "):")
    with batch_keys_as_on_cuda() if as_on_cuda else contextlib.nullcontext():
        for name, cfg, n_images, kit, bare in loop_runs([cfg.updated(epochs=1) for cfg in configs], data, device,
                                                        tmp, "ops"):
            kit_counts, bare_counts, kit_steps = collections.Counter(), collections.Counter(), []

            def counting(trainer, loader):
                kit_steps.append(len(loader))
                return OpCounter(kit_counts)

            with around_training_epochs(counting):
                kit()
            bare(lambda epoch: OpCounter(bare_counts))
            per_step = {"kit": {op: n / sum(kit_steps) for op, n in kit_counts.items()},
                        "bare": {op: n / len(BatchSampler(range(n_images), cfg.batch_size, drop_last=False))
                                 for op, n in bare_counts.items()}}
            totals = {side: sum(ops.values()) for side, ops in per_step.items()}
            print(f"  {name}: kit {totals['kit']:.0f} ops a step, bare {totals['bare']:.0f}, "
                  f"difference {totals['kit'] - totals['bare']:+.0f}")
            differences = {op: per_step["kit"].get(op, 0.0) - per_step["bare"].get(op, 0.0)
                           for op in set(per_step["kit"]) | set(per_step["bare"])}
            for op, difference in sorted(differences.items(), key=lambda item: -abs(item[1]))[:top]:
                if abs(difference) >= 0.5:
                    print(f"    {difference:+8.1f}  {op} (kit {per_step['kit'].get(op, 0.0):.1f} a step)")


def build_configs(args, data_root: str):
    shared = dict(data_root=data_root, device=args.device)
    if args.image_size:
        shared["image_size"] = args.image_size
    if args.batch_size:
        shared["batch_size"] = args.batch_size
    if args.workers is not None:
        shared["num_workers"] = args.workers
    pre_only = {"score_size": args.image_size} if args.image_size else {}
    fine_only = {"batch_size": args.finetune_batch_size} if args.finetune_batch_size else {}
    if args.max_images:
        pre_only["max_images"], fine_only["max_train_images"] = args.max_images, args.max_images
    overrides = parse_overrides(args.overrides)
    for key, value in overrides.items():
        if key not in PretrainConfig.__dataclass_fields__ and key not in FinetuneConfig.__dataclass_fields__:
            raise SystemExit(f"--set {key}: not a key of the pretrain or finetune config")
        (pre_only if key in PretrainConfig.__dataclass_fields__ else {})[key] = value
        (fine_only if key in FinetuneConfig.__dataclass_fields__ else {})[key] = value
    pre = pretrain_preset(args.preset, "synthetic", epochs=args.pretrain_epochs, checkpoint_every=10_000,
                          **{**shared, **pre_only})
    fine = finetune_preset(args.preset, "synthetic", epochs=args.finetune_epochs, checkpoint_every=10_000,
                           **{**shared, **fine_only})
    return pre, fine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--preset", default="demo", help="preset whose sizes are used (default demo)")
    parser.add_argument("--image-size", type=int, help="override the preset's image_size (and score_size)")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch_size (both loops)")
    parser.add_argument("--finetune-batch-size", type=int,
                        help="fine-tuning's own batch (the paper's is 8), instead of --batch-size")
    parser.add_argument("--train-images", type=int,
                        help="generate an embedded synthetic set with this many fine-tuning training images "
                             "(default: the embedded set's own, a few dozen: epochs of one or two batches)")
    parser.add_argument("--workers", type=int, help="override num_workers of the kit's loaders")
    parser.add_argument("--max-images", type=int,
                        help="override max_images (pretraining) and max_train_images (fine-tuning)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                        help="a config key of the kit's runs only (repeatable, YAML values), e.g. "
                             "--set precision=fp32; the bare loop is unchanged")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (default 5)")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="timed epochs per pretraining run")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="timed epochs per fine-tuning run")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: every core available)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one kit run of each loop")
    parser.add_argument("--sync-census", action="store_true",
                        help="CUDA: only count where the host waits for the GPU in one epoch of each side and loop "
                             "(no timing)")
    parser.add_argument("--device-profile", action="store_true",
                        help="only profile the second epoch of one kit run and one bare run of each loop with "
                             "torch.profiler: ms a step, GPU busy time, kernels a step, top ops (no timing rounds)")
    parser.add_argument("--op-census", action="store_true",
                        help="only count the aten ops a training step dispatches on the host thread, kit and bare, "
                             "for one epoch of each loop (any device; with --workers the kit's augmentation is "
                             "elsewhere)")
    parser.add_argument("--as-on-cuda", action="store_true",
                        help="with --op-census: jitter_on_device and uint8_batches act as on CUDA on this device")
    parser.add_argument("--profile-sort", default="cumulative", choices=("cumulative", "tottime"),
                        help="order of the profile's functions (default cumulative)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.train_images:  # its own folder beside the default one, generated once
        data_root = str(ensure_synthetic_voc(default_root().with_name(f"{default_root().name}-train{args.train_images}"),
                                             n_train=args.train_images))
    else:
        data_root = str(ensure_synthetic_voc())
    configs = build_configs(args, data_root)
    device = Trainer(configs[0], torch.nn.Identity()).device
    pre, fine = configs
    images = in_memory_pretraining_images(pre)
    seg_images, seg_labels, num_classes = in_memory_segmentation_split(fine)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}; {load()}")
    print(f"pretraining: {len(images)} images/epoch, {pre.image_size} px, batch {pre.batch_size}, "
          f"{pre.epochs} epochs a run; fine-tuning: {len(seg_images)} images/epoch, {fine.image_size} px, "
          f"batch {fine.batch_size}, {fine.epochs} epochs a run; kit loader workers {pre.num_workers}"
          + (f"; kit --set {' '.join(args.overrides)}" if args.overrides else ""))
    data = (images, seg_images, seg_labels, num_classes)
    with tempfile.TemporaryDirectory(prefix="selmask-throughput-") as tmp:
        tmp = Path(tmp)
        if args.sync_census:
            sync_census(configs, data, device, tmp)
            return
        if args.op_census:
            op_census(configs, data, device, tmp, args.as_on_cuda)
            return
        if args.device_profile:
            device_profile(configs, data, device, tmp, top=15)
            return
        warm = (pre.updated(epochs=1, max_images=16), fine.updated(epochs=1, max_train_images=16))
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # untimed: first passes of a process are slow
            one_round(-2, warm, data, device, tmp)
        results = [one_round(round_, configs, data, device, tmp) for round_ in range(args.rounds)]
        if args.profile:
            profile_kit(configs, tmp, top=25, sort=args.profile_sort)
    medians = {loop: statistics.median(r[loop] for r in results) for loop in results[0]}
    for loop, values in ((loop, [r[loop] for r in results]) for loop in medians):
        verdict = "" if "after" in loop else f" (target >= {TARGET:.2f}x: {'MET' if medians[loop] >= TARGET else 'MISSED'})"
        print(f"{loop}: per round " + ", ".join(f"{v:.3f}x" for v in values)
              + f"; median {medians[loop]:.3f}x, spread {min(values):.3f}-{max(values):.3f}{verdict}")
    # Three digits: 0.945x would print as a passing "0.95x" with two.
    print(f"kit/bare: pretraining {medians['pretraining']:.3f}x, fine-tuning {medians['fine-tuning']:.3f}x")


if __name__ == "__main__":
    main()
