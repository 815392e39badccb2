"""Fixtures shared by the test modules."""

import json
from pathlib import Path

import pytest
import torch

import selmask_lib.finetuning as ft
import selmask_lib.pretraining as pt
from selmask_lib.config import finetune_preset, pretrain_preset
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


class SmokeRuns:
    """One-epoch smoke runs on the small synthetic set, each returning its training losses (one per epoch and
    step). They call the modules' functions at run time, so a test's monkeypatching of them takes effect."""

    def __init__(self, root: str, out: Path):
        self.root, self.out = root, out

    def pretraining(self, name: str, **settings) -> list[float]:
        cfg = pretrain_preset("smoke", "synthetic", data_root=self.root, max_images=12, epochs=1, device="cpu",
                              num_workers=1, **settings)
        pt.pretrain(cfg, out_dir=self.out / name)
        return self.train_losses(name)

    def finetuning(self, name: str, **settings) -> list[float]:
        cfg = finetune_preset("smoke", "synthetic", data_root=self.root, epochs=1, max_train_images=4, device="cpu",
                              **settings)
        ft.finetune(cfg, self.out / name, resume=False)
        return self.train_losses(name)

    def train_losses(self, name: str) -> list[float]:
        rows = [json.loads(line) for path in sorted((self.out / name).rglob("metrics.jsonl"))
                for line in path.read_text().splitlines()]
        return [row["train_loss"] for row in rows if "train_loss" in row]


@pytest.fixture
def smoke_runs(small_synthetic_root, tmp_path):
    """:class:`SmokeRuns` writing under ``tmp_path``; their checkpoints are removed afterwards."""
    yield SmokeRuns(str(small_synthetic_root), tmp_path)
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


@pytest.fixture(scope="session")
def usual_smoke_losses(small_synthetic_root, tmp_path_factory) -> dict[str, list[float]]:
    """The losses of the usual random-masking and fine-tuning smoke runs (:class:`SmokeRuns`, no setting
    changed), trained once for the tests that run the same smoke runs down a CUDA path and compare."""
    out = tmp_path_factory.mktemp("usual-smoke-runs")
    runs = SmokeRuns(str(small_synthetic_root), out)
    losses = {"random": runs.pretraining("random"), "finetune": runs.finetuning("finetune")}
    for path in out.rglob("*.pt"):
        path.unlink()
    return losses
