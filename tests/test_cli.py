"""The `selmask` command: the demo runs, bad input is one line and exit status 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from selmask_lib.cli import build_parser, config_from_args, main, parse_overrides
from selmask_lib.config import load_config
from selmask_lib.demo import run_demo
from selmask_lib.errors import SelmaskError


@pytest.fixture(scope="module")
def data_root(small_synthetic_root):
    return small_synthetic_root


def test_demo_writes_the_figure(data_root, tmp_path):
    # the demo pipeline at smoke size; `make demo` runs it with the demo preset
    figure = run_demo(out_dir=tmp_path / "figures", data_root=data_root, runs_root=tmp_path / "runs",
                      n_images=2, epochs=1, max_images=24, image_size=64, score_size=64, batch_size=8)
    assert figure.name == "demo_selective_masking.png"
    with Image.open(figure) as image:
        assert image.width > 600 and image.height > 250  # 5 panels per row, 2 rows


OLD_MTIME_NS = 1_000_000_000 * 10**9  # 2001-09-09: any rewrite after this test starts moves it


def snapshot(run_dir):
    """Every file and folder under ``run_dir``: its bytes (None for a folder) and mtime_ns."""
    return {path.relative_to(run_dir).as_posix():
            (None if path.is_dir() else path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(run_dir.rglob("*"))}


def test_pretrain_command_runs_and_reuses(data_root, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    args = ["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", str(data_root),
            "--preset", "smoke", "--out", str(run_dir)]
    assert main(args) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    weights = run_dir / info["weights"]
    assert weights.is_file()
    first_out = capsys.readouterr().out
    assert f"pretrained weights: {weights}" in first_out

    # A finished run of the same config is reused: nothing in the run folder is written again (every file
    # keeps its bytes and its back-dated mtime, none appears or goes) and no network runs at all.
    for path in [run_dir, *run_dir.rglob("*")]:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    before = snapshot(run_dir)
    assert {"run.json", info["weights"]} <= set(before)

    def no_forward_pass(module, *args, **kwargs):
        raise AssertionError(f"a finished run was reused, yet {type(module).__name__} ran")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_forward_pass)
    assert main(args) == 0
    assert snapshot(run_dir) == before
    assert run_dir.stat().st_mtime_ns == OLD_MTIME_NS
    assert f"pretrained weights: {weights}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "--strategy", "random", "--dataset", "voc", "--data-root", "{tmp}/absent", "--preset",
          "smoke", "--out", "{tmp}/run"], "absent: dataset folder not found"),
        (["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", "{data}", "--preset",
          "smoke", "--out", "{tmp}/run", "--set", "lrr=0.1"], "unknown config key 'lrr'"),
        (["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", "{data}", "--preset",
          "smoke", "--out", "{tmp}/run", "--set", "epochs"], "--set expects key=value"),
        (["finetune", "--dataset", "synthetic", "--data-root", "{data}", "--init", "selective_ir", "--preset",
          "smoke", "--out", "{tmp}/ft"], "pretrained"),
        (["reproduce", "--datasets", "voc", "--data-root", "voc", "--runs", "{tmp}/runs"], "NAME=DIR"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message, data_root, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, data=data_root) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selmask: error:") and message in err
    assert len(err.splitlines()) == 1


def test_console_script_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "selmask_lib.cli", "pretrain", "--strategy", "random",
                             "--dataset", "cityscapes", "--data-root", str(tmp_path), "--preset", "smoke",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("selmask: error:")
    assert "Traceback" not in result.stderr


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["epochs=3", "lr=3e-3", "crop_scale=[0.5, 1.0]", "data_root=null"]) == {
        "epochs": 3, "lr": 0.003, "crop_scale": [0.5, 1.0], "data_root": None}
    with pytest.raises(SelmaskError):
        parse_overrides(["=3"])
    with pytest.raises(SelmaskError, match="'crop_scale' is not valid YAML"):
        parse_overrides(["crop_scale=[0.5"])


def test_command_line_and_config_file_read_numbers_alike(tmp_path):
    # one YAML reader for --set and config files: 3e-3 is a float in both (plain YAML 1.1 says string)
    (tmp_path / "c.yaml").write_text("kind: pretrain\ndataset: voc\nlr: 3e-3\n")
    assert load_config(tmp_path / "c.yaml").lr == parse_overrides(["lr=3e-3"])["lr"] == 0.003


@pytest.mark.parametrize("argv, verbose", [(["synthetic"], False), (["-v", "synthetic"], True),
                                           (["synthetic", "-v"], True)])
def test_verbose_flag_before_or_after_the_subcommand(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_one_args_to_config_step_dedicated_options_win_over_set():
    pretrain_args = build_parser().parse_args(
        ["pretrain", "--strategy", "random", "--dataset", "voc", "--data-root", "/d", "--preset", "smoke",
         "--set", "strategy=selective", "--set", "epochs=3"])
    cfg = config_from_args(pretrain_args, "pretrain")
    assert (cfg.strategy, cfg.data_root, cfg.epochs, cfg.image_size) == ("random", "/d", 3, 64)
    finetune_args = build_parser().parse_args(
        ["finetune", "--dataset", "voc", "--preset", "smoke", "--init", "selective_ir", "--pretrained", "runs/x",
         "--set", "init=none"])
    cfg = config_from_args(finetune_args, "finetune")
    assert (cfg.init, cfg.pretrained, cfg.epochs) == ("selective_ir", "runs/x", 2)
    with pytest.raises(SelmaskError, match="--dataset"):
        config_from_args(build_parser().parse_args(
            ["finetune", "--dataset", "voc", "--set", "dataset=cityscapes"]), "finetune")


def test_worker_errors_are_unwrapped_to_the_users_message():
    from selmask_lib.errors import one_line_message

    wrapped = SelmaskError("Caught SelmaskError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 3, in f\n    g()\nselmask_lib.errors.SelmaskError: "
                           "/data/a.jpg: cannot read image: the file is corrupt\n")
    assert one_line_message(wrapped) == "/data/a.jpg: cannot read image: the file is corrupt"
    assert one_line_message(SelmaskError("two\n  lines")) == "two lines"


def test_a_corrupt_image_read_by_loader_workers_is_one_line(data_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    images = sorted((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    images[3].write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "selmask_lib.cli", "pretrain", "--strategy", "random",
                             "--dataset", "synthetic", "--data-root", str(root), "--preset", "smoke",
                             "--out", str(out), "--set", "num_workers=2"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "SELMASK_NO_PROGRESS": "1"})
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("selmask: error:") and str(images[3]) in err and "corrupt" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_an_unavailable_device_is_one_line_before_anything_is_written(data_root, tmp_path, capsys):
    args = ["pretrain", "--strategy", "random", "--dataset", "synthetic", "--data-root", str(data_root),
            "--preset", "smoke", "--out", str(tmp_path / "run"), "--set", "device=cuda"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "'device' is 'cuda' but no CUDA GPU is available" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_config_command_lists_every_key_with_its_preset_values(capsys):
    import dataclasses

    from selmask_lib.config import PretrainConfig

    assert main(["config", "pretrain", "--dataset", "nassar"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if line and not line.startswith("*")}
    assert set(rows) == {field.name for field in dataclasses.fields(PretrainConfig)}
    assert rows["epochs"][-3:] == ["1", "20", "1000"]            # smoke, demo, paper
    assert rows["batch_size"][-1] == "256"                       # the paper's Nassar batch
    assert rows["max_images"][-1] == "null" and rows["num_workers"][1] == "*"  # not hashed


def test_help_does_not_import_torch():
    code = ("import sys; from selmask_lib.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'pandas', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_run_messages_reach_stderr_only_with_verbose(data_root, tmp_path):
    def stderr_of(*extra):
        out = tmp_path / f"run{len(extra)}"
        return subprocess.run([sys.executable, "-m", "selmask_lib.cli", "pretrain", "--strategy", "random",
                               "--dataset", "synthetic", "--data-root", str(data_root), "--preset", "smoke",
                               "--out", str(out), *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "SELMASK_NO_PROGRESS": "1"}, check=True).stderr

    assert "single-scale SSIM" not in stderr_of()
    assert "single-scale SSIM" in stderr_of("-v")
    assert "single-scale SSIM" in (tmp_path / "run0" / "run.log").read_text()  # always in the run's log


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_above_the_one_line(where, tmp_path, capsys):
    args = ["pretrain", "--strategy", "random", "--dataset", "voc", "--data-root", str(tmp_path / "absent"),
            "--preset", "smoke", "--out", str(tmp_path / "run")]
    assert main(["--debug", *args] if where == "before" else [*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("selmask: error:")
    assert main(args) == 2 and "Traceback" not in capsys.readouterr().err


def test_estimate_projection_is_the_measured_step_times_the_paper_steps(capsys):
    """Arithmetic only: every phase is steps x measured seconds, the total their sum, N GPUs divide it."""
    import math
    import re

    from selmask_lib.config import PAPER_DATASET_SIZES

    assert main(["estimate", "--dataset", "sugarbeets", "--steps", "1", "--warmup", "0", "--gpus", "2",
                 "--set", "image_size=64", "--set", "batch_size=2", "--set", "n_patches=64",
                 "--set", "num_workers=0"]) == 0  # no workers: the items' seconds add to each step
    out = capsys.readouterr().out
    phases = re.findall(r"  (.+): (\d+) train steps x ([\d.e+-]+) s \+ (\d+) eval steps x ([\d.e+-]+) s = ([\d.]+) s",
                        out)
    assert [name for name, *_ in phases] == ["pretraining, random masking", "pretraining, selective masking",
                                             "fine-tuning, 4 inits"]
    for _, train_steps, train_s, eval_steps, eval_s, seconds in phases:
        assert float(train_s) > 0 and float(eval_s) > 0
        assert math.isclose(int(train_steps) * float(train_s) + int(eval_steps) * float(eval_s), float(seconds),
                            rel_tol=1e-4)
    # each phase's training step is its measured step with its loader, added to it (no workers)
    steps = re.findall(r"step \(batch [^)]*\) train ([\d.e+-]+) s, eval ([\d.e+-]+) s, loader ([\d.e+-]+) s a batch "
                       r"on one core \((\d+) workers[^)]*\)", out)
    assert len(steps) == 3 and {workers for *_, workers in steps} == {"0"}
    for (train, evaluate, loader, _), (_, _, train_s, _, eval_s, _) in zip(steps, phases):
        assert float(loader) > 0 and float(eval_s) == pytest.approx(float(evaluate), rel=1e-4)
        assert float(train_s) == pytest.approx(float(train) + float(loader), rel=1e-4)  # no workers: added
    sizes = PAPER_DATASET_SIZES["sugarbeets"]
    assert int(phases[0][1]) == 1000 * math.ceil((sizes["pretrain"] - sizes["pretrain"] // 10) / 2)  # E x batches
    assert int(phases[2][1]) == 4 * 500 * math.ceil(sizes["train"] / 2)  # four inits x E x batches
    one = float(re.search(r"total on 1 device: ([\d.]+) s", out).group(1))
    two = float(re.search(r"total on 2 GPUs: ([\d.]+) s .*linear scaling", out).group(1))
    assert math.isclose(one, sum(float(phase[5]) for phase in phases), rel_tol=1e-4)
    assert math.isclose(two, one / 2, rel_tol=1e-4)


def test_estimate_help_does_not_import_torch():
    code = ("import sys; from selmask_lib.cli import main\n"
            "try:\n    main(['estimate', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
