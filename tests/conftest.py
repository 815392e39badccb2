"""Fixtures shared by the test modules."""

import pytest
import torch

from selmask_lib.data.synthetic import SMALL, ensure_synthetic_voc


@pytest.fixture(scope="session")
def small_synthetic_root(tmp_path_factory):
    """The embedded synthetic dataset at its small test size (a VOC tree), generated once per test run."""
    return ensure_synthetic_voc(tmp_path_factory.mktemp("synthetic"), **SMALL)


@pytest.fixture(scope="module")
def one_thread_quiet():
    """Fine-tuning tests on one torch thread with progress bars off (same numbers, less contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    patch.setenv("SELMASK_NO_PROGRESS", "1")
    yield
    patch.undo()
    torch.set_num_threads(threads)


@pytest.fixture
def drop_checkpoints(tmp_path):
    """A fine-tuning run leaves ~400 MB of checkpoints (ResNet-34 + Adam state): free the shared disk."""
    yield
    for path in [*tmp_path.rglob("*.pt"), *tmp_path.rglob("*.pth")]:
        path.unlink()
