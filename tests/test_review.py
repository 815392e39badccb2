"""Second reader's checks of the issue-10/11/13 merge: each test fails on main at c63cc1e."""

import pytest
import torch

from selmask_lib import pretraining
from selmask_lib.config import pretrain_preset
from selmask_lib.engine import load_checkpoint
from selmask_lib.errors import SelmaskError
from selmask_lib.pretraining import pretrain


def smoke(root, **overrides):
    return pretrain_preset("smoke", "synthetic", data_root=str(root), **overrides)


def _fail_when_completing(monkeypatch):
    """run.json's final write fails once (e.g. a full disk), after pretrained.pt was written."""
    real = pretraining.update_run_info

    def update(run_dir, **fields):
        if fields.get("status") == "complete":
            monkeypatch.setattr(pretraining, "update_run_info", real)
            raise SelmaskError(f"{run_dir}/run.json: disk full")
        return real(run_dir, **fields)

    monkeypatch.setattr(pretraining, "update_run_info", update)


@pytest.mark.parametrize("strategy", ["selective", "random"])
def test_resume_after_the_final_write_failed_keeps_the_best_val_loss_weights(small_synthetic_root, tmp_path,
                                                                              monkeypatch, strategy):
    # At lr 1e-5 the validation loss of a smoke run creeps up from epoch 0 (at the preset's lr it only falls):
    # the best epoch is not the last, so handing over the last epoch's weights would show.
    cfg = smoke(small_synthetic_root, strategy=strategy, epochs=4, lr=1e-5, pretrained_checkpoint="best_val_loss",
                checkpoint_every=1)  # resumable checkpoints inside the loop, as a long run has
    _fail_when_completing(monkeypatch)
    with pytest.raises(SelmaskError, match="disk full"):
        pretrain(cfg, out_dir=tmp_path / "crash")
    written = load_checkpoint(tmp_path / "crash" / "pretrained.pt")  # the best epoch's, written before the failure
    if strategy == "random":  # the resume goes back into the loop, from its epoch 2 (its best is epoch 0's)
        assert load_checkpoint(tmp_path / "crash" / "last.pt")["epoch"] == 2
    else:  # the last step had finished: the resume rebuilds pretrained.pt from that step's best.pt
        assert (tmp_path / "crash" / "step_01" / "model.pt").is_file()
    assert written["weights"] == "best_val_loss" and written["epoch"] < 3  # not the last epoch's weights
    resumed = load_checkpoint(pretrain(cfg, out_dir=tmp_path / "crash", resume=True).weights)
    assert resumed["weights"] == "best_val_loss" and resumed["epoch"] == written["epoch"]
    assert all(torch.equal(v, resumed["model"][k]) for k, v in written["model"].items())


def test_a_paper_config_turned_selective_afterwards_trains_the_selective_loss():
    """Issue 10: changing a config's strategy afterwards keeps the loss consistent or refuses."""
    random_paper = pretrain_preset("paper", "cityscapes", strategy="random")
    try:
        turned = random_paper.updated(strategy="selective")  # what pretrain_selective(cfg) does
    except SelmaskError:
        return
    assert (turned.recon_loss, turned.bake_selective_masks) == ("ssim3", True)


def test_a_binary_split_list_is_one_line(tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from fake_datasets import make_sugarbeets_tree
    from selmask_lib.config import finetune_preset
    from selmask_lib.finetuning import load_splits

    root = make_sugarbeets_tree(tmp_path / "sb")
    (tmp_path / "list.bin").write_bytes(bytes(range(256)))
    with pytest.raises(SelmaskError, match="list.bin"):
        load_splits(finetune_preset("smoke", "sugarbeets", data_root=str(root), split_list=str(tmp_path / "list.bin")))


@pytest.mark.parametrize("strategy", ["random", "selective"])
def test_loader_workers_do_not_change_the_weights_with_the_papers_resize(small_synthetic_root, tmp_path, strategy):
    """Issue 13: any worker count gives the same run; here with antialias false (the paper preset's value).

    Workers run torch single-threaded; the non-antialiased bilinear resize rounds differently with 1 and 2 threads."""
    cfg = smoke(small_synthetic_root, strategy=strategy, max_images=12, epochs=1, antialias=False)
    in_process = load_checkpoint(pretrain(cfg, out_dir=tmp_path / "w0").weights)["model"]
    workers = load_checkpoint(pretrain(cfg.updated(num_workers=2), out_dir=tmp_path / "w2").weights)["model"]
    assert all(torch.equal(in_process[k], workers[k]) for k in in_process)
