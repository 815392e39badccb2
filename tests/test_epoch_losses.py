"""The two ways of reading an epoch's training losses (``selmask_lib.epoch_losses``) agree.

On CUDA with ``sync_free_steps`` the losses are read once per epoch and a
non-finite loss is skipped on the device by fused Adam. Fused Adam also runs
on a CPU, so these tests force that way here and hold it against reading each
loss at once: the same mean, the same batch named in the error, and weights
left as they were before the bad batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from selmask_lib.config import pretrain_preset
from selmask_lib.engine import Optimisation, Trainer
from selmask_lib.epoch_losses import EpochLosses
from selmask_lib.errors import DivergenceError, SelmaskError

# Batches of unequal sizes, so that a mean per batch and a mean per image differ.
SIZES = (4, 4, 1, 3)


def batches(nan_at=(), inf_at=()):
    """The batches; a NaN in the inputs of each batch of ``nan_at``, an infinite target in each of ``inf_at``."""
    generator = torch.Generator().manual_seed(7)
    data = [(torch.randn(n, 3, generator=generator), torch.randn(n, 2, generator=generator)) for n in SIZES]
    for index in nan_at:
        data[index][0][0, 0] = float("nan")
    for index in inf_at:
        data[index][1][0, 0] = float("inf")  # a finite prediction: the squared error is infinite
    return data


def mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def trainer(read_late: bool, epochs: int = 1) -> Trainer:
    """A CPU trainer that reads its losses each step, or (forced here) as a CUDA run with sync_free_steps would."""
    cfg = pretrain_preset("smoke", "synthetic", device="cpu", lr=0.05, epochs=epochs, checkpoint_every=1,
                          warmup_epochs=0)
    torch.manual_seed(0)
    result = Trainer(cfg, torch.nn.Linear(3, 2))
    result.sync_free_steps = read_late
    return result


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train(read_late, data):
    t = trainer(read_late)
    optimisation = t.new_optimisation()
    mean = t.train_one_epoch(data, mse, optimisation, "epoch 3")
    return mean, weights(t.model), optimisation


def test_a_sync_free_trainer_on_cuda_gets_a_fused_adam_and_a_cpu_trainer_does_not():
    cpu = Trainer(pretrain_preset("smoke", "synthetic", device="cpu"), torch.nn.Linear(3, 2))
    assert not cpu.sync_free_steps and not cpu.new_optimisation().optimizer.defaults["fused"]
    assert trainer(read_late=True).new_optimisation().optimizer.defaults["fused"]


def test_reading_late_gives_the_mean_per_image_of_reading_each_step():
    each_step, weights_each_step, _ = train(False, batches())
    late, weights_late, _ = train(True, batches())
    # the per-image mean, by hand: the same steps, each loss read at once
    assert late == pytest.approx(each_step, rel=1e-6)
    assert torch.allclose(weights_late, weights_each_step, atol=1e-6)  # fused and foreach Adam: last-bit rounding
    per_batch = []
    model = trainer(False)
    optimisation = model.new_optimisation()
    for batch in batches():
        loss = mse(model.model, batch)
        per_batch.append(float(loss.detach()))
        optimisation.step(loss)
    per_image = sum(value * n for value, n in zip(per_batch, SIZES)) / sum(SIZES)
    assert per_image != pytest.approx(sum(per_batch) / len(per_batch), rel=1e-3)  # the sizes make them differ
    assert late == pytest.approx(per_image, rel=1e-6)


@pytest.mark.parametrize("read_late", [False, True], ids=["each step", "late"])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_non_finite_loss_stops_the_epoch_with_the_weights_from_before_its_batch(read_late, bad):
    t = trainer(read_late)
    optimisation = t.new_optimisation()
    data = batches(nan_at=(1, 3)) if bad == "nan" else batches(inf_at=(1, 3))
    with pytest.raises(DivergenceError, match=rf"^epoch 3: training loss is {bad} at batch 1 \(lr 0.05\)$"):
        t.train_one_epoch(data, mse, optimisation, "epoch 3")  # the first bad batch is named
    # the weights after batch 0 alone: neither the bad batch nor the good ones after it were applied
    _, first_only, reference = train(read_late, batches()[:1])
    assert torch.equal(weights(t.model), first_only)
    steps = [state["step"] for state in optimisation.optimizer.state.values()]
    assert [float(step) for step in steps] == [1.0] * len(steps)
    assert all(torch.equal(optimisation.optimizer.state[p]["exp_avg"], reference.optimizer.state[q]["exp_avg"])
               for p, q in zip(t.model.parameters(), reference.optimizer.param_groups[0]["params"]))


def test_after_an_epoch_read_late_the_optimiser_steps_normally_again():
    t = trainer(True)
    optimisation = t.new_optimisation()
    with pytest.raises(DivergenceError):
        t.train_one_epoch(batches(nan_at=(0,)), mse, optimisation, "epoch 0")
    assert not hasattr(optimisation.optimizer, "found_inf")  # the epoch's skip flag is gone with it
    before = weights(t.model)
    assert math.isfinite(t.train_one_epoch(batches(), mse, optimisation, "epoch 1"))
    assert not torch.equal(weights(t.model), before)


def test_an_epoch_that_fails_half_way_leaves_no_skip_flag_on_the_optimiser():
    t = trainer(True)
    optimisation = t.new_optimisation()

    def fails_at_batch_2(model, batch):
        if len(batch[0]) == SIZES[2]:
            raise RuntimeError("a loader error, say")
        return mse(model, batch)

    with pytest.raises(RuntimeError, match="a loader error"):
        t.train_one_epoch(batches(nan_at=(0,)), fails_at_batch_2, optimisation, "epoch 0")  # flag set at batch 0
    assert not hasattr(optimisation.optimizer, "found_inf")


@pytest.mark.parametrize("saved_late, resumed_late", [(False, True), (True, False)],
                         ids=["each step, then late", "late, then each step"])
def test_a_run_resumes_from_a_checkpoint_written_with_the_other_way(tmp_path, saved_late, resumed_late):
    """sync_free_steps is not hashed: a run can crash with it off (or on a CPU) and resume with it on."""
    data = batches()

    def fit(read_late, run_dir, crash_at=None):
        t = trainer(read_late, epochs=3)
        used = []

        def train_epoch(epoch, optimisation):
            if epoch == crash_at:
                raise RuntimeError("crash")
            used.append(optimisation.optimizer)
            return {"train_loss": t.train_one_epoch(data, mse, optimisation, f"epoch {epoch}")}

        t.fit(run_dir, train_epoch)
        return weights(t.model), used[-1]

    with pytest.raises(RuntimeError, match="crash"):
        fit(saved_late, tmp_path / "run", crash_at=1)
    resumed, optimizer = fit(resumed_late, tmp_path / "run")
    uninterrupted, fresh = fit(resumed_late, tmp_path / "reference")
    assert all(bool(group["fused"]) == resumed_late and bool(group["foreach"]) != resumed_late
               for group in optimizer.param_groups)  # this run's Adam, not the file's
    for parameter, fresh_parameter in zip(optimizer.param_groups[0]["params"], fresh.param_groups[0]["params"]):
        state, fresh_state = optimizer.state[parameter], fresh.state[fresh_parameter]
        assert {key: (value.dtype, value.device) for key, value in state.items()} == \
            {key: (value.dtype, value.device) for key, value in fresh_state.items()}  # where the run's kind keeps them
    assert torch.allclose(resumed, uninterrupted, atol=1e-6)  # epoch 0's Adam was the other kind: last bits


def test_with_loss_scaling_read_late_an_overflowing_batch_is_left_out_not_fatal():
    """float16 on CUDA: the grad scaler skips a non-finite step; here the same with torch's CPU scaler."""
    data = batches(nan_at=(2,))
    t = trainer(True)
    optimizer = t.new_optimisation().optimizer
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    mean = t.train_one_epoch(data, mse, Optimisation(optimizer, None, scaler), "epoch 0")
    assert scaler.get_scale() == 512.0  # one overflow
    assert [float(state["step"]) for state in optimizer.state.values()] == [3.0, 3.0]  # batch 2 skipped
    # the mean of the three finite batches, per image, as reading each step gives it
    t_each = trainer(False)
    optimizer_each = t_each.new_optimisation().optimizer
    mean_each = t_each.train_one_epoch(data, mse, Optimisation(optimizer_each, None,
                                                                torch.amp.GradScaler("cpu", init_scale=1024.0)))
    assert math.isfinite(mean) and mean == pytest.approx(mean_each, rel=1e-5)


def test_reading_late_needs_a_fused_adam():
    t = trainer(False)
    with pytest.raises(SelmaskError, match="fused Adam"):
        EpochLosses(t.new_optimisation(), "epoch 0", read_late=True, device="cpu")
