"""Divergence guard: a run whose loss or weights stop being finite is stopped, marked failed,
never saved as a result, never reused and never resumed; the last good checkpoint survives."""

from __future__ import annotations

import json
import math

import pytest
import torch

import selmask_lib.engine as engine
from selmask_lib.cli import main
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.engine import Optimisation, Trainer, fit, load_checkpoint, make_grad_scaler, require_finite_weights
from selmask_lib.errors import DivergenceError, SelmaskError
from selmask_lib.finetuning import finetune
from selmask_lib.pretraining import pretrain


@pytest.fixture(scope="module")
def data_root(small_synthetic_root):
    return small_synthetic_root


def all_saved_tensors_are_finite(run_dir):
    for path in run_dir.rglob("*.pt"):
        state = load_checkpoint(path)
        for tensor in state.get("model", {}).values():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return False
    return True


# --------------------------------------------------------------------------- the engine


class NaNFrom:
    """A batch loss that is a real loss until epoch ``epoch``, then NaN (a run that diverges mid-way)."""

    def __init__(self, epoch):
        self.epoch, self.current = epoch, 0

    def __call__(self, model, batch):
        loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        return loss * float("nan") if self.current >= self.epoch else loss


def tiny_trainer():
    cfg = pretrain_preset("smoke", "synthetic", epochs=4, checkpoint_every=1, device="cpu")
    torch.manual_seed(0)
    return Trainer(cfg, torch.nn.Linear(3, 3))


def test_a_run_that_diverges_mid_way_keeps_its_last_good_checkpoint(tmp_path):
    trainer = tiny_trainer()
    data = [(torch.randn(4, 3), torch.randn(4, 3)) for _ in range(3)]
    loss = NaNFrom(epoch=2)

    def train_epoch(epoch, optimisation):
        loss.current = epoch
        return {"train_loss": trainer.train_one_epoch(data, loss, optimisation, f"epoch {epoch}")}

    with pytest.raises(DivergenceError, match=r"epoch 2: training loss is nan at batch 0 \(lr "):
        trainer.fit(tmp_path, train_epoch)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1  # never overwritten by the diverged epoch
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    # the NaN loss never reached the weights: the step was not taken
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def poison(epoch):
        if epoch == 1:
            with torch.no_grad():
                model.weight[0, 0] = float("inf")  # e.g. an overflowing step with a finite loss
        return {"train_loss": 1.0}

    with pytest.raises(DivergenceError, match="weight 'weight' is not finite"):
        fit(model, Optimisation(optimizer, None, make_grad_scaler("cpu")), poison, 3, tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0
    with pytest.raises(DivergenceError, match="not finite"):
        require_finite_weights(model, "here")
    require_finite_weights(torch.nn.Linear(2, 1), "fine")  # no error


def test_a_nan_validation_loss_stops_the_run(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimisation = Optimisation(torch.optim.SGD(model.parameters(), lr=0.1), None, make_grad_scaler("cpu"))
    with pytest.raises(DivergenceError, match="val_loss is nan"):
        fit(model, optimisation, lambda epoch: {"train_loss": 1.0}, 3, tmp_path,
            evaluate=lambda epoch: {"val_loss": math.nan})
    assert not (tmp_path / "last.pt").exists()


class CollapsedScaler:
    """A GradScaler whose scale has halved on step after step: every step overflowed and was skipped."""

    def is_enabled(self):
        return True

    def get_scale(self):
        return 2.0 ** -30

    def state_dict(self):
        return {}


def test_mixed_precision_that_skips_every_step_stops_the_run(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimisation = Optimisation(torch.optim.SGD(model.parameters(), lr=0.1), None, CollapsedScaler())
    with pytest.raises(DivergenceError, match="loss scale fell"):
        fit(model, optimisation, lambda epoch: {"train_loss": 1.0}, 2, tmp_path)


# --------------------------------------------------------------------------- pretraining and fine-tuning


@pytest.mark.parametrize("strategy", ["random", "selective"])
def test_diverged_pretraining_is_marked_failed_and_never_reused(data_root, tmp_path, strategy):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy=strategy, lr=1e10)
    with pytest.raises(DivergenceError, match="pretraining diverged in .*training loss is nan"):
        pretrain(cfg, out_dir=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and "nan" in info["error"]
    assert not (tmp_path / "run" / "pretrained.pt").exists()
    assert all_saved_tensors_are_finite(tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    for resume in (True, False):
        with pytest.raises(SelmaskError, match="failed .*change the config"):
            pretrain(cfg, out_dir=tmp_path / "run", resume=resume)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_diverged_finetuning_writes_no_results(data_root, tmp_path):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(data_root), lr=1e10, device="cpu")
    with pytest.raises(DivergenceError, match="fine-tuning diverged"):
        finetune(cfg, out_dir=tmp_path / "ft")
    assert not (tmp_path / "ft" / "results.json").exists()
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["status"] == "failed"
    assert all_saved_tensors_are_finite(tmp_path / "ft")


def test_cli_divergence_is_one_line_and_non_zero(data_root, tmp_path, capsys):
    args = ["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", str(data_root),
            "--preset", "smoke", "--out", str(tmp_path / "run"), "--set", "lr=1e10"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "pretrained weights" not in captured.out
    err = captured.err.strip()
    assert err.startswith("selmask: error: pretraining diverged") and len(err.splitlines()) == 1
    assert main([*args, "--resume"]) == 2
    assert "resuming it would fail again" in capsys.readouterr().err


def test_the_guard_does_not_change_a_healthy_run(data_root, tmp_path, monkeypatch):
    # the same weights with the weight check switched off: the guard only reads, never alters
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy="random")
    guarded = load_checkpoint(pretrain(cfg, out_dir=tmp_path / "a").weights)["model"]
    monkeypatch.setattr(engine, "require_finite_weights", lambda model, what: None)
    unguarded = load_checkpoint(pretrain(cfg, out_dir=tmp_path / "b").weights)["model"]
    assert all(torch.equal(guarded[k], unguarded[k]) for k in guarded)


def test_finetuning_refuses_non_finite_pretrained_weights(data_root, tmp_path):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy="random")
    run = pretrain(cfg, out_dir=tmp_path / "pre")
    state = torch.load(run.weights, weights_only=True)
    state["model"]["encoder.conv1.weight"][0] = float("nan")  # a run written before the guard existed
    torch.save(state, run.weights)
    ft = finetune_preset("smoke", "synthetic", data_root=str(data_root), init="random_ir",
                         pretrained=str(run.run_dir), device="cpu")
    with pytest.raises(DivergenceError, match="encoder.conv1.weight' is not finite"):
        finetune(ft, out_dir=tmp_path / "ft")
    assert not (tmp_path / "ft").exists()  # refused before anything was written


def test_a_lower_lr_in_the_folder_of_a_run_that_diverged_at_once_starts_afresh(data_root, tmp_path):
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy="random", lr=1e10)
    with pytest.raises(DivergenceError):
        pretrain(cfg, out_dir=tmp_path / "run")  # diverged in its first epoch: nothing trained
    run = pretrain(cfg.updated(lr=3e-3), out_dir=tmp_path / "run")
    assert json.loads((run.run_dir / "run.json").read_text())["status"] == "complete"


class OverflowOnceScaler:
    """Stands in for CUDA's GradScaler: enabled, skips the step of a non-finite loss, keeps a healthy scale."""

    def __init__(self):
        self.skipped = 0

    def is_enabled(self):
        return True

    def scale(self, loss):
        return loss

    def step(self, optimizer):
        if any(p.grad is not None and not torch.isfinite(p.grad).all() for g in optimizer.param_groups
               for p in g["params"]):
            self.skipped += 1
            return
        optimizer.step()

    def update(self):
        pass

    def get_scale(self):
        return 2.0 ** 15


def test_with_mixed_precision_an_overflowing_batch_is_skipped_not_fatal():
    trainer = tiny_trainer()
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    scaler = OverflowOnceScaler()
    data = [(torch.randn(4, 3), torch.randn(4, 3)) for _ in range(3)]
    calls = iter([1.0, float("inf"), 1.0])

    def loss_with_one_overflow(model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1]) * next(calls)

    mean = trainer.train_one_epoch(data, loss_with_one_overflow, Optimisation(optimizer, None, scaler))
    assert scaler.skipped == 1 and math.isfinite(mean)  # the overflowing batch is left out of the mean
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
