"""Multi-process runs through torchrun + torch.distributed (DDP), on CPU with the gloo backend.

Two launches of ``python -m torch.distributed.run --nproc_per_node=2 --standalone``
(each costs ~15 s of process start-up on a loaded 2-core machine, so
they are kept to two): the ``selmask`` command for a selective pretraining
run, and a small worker script that checks the helpers of
``selmask_lib.distributed`` across two processes, then runs a random
pretraining, a fine-tuning from the selective run, and a selective run that
crashes inside a step on every rank and is resumed, and two runs whose loss
is NaN on one rank only (read each step, and read once per epoch).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from selmask_lib import distributed
from selmask_lib.config import pretrain_preset
from selmask_lib.data import load_segmentation_split
from selmask_lib.engine import epoch_generator, load_checkpoint
from selmask_lib.models import build_reconstruction_model
from selmask_lib.pretraining import load_step_masks, select_masks
from selmask_lib.pretrain_data import partition_indices, pretraining_pool
from selmask_lib.strategies import SelectiveMasking
from selmask_lib.results import read_per_image_confusions
from selmask_lib.transforms import test_transform as make_test_transform  # not collected as a test

REPO = Path(__file__).resolve().parents[1]
NPROC = 2
SMOKE = dict(n_partitions=2, epochs=1)  # the smoke preset already has these; named to make them explicit


def torchrun(args, cwd, timeout=300):
    """``python -m torch.distributed.run --nproc_per_node=2 --standalone ARGS`` on CPU; the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELMASK_NO_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={NPROC}",
                             "--standalone", *map(str, args)],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def data_root(small_synthetic_root):
    return small_synthetic_root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The module's run folder; checkpoints (~100 MB each) are deleted afterwards to spare the shared disk."""
    root = tmp_path_factory.mktemp("ddp")
    yield root
    for path in root.rglob("*.pt"):
        path.unlink()


@pytest.fixture(scope="module")
def selective_run(data_root, work):
    """``torchrun -m selmask_lib.cli pretrain --strategy selective`` with the smoke preset, 2 processes."""
    out = work / "selective"
    result = torchrun(["-m", "selmask_lib.cli", "pretrain", "--strategy", "selective", "--dataset", "synthetic",
                       "--data-root", data_root, "--preset", "smoke", "--out", out,
                       "--set", f"n_partitions={SMOKE['n_partitions']}", "--set", f"epochs={SMOKE['epochs']}"],
                      cwd=work)
    return out, result


WORKER = textwrap.dedent('''
    """Run by the test under torchrun: helper checks, a random pretraining, a fine-tuning, a crash and resume."""
    import json, os, sys
    from pathlib import Path
    import torch
    from selmask_lib import distributed as D
    from selmask_lib.config import finetune_preset, pretrain_preset
    from selmask_lib.finetuning import finetune
    from selmask_lib.metrics import SegmentationEvaluator
    from selmask_lib.pretraining import pretrain

    out, data_root, selective_run = (Path(arg) for arg in sys.argv[1:4])
    seen = {"initialised": D.init_distributed(), "again": D.init_distributed()}
    rank = D.rank()
    seen.update(rank=rank, world_size=D.world_size(), main=D.is_main_process(), rank_key=list(D.rank_key()),
                pid=os.getpid())
    items = list(range(7))
    seen["train_shards"] = [list(D.shard_sampler(items, True, seed=123, epoch=epoch)) for epoch in (0, 1, 0)]
    seen["eval_shard"] = D.eval_shard(items)
    seen["mean"] = D.all_reduce_mean(float(rank + 1), rank + 1)  # rank 0: one item of 1.0, rank 1: two of 2.0
    evaluator = SegmentationEvaluator(3, ignore_index=255)
    evaluator.update(torch.tensor([[rank, 0]]), torch.tensor([[rank, 1]]))  # truth (rank, 1), prediction (rank, 0)
    D.gather_confusion(evaluator)
    seen["confusion"] = evaluator.compute().confusion_matrix
    torch.manual_seed(0)
    ddp = D.wrap_model(torch.nn.Linear(3, 1), torch.device("cpu"))
    seen["wrapper"] = type(ddp).__name__
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    inputs = torch.randn(4, 3, generator=torch.Generator().manual_seed(100 + rank))
    ddp(inputs).pow(2).mean().backward()
    optimizer.step()
    seen["weight"] = D.unwrap(ddp).weight.detach().flatten().tolist()
    D.barrier()

    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy="random")
    random_run = pretrain(cfg, out_dir=out / "random")
    seen["random_weights_exist"] = random_run.weights.is_file()  # every rank returns after rank 0 wrote them
    ft = finetune_preset("smoke", "synthetic", data_root=str(data_root), init="selective_ir",
                         pretrained=str(selective_run))
    run = finetune(ft, out_dir=out / "finetune")
    seen["miou"] = run.results["miou"]

    # A crash inside selective step 1 on every rank, then a resume: the weights of an uninterrupted run.
    from selmask_lib.engine import Trainer
    resumable = pretrain_preset("smoke", "synthetic", data_root=str(data_root), epochs=2, checkpoint_every=1)
    uninterrupted = pretrain(resumable, out_dir=out / "uninterrupted")
    train_one_epoch = Trainer.train_one_epoch

    def crash_in_step_1_epoch_1(self, loader, batch_loss, optimisation, description=""):
        if description.startswith("step_01 epoch 1"):
            raise RuntimeError("simulated crash")
        return train_one_epoch(self, loader, batch_loss, optimisation, description)

    Trainer.train_one_epoch = crash_in_step_1_epoch_1
    try:
        pretrain(resumable, out_dir=out / "resumed")
    except RuntimeError as error:
        seen["crash"] = str(error)
    finally:
        Trainer.train_one_epoch = train_one_epoch
    D.barrier()
    seen["left_by_crash"] = sorted(str(p.relative_to(out / "resumed")) for p in (out / "resumed").rglob("*.pt"))
    D.barrier()
    resumed = pretrain(resumable, out_dir=out / "resumed")
    if rank == 0:
        a = torch.load(uninterrupted.weights, weights_only=True)["model"]
        b = torch.load(resumed.weights, weights_only=True)["model"]
        seen["resumed_equals_uninterrupted"] = all(torch.equal(a[k], b[k]) for k in a)

    # A loss that is NaN on rank 1 only: every rank stops at the same batch, none waits forever.
    from selmask_lib.errors import DivergenceError
    from selmask_lib.losses import ReconstructionLoss
    forward = ReconstructionLoss.forward

    def diverge_on_rank_1(run_dir):
        """The words of the DivergenceError of a random pretraining whose loss is NaN on rank 1 only."""
        if rank == 1:
            ReconstructionLoss.forward = lambda self, pred, target: forward(self, pred, target) * float("nan")
        try:
            pretrain(cfg, out_dir=run_dir)
        except DivergenceError as error:
            return str(error)
        finally:
            ReconstructionLoss.forward = forward

    seen["diverged"] = diverge_on_rank_1(out / "diverged")

    # The same with the losses read once per epoch (CUDA's sync_free_steps, forced on this CPU): the flag
    # that skips the steps is summed over the processes, so both stop, at the same batch.
    trainer_init = Trainer.__init__

    def sync_free(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        self.sync_free_steps = True

    Trainer.__init__ = sync_free
    try:
        seen["diverged_late"] = diverge_on_rank_1(out / "diverged_late")
    finally:
        Trainer.__init__ = trainer_init
    (out / f"seen_rank{rank}.json").write_text(json.dumps(seen))
''')


@pytest.fixture(scope="module")
def worker_runs(data_root, work, selective_run):
    script = work / "worker.py"
    script.write_text(WORKER)
    out = work / "worker"
    out.mkdir()
    result = torchrun([script, out, data_root, selective_run[0]], cwd=work)
    seen = [json.loads((out / f"seen_rank{rank}.json").read_text()) for rank in range(NPROC)]
    return out, seen, result


def files_of(run_dir):
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())


def jsonl_epochs(path):
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- single process: all no-ops


def test_without_torchrun_nothing_is_initialised(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed() is False
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.rank_key() == ()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model and distributed.unwrap(model) is model
    assert distributed.shard_sampler(range(5), True, seed=1) is None and distributed.eval_shard(range(5)) is None
    assert distributed.all_reduce_mean(0.1 + 0.2, 3) == 0.1 + 0.2  # unchanged, not re-rounded
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda")
    distributed.barrier()  # no-op


def test_single_process_under_a_one_process_torchrun_env_is_not_initialised(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_distributed() is False and not torch.distributed.is_initialized()


# --------------------------------------------------------------------------- two processes, gloo


def test_a_loss_that_diverges_on_one_process_stops_every_process(worker_runs):
    _, seen, _ = worker_runs
    assert "training loss is nan at batch 0" in seen[1]["diverged"]
    assert "training loss of another process is not finite at batch 0" in seen[0]["diverged"]
    # read at the end of the epoch (sync_free_steps): the same batch and words on each process
    assert "training loss is nan at batch 0" in seen[1]["diverged_late"]
    assert "training loss of another process is not finite at batch 0" in seen[0]["diverged_late"]


def test_helpers_across_two_gloo_processes(worker_runs):
    _, seen, _ = worker_runs
    assert [s["initialised"] and s["again"] for s in seen] == [True, True]
    assert [(s["rank"], s["world_size"], s["main"]) for s in seen] == [(0, 2, True), (1, 2, False)]
    assert [s["rank_key"] for s in seen] == [["rank", 0], ["rank", 1]]
    # training shards: padded to equal length, together cover every item, same order for the same epoch
    shards = [s["train_shards"] for s in seen]
    for epoch in range(3):
        assert len(shards[0][epoch]) == len(shards[1][epoch]) == 4
        assert set(shards[0][epoch]) | set(shards[1][epoch]) == set(range(7))
    assert shards[0][0] == shards[0][2] and shards[0][0] + shards[1][0] != shards[0][1] + shards[1][1]
    # evaluation shards: each item exactly once
    assert sorted(seen[0]["eval_shard"] + seen[1]["eval_shard"]) == list(range(7))
    assert [s["mean"] for s in seen] == [pytest.approx(5 / 3)] * 2
    # confusion matrices summed over both processes (rows truth, columns prediction)
    expected = [[1, 0, 0], [2, 1, 0], [0, 0, 0]]  # rank 0: (0->0), (1->0); rank 1: (1->1), (1->0)
    assert [s["confusion"] for s in seen] == [expected, expected]
    # DDP averaged the gradients: both processes took the step of the mean gradient
    assert [s["wrapper"] for s in seen] == ["DistributedDataParallel"] * 2
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    inputs = [torch.randn(4, 3, generator=torch.Generator().manual_seed(100 + rank)) for rank in range(NPROC)]
    grads = [torch.autograd.grad(model(x).pow(2).mean(), model.weight)[0] for x in inputs]
    expected_weight = (model.weight - 0.1 * torch.stack(grads).mean(0)).detach().flatten()
    for s in seen:
        assert torch.allclose(torch.tensor(s["weight"]), expected_weight, atol=1e-6)


def test_selective_pretraining_with_torchrun_cli(selective_run, data_root):
    run_dir, result = selective_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == SMOKE["n_partitions"]
    # exactly the files of a single-process run: one copy each, no temporary or resumable state left
    assert files_of(run_dir) == [".lock", "config.yaml", "pretrained.pt", "run.json", "run.log",
                                 "step_00/metrics.csv", "step_00/metrics.jsonl", "step_00/model.pt",
                                 "step_01/masks.pt", "step_01/metrics.csv", "step_01/metrics.jsonl",
                                 "step_01/model.pt"]
    for step in ("step_00", "step_01"):
        assert jsonl_epochs(run_dir / step / "metrics.jsonl") == list(range(SMOKE["epochs"]))
    log = (run_dir / "run.log").read_text()
    assert log.count("pretraining ") == 1 and log.count("finished in") == 1 and log.count("scored") == 1
    assert result.stdout.count("pretrained weights:") == 1  # every process ran it; rank 0 alone reports

    # step 1's masks cover its partition exactly once, each with half its patches masked
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy="selective", **SMOKE)
    artefact = load_step_masks(run_dir / "step_01")
    partition = partition_indices(cfg.max_images, cfg.n_partitions)[1]
    assert artefact["indices"].tolist() == partition
    counts = artefact["n_patches"]
    assert artefact["masks"].sum(1).tolist() == [int(cfg.mask_ratio * n) for n in counts.tolist()]

    # rank 0 scored alone with the step 0 model: the masks a single process computes with it
    model = build_reconstruction_model(cfg.dropout)
    model.load_state_dict(load_checkpoint(run_dir / "step_00" / "model.pt")["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes (OMP_NUM_THREADS=1): the same float sums
    try:
        again = select_masks(model, pretraining_pool(cfg), partition, cfg, SelectiveMasking(cfg.n_scoring_draws),
                             epoch_generator(cfg.seed, "score", 1), torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again["masks"], artefact["masks"])


def test_random_pretraining_and_finetuning_under_torchrun(worker_runs, data_root):
    out, seen, _ = worker_runs
    assert [s["random_weights_exist"] for s in seen] == [True, True]
    random_dir = out / "random"
    assert json.loads((random_dir / "run.json").read_text())["status"] == "complete"
    assert files_of(random_dir) == [".lock", "config.yaml", "metrics.csv", "metrics.jsonl", "pretrained.pt",
                                    "run.json", "run.log"]
    assert jsonl_epochs(random_dir / "metrics.jsonl") == [0]
    assert (random_dir / ".lock").read_text().split()[0] == str(seen[0]["pid"])  # rank 0 held it for both

    ft_dir = out / "finetune"
    assert json.loads((ft_dir / "run.json").read_text())["status"] == "complete"
    assert files_of(ft_dir) == [".lock", "best.pt", "config.yaml", "metrics.csv", "metrics.jsonl", "results.json",
                                "run.json", "run.log"]
    assert jsonl_epochs(ft_dir / "metrics.jsonl") == [0, 1]  # smoke: 2 epochs, one row each
    results = json.loads((ft_dir / "results.json").read_text())
    assert results["init"] == "selective_ir" and results["pretrain_relation"] == "self"
    assert seen[0]["miou"] == seen[1]["miou"] == pytest.approx(results["miou"])
    # the test split was sharded across the processes and the counts summed: every labelled pixel once
    test = load_segmentation_split("synthetic", data_root, "test", make_test_transform(results["config"]["image_size"]))
    labelled = sum(int((test[i][1] != 255).sum()) for i in range(len(test)))
    assert sum(map(sum, results["confusion_matrix"])) == labelled
    # and each image's own counts, gathered from the shard that scored it, in the split's order
    per_image = read_per_image_confusions(ft_dir)
    assert per_image.ids == tuple(test.ids)
    assert per_image.counts.sum((1, 2)).tolist() == [int((test[i][1] != 255).sum()) for i in range(len(test))]


def test_selective_pretraining_resumes_under_torchrun(worker_runs):
    out, seen, _ = worker_runs
    assert [s["crash"] for s in seen] == ["simulated crash"] * NPROC
    # what the crash left: step 0 done, step 1's masks and its epoch-0 resumable state
    assert seen[0]["left_by_crash"] == ["step_00/model.pt", "step_01/last.pt", "step_01/masks.pt"]
    assert seen[0]["resumed_equals_uninterrupted"] is True
    log = (out / "resumed" / "run.log").read_text()
    assert log.count("scored") == 1 and "reusing saved masks" in log  # resumed inside the step, not re-scored
    assert jsonl_epochs(out / "resumed" / "step_01" / "metrics.jsonl") == [0, 1]
    assert files_of(out / "resumed") == files_of(out / "uninterrupted")
