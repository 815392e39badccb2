"""The training engine: schedule, RNG, atomic checkpoints, resume, metrics log."""

import copy
import errno
import json
import math
import os
import random
import time

from pathlib import Path

import numpy as np
import pytest
import torch

import selmask_lib.engine as engine
from selmask_lib.engine import (
    MetricsLogger,
    adam_optimizer,
    autocast,
    build_scheduler,
    Optimisation,
    capture_rng_state,
    epoch_generator,
    fit,
    latest_checkpoint,
    load_checkpoint,
    make_grad_scaler,
    progress,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    warmup_cosine_lambda,
)
from selmask_lib.errors import SelmaskError
from selmask_lib.files import ensure_writable_dir

# --- schedule ---------------------------------------------------------------


def test_warmup_then_cosine_values():
    f = warmup_cosine_lambda(warmup_epochs=10, total_epochs=100, min_ratio=0.01)
    assert f(0) == pytest.approx(0.01)           # warm-up starts at min_ratio
    assert f(5) == pytest.approx(0.505)          # linear
    assert f(10) == pytest.approx(1.0)           # peak right after warm-up
    assert f(10 + 89 / 2) == pytest.approx(0.505)  # cosine midpoint
    assert f(99) == pytest.approx(0.01)          # last epoch at min_ratio
    assert f(150) == pytest.approx(0.01)         # and it stays there
    values = [f(e) for e in range(100)]
    assert all(a < b for a, b in zip(values[:10], values[1:11]))
    assert all(a > b for a, b in zip(values[10:99], values[11:100]))


def test_schedule_edge_cases():
    assert warmup_cosine_lambda(10, 1, 0.01)(0) == 1.0                      # one epoch: full lr
    assert [warmup_cosine_lambda(0, 2, 0.01)(e) for e in range(2)] == pytest.approx([1.0, 0.01])
    short = [warmup_cosine_lambda(10, 5, 0.01)(e) for e in range(5)]      # total <= warmup
    assert short[0] == pytest.approx(0.01) and short[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(short, short[1:]))
    assert [warmup_cosine_lambda(2, 5, 0.01)(e) for e in range(5)] == pytest.approx(
        [0.01, 0.505, 1.0, 0.505, 0.01]
    )
    with pytest.raises(SelmaskError, match="total_epochs"):
        warmup_cosine_lambda(1, 0, 0.01)


def test_the_kits_adam_trains_the_same_weights_as_the_plain_per_parameter_loop():
    """adam_optimizer's multi-tensor update is a speed choice only: same weights and BatchNorm statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 3, 3))
    twin = copy.deepcopy(model)
    plain = torch.optim.Adam(model.parameters(), lr=3e-3, foreach=False)
    kits = adam_optimizer(twin.parameters(), 3e-3)
    inputs, initial = torch.randn(4, 3, 12, 12), model[0].weight.detach().clone()
    for _ in range(5):
        for net, optimizer in ((model, plain), (twin, kits)):
            optimizer.zero_grad()
            net(inputs).square().mean().backward()
            optimizer.step()
    for (name, want), got in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(want, got), name
    assert not torch.equal(model[0].weight, initial)  # it did train


def test_build_scheduler_steps_per_epoch():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    scheduler = build_scheduler(optimizer, warmup_epochs=10, total_epochs=50, min_ratio=0.01)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(3e-5)
    assert lrs[10] == pytest.approx(3e-3)
    assert lrs[49] == pytest.approx(3e-5)


# --- randomness -------------------------------------------------------------


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_and_rng_state_round_trip():
    seed_everything(5)
    first = _draws()
    seed_everything(5)
    assert _draws() == first
    state = capture_rng_state()
    expected = _draws()
    seed_everything(99)
    restore_rng_state(state)
    assert _draws() == expected


def test_rng_state_survives_a_checkpoint(tmp_path):
    seed_everything(1)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = _draws()
    seed_everything(2)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_epoch_generator_depends_only_on_seed_and_keys():
    a = torch.randperm(20, generator=epoch_generator(3741, "order", 4))
    torch.manual_seed(0)  # the global RNG plays no part
    assert torch.equal(a, torch.randperm(20, generator=epoch_generator(3741, "order", 4)))
    assert not torch.equal(a, torch.randperm(20, generator=epoch_generator(3741, "order", 5)))
    assert not torch.equal(a, torch.randperm(20, generator=epoch_generator(3742, "order", 4)))


# --- checkpoints ------------------------------------------------------------


def test_atomic_save_leaves_only_the_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1, "w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1
    assert latest_checkpoint(tmp_path) == path
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_corrupt_or_missing_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SelmaskError, match=r"checkpoint .*bad\.pt is corrupt"):
        load_checkpoint(bad)
    with pytest.raises(SelmaskError, match=r"checkpoint .*gone\.pt does not exist"):
        load_checkpoint(tmp_path / "gone.pt")


def test_checkpoint_from_another_config_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 0, "config_hash": "aaaa"})
    assert load_checkpoint(path, expected_config_hash="aaaa")["epoch"] == 0
    with pytest.raises(SelmaskError, match=r"last\.pt was written by a different config"):
        load_checkpoint(path, expected_config_hash="bbbb")


def test_unwritable_dir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SelmaskError, match=r"a_file/run is not writable"):
        ensure_writable_dir(blocker / "run")
    assert ensure_writable_dir(tmp_path / "x" / "y").is_dir()


# --- metrics log ------------------------------------------------------------


def test_metrics_logger_replaces_re_run_epochs(tmp_path):
    logger = MetricsLogger(tmp_path)
    for epoch in range(3):
        logger.log({"epoch": epoch, "loss": torch.tensor(1.0 / (epoch + 1))})
    logger = MetricsLogger(tmp_path)  # a new process after a crash
    logger.log({"epoch": 1, "loss": 9.0, "miou": 0.5})  # re-run epoch 1: drops 1 and 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1]
    assert rows[1]["loss"] == 9.0
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines == ["epoch,loss,miou", "0,1.0,", "1,9.0,0.5"]


def test_metrics_logger_drops_a_half_written_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "lo')
    logger = MetricsLogger(tmp_path)
    logger.log({"epoch": 1, "loss": 0.5})
    assert [row["epoch"] for row in MetricsLogger(tmp_path).read()] == [0, 1]


class FillingDisk:
    """A file on a disk that fills half-way through a write, as ``open`` returns it."""

    def __init__(self, file, errno_code):
        self.file, self.errno_code = file, errno_code

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise OSError(self.errno_code, os.strerror(self.errno_code))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"),
                                         (errno.EROFS, "the file system is read-only")], ids=["full", "read-only"])
def test_metrics_log_on_a_full_or_read_only_disk_is_one_error_that_keeps_the_log(tmp_path, monkeypatch, code,
                                                                                 words):
    import selmask_lib.files as files

    logger = MetricsLogger(tmp_path)
    logger.log({"epoch": 0, "loss": 1.0})
    logger.log({"epoch": 1, "loss": 0.5})  # the CSV now grows by appends too
    before = {name: (tmp_path / name).read_bytes() for name in ("metrics.jsonl", "metrics.csv")}
    monkeypatch.setattr(files, "open", lambda *a, **k: FillingDisk(open(*a, **k), code), raising=False)
    with pytest.raises(SelmaskError, match=rf"cannot write {tmp_path}/metrics.jsonl: {words} \(\d+ bytes needed"):
        logger.log({"epoch": 2, "loss": 0.25})
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # no half row left behind
    assert [row["epoch"] for row in logger.read()] == [0, 1]
    monkeypatch.undo()
    logger.log({"epoch": 2, "loss": 0.25})  # space again: the log goes on where it was
    assert [row["epoch"] for row in MetricsLogger(tmp_path).read()] == [0, 1, 2]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1] == "2,0.25"


def test_an_append_error_that_is_not_the_disks_fault_stays_itself(tmp_path, monkeypatch):
    import selmask_lib.files as files

    monkeypatch.setattr(files, "open", lambda *a, **k: FillingDisk(open(*a, **k), errno.EIO), raising=False)
    with pytest.raises(OSError) as caught:
        files.append_text(tmp_path / "log.txt", "row\n")
    assert not isinstance(caught.value, SelmaskError) and not (tmp_path / "log.txt").exists()


def test_a_run_log_line_the_full_disk_refuses_prints_no_traceback(tmp_path, capsys):
    import logging

    with engine.run_log(tmp_path):
        handler = logging.getLogger("selmask_lib").handlers[-1]
        handler.stream = FillingDisk(handler.stream, errno.ENOSPC)
        logging.getLogger("selmask_lib.test").info("a line for the full disk")
    assert capsys.readouterr().err == ""  # logging's default: "--- Logging error ---" and a traceback


# --- AMP and progress -------------------------------------------------------


def test_amp_is_cuda_only():
    with autocast("cpu", enabled=True):
        assert torch.ones(2).matmul(torch.ones(2)).dtype == torch.float32
    assert not make_grad_scaler("cpu", enabled=True).is_enabled()
    assert not make_grad_scaler("cuda", enabled=False).is_enabled()


def test_progress_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SELMASK_NO_PROGRESS", "1")
    items = range(3)
    assert progress(items) is items  # no bar at all


class _CountedIterable:
    def __init__(self):
        self.iterators = 0

    def __len__(self):
        return 3

    def __iter__(self):
        self.iterators += 1
        return iter(range(3))


def test_progress_bar_iterates_once(monkeypatch):
    """A DataLoader iterated twice per epoch would start its workers twice (tqdm.auto calls iter() early)."""
    monkeypatch.setenv("SELMASK_NO_PROGRESS", "0")
    items = _CountedIterable()
    assert list(progress(items, disable=True)) == [0, 1, 2] and items.iterators == 1


# --- fit ----------------------------------------------------------------------

SEED, N, EPOCHS = 7, 24, 4


class Crash(RuntimeError):
    pass


def _training(crash_at=None):
    """A tiny regression problem whose epochs use every kind of randomness."""
    data = torch.randn(N, 4, generator=epoch_generator(SEED, "data"))
    target = data.sum(dim=1, keepdim=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    scheduler = build_scheduler(optimizer, warmup_epochs=1, total_epochs=EPOCHS, min_ratio=0.01)
    calls = []

    def train_one_epoch(epoch):
        calls.append(epoch)
        order = torch.randperm(N, generator=epoch_generator(SEED, "order", epoch))
        total = 0.0
        for batch, start in enumerate(range(0, N, 8)):
            index = order[start:start + 8]
            noise = 0.01 * torch.randn(len(index), 4)  # global torch RNG, like dropout
            loss = torch.nn.functional.mse_loss(model(data[index] + noise), target[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            if epoch == crash_at and batch == 1:
                raise Crash("power cut")
        return {"train_loss": total}

    def evaluate(epoch):
        return {"val_loss": torch.nn.functional.mse_loss(model(data), target).item()}

    return model, optimizer, scheduler, train_one_epoch, evaluate, calls


def _run(run_dir, crash_at=None, config_hash="cfg", best_metric="val_loss", **kwargs):
    model, optimizer, scheduler, train_one_epoch, evaluate, calls = _training(crash_at)
    result = fit(model, Optimisation(optimizer, scheduler, make_grad_scaler("cpu")), train_one_epoch, EPOCHS, run_dir,
                 evaluate=evaluate, config_hash=config_hash, best_metric=best_metric,
                 best_mode="min", **kwargs)
    return model, result, calls


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.parametrize(
    "checkpoint_every, crash_at, best_metric",
    [
        (1, 2, "val_loss"),  # checkpoint after every epoch, best model tracked
        (2, 3, None),  # last checkpoint at epoch 1: epoch 2 (already logged) runs again
        (2, 3, "val_loss"),  # the same, and a best of epoch 2 (in memory only) is found again
    ],
)
def test_resume_after_crash_matches_an_uninterrupted_run(tmp_path, checkpoint_every, crash_at, best_metric):
    options = dict(checkpoint_every=checkpoint_every, best_metric=best_metric)
    seed_everything(SEED)
    reference, reference_result, _ = _run(tmp_path / "ref", **options)

    seed_everything(SEED)
    with pytest.raises(Crash):
        _run(tmp_path / "run", crash_at=crash_at, **options)
    seed_everything(12345)  # a new process: different global RNG, fresh weights
    resumed, result, calls = _run(tmp_path / "run", **options)

    assert result.start_epoch == 2 and calls == [2, 3]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert _without_time(result.history) == _without_time(reference_result.history)
    csv_epochs = [line.split(",")[0] for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()]
    assert csv_epochs == ["epoch", "0", "1", "2", "3"]
    assert (result.best_epoch, result.best_value) == (reference_result.best_epoch, reference_result.best_value)
    files = {"last.pt", "metrics.csv", "metrics.jsonl"} | ({"best.pt"} if best_metric else set())
    assert {p.name for p in (tmp_path / "run").iterdir()} == files


def test_finished_run_is_not_trained_again(tmp_path):
    _run(tmp_path)
    _, result, calls = _run(tmp_path)
    assert calls == [] and result.start_epoch == EPOCHS and len(result.history) == EPOCHS


def test_best_checkpoint_holds_the_best_epoch(tmp_path):
    _, result, _ = _run(tmp_path)
    losses = [row["val_loss"] for row in result.history]
    best = load_checkpoint(result.best_checkpoint, expected_config_hash="cfg")
    assert best["epoch"] == result.best_epoch == int(np.argmin(losses))
    assert best["best_value"] == min(losses)
    last = load_checkpoint(result.last_checkpoint)
    assert last["epoch"] == EPOCHS - 1 and last["best_epoch"] == result.best_epoch


def test_resume_with_a_different_config_is_rejected(tmp_path):
    with pytest.raises(Crash):
        _run(tmp_path, crash_at=1, config_hash="old")
    with pytest.raises(SelmaskError, match="was written by a different config"):
        _run(tmp_path, config_hash="new")


def test_resume_false_starts_over(tmp_path):
    with pytest.raises(Crash):
        _run(tmp_path, crash_at=2, config_hash="old")
    _, result, calls = _run(tmp_path, config_hash="new", resume=False)
    assert calls == [0, 1, 2, 3] and [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert load_checkpoint(result.last_checkpoint)["config_hash"] == "new"


def test_logged_lr_follows_the_schedule(tmp_path):
    _, result, _ = _run(tmp_path)
    expected = [0.05 * warmup_cosine_lambda(1, EPOCHS, 0.01)(e) for e in range(EPOCHS)]
    assert [row["lr"] for row in result.history] == pytest.approx(expected)
    assert math.isclose(result.history[1]["lr"], 0.05)


def test_checkpoint_final_false_skips_only_the_last_epochs_checkpoint(tmp_path, monkeypatch):
    saved = []
    real_save = engine.save_checkpoint

    def recording_save(path, state):
        saved.append(state["epoch"])
        return real_save(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", recording_save)
    _run(tmp_path, best_metric=None, checkpoint_every=1, checkpoint_final=False)
    # epochs 0..2 write their own checkpoint; the last epoch writes none
    assert saved == [0, 1, 2]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def _scripted_fit(run_dir, val_losses, start_crash=None, **options):
    """fit on a fixed model whose epochs report the given validation losses (a re-run may report others)."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_one_epoch(epoch):
        with torch.no_grad():
            model.bias += 1.0  # each epoch's weights differ, so best.pt names its epoch by its content too
        return {}

    return model, fit(model, Optimisation(optimizer, None, make_grad_scaler("cpu")), train_one_epoch, len(val_losses),
                      run_dir, evaluate=lambda epoch: {"val_loss": val_losses[epoch]}, config_hash="cfg",
                      best_metric="val_loss", best_mode="min", **options)


def test_a_new_best_is_written_with_the_next_checkpoint_not_at_once(tmp_path, monkeypatch):
    """A short epoch that improves costs a copy in memory, not a resumable write; best.pt still holds the best."""
    saved = []
    real_save = engine.save_checkpoint

    def recording_save(path, state):
        saved.append((Path(path).name, state["epoch"]))
        return real_save(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", recording_save)
    model, result = _scripted_fit(tmp_path, [4.0, 1.0, 3.0, 2.0, 0.5], checkpoint_every=3)  # due at 2 and 4
    assert saved == [("best.pt", 1), ("last.pt", 2), ("best.pt", 4), ("last.pt", 4)]  # each best before its last.pt
    assert (result.best_epoch, result.best_value) == (4, 0.5)
    # An epoch's copy is its own weights, not the model's later ones: epoch 1's best.pt, read back at epoch 2.
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    _, result = _scripted_fit(tmp_path / "again", [4.0, 1.0, 3.0], checkpoint_every=3)
    best, last = load_checkpoint(result.best_checkpoint), load_checkpoint(result.last_checkpoint)
    assert best["epoch"] == 1 and last["epoch"] == 2
    assert best["model"]._metadata == last["model"]._metadata  # module versions kept, as in model.state_dict()
    assert best["model"]["bias"].item() == pytest.approx(last["model"]["bias"].item() - 1.0)


def test_a_crash_between_the_best_and_the_last_write_keeps_that_best(tmp_path, monkeypatch):
    """best.pt of epoch 3 is written, then last.pt fails: the resume (from epoch 1) keeps epoch 3 as the best."""
    real_save = engine.save_checkpoint

    def failing_last_write(path, state):
        if Path(path).name == "last.pt" and state["epoch"] == 3:
            raise OSError("disk full")
        return real_save(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", failing_last_write)
    with pytest.raises(OSError):
        _scripted_fit(tmp_path, [4.0, 3.0, 2.0, 1.0], checkpoint_every=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    _, resumed = _scripted_fit(tmp_path, [4.0, 3.0, 5.0, 5.0], checkpoint_every=2)  # re-run epochs come out worse
    assert resumed.start_epoch == 2 and (resumed.best_epoch, resumed.best_value) == (3, 1.0)
    assert load_checkpoint(resumed.best_checkpoint)["epoch"] == 3


def test_a_resume_keeps_a_best_written_after_the_last_checkpoint(tmp_path):
    """Without checkpoint_final the last best is written after the last checkpoint. If the resumed epochs
    come out worse (a GPU need not repeat them exactly), the run's best is still the one in best.pt."""
    _scripted_fit(tmp_path, [4.0, 3.0, 2.0, 1.0], checkpoint_every=2, checkpoint_final=False)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    written = load_checkpoint(tmp_path / "best.pt")
    assert written["epoch"] == 3
    _, resumed = _scripted_fit(tmp_path, [4.0, 3.0, 5.0, 5.0], checkpoint_every=2)  # epochs 2 and 3 again
    assert resumed.start_epoch == 2
    best = load_checkpoint(resumed.best_checkpoint)
    assert (resumed.best_epoch, resumed.best_value) == (best["epoch"], best["best_value"]) == (3, 1.0)
    assert torch.equal(best["model"]["bias"], written["model"]["bias"])


# --- seeded loaders -------------------------------------------------------------


class _RandomItems(torch.utils.data.Dataset):
    """Item i is (i, a draw from torch's global RNG), like a torchvision augmentation."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.tensor(index), torch.rand(3)


def _items(loader):
    """index -> its augmentation draw, over one pass of ``loader``."""
    return {int(i): draw for indices, draws in loader for i, draw in zip(indices, draws)}


@pytest.mark.parametrize("num_workers", [1, 2])
def test_worker_count_does_not_change_the_augmentation(num_workers):
    in_process = engine.seeded_loader(_RandomItems(), 4, True, SEED, "augment-test", 0)
    in_workers = engine.seeded_loader(_RandomItems(), 4, True, SEED, "augment-test", 0, num_workers=num_workers)
    expected, got = list(in_process), list(in_workers)
    assert len(expected) == len(got) == 3
    for (indices_a, draws_a), (indices_b, draws_b) in zip(expected, got):
        assert torch.equal(indices_a, indices_b) and torch.equal(draws_a, draws_b)


def test_augmentation_depends_on_seed_keys_and_index_only():
    epoch_0 = _items(engine.seeded_loader(_RandomItems(), 4, True, SEED, 0))
    torch.rand(5)  # whatever the main process drew before (dropout) plays no part
    again = _items(engine.seeded_loader(_RandomItems(), 3, False, SEED, 0))  # other batches and order
    epoch_1 = _items(engine.seeded_loader(_RandomItems(), 4, True, SEED, 1))
    assert all(torch.equal(epoch_0[i], again[i]) for i in range(10))
    assert all(not torch.equal(epoch_0[i], epoch_1[i]) for i in range(10))
    assert len({tuple(draw.tolist()) for draw in epoch_0.values()}) == 10  # every item its own seed


def test_seeded_loader_leaves_the_callers_rng_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    list(engine.seeded_loader(_RandomItems(), 4, True, SEED, 0))
    assert torch.equal(torch.rand(2), expected)


# --- GPU path settings ----------------------------------------------------------


@pytest.mark.parametrize("precision, amp, device, bf16, expected", [
    ("auto", True, "cpu", True, None),               # CPU runs are always float32
    ("bf16", True, "mps", True, None),
    ("auto", True, "cuda", True, torch.bfloat16),
    ("auto", True, "cuda", False, torch.float16),    # with a grad scaler
    ("auto", False, "cuda", True, None),             # amp false = fp32 (the paper preset)
    ("fp16", False, "cuda", True, torch.float16),    # an explicit precision wins over amp
    ("fp32", True, "cuda", True, None),
])
def test_autocast_dtype_follows_precision_then_amp(precision, amp, device, bf16, expected):
    assert engine.autocast_dtype(precision, amp, device, bf16) is expected


def test_bf16_on_a_gpu_without_it_names_the_key():
    with pytest.raises(SelmaskError, match="'precision'"):
        engine.autocast_dtype("bf16", True, "cuda", False)


def test_persistent_workers_keep_one_loader_per_dataset():
    from selmask_lib.config import pretrain_preset

    cfg = pretrain_preset("smoke", "synthetic", device="cpu", num_workers=1, batch_size=4)
    kept = engine.Trainer(cfg.updated(persistent_workers=True), torch.nn.Linear(1, 1))
    fresh = engine.Trainer(cfg, torch.nn.Linear(1, 1))
    data = _RandomItems()
    for epoch in range(2):
        loader = kept.loader(data, True, epoch)
        assert loader is kept.loader(data, True, epoch)  # the same workers every epoch
        expected, got = list(fresh.loader(data, True, epoch)), list(loader)
        assert all(torch.equal(a, b) for batch_a, batch_b in zip(expected, got) for a, b in zip(batch_a, batch_b))
    assert not torch.equal(list(kept.loader(data, True, 0))[0][0], list(kept.loader(data, True, 1))[0][0])


class _RecordedItems(_RandomItems):
    """_RandomItems that leaves a file per item built, named by its index and item seed (workers are processes)."""

    def __init__(self, record_dir):
        self.record_dir = record_dir

    def __getitem__(self, index):
        (self.record_dir / f"{index}-{torch.initial_seed()}").touch()
        return super().__getitem__(index)


def _same_batches(got, expected):
    return len(got) == len(expected) and all(
        torch.equal(a, b) for batch_a, batch_b in zip(got, expected) for a, b in zip(batch_a, batch_b))


@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_loader_reads_ahead_into_the_next_epoch_with_the_same_batches(tmp_path, drop_last):
    """One loader over the run's epochs: each epoch's batches as a per-epoch loader gives them, and the
    workers build the next epoch's first batch before that epoch is asked for."""
    from selmask_lib.config import pretrain_preset

    cfg = pretrain_preset("smoke", "synthetic", device="cpu", num_workers=2, batch_size=4, epochs=3,
                          drop_last=drop_last)
    reading = engine.Trainer(cfg.updated(persistent_workers=True), torch.nn.Linear(1, 1))
    per_epoch = engine.Trainer(cfg.updated(num_workers=0), torch.nn.Linear(1, 1))
    data = _RecordedItems(tmp_path)
    first = reading.epoch_loader(data, 0, "step", 1)
    assert _same_batches(list(first), list(per_epoch.loader(data, True, "step", 1, 0)))
    assert len(first) == (2 if drop_last else 3) and len(first.sampler) == len(data)
    next_index, next_seed = next(iter(engine.SeededItems(
        engine.seeded_order(data, True, cfg.seed, "step", 1, 1), cfg.seed, "step", 1, 1)))
    built = tmp_path / f"{next_index}-{next_seed}"
    for _ in range(200):  # up to 10 s for a worker to get to it
        if built.exists():
            break
        time.sleep(0.05)
    assert built.exists(), "epoch 1's first item was not built ahead of epoch 1"
    for epoch in (1, 2):
        got = list(reading.epoch_loader(data, epoch, "step", 1))
        assert _same_batches(got, list(per_epoch.loader(data, True, "step", 1, epoch)))
    assert len(reading._kept_loaders) == 1  # one loader, its workers started once


def test_epoch_loader_starts_again_after_an_epoch_left_half_way_or_a_resume():
    from selmask_lib.config import pretrain_preset

    cfg = pretrain_preset("smoke", "synthetic", device="cpu", num_workers=1, batch_size=4, epochs=4)
    reading = engine.Trainer(cfg.updated(persistent_workers=True), torch.nn.Linear(1, 1))
    per_epoch = engine.Trainer(cfg.updated(num_workers=0), torch.nn.Linear(1, 1))
    data = _RandomItems()
    resumed = reading.epoch_loader(data, 1)  # a run resumed after epoch 0
    assert _same_batches(list(resumed), list(per_epoch.loader(data, True, 1)))
    crashed = iter(reading.epoch_loader(data, 2))
    next(crashed)  # one batch, then an error in the training step
    for epoch in (2, 3):  # epoch 2 again (the crashed epoch replayed), then epoch 3
        assert _same_batches(list(reading.epoch_loader(data, epoch)), list(per_epoch.loader(data, True, epoch)))
    with pytest.raises(RuntimeError, match="closed"):  # its workers went when the new loader took its place
        next(crashed)
    once = reading.epoch_loader(data, 1)  # a new run of the same set from epoch 1
    list(once)
    with pytest.raises(RuntimeError, match="once"):
        list(once)
