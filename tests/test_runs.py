"""One process per run folder, cleaning after killed writes, and runs that fail before training (selmask_lib.runs).

The lock is tested on its own (in this process and against a second
process) and through ``pretrain`` and the command line; real runs use the
smoke preset on a few images of the small synthetic set.
"""

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selmask_lib import cli
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.engine import Trainer
from selmask_lib.errors import SelmaskError
from selmask_lib.files import atomic_write, is_temp_file, remove_temp_files
from selmask_lib.finetuning import finetune
from selmask_lib.pretraining import pretrain
from selmask_lib.pretrain_data import pretraining_pool
from selmask_lib.runs import (
    LOCK_FILE,
    begin_run,
    check_run_dir,
    has_trained,
    run_lock,
    training_run,
    update_run_info,
)

REPO = Path(__file__).resolve().parents[1]
pretrain_module = importlib.import_module("selmask_lib.pretraining")  # the package exposes the function


@pytest.fixture(scope="module")
def data_root(small_synthetic_root):
    return small_synthetic_root


def smoke(data_root, **overrides):
    """One epoch of random masking on eight images: the cheapest real pretraining run."""
    values = dict(data_root=str(data_root), strategy="random", max_images=8, epochs=1, device="cpu")
    return pretrain_preset("smoke", "synthetic", **{**values, **overrides})


def snapshot(folder):
    """Every file under ``folder`` (hidden ones too) with its bytes and mtime."""
    return {path.relative_to(folder).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def lock_is_free(folder) -> bool:
    try:
        with run_lock(folder):
            return True
    except SelmaskError:
        return False


HOLDER = textwrap.dedent("""
    import sys
    from selmask_lib.runs import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the test closes this process's stdin
""")


@pytest.fixture
def other_process():
    """``hold(folder)``: a second Python process that takes the folder's lock and keeps it; stopped afterwards."""
    processes = []

    def hold(folder):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, env=env)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in processes:
        process.stdin.close()
        process.wait(timeout=60)


# --------------------------------------------------------------------------- the lock itself


def test_a_second_lock_in_the_same_process_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder) as lock_file:
        assert lock_file == folder / LOCK_FILE
        held = lock_file.read_bytes()
        with pytest.raises(SelmaskError) as refused:
            with run_lock(folder):
                pytest.fail("two holders of one run folder")
        assert str(refused.value) == (f"{folder} is in use by another selmask process (pid {os.getpid()}); "
                                      f"wait for it to finish or stop it")
        assert lock_file.read_bytes() == held  # the refused attempt did not wipe the holder's pid
    assert lock_is_free(folder)


def test_the_lock_is_released_when_its_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path):
            raise RuntimeError("crash while holding the lock")
    assert lock_is_free(tmp_path)


def test_a_lock_held_by_another_process_names_it_and_frees_when_it_is_killed(tmp_path, other_process):
    holder = other_process(tmp_path)
    with pytest.raises(SelmaskError, match=rf"^{tmp_path} is in use by another selmask process \(pid {holder.pid}\)"):
        with run_lock(tmp_path):
            pass
    holder.kill()  # SIGKILL: the lock file stays, the kernel drops the lock
    holder.wait(timeout=60)
    assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(holder.pid)  # a stale lock file...
    with run_lock(tmp_path):  # ...does not block
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())


# --------------------------------------------------------------------------- temp files of killed writes


def test_atomic_write_names_its_temp_files_as_the_cleaner_expects(tmp_path):
    seen = []

    def write(file):
        seen.extend(path.name for path in tmp_path.iterdir())  # the temp file exists while it is filled
        file.write(b"weights")

    atomic_write(tmp_path / "last.pt", write)
    assert len(seen) == 1 and seen[0].startswith(".last.pt.") and is_temp_file(seen[0])
    for name in ("last.pt", ".lock", "notes.tmp.txt", ".notes.tmp", "last.pt.tmp", ".last.pt.tmp.bak", ".tmp"):
        assert not is_temp_file(name), name


def test_remove_temp_files_deletes_only_temps_in_the_folder_and_its_subfolders(tmp_path):
    temps = [tmp_path / ".last.pt.k2x9_qa1.tmp", tmp_path / "step_00" / ".model.pt.abcd1234.tmp"]
    kept = [tmp_path / "notes.tmp.txt", tmp_path / ".lock", tmp_path / "last.pt", tmp_path / "step_00" / "masks.pt"]
    for path in temps + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    assert sorted(remove_temp_files(tmp_path)) == sorted(temps)
    assert sorted(tmp_path.rglob("*")) == sorted(kept + [tmp_path / "step_00"])


# --------------------------------------------------------------------------- what check_run_dir accepts


def test_a_folder_holding_only_a_lock_and_temp_files_counts_as_empty(tmp_path, data_root):
    cfg = smoke(data_root)
    with run_lock(tmp_path):
        (tmp_path / ".run.json.abcd1234.tmp").write_text("{")
        assert check_run_dir(tmp_path, "pretrain", cfg, resume=False) is None
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SelmaskError, match="is not empty and holds no selmask pretraining run"):
        check_run_dir(tmp_path, "pretrain", cfg, resume=False)


def test_a_run_that_never_trained_is_started_afresh_whatever_its_config(tmp_path, data_root):
    cfg, other = smoke(data_root), smoke(data_root, lr=1e-3)
    begin_run(tmp_path, "pretrain", other)  # config.yaml + run.json "running": what a crash before epoch 0 leaves
    (tmp_path / "run.log").write_text("pretraining ...\n")
    (tmp_path / "step_00").mkdir()  # a selective run's first step folder, still empty
    assert not has_trained(tmp_path)
    assert check_run_dir(tmp_path, "pretrain", cfg, resume=False) is None
    assert check_run_dir(tmp_path, "finetune", finetune_preset("smoke", "synthetic"), resume=False) is None

    (tmp_path / "step_00" / "metrics.jsonl").write_text('{"epoch": 0}\n')  # one epoch saved: a run to keep
    assert has_trained(tmp_path)
    with pytest.raises(SelmaskError, match="different config"):
        check_run_dir(tmp_path, "pretrain", cfg, resume=True)
    with pytest.raises(SelmaskError, match="--resume"):
        check_run_dir(tmp_path, "pretrain", other, resume=False)


def test_a_run_finished_by_another_process_meanwhile_is_not_trained_again(tmp_path, data_root):
    cfg = smoke(data_root)
    assert check_run_dir(tmp_path / "run", "pretrain", cfg, resume=False) is None  # this process decides to train
    begin_run(tmp_path / "run", "pretrain", cfg)  # ...while another one trains the same config to the end
    (tmp_path / "run" / "pretrained.pt").write_bytes(b"weights")
    finished = update_run_info(tmp_path / "run", status="complete", weights="pretrained.pt")
    before = snapshot(tmp_path / "run")
    with pytest.raises(SelmaskError, match="finished by another selmask process"):
        with training_run(tmp_path / "run", "pretrain", cfg, resume=False):
            pytest.fail("trained a finished run again")
    assert {name: data for name, (data, _) in snapshot(tmp_path / "run").items() if name != LOCK_FILE} == \
        {name: data for name, (data, _) in before.items() if name != LOCK_FILE}
    # a caller that saw the finished run and wants it trained again (fine-tuning without results.json) may
    with training_run(tmp_path / "run", "pretrain", cfg, resume=False, finished=finished):
        assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"


# --------------------------------------------------------------------------- through pretrain and the command line


def test_pretrain_in_a_folder_another_process_trains_in_is_refused_and_changes_nothing(
        tmp_path, data_root, other_process, capsys):
    folder = tmp_path / "run"
    holder = other_process(folder)
    (folder / ".last.pt.abcd1234.tmp").write_bytes(b"half a checkpoint of the live run")
    before = snapshot(folder)
    with pytest.raises(SelmaskError, match=rf"^{folder} is in use by another selmask process \(pid {holder.pid}\)"):
        pretrain(smoke(data_root), out_dir=folder, resume=True)
    assert snapshot(folder) == before  # not even the live run's temp file was touched

    args = ["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", str(data_root),
            "--preset", "smoke", "--out", str(folder), "--resume"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"selmask: error: {folder} is in use by another selmask process (pid {holder.pid}); "
                   f"wait for it to finish or stop it")
    assert snapshot(folder) == before


def test_the_lock_is_released_after_a_run_finishes_and_after_it_raises(tmp_path, data_root, monkeypatch):
    run = pretrain(smoke(data_root), out_dir=tmp_path / "done")
    assert (run.run_dir / LOCK_FILE).is_file() and lock_is_free(run.run_dir)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while building the model")

    monkeypatch.setattr(pretrain_module, "build_reconstruction_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(smoke(data_root), out_dir=tmp_path / "crashed")
    assert lock_is_free(tmp_path / "crashed")


def test_a_run_that_fails_before_its_first_epoch_does_not_block_the_next_plain_run(tmp_path, data_root,
                                                                                  monkeypatch):
    from selmask_lib.data import UnlabelledImages

    data = shutil.copytree(data_root, tmp_path / "data")
    cfg = smoke(data)
    image = pretraining_pool(cfg).paths[0]
    good = image.read_bytes()
    image.write_bytes(b"not an image")
    monkeypatch.setattr(UnlabelledImages, "check_all", lambda *args, **kwargs: None)  # it goes bad after the check
    with pytest.raises(SelmaskError, match="cannot read image"):
        pretrain(cfg, out_dir=tmp_path / "run")  # in epoch 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"

    monkeypatch.undo()
    image.write_bytes(good)
    run = pretrain(cfg, out_dir=tmp_path / "run", resume=False)  # no --resume needed: nothing was trained
    assert json.loads((run.run_dir / "run.json").read_text())["status"] == "complete"
    assert run.weights.is_file()


def test_a_finetune_that_fails_in_its_first_epoch_does_not_block_the_next_plain_run(tmp_path, data_root,
                                                                                    monkeypatch):
    cfg = finetune_preset("smoke", "synthetic", data_root=str(data_root), epochs=1, max_train_images=4,
                          device="cpu")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated out of memory in the first batch")

    monkeypatch.setattr(Trainer, "train_one_epoch", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        finetune(cfg, out_dir=tmp_path / "run")
    monkeypatch.undo()
    run = finetune(cfg.updated(batch_size=2), out_dir=tmp_path / "run", resume=False)  # another config, too
    assert run.results["config"]["batch_size"] == 2 and (tmp_path / "run" / "results.json").is_file()


def test_stale_temp_files_are_deleted_when_the_run_starts_again(tmp_path, data_root, monkeypatch):
    cfg = smoke(data_root, strategy="selective", n_partitions=2)
    real_train_one_epoch = Trainer.train_one_epoch

    def crash_in_step_1(self, loader, batch_loss, optimisation, description=""):
        if description.startswith("step_01"):
            raise RuntimeError("simulated kill in step 1")
        return real_train_one_epoch(self, loader, batch_loss, optimisation, description)

    monkeypatch.setattr(Trainer, "train_one_epoch", crash_in_step_1)
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain(cfg, out_dir=tmp_path / "run")
    run_dir = tmp_path / "run"
    stale = [run_dir / ".pretrained.pt.abcd1234.tmp", run_dir / "step_00" / ".model.pt.x1y2z3w4.tmp",
             run_dir / "step_01" / ".last.pt.q_9rt0ab.tmp"]
    kept = [run_dir / "notes.tmp.txt", run_dir / "step_00" / ".notes.tmp"]
    for path in stale + kept:
        path.write_bytes(b"left behind")

    left_at_first_epoch = []

    def watching(self, loader, batch_loss, optimisation, description=""):
        left_at_first_epoch.append([path for path in stale if path.exists()])
        return real_train_one_epoch(self, loader, batch_loss, optimisation, description)

    monkeypatch.setattr(Trainer, "train_one_epoch", watching)
    pretrain(cfg, out_dir=run_dir, resume=True)
    assert left_at_first_epoch[0] == []  # gone before training went on, not merely at the end
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == b"left behind" for path in kept)
    assert "deleted 3 temporary files of interrupted writes" in (run_dir / "run.log").read_text()


def test_a_full_disk_is_one_clear_error_that_keeps_the_old_file(tmp_path):
    import errno

    from selmask_lib.errors import SelmaskError
    from selmask_lib.files import atomic_write, write_text_atomic

    target = write_text_atomic(tmp_path / "run.json", "old\n")

    def fill_the_disk(file):
        file.write(b"x" * 1000)
        file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SelmaskError, match=r"run.json: the disk is full \(1000 bytes written before it failed"):
        atomic_write(target, fill_the_disk)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left

    def torch_stream_failure(file):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    with pytest.raises(SelmaskError, match="is the disk full"):
        atomic_write(target, torch_stream_failure)
    with pytest.raises(ZeroDivisionError):  # a bug is not the disk's fault: it stays a bug
        atomic_write(target, lambda file: 1 / 0)


FILE_SIZE_LIMIT_SAVE = textwrap.dedent('''
    """A checkpoint written under a 1 MB file-size limit: the kernel refuses its writes as a full disk does."""
    import resource, signal, sys
    import torch
    from selmask_lib.engine import save_checkpoint
    from selmask_lib.errors import SelmaskError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_checkpoint(sys.argv[1], {"weights": torch.zeros(1_000_000)})
    except SelmaskError as error:
        print("SelmaskError:", error)
''')


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_a_checkpoint_that_the_disk_refuses_half_way_is_one_clear_error(tmp_path):
    """Not a mock: torch.save's own words for a write the disk refused ("unexpected pos", met when a disk filled)."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    kit = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [kit, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT_SAVE, str(target)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.stdout.startswith(f"SelmaskError: cannot write {target}: the write failed (is the disk full?)"), \
        result.stdout + result.stderr
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_disk_that_fills_during_a_checkpoint_is_one_line_from_the_cli(small_synthetic_root, tmp_path, capsys,
                                                                         monkeypatch):
    import torch

    def full_disk_save(obj, file, *args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk_save)
    args = ["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", str(small_synthetic_root),
            "--preset", "smoke", "--out", str(tmp_path / "run")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("selmask: error: cannot write ") and "disk full" in err
    assert not [p for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
