"""selmask: selective masking pretraining for semantic segmentation, as a library.

The names a notebook needs, importable from the package itself::

    import selmask_lib as sm

    cfg = sm.pretrain_preset("demo", "synthetic")
    run = sm.pretrain_selective(cfg)
    ft = sm.finetune(sm.finetune_preset("demo", "synthetic", init="selective_ir", pretrained=str(run.run_dir)))
    print(sm.format_table(sm.results_table(sm.load_results("runs"))))

They are loaded lazily (PEP 562 module ``__getattr__``): ``import
selmask_lib`` and ``selmask --help`` stay fast because torch and the models
are imported only when a name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    # configs
    "pretrain_preset": "config",
    "finetune_preset": "config",
    "load_config": "config",
    "save_config": "config",
    "config_hash": "config",
    "PretrainConfig": "config",
    "FinetuneConfig": "config",
    # pretraining
    "pretrain": "pretraining",
    "pretrain_random": "pretraining",
    "pretrain_selective": "pretraining",
    "load_pretrain_run": "pretraining",
    "load_step_masks": "pretraining",
    "pretraining_pool": "pretrain_data",
    "scoring_view": "pretrain_data",
    # fine-tuning and the paper's tables
    "finetune": "finetuning",
    "reproduce": "reproduction",
    "load_results": "results",
    "read_results": "results",
    "results_table": "tables",
    "format_table": "tables",
    "per_class_gain": "tables",
    "compare": "tables",
    "weakest_gain_correlation": "statistics",
    "tidy_table": "tables",
    "miou_interval": "statistics",
    "paired_bootstrap_gain": "statistics",
    "t_interval": "statistics",
    "paired_t_test": "statistics",
    "verdict": "statistics",
    "PAPER_COLUMNS": "tables",
    # claim (3): self vs cross by pretraining budget
    "budget_sweep": "budget",
    "budget_gains": "budget",
    "budget_curves": "budget",
    "same_domain_partner": "budget",
    # masking
    "patch_grid": "masking",
    "random_mask": "masking",
    "selective_mask": "masking",
    "apply_mask": "masking",
    "pixel_mask": "masking",
    "patch_losses": "masking",
    "score_patches": "strategies",
    "SelectiveMasking": "strategies",
    "FixedRandomMasking": "strategies",
    # figures
    "masked_views_figure": "plotting",
    "per_class_gain_figure": "plotting",
    "budget_figure": "plotting",
    "masking_figure": "plotting",
    # walkthrough and patch viewer (notebooks 00 and 01)
    "patch_grid_figure": "plotting",
    "reconstruction_figure": "plotting",
    "scoring_figure": "plotting",
    "per_class_iou_figure": "plotting",
    "pretraining_curves_figure": "plotting",
    "load_reconstruction_model": "reconstruction",
    "held_out_indices": "reconstruction",
    "square_pictures": "reconstruction",
    "reconstruct": "reconstruction",
    "score_draws": "reconstruction",
    "pretraining_history": "reconstruction",
    "step_views": "viewer",
    "render_view": "viewer",
    "gallery_figure": "viewer",
    "step_overlap": "viewer",
    "overlap_figure": "viewer",
    "patch_viewer": "viewer",
    # notebooks
    "setup_notebook": "notebook",
    "check_parameter": "notebook",
    "require_imagenet_weights": "notebook",
    # data, models, errors
    "ensure_synthetic_voc": "data.synthetic",
    "ensure_embedded": "data.embedded",
    "build_reconstruction_model": "models",
    "build_segmentation_model": "models",
    "SelmaskError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'selmask_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
