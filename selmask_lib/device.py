"""Pick the compute device so the same code runs on a laptop CPU or a GPU box."""

import torch


def pick_device(preferred: str = "auto") -> torch.device:
    """Return ``preferred`` if given, else the best available: cuda, then mps, then cpu."""
    if preferred != "auto":
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
