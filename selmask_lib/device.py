"""Pick the compute device so the same code runs on a laptop CPU or a GPU box."""

import torch

from .errors import SelmaskError


def pick_device(preferred: str = "auto") -> torch.device:
    """Return ``preferred`` if given and available, else the best available: cuda, then mps, then cpu.

    A device named in the config but missing on this machine is one clear
    error now, not a CUDA traceback at the first tensor moved there.
    """
    if preferred != "auto":
        device = torch.device(preferred)
        _check_available(device)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _check_available(device: torch.device) -> None:
    hint = "set device to auto (the best device here) or cpu"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SelmaskError(f"config key 'device' is {str(device)!r} but no CUDA GPU is available here; {hint}")
        if device.index is not None and device.index >= count:
            raise SelmaskError(f"config key 'device' is {str(device)!r} but this machine has {count} CUDA GPU(s) "
                               f"(cuda:0..cuda:{count - 1}); {hint}")
    elif device.type == "mps" and not _mps_available():
        raise SelmaskError(f"config key 'device' is 'mps' but Apple's MPS backend is not available here; {hint}")


def to_device_without_waiting(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without making the host wait for the GPU.

    On CUDA a copy from pageable memory waits for the GPU's queued work; one through pinned
    memory is queued behind it instead.
    """
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
