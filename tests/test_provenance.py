"""Every run.json and results.json records the software it was made with (selmask_lib.provenance),
and that record never changes which run is reused."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess

import pytest
import torch

import selmask_lib.provenance as provenance
from selmask_lib.config import config_hash, finetune_preset, pretrain_preset
from selmask_lib.finetuning import finetune
from selmask_lib.pretraining import pretrain
from selmask_lib.runs import RUN_INFO_FILE

NEEDS_GIT = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, small_synthetic_root):
    """A smoke random-masking pretraining on 8 images and a one-epoch fine-tuning from it (CPU, seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("provenance")
    pre_cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), strategy="random",
                              max_images=8, device="cpu")
    pre = pretrain(pre_cfg, out_dir=root / "pretrain")
    ft_cfg = finetune_preset("smoke", "synthetic", data_root=str(small_synthetic_root), epochs=1,
                             max_train_images=4, device="cpu", init="random_ir", pretrained=str(pre.run_dir))
    ft = finetune(ft_cfg, out_dir=root / "finetune")
    torch.set_num_threads(threads)
    yield pre, ft
    for path in [*root.rglob("*.pt"), *root.rglob("*.pth")]:
        path.unlink()


def recorded_environments(smoke_runs) -> dict[str, dict]:
    pre, ft = smoke_runs
    return {"pretraining run.json": json.loads((pre.run_dir / RUN_INFO_FILE).read_text())["environment"],
            "fine-tuning run.json": json.loads((ft.run_dir / RUN_INFO_FILE).read_text())["environment"],
            "results.json": json.loads(ft.results_path.read_text())["environment"]}


def test_run_json_and_results_json_record_versions_commit_device_and_world_size(smoke_runs):
    for where, environment in recorded_environments(smoke_runs).items():
        assert set(environment) == {"packages", "python", "git_commit", "git_dirty", "device", "world_size"}, where
        assert environment["device"] == "cpu" and environment["world_size"] == 1, where
        assert list(environment["packages"]) == list(provenance.RECORDED_PACKAGES), where
        for name, version in environment["packages"].items():
            assert version == importlib.metadata.version(name), f"{where}: {name}"


@NEEDS_GIT
def test_the_recorded_commit_is_the_kits_checkout(smoke_runs):
    kit_is_a_checkout = (provenance.KIT_ROOT / ".git").exists()
    head = subprocess.run(["git", "-C", str(provenance.KIT_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip() if kit_is_a_checkout else None
    for where, environment in recorded_environments(smoke_runs).items():
        assert environment["git_commit"] == head, where
        assert isinstance(environment["git_dirty"], bool) == kit_is_a_checkout, where


def test_the_environment_is_not_part_of_the_run_identity(smoke_runs, monkeypatch):
    """An upgraded package must leave finished runs reusable: same config hash, the run is reused as it is."""
    pre, _ = smoke_runs
    before = (pre.run_dir / RUN_INFO_FILE).read_text()
    upgraded = {**provenance._software_record(), "packages": {"torch": "99.0"}}
    monkeypatch.setattr(provenance, "_software_record", lambda: upgraded)
    assert config_hash(pre.config) == json.loads(before)["config_hash"]
    again = pretrain(pre.config, out_dir=pre.run_dir)
    assert again.run_dir == pre.run_dir and (pre.run_dir / RUN_INFO_FILE).read_text() == before


def test_a_folder_that_is_not_a_git_checkout_gives_no_commit(tmp_path):
    assert provenance.git_state(tmp_path) == (None, None)


@NEEDS_GIT
def test_a_folder_inside_another_repository_gives_no_commit(tmp_path):
    """An installed kit inside a user's own repository must not record that repository's commit."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    (tmp_path / "site-packages").mkdir()
    assert provenance.git_state(tmp_path / "site-packages") == (None, None)
    commit, dirty = provenance.git_state(tmp_path)
    assert len(commit) == 40 and dirty is False


@NEEDS_GIT
def test_a_changed_tracked_file_makes_the_checkout_dirty(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "module.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "module.py"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "-m", "x"], check=True)
    (tmp_path / "output.csv").write_text("untracked files do not count\n")
    assert provenance.git_state(tmp_path)[1] is False
    (tmp_path / "module.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path)[1] is True


@NEEDS_GIT
def test_regenerated_figures_do_not_make_the_checkout_dirty(tmp_path):
    # `make figures` rewrites the tracked figures/ while its runs start: they are outputs, not code.
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "demo.png").write_bytes(b"old")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "figures"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "-m", "x"], check=True)
    (tmp_path / "figures" / "demo.png").write_bytes(b"new")
    assert provenance.git_state(tmp_path)[1] is False


def test_without_git_the_commit_is_null(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable on the path
    assert provenance.git_state(provenance.KIT_ROOT) == (None, None)


def test_a_package_that_is_not_installed_is_recorded_as_null():
    assert provenance.package_versions(("numpy", "no-such-package-selmask")) == {
        "numpy": importlib.metadata.version("numpy"), "no-such-package-selmask": None}
