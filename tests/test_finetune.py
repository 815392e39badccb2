"""Downstream fine-tuning: every dataset format end to end, the four inits (weights really
transferred), exact resume, run-directory reuse/refusal, the loss's ignore handling and the CLI.

Everything is CPU, 64 px, one or two epochs on a handful of images. Torch runs on one
thread here: on 2 cores shared with other jobs, 2 OpenMP threads were 10-30x slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error

import pytest
import torch

import fake_datasets as fake
import selmask_lib.engine as engine
import selmask_lib.finetuning as ft
from selmask_lib import cli
from selmask_lib.config import config_hash, finetune_preset, pretrain_preset
from selmask_lib.data.synthetic import SMALL
from selmask_lib.engine import load_checkpoint
from selmask_lib.errors import SelmaskError
from selmask_lib.models import HEAD_PREFIX, IMAGENET_RESNET34_URL
from selmask_lib.pretraining import pretrain
from selmask_lib.results import REQUIRED_FIELDS, read_per_image_confusions, read_results

FAKE_TREES = {
    "voc": (fake.make_voc_tree, fake.VOC_SIZES, 21),
    "cityscapes": (fake.make_cityscapes_tree, fake.CITYSCAPES_SIZES, 19),
    "nassar": (fake.make_nassar_tree, fake.NASSAR_SIZES, 3),
    "sugarbeets": (fake.make_sugarbeets_tree, fake.SUGARBEETS_SIZES, 3),
    "folder": (fake.make_folder_tree, fake.FOLDER_SIZES, 3),
}


pytestmark = pytest.mark.usefixtures("one_thread_quiet", "drop_checkpoints")  # tests/conftest.py


@pytest.fixture(scope="module")
def synthetic_root(small_synthetic_root):
    return small_synthetic_root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    return {name: make(root / name) for name, (make, *_rest) in FAKE_TREES.items()}


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory, synthetic_root):
    """One finished smoke pretraining run per strategy, on the synthetic set."""
    root = tmp_path_factory.mktemp("pretrain")
    runs = {}
    for strategy in ("random", "selective"):
        cfg = pretrain_preset("smoke", "synthetic", data_root=str(synthetic_root), strategy=strategy,
                              max_images=8)
        runs[strategy] = pretrain(cfg, out_dir=root / strategy)
    yield runs
    for path in root.rglob("*.pt"):
        path.unlink()


def smoke(dataset, root, **overrides):
    """The smoke preset cut to one epoch on four training images."""
    values = dict(data_root=str(root), epochs=1, max_train_images=4, device="cpu")
    return finetune_preset("smoke", dataset, **{**values, **overrides})


class FitSpy:
    """Stands in for engine.fit inside finetune: records the model as fit receives it
    (i.e. after initialisation, before any training step) and what fit returned;
    optionally crashes when training reaches ``crash_at``."""

    def __init__(self, crash_at=None):
        self.crash_at = crash_at
        self.initial_states, self.results = [], []

    def __call__(self, model, optimisation, train_one_epoch, *args, **kwargs):
        self.initial_states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

        def train(epoch):
            if epoch == self.crash_at:
                raise SimulatedCrash(f"crash in epoch {epoch}")
            return train_one_epoch(epoch)

        result = REAL_FIT(model, optimisation, train, *args, **kwargs)
        self.results.append(result)
        return result


class SimulatedCrash(RuntimeError):
    pass


REAL_FIT = engine.fit


@pytest.fixture
def spy(monkeypatch):
    def install(crash_at=None):
        fit_spy = FitSpy(crash_at)
        monkeypatch.setattr(engine, "fit", fit_spy)  # what Trainer.fit calls
        return fit_spy
    return install


def check_results(results, dataset, n_classes, init="none"):
    for key in REQUIRED_FIELDS + ("val_miou", "best_epoch", "transfer", "config_hash", "pixel_accuracy"):
        assert key in results, key
    assert results["dataset"] == dataset and results["init"] == init
    assert 0.0 <= results["miou"] <= 1.0
    assert 0.0 <= results["val_miou"] <= 1.0
    assert len(results["class_names"]) == n_classes
    assert set(results["per_class_iou"]) == set(results["class_names"])
    assert len(results["confusion_matrix"]) == n_classes
    assert set(results["timings"]) == {"train_seconds", "test_seconds"}
    assert results["config"]["dataset"] == dataset


# --------------------------------------------------------------------------- loss


def test_jaccard_loss_really_ignores_void_pixels():
    """smp 0.6.0's multiclass JaccardLoss with ignore_index: void pixels add nothing to the loss
    and get no gradient, whatever their logits (so no extra masking is needed)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 8, generator=generator, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 8), generator=generator)
    target[:, :, 5:] = 255
    loss_fn = ft.segmentation_loss(255)
    loss = loss_fn(logits, target)
    loss.backward()
    assert logits.grad[..., 5:].abs().max() == 0
    assert logits.grad[..., :5].abs().max() > 0
    cropped = loss_fn(logits.detach()[..., :5], target[..., :5])
    torch.testing.assert_close(loss.detach(), cropped)
    scrambled = logits.detach().clone()
    scrambled[..., 5:] = 100 * torch.randn(scrambled[..., 5:].shape, generator=generator)
    torch.testing.assert_close(loss_fn(scrambled, target), loss.detach())


# --------------------------------------------------------------------------- every dataset format


@pytest.mark.parametrize("dataset", list(FAKE_TREES) + ["synthetic"])
def test_smoke_finetune_each_format(dataset, trees, synthetic_root, tmp_path):
    if dataset == "synthetic":
        root, n_test, n_classes = synthetic_root, SMALL["n_test"], 9
    else:
        _make, sizes, n_classes = FAKE_TREES[dataset]
        root, n_test = trees[dataset], sizes["test"]
    run = ft.finetune(smoke(dataset, root), out_dir=tmp_path / "run")
    assert run.results_path == tmp_path / "run" / "results.json"
    results = read_results(run.results_path)
    check_results(results, dataset, n_classes)
    assert results["pretrain_run"] is None and results["pretrain_dataset"] is None
    assert results["images"]["test"] == n_test
    assert sum(map(sum, results["confusion_matrix"])) > 0
    per_image = read_per_image_confusions(run.results_path)  # what the bootstrap over test images reads
    assert per_image.ids == tuple(ft.load_splits(smoke(dataset, root)).test.ids) and len(per_image.ids) == n_test
    assert per_image.counts.sum(0).tolist() == results["confusion_matrix"]
    assert (per_image.counts.sum((1, 2)) > 0).all()  # every test image was counted
    for name in ("config.yaml", "run.json", "best.pt", "metrics.csv", "run.log"):
        assert (run.run_dir / name).is_file(), name
    assert not (run.run_dir / "last.pt").exists()  # resumable state is dropped once tested


# --------------------------------------------------------------------------- initialisations


def test_selective_ir_starts_from_the_pretrained_weights(pretrain_runs, synthetic_root, trees, tmp_path, spy):
    pretrained = pretrain_runs["selective"]
    source = load_checkpoint(pretrained.weights)["model"]

    fit_spy = spy()
    cfg = smoke("synthetic", synthetic_root, init="selective_ir", pretrained=str(pretrained.run_dir))
    run = ft.finetune(cfg, runs_root=tmp_path / "runs")
    ft.finetune(smoke("synthetic", synthetic_root), out_dir=tmp_path / "none")
    transferred, scratch = fit_spy.initial_states

    body = [name for name in transferred if not name.startswith(HEAD_PREFIX)]
    assert len(body) > 200 and any(n.startswith("encoder.") for n in body) and any(
        n.startswith("decoder.") for n in body)
    for name in body:
        assert torch.equal(transferred[name], source[name]), name
    differ = [n for n in body if transferred[n].is_floating_point() and not torch.equal(transferred[n], scratch[n])]
    assert any(n.startswith("encoder.") for n in differ) and any(n.startswith("decoder.") for n in differ)
    assert transferred["head.1.weight"].shape[0] == 9 != source["head.1.weight"].shape[0]

    results = run.results
    assert run.run_dir.name == (f"finetune-synthetic-selective_ir-synthetic-{config_hash(cfg)}"
                                f"-d{results['data_fingerprint'][:8]}")
    assert results["init"] == "selective_ir" and results["pretrain_dataset"] == "synthetic"
    assert results["pretrain_relation"] == "self"
    assert results["pretrain_run"] == str(pretrained.run_dir)
    assert results["transfer"]["copied"] == len(body) and results["transfer"]["missing"] == 0
    check_results(results, "synthetic", 9, init="selective_ir")

    # cross-pretraining: the synthetic run fine-tuned on the VOC-format tree
    cross = ft.finetune(smoke("voc", trees["voc"], init="selective_ir", pretrained=str(pretrained.run_dir)),
                        runs_root=tmp_path / "runs")
    assert cross.results["pretrain_relation"] == "cross" and cross.results["pretrain_dataset"] == "synthetic"
    assert cross.run_dir.name.startswith("finetune-voc-selective_ir-synthetic-")


def test_random_ir_accepts_a_random_run(pretrain_runs, synthetic_root, tmp_path, spy):
    pretrained = pretrain_runs["random"]
    source = load_checkpoint(pretrained.weights)["model"]
    fit_spy = spy()
    cfg = smoke("synthetic", synthetic_root, init="random_ir", pretrained=str(pretrained.run_dir))
    run = ft.finetune(cfg, out_dir=tmp_path / "run")
    (transferred,) = fit_spy.initial_states
    body = [name for name in transferred if not name.startswith(HEAD_PREFIX)]
    assert len(body) > 200
    for name in body:  # the random-masking run's weights, not a fresh network
        assert torch.equal(transferred[name], source[name]), name
    check_results(run.results, "synthetic", 9, init="random_ir")
    assert run.results["pretrain_run"] == str(pretrained.run_dir)
    assert run.results["transfer"]["copied"] == len(body) and run.results["transfer"]["missing"] == 0


@pytest.mark.parametrize("init, strategy", [("selective_ir", "random"), ("random_ir", "selective")])
def test_wrong_pretraining_run_kind_is_refused(pretrain_runs, synthetic_root, tmp_path, init, strategy):
    cfg = smoke("synthetic", synthetic_root, init=init, pretrained=str(pretrain_runs[strategy].run_dir))
    wanted = {"selective_ir": "selective", "random_ir": "random"}[init]
    with pytest.raises(SelmaskError, match=f"needs a {wanted}-masking pretraining run") as info:
        ft.finetune(cfg, out_dir=tmp_path / "run")
    assert str(pretrain_runs[strategy].run_dir) in str(info.value)
    assert not (tmp_path / "run").exists()


def test_pretrained_dir_that_is_not_a_run(synthetic_root, tmp_path):
    cfg = smoke("synthetic", synthetic_root, init="selective_ir", pretrained=str(tmp_path))
    with pytest.raises(SelmaskError, match="not a pretraining run"):
        ft.finetune(cfg, out_dir=tmp_path / "run")


def test_imagenet_from_a_local_file(synthetic_root, tmp_path, spy):
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet34(weights=None).state_dict()
    weights = tmp_path / "resnet34.pth"
    torch.save(state, weights)
    fit_spy = spy()
    run = ft.finetune(smoke("synthetic", synthetic_root, init="imagenet", imagenet_weights=str(weights)),
                      out_dir=tmp_path / "run")
    initial = fit_spy.initial_states[0]
    encoder = {name[len("encoder."):]: tensor for name, tensor in initial.items() if name.startswith("encoder.")}
    assert set(encoder) == {name for name in state if not name.startswith("fc.")}
    for name, tensor in encoder.items():
        assert torch.equal(tensor, state[name]), name
    check_results(run.results, "synthetic", 9, init="imagenet")
    assert run.results["transfer"]["source"] == str(weights)
    assert run.results["transfer"]["copied"] == len(encoder)


def test_imagenet_missing_file_says_where_to_put_it(synthetic_root, tmp_path):
    missing = tmp_path / "nowhere" / "resnet34.pth"
    cfg = smoke("synthetic", synthetic_root, init="imagenet", imagenet_weights=str(missing))
    with pytest.raises(SelmaskError, match="not found") as info:
        ft.finetune(cfg, out_dir=tmp_path / "run")
    assert str(missing) in str(info.value) and IMAGENET_RESNET34_URL in str(info.value)
    assert not (tmp_path / "run").exists()


def test_imagenet_offline_without_cached_weights(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(SelmaskError) as info:
        ft.finetune(smoke("synthetic", synthetic_root, init="imagenet"), out_dir=tmp_path / "run")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth") in message
    assert IMAGENET_RESNET34_URL in message and "--imagenet-weights" in message


# --------------------------------------------------------------------------- resume, reuse, refusal


def test_resume_after_a_crash_gives_the_uninterrupted_results(synthetic_root, tmp_path, spy):
    cfg = smoke("synthetic", synthetic_root, epochs=3, checkpoint_every=1)
    straight = ft.finetune(cfg, out_dir=tmp_path / "straight")

    crashing = spy(crash_at=2)
    with pytest.raises(SimulatedCrash):
        ft.finetune(cfg, out_dir=tmp_path / "crashed")
    assert not (tmp_path / "crashed" / "results.json").exists()
    with pytest.raises(SelmaskError, match="--resume"):
        ft.finetune(cfg, out_dir=tmp_path / "crashed", resume=False)
    resuming = spy()
    resumed = ft.finetune(cfg, out_dir=tmp_path / "crashed", resume=True)
    assert resuming.results[0].start_epoch == 2  # continued, not restarted
    assert crashing.initial_states  # the crash really happened inside fit

    for key in ("miou", "per_class_iou", "confusion_matrix", "val_miou", "best_epoch", "test_loss",
                "pixel_accuracy", "config_hash"):
        assert resumed.results[key] == straight.results[key], key

    def rows(run):
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert rows(resumed) == rows(straight)


def test_loader_workers_reading_ahead_give_the_same_results(synthetic_root, tmp_path):
    """Two persistent workers read into the next epoch (engine.Trainer.epoch_loader): the very same run as none."""
    cfg = smoke("synthetic", synthetic_root, epochs=3, batch_size=2)
    in_process = ft.finetune(cfg, out_dir=tmp_path / "in-process")
    read_ahead = ft.finetune(cfg.updated(num_workers=2, persistent_workers=True), out_dir=tmp_path / "workers")
    for key in ("miou", "per_class_iou", "confusion_matrix", "val_miou", "best_epoch", "test_loss"):
        assert read_ahead.results[key] == in_process.results[key], key


def test_finished_run_is_reused_and_another_config_refused(synthetic_root, tmp_path, spy):
    cfg = smoke("synthetic", synthetic_root)
    first = ft.finetune(cfg, out_dir=tmp_path / "run")
    fit_spy = spy()
    again = ft.finetune(cfg.updated(num_workers=0, checkpoint_every=2), out_dir=tmp_path / "run", resume=False)
    assert fit_spy.initial_states == []  # no training at all
    assert again.results == first.results

    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(SelmaskError, match="different config"):
        ft.finetune(cfg.updated(seed=1), out_dir=tmp_path / "run")
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SelmaskError, match="holds no selmask fine-tuning run"):
        ft.finetune(cfg, out_dir=tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_moved_runs_folder_keeps_its_finetune_runs(pretrain_runs, synthetic_root, tmp_path, spy, monkeypatch):
    """The hash names the pretraining run by its folder name: moved, or named relatively, it is the same run.

    A folder of that name holding another pretraining run is refused, not reused.
    """
    import shutil

    here = tmp_path / "here" / "runs"
    shutil.copytree(pretrain_runs["selective"].run_dir, here / "pretrain-selective-x")
    cfg = smoke("synthetic", synthetic_root, init="selective_ir", pretrained=str(here / "pretrain-selective-x"))
    first = ft.finetune(cfg, runs_root=here)

    moved = tmp_path / "moved" / "runs"
    shutil.move(str(here), str(moved))
    monkeypatch.chdir(moved.parent)  # and named relatively
    fit_spy = spy()
    again = ft.finetune(cfg.updated(pretrained="runs/pretrain-selective-x"), runs_root="runs")
    assert fit_spy.initial_states == []  # reused: no training at all
    assert again.run_dir.name == first.run_dir.name and again.results["miou"] == first.results["miou"]
    assert again.results["pretrain_run"] == str(here / "pretrain-selective-x")  # where it was made

    # Same folder name, another pretraining config inside (another seed): refused, not reused.
    impostor = tmp_path / "impostor" / "pretrain-selective-x"
    shutil.copytree(moved / "pretrain-selective-x", impostor)
    config = impostor / "config.yaml"
    assert "\nseed: " in config.read_text()
    config.write_text(config.read_text().replace("\nseed: ", "\nseed: 1", 1))
    assert config_hash(cfg.updated(pretrained=str(impostor))) == config_hash(cfg)
    with pytest.raises(SelmaskError, match="different config.*pretrain_config_hash"):
        ft.finetune(cfg.updated(pretrained=str(impostor)), out_dir=again.run_dir)


def test_pretraining_run_dir_is_not_a_finetune_output(pretrain_runs, synthetic_root):
    with pytest.raises(SelmaskError, match="holds a pretraining run, not a fine-tuning run"):
        ft.finetune(smoke("synthetic", synthetic_root), out_dir=pretrain_runs["random"].run_dir)


# --------------------------------------------------------------------------- command line


def run_cli(argv):
    return cli.main(["finetune", *argv])


def test_cli_writes_results_and_reuses_them(synthetic_root, tmp_path, capsys, spy):
    out = tmp_path / "cli"
    argv = ["--dataset", "synthetic", "--data-root", str(synthetic_root), "--init", "none",
            "--preset", "smoke", "--out", str(out), "--set", "epochs=1", "--set", "max_train_images=4"]
    assert run_cli(argv) == 0
    results = read_results(out / "results.json")
    assert results["config"]["epochs"] == 1 and results["config"]["image_size"] == 64
    assert str(out / "results.json") in capsys.readouterr().out

    # reused: no training, and every file of the run keeps its content and its back-dated mtime
    old_ns = 1_000_000_000 * 10**9
    for path in [out, *out.rglob("*")]:
        os.utime(path, ns=(old_ns, old_ns))

    def snapshot():
        return {p.relative_to(out).as_posix(): (p.is_dir() or hashlib.sha256(p.read_bytes()).hexdigest(),
                                                 p.stat().st_mtime_ns)
                for p in [out, *out.rglob("*")]}

    before = snapshot()
    fit_spy = spy()
    assert run_cli(argv) == 0
    assert fit_spy.initial_states == []
    assert snapshot() == before
    assert str(out / "results.json") in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing data root", "missing split list", "bad key", "no pretrained"])
def test_cli_bad_input_is_one_clear_line(problem, tmp_path, capsys):
    root = fake.make_voc_tree(tmp_path / "voc")
    argv = ["--dataset", "voc", "--data-root", str(root), "--preset", "smoke", "--out", str(tmp_path / "run")]
    expected = ""
    if problem == "missing data root":
        argv[3] = expected = str(tmp_path / "absent")
    elif problem == "missing split list":
        lst = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
        lst.unlink()
        expected = str(lst)
    elif problem == "bad key":
        argv += ["--set", "epoch=3"]
        expected = "did you mean 'epochs'"
    else:
        argv += ["--init", "selective_ir"]
        expected = "'pretrained'"
    assert run_cli(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("selmask: error: ") and "\n" not in err, err
    assert expected in err
    assert not (tmp_path / "run").exists()  # nothing written on bad input
