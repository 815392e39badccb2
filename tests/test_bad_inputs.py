"""Every bad input and fault of issue 11, through the command line: one line, exit 2, nothing earlier changed.

``CASES`` is the one table. Each case runs ``selmask ...`` as a process of its own and checks that

- it exits with status 2 (a mistake the user can fix, or a fault of the machine they can fix);
- stderr is exactly one line, ``selmask: error: ...``, naming the file, key or folder of the case;
  neither stdout nor stderr holds a traceback;
- every file that existed before in the output folder, in the data and in any run the command
  reads is byte-identical afterwards (hashed before and after; two files are left out: ``run.log``,
  the run's diary, and ``.lock``, which each process that takes the lock rewrites with its pid);
  and unless the case says so, no new file appears either.

Importing torch costs seconds on a loaded machine, so the commands are forked from one interpreter
that imported the kit once (:func:`warm_cli`): each case is still its own process with its own
stdout, stderr and exit status, running ``cli.main`` as ``python -m selmask_lib.cli`` does.

``SELMASK_BAD_INPUTS_TABLE=table.md pytest tests/test_bad_inputs.py`` also writes the cases as a
markdown table (case, command, exit status, message).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from selmask_lib.config import pretrain_preset
from selmask_lib.data import load_segmentation_split
from selmask_lib.engine import Trainer
from selmask_lib.pretrain_data import pretraining_pool
from selmask_lib.pretraining import pretrain
from selmask_lib.runs import run_lock

REPO = Path(__file__).resolve().parents[1]

# The cheapest real runs: one epoch of random masking on eight images, eight training images to fine-tune.
PRETRAIN = "pretrain --strategy random --dataset synthetic --preset smoke --set max_images=8 --set device=cpu"
FINETUNE = "finetune --dataset synthetic --preset smoke --set max_train_images=4 --set epochs=1 --set device=cpu"
VOLATILE = {"run.log", ".lock"}  # rewritten by design on every start (see the module docstring)


# --------------------------------------------------------------------------- ways to break things


def first_pool_image(root: Path) -> Path:
    return pretraining_pool(pretrain_preset("smoke", "synthetic", data_root=str(root), max_images=8)).paths[0]


def first_train_sample(root: Path):
    return load_segmentation_split("synthetic", root, "train").samples[0]


def corrupt_pool_image(root: Path) -> Path:
    path = first_pool_image(root)
    path.write_bytes(path.read_bytes()[:200])  # a truncated JPEG: its header is fine, its pixels are not
    return path


def resize_pool_image(width: int, height: int) -> Callable[[Path], Path]:
    def change(root: Path) -> Path:
        path = first_pool_image(root)
        Image.new("RGB", (width, height), (90, 120, 30)).save(path, format="JPEG")
        return path
    return change


def empty_val_split(root: Path) -> Path:
    path = next(root.rglob("ImageSets/Segmentation/val.txt"))
    path.write_text("")
    return root


def relabel(make_label: Callable[[Image.Image], Image.Image]) -> Callable[[Path], Path]:
    """Replace the first training label with ``make_label(old label)``."""
    def change(root: Path) -> Path:
        path = first_train_sample(root).label_path
        with Image.open(path) as label:
            label.load()
        make_label(label).save(path)
        return path
    return change


def label_of_class_77(label: Image.Image) -> Image.Image:
    bad = Image.fromarray(np.full((label.height, label.width), 77, dtype=np.uint8), mode="P")
    bad.putpalette(label.getpalette())
    return bad


def shrink_train_sample(root: Path) -> Path:
    sample = first_train_sample(root)
    Image.new("RGB", (16, 16)).save(sample.image_path, format="JPEG")
    with Image.open(sample.label_path) as label:
        label.resize((16, 16), Image.NEAREST).save(sample.label_path)
    return sample.image_path


def other_sized_pool_image(root: Path) -> Path:
    path = first_pool_image(root)
    with Image.open(path) as image:
        image.save(path, format="JPEG", quality=20)  # same names, other sizes: other data
    return root


def garble_weights(run_dir: Path) -> Path:
    path = run_dir / "pretrained.pt"
    path.write_bytes(b"not a checkpoint")
    return path


def checkpoint_of_another_config(run_dir: Path) -> Path:
    path = run_dir / "last.pt"
    state = torch.load(path, weights_only=False)
    state["config_hash"] = "0123456789abcdef"
    torch.save(state, path)
    return path


# Python run in the command's process before cli.main: a disk that fills while a metrics row is appended
# (half the row is written, then ENOSPC), the way a real full disk fails a write.
FULL_DISK = """
import builtins, errno, os
real_open = builtins.open
class FillingDisk:
    def __init__(self, file): self.file = file
    def write(self, text):
        self.file.write(text[: len(text) // 2]); self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __enter__(self): return self
    def __exit__(self, *exc): self.file.close()
def open(file, mode="r", *args, **kwargs):
    opened = real_open(file, mode, *args, **kwargs)
    return FillingDisk(opened) if "a" in mode and str(file).endswith(("metrics.jsonl", "metrics.csv")) else opened
builtins.open = open
"""
# A file that went bad after the check before training: loader workers meet it mid-epoch.
SKIP_POOL_CHECK = "from selmask_lib.data import UnlabelledImages; UnlabelledImages.check_all = lambda *a, **k: None"


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One bad command. ``command`` and ``names`` may use these placeholders:

    ``{pretrain}`` / ``{finetune}`` the command with the cheap settings (``PRETRAIN``, ``FINETUNE``),
    ``{data}`` the data root (a broken copy if ``break_data``), ``{file}`` what ``break_data`` or
    ``break_run`` returned, ``{run}`` a copy of a session run (``run``: "finished" or "unfinished",
    changed by ``break_run``), ``{out}`` a fresh output folder, ``{tmp}`` the case's folder,
    ``{clean}`` the untouched data root, ``{pid}`` this test process (holding the lock if ``locked``).
    """

    id: str
    command: str
    names: tuple[str, ...]
    break_data: Optional[Callable[[Path], Path]] = None
    run: Optional[str] = None
    break_run: Optional[Callable[[Path], Path]] = None
    fault: str = ""                 # Python run in the command's process first (fault injection)
    locked: bool = False
    adds_files: bool = False        # the command may add files (never change earlier ones)


CASES = [
    Case("missing root", "{pretrain} --data-root {tmp}/absent --out {out}", ("{tmp}/absent",)),
    Case("empty split", "{finetune} --data-root {data} --out {out}", ("'val' split", "{data}"),
         break_data=empty_val_split),
    Case("corrupt image", "{pretrain} --data-root {data} --out {out}", ("{file}", "corrupt"),
         break_data=corrupt_pool_image),
    Case("label out of range", "{finetune} --data-root {data} --out {out}", ("{file}", "77"),
         break_data=relabel(label_of_class_77)),
    Case("size mismatch", "{finetune} --data-root {data} --out {out}", ("{file}", "px"),
         break_data=relabel(lambda label: label.resize((label.width + 8, label.height), Image.NEAREST))),
    Case("RGB label", "{finetune} --data-root {data} --out {out}", ("{file}", "RGB"),
         break_data=relabel(lambda label: label.convert("RGB"))),
    Case("unknown dataset", "pretrain --strategy random --dataset imagenet --out {out}", ("--dataset", "imagenet")),
    Case("unknown key", "{pretrain} --data-root {data} --out {out} --set lrr=0.1", ("'lrr'",)),
    Case("wrong type", "{pretrain} --data-root {data} --out {out} --set epochs=abc", ("'epochs'",)),
    Case("corrupt checkpoint", "{finetune} --data-root {data} --out {out} --init random_ir --pretrained {run}",
         ("{file}", "corrupt"), run="finished", break_run=garble_weights),
    Case("checkpoint of another config",
         "{pretrain} --data-root {data} --set epochs=2 --set checkpoint_every=1 --out {run} --resume",
         ("{file}", "different config"), run="unfinished", break_run=checkpoint_of_another_config),
    Case("unwritable output", "{pretrain} --data-root {data} --out {tmp}/a_file/run", ("{tmp}/a_file",)),
    Case("divergence", "{pretrain} --data-root {data} --out {out} --set lr=1e10", ("diverged", "{out}", "lr"),
         adds_files=True),
    Case("second process on a locked folder", "{pretrain} --data-root {data} --out {out}",
         ("{out}", "pid {pid}"), locked=True),
    Case("data root changed under a cached run", "{pretrain} --data-root {data} --out {run}",
         ("{run}", "{clean}", "{data}"), break_data=other_sized_pool_image, run="finished"),
    Case("num_workers=2 and an image corrupted after the check",
         "{pretrain} --data-root {data} --out {out} --set num_workers=2", ("{file}", "corrupt"),
         break_data=corrupt_pool_image, fault=SKIP_POOL_CHECK, adds_files=True),
    Case("bad YAML in --set", "{pretrain} --data-root {data} --out {out} --set 'crop_scale=[0.5'",
         ("'crop_scale'", "YAML")),
    Case("unavailable device", "{pretrain} --data-root {data} --out {out} --set device=cuda", ("'device'", "cuda")),
    Case("tiny image 1x1", "{pretrain} --data-root {data} --out {out}", ("{file}", "1x1 px"),
         break_data=resize_pool_image(1, 1)),
    Case("tiny image 3x200", "{pretrain} --data-root {data} --out {out}", ("{file}", "3x200 px"),
         break_data=resize_pool_image(3, 200)),
    Case("tiny fine-tuning image", "{finetune} --data-root {data} --out {out}", ("{file}", "32 px"),
         break_data=shrink_train_sample),
    Case("full disk",
         "{pretrain} --data-root {data} --set epochs=2 --set checkpoint_every=1 --out {run} --resume",
         ("{run}/metrics.jsonl", "disk is full"), run="unfinished", fault=FULL_DISK),
]


# --------------------------------------------------------------------------- one warm interpreter, a process per case

FORK_SERVER = r"""
import json, os, signal, sys, traceback
from selmask_lib import cli, finetuning, pretraining  # the slow imports (torch and friends), once
for request in map(json.loads, sys.stdin):
    pid = os.fork()
    if pid == 0:  # the command's own process
        code = 1
        try:
            signal.alarm(request["timeout"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            exec(request["fault"], {})
            code = cli.main(request["argv"])
        except SystemExit as exit:  # argparse
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.fixture(scope="module")
def warm_cli():
    """``run(argv, folder, fault="") -> (exit status, stdout, stderr)``, each command a fresh process."""
    env = {**os.environ, "SELMASK_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd=REPO)

    def run(argv: list[str], folder: Path, fault: str = "") -> tuple[int, str, str]:
        out, err = folder / "stdout.txt", folder / "stderr.txt"
        request = {"argv": argv, "fault": fault, "stdout": str(out), "stderr": str(err), "timeout": 240}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        status = int(server.stdout.readline())
        return status, out.read_text(), err.read_text()

    yield run
    server.stdin.close()
    server.wait(timeout=60)


# --------------------------------------------------------------------------- runs the cases start from


def smoke_run(data_root: Path, out: Path, epochs: int, **settings) -> Path:
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(data_root), strategy="random", max_images=8,
                          epochs=epochs, device="cpu", **settings)  # what PRETRAIN says
    return pretrain(cfg, out_dir=out).run_dir


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def session_runs(small_synthetic_root, tmp_path_factory):
    """A finished one-epoch run, and a two-epoch run stopped after its first epoch (resumable)."""
    folder = tmp_path_factory.mktemp("runs")
    finished = smoke_run(small_synthetic_root, folder / "finished", epochs=1)

    def stop_at_epoch_1(self, loader, batch_loss, optimisation, description=""):
        if "epoch 1" in description:
            raise Stop
        return train_one_epoch(self, loader, batch_loss, optimisation, description)

    train_one_epoch = Trainer.train_one_epoch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_one_epoch", stop_at_epoch_1)
        with pytest.raises(Stop):
            smoke_run(small_synthetic_root, folder / "unfinished", epochs=2, checkpoint_every=1)  # last.pt at epoch 0
    return {"finished": finished, "unfinished": folder / "unfinished"}


# --------------------------------------------------------------------------- the test


def file_hashes(folder: Path) -> Optional[dict[str, str]]:
    """sha256 of every file under ``folder`` but the volatile two; None if there is no folder."""
    if not folder.exists():
        return None
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name not in VOLATILE}


TABLE_ROWS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def markdown_table():
    """Write the table of cases to $SELMASK_BAD_INPUTS_TABLE when it is set."""
    yield
    target = os.environ.get("SELMASK_BAD_INPUTS_TABLE")
    if target and TABLE_ROWS:
        header = ("| case | command (`selmask ...`) | exit | message (stderr, one line) |\n"
                  "|---|---|---|---|\n")
        Path(target).write_text(header + "".join(TABLE_ROWS))


def short_command(case: Case) -> str:
    text = case.command.replace("{pretrain}", "pretrain …").replace("{finetune}", "finetune …")
    return text.replace("{", "<").replace("}", ">").replace("|", "\\|")


@pytest.mark.parametrize("case", CASES, ids=[case.id.replace(" ", "-") for case in CASES])
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(case, warm_cli, small_synthetic_root, session_runs,
                                                            tmp_path):
    if case.id == "unavailable device" and torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    places = {"pretrain": PRETRAIN, "finetune": FINETUNE, "tmp": tmp_path, "out": tmp_path / "out", "data": small_synthetic_root,
              "clean": small_synthetic_root, "pid": os.getpid(), "file": ""}
    if case.break_data is not None:
        places["data"] = tmp_path / "data"
        shutil.copytree(small_synthetic_root, places["data"])
        places["file"] = case.break_data(places["data"])
    if case.run is not None:
        places["run"] = tmp_path / "run"
        shutil.copytree(session_runs[case.run], places["run"])
        if case.break_run is not None:
            places["file"] = case.break_run(places["run"])
    (tmp_path / "a_file").write_text("a file, where a folder is needed\n")
    watched = [Path(places[name]) for name in ("out", "data", "run") if name in places]
    argv = shlex.split(case.command.format(**places))
    with run_lock(places["out"]) if case.locked else nullcontext():  # as a second process would find it
        before = {folder: file_hashes(folder) for folder in watched}
        status, stdout, stderr = warm_cli(argv, tmp_path, case.fault)

    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("selmask: error: "), stderr
    assert "Traceback" not in stdout + stderr
    for name in case.names:
        assert name.format(**places) in lines[0]
    for folder in watched:
        after = file_hashes(folder)
        if case.adds_files and before[folder] is not None:
            after = {name: digest for name, digest in (after or {}).items() if name in before[folder]}
        assert after == before[folder] or (case.adds_files and before[folder] is None), folder
    message = lines[0].replace(str(tmp_path), "<tmp>").replace(str(tmp_path.parent), "<pytest>")
    message = message.replace("|", "\\|")
    TABLE_ROWS.append(f"| {case.id} | `{short_command(case)}` | {status} | {message} |\n")
