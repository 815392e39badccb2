"""Run directories shared by pretraining and fine-tuning: identity, status, caching.

A run directory holds ``config.yaml`` and ``run.json``; ``run.json`` says
what kind of run it is, the hash of its config (the cache key), and whether
it is ``running``, ``complete`` or ``failed`` (it diverged: see
:class:`~selmask_lib.errors.DivergenceError`). Before writing anything, a run checks the
directory with :func:`check_run_dir`: a finished run of the same config is
reused, another config's run or unrelated files are refused (nothing is
destroyed), an unfinished run is continued only when asked to resume, and a
failed run is refused with what to change.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from . import __version__
from .config import Config, config_hash, save_config
from .errors import SelmaskError
from .files import ensure_writable_dir, write_text_atomic

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
KIND_NAMES = {"pretrain": "pretraining", "finetune": "fine-tuning"}  # for messages


def read_run_info(run_dir: str | Path) -> Optional[dict]:
    """The ``run.json`` of ``run_dir`` as a dict, or None if there is none."""
    path = Path(run_dir) / RUN_INFO_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SelmaskError(f"{path}: corrupt run file ({error})") from None
    if not isinstance(info, dict):
        raise SelmaskError(f"{path}: corrupt run file (expected a JSON object)")
    return info


def write_run_info(run_dir: str | Path, info: dict) -> None:
    write_text_atomic(Path(run_dir) / RUN_INFO_FILE, json.dumps(info, indent=2) + "\n")


def update_run_info(run_dir: str | Path, **fields) -> dict:
    """Merge ``fields`` into ``run.json`` and return the new content."""
    info = {**(read_run_info(run_dir) or {}), **fields}
    write_run_info(run_dir, info)
    return info


def check_run_dir(run_dir: str | Path, kind: str, cfg: Config, resume: bool,
                  identity: Optional[dict] = None) -> Optional[dict]:
    """Check ``run_dir`` without writing; return its ``run.json`` if it holds this finished run.

    ``identity`` adds fields that must match besides the config hash (e.g.
    the masking strategy of a pretraining run).
    """
    run_dir, kind_name = Path(run_dir), KIND_NAMES.get(kind, kind)
    if run_dir.exists() and not run_dir.is_dir():
        raise SelmaskError(f"{run_dir} is a file, not a run directory; choose another output directory")
    if not run_dir.exists():
        return None
    info = read_run_info(run_dir)
    if info is None:
        if any(run_dir.iterdir()):
            raise SelmaskError(f"{run_dir} is not empty and holds no selmask {kind_name} run; choose another directory")
        return None
    found_kind = info.get("kind", "unknown")
    if found_kind != kind:
        raise SelmaskError(f"{run_dir} holds a {KIND_NAMES.get(found_kind, found_kind)} run, not a {kind_name} run; "
                           f"choose another output directory")
    wanted = {"config_hash": config_hash(cfg), **(identity or {})}
    found = {key: info.get(key) for key in wanted}
    if found != wanted:
        raise SelmaskError(f"{run_dir} holds a {kind_name} run of a different config ({found}, this config {wanted}); "
                           f"choose another output directory")
    if info.get("status") == "complete":
        return info
    if info.get("status") == "failed":  # never reused, never resumed: it would fail the same way
        raise SelmaskError(f"{run_dir} holds a {kind_name} run of this config that failed ({info.get('error')}); "
                           f"resuming it would fail again: change the config (e.g. a lower --set lr=...), "
                           f"which makes a new run, or delete {run_dir} to start over")
    if not resume:
        raise SelmaskError(f"{run_dir} holds an unfinished run of this config: pass --resume to continue it")
    return None


def mark_failed(run_dir: str | Path, error: Exception) -> None:
    """Record in ``run.json`` that the run failed and why, so no cache or resume takes it for a good run."""
    update_run_info(run_dir, status="failed", error=" ".join(str(error).split()))


def begin_run(run_dir: str | Path, kind: str, cfg: Config, **fields) -> Path:
    """Create ``run_dir`` and write ``config.yaml`` and a ``running`` ``run.json``."""
    run_dir = ensure_writable_dir(run_dir)
    save_config(cfg, run_dir / CONFIG_FILE)
    previous = read_run_info(run_dir) or {}
    write_run_info(run_dir, {
        "kind": kind, "status": "running", "config_hash": config_hash(cfg),
        "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "library_version": __version__, **fields,
    })
    return run_dir
