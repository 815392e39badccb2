"""Colour jitter on the device (config key ``jitter_on_device``) against the loader workers' jitter.

For uint8 images (fine-tuning) and for uint8 crops jittered in float
(pretraining), each image goes through the usual training transform and
through the deferred one from the same seed; ``ColourJitterOnDevice``
finishes the deferred batch on the device. The same for ``uint8_batches``,
where the workers jitter and send uint8 and the device only normalises:
fine-tuning's batches should be equal, pretraining's within half a level. Prints how far apart the two are
(in levels of 255) and, on CUDA, checks that finishing a batch makes the host
wait for the GPU nowhere (``torch.cuda.set_sync_debug_mode("error")``).
Then it times finishing one batch: the host's seconds to queue it, and (on
CUDA) the device's seconds to run it, to compare with a training step.

    python benchmarks/check_jitter_on_device.py [--device cuda] [--size 256] [--images 64]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision import tv_tensors

from selmask_lib.config import DEFAULT_MEAN, DEFAULT_STD
from selmask_lib.transforms import COLOUR_DRAWS, ColourJitterOnDevice, as_outputs, train_transform


def both_paths(images: torch.Tensor, size: int, in_float: bool, uint8_batch: bool = False):
    """(the workers' normalised images, the crops sent to the device, their draws), each image from its own seed.

    Sent: uncoloured uint8 crops with the jitter's draws (``jitter_on_device``), or with ``uint8_batch``
    the workers' jittered images as uint8 and no draws (``uint8_batches``: draws None).
    """
    usual = train_transform(size, color_jitter=0.2, jitter_p=1.0)
    deferred = train_transform(size, color_jitter=0.2, jitter_p=1.0, defer_colour=not uint8_batch,
                               jitter_in_float=in_float, uint8_batch=uint8_batch)
    in_worker, crops, draws = [], [], []
    for index, image in enumerate(images):
        torch.manual_seed(index)
        source = image.float() / 255 if in_float else image  # pretraining's workers crop float images
        in_worker.append(usual(tv_tensors.Image(source)).as_subclass(torch.Tensor))
        torch.manual_seed(index)
        crop, *extra = as_outputs(deferred(tv_tensors.Image(source if uint8_batch else image)))
        crops.append(crop.as_subclass(torch.Tensor))
        if extra:
            draws.append(extra[0][COLOUR_DRAWS])
    return torch.stack(in_worker), torch.stack(crops), torch.stack(draws) if draws else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256, help="crop size (default 256)")
    parser.add_argument("--images", type=int, default=64, help="images in the batch (default 64)")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches (default 20)")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.images, 3, 90, 120), dtype=torch.uint8, generator=generator)
    finish = ColourJitterOnDevice(DEFAULT_MEAN, DEFAULT_STD)
    std = torch.tensor(DEFAULT_STD).view(1, 3, 1, 1)
    for name, in_float, uint8_batch in (("fine-tuning (uint8 jitter)", False, False),
                                        ("pretraining (uint8 crops, float jitter)", True, False),
                                        ("fine-tuning, uint8 batches (jitter in the workers)", False, True),
                                        ("pretraining, uint8 batches (float jitter in the workers)", True, True)):
        in_worker, crops, draws = both_paths(images, args.size, in_float, uint8_batch)
        crops = crops.to(device)
        if device.type == "cuda":
            crops = crops.pin_memory() if crops.is_cpu else crops
            draws = None if draws is None else draws.pin_memory()
            finish(crops, draws)  # first call: the statistics go to the device once
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # any host wait inside raises
            try:
                finished = finish(crops, draws)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            print(f"{name}: no host-device sync while finishing a batch")
        else:
            finished = finish(crops, draws)
        difference = (finished.cpu() - in_worker) * std * 255  # in levels of 255
        print(f"{name}: {device.type} against the workers, in levels of 255: mean {difference.mean():+.3f}, "
              f"mean |d| {difference.abs().mean():.3f}, max |d| {difference.abs().max():.2f}, "
              f"equal {100 * (difference == 0).float().mean():.3f} %")
        print(f"{name}: " + time_finishing(finish, crops, draws, device, args.repeats))


def time_finishing(finish: ColourJitterOnDevice, crops: torch.Tensor, draws, device: torch.device,
                   repeats: int) -> str:
    """Milliseconds to finish the batch: queued by the host, and run by the device (CUDA events)."""
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    finish(crops, draws)
    synchronise()
    host = []
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    for _ in range(repeats):
        queued = time.perf_counter()
        finish(crops, draws)
        host.append(time.perf_counter() - queued)
    if device.type == "cuda":
        end.record()
    synchronise()
    line = f"finishing a batch of {len(crops)}: host {1000 * sorted(host)[len(host) // 2]:.2f} ms (median)"
    if device.type == "cuda":
        line += f", device {start.elapsed_time(end) / repeats:.2f} ms (mean of {repeats})"
    return line


if __name__ == "__main__":
    main()
