"""Run directories shared by pretraining and fine-tuning: identity, status, caching, one process at a time.

A run directory holds ``config.yaml`` and ``run.json``; ``run.json`` says
what kind of run it is, the hash of its config (the cache key), and whether
it is ``running``, ``complete`` or ``failed`` (it diverged: see
:class:`~selmask_lib.errors.DivergenceError`), and the software it ran with
(``environment``: :mod:`selmask_lib.provenance`, recorded, never part of the
run's identity). Before writing anything, a run checks the
directory with :func:`check_run_dir`: a finished run of the same config is
reused, another config's run or unrelated files are refused (nothing is
destroyed), an unfinished run is continued only when asked to resume, and a
failed run is refused with what to change. A run that stopped before it
saved any training (no metrics row, no checkpoint) and did not fail has
nothing to continue: the next run starts there afresh.

A run that trains does so inside :func:`training_run`, which holds the
folder's lock file ``.lock`` (:func:`run_lock`) from before its first write
to its end. A second process started on the same folder (say a second
``--resume``) stops with an error naming the first one's pid instead of
training a second copy. Holding the lock, a run also deletes the temporary
files that writes killed mid-way left behind (``.<name>.<random>.tmp``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from . import __version__
from .config import Config, config_hash, save_config
from .device import pick_device
from .distributed import barrier, is_main_process, local_device, main_only, world_size
from .engine import run_log
from .errors import DivergenceError, SelmaskError
from .files import ensure_writable_dir, is_temp_file, remove_temp_files, write_text_atomic
from .provenance import environment_record

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
RUN_LOG_FILE = "run.log"  # engine.run_log's file
LOCK_FILE = ".lock"
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
                  identity: Optional[dict] = None, data_root: str | Path | None = None) -> Optional[dict]:
    """Check ``run_dir`` without writing; return its ``run.json`` if it holds this finished run.

    ``identity`` adds fields that must match besides the config hash (e.g.
    the masking of a pretraining run, the fingerprint of its data; ``data_root``
    is named when only the data differs). None means "train here": the
    folder is absent, empty (a lock file and temp files don't count), holds
    a run that never trained (whatever its config or kind: :func:`has_trained`;
    but a run of this config that diverged is refused, trained or not), or
    holds this config's unfinished run and ``resume`` is set.
    """
    run_dir, kind_name = Path(run_dir), KIND_NAMES.get(kind, kind)
    if run_dir.exists() and not run_dir.is_dir():
        raise SelmaskError(f"{run_dir} is a file, not a run directory; choose another output directory")
    if not run_dir.exists():
        return None
    info = read_run_info(run_dir)
    if info is None:
        if any(not _is_lock_or_temp(path.name) for path in run_dir.iterdir()):
            raise SelmaskError(f"{run_dir} is not empty and holds no selmask {kind_name} run; choose another directory")
        return None
    found_kind, status = info.get("kind", "unknown"), info.get("status")
    wanted = {"config_hash": config_hash(cfg), **(identity or {})}
    found = {key: info.get(key) for key in wanted}
    diverged_here = status == "failed" and found_kind == kind and found == wanted  # would diverge again
    if status != "complete" and not has_trained(run_dir) and not diverged_here:
        return None  # begun, then stopped before its first epoch: nothing to continue or to keep
    if found_kind != kind:
        raise SelmaskError(f"{run_dir} holds a {KIND_NAMES.get(found_kind, found_kind)} run, not a {kind_name} run; "
                           f"choose another output directory")
    if _differs_only_in_data(found, wanted):
        raise SelmaskError(
            f"{run_dir} holds a {kind_name} run of this config on other data "
            + (f"(data root {info.get('data_root')}, fingerprint {found['data_fingerprint']})"
               if found["data_fingerprint"] else "(a run made before runs recorded their data)")
            + f"; this run's data root {data_root} has fingerprint {wanted['data_fingerprint']}: "
              f"choose another output directory")
    if found != wanted:
        raise SelmaskError(f"{run_dir} holds a {kind_name} run of a different config ({found}, this config {wanted}); "
                           f"choose another output directory")
    if info.get("status") == "complete":
        return info
    if info.get("status") == "failed":  # never reused, never resumed: it would fail the same way
        raise SelmaskError(f"{run_dir} holds a {kind_name} run of this config that failed ({info.get('error')}); "
                           f"resuming it would fail again: change the config (e.g. a lower --set lr=...) and "
                           f"use another output folder, or delete {run_dir} to start over")
    if not resume:
        raise SelmaskError(f"{run_dir} holds an unfinished run of this config: pass --resume to continue it")
    return None


@contextlib.contextmanager
def failed_if_diverged(run_dir: str | Path, what: str, kept: str) -> Iterator[None]:
    """Mark the run ``failed`` in run.json if its body diverges, and re-raise in words a user can act on.

    ``what`` names the run ("pretraining"), ``kept`` says what stays of it.
    """
    try:
        yield
    except DivergenceError as error:
        if is_main_process():
            mark_failed(run_dir, error)
            log.info("%s failed: %s", what, error)
        raise DivergenceError(f"{what} diverged in {run_dir} ({error}); {kept} and the run is marked failed: "
                              f"change the config (e.g. a lower lr), which makes a new run "
                              f"(with --out: in another folder)") from None


def _differs_only_in_data(found: dict, wanted: dict) -> bool:
    return "data_fingerprint" in wanted and found != wanted and all(
        found[key] == wanted[key] for key in wanted if key != "data_fingerprint")


def mark_failed(run_dir: str | Path, error: Exception) -> None:
    """Record in ``run.json`` that the run failed and why, so no cache or resume takes it for a good run."""
    update_run_info(run_dir, status="failed", error=" ".join(str(error).split()))


def begin_run(run_dir: str | Path, kind: str, cfg: Config, **fields) -> Path:
    """Create ``run_dir`` and write ``config.yaml`` and a ``running`` ``run.json``.

    run.json's ``environment`` (:mod:`selmask_lib.provenance`) is that of the
    process that began the run; a resumed run records the resuming process.
    """
    run_dir = ensure_writable_dir(run_dir)
    save_config(cfg, run_dir / CONFIG_FILE)
    previous = read_run_info(run_dir) or {}
    device = str(local_device(pick_device(cfg.device)))
    write_run_info(run_dir, {
        "kind": kind, "status": "running", "config_hash": config_hash(cfg),
        "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "library_version": __version__, "environment": environment_record(device, world_size()), **fields,
    })
    return run_dir


def _is_lock_or_temp(name: str) -> bool:
    """Files any run may leave in its folder that hold nothing of a run: the lock, killed writes' temps."""
    return name == LOCK_FILE or is_temp_file(name)


def has_trained(run_dir: str | Path) -> bool:
    """True once a run in ``run_dir`` saved anything of its training (a metrics row, a checkpoint, masks).

    Until then the folder holds only what :func:`begin_run` and the log
    wrote (config.yaml, run.json, run.log), so a run that failed before its
    first epoch (bad data, a crash while building the model, Ctrl-C, even
    SIGKILL) leaves nothing that needs ``--resume``: the next run starts over.
    """
    records = {CONFIG_FILE, RUN_INFO_FILE, RUN_LOG_FILE}
    return any(name not in records and not _is_lock_or_temp(name)
               for _, _, names in os.walk(run_dir) for name in names)


# --------------------------------------------------------------------------- one process per run folder


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` while a run trains there; a SelmaskError naming the holder if another process has it.

    An exclusive ``fcntl.flock`` on the file, which holds the holder's pid
    and host. The kernel drops the lock when its holder closes the file or
    dies (even by SIGKILL), so a lock file left by a killed run never blocks:
    the next run just locks it again. The file is never deleted: a process
    that opened it just before a deletion would lock the deleted file while
    the next one locks a new file, and both would train. flock belongs to an
    open file, so a second ``run_lock`` on one folder fails in one process too.
    """
    run_dir = ensure_writable_dir(run_dir)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: the holder's pid must stay readable
    except OSError as err:
        raise SelmaskError(f"cannot open the lock file {path}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SelmaskError(f"{run_dir} is in use by another selmask process ({_lock_holder(fd)}); "
                               f"wait for it to finish or stop it") from None
        except OSError as err:  # e.g. a network file system without locks
            raise SelmaskError(f"cannot lock {path}: {err.strerror or err}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)  # unlocks for DataLoader workers forked with the file open too
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """The lock's holder as it wrote itself into the file: "pid 1234", plus "on HOST" if it runs elsewhere."""
    words = os.pread(fd, 256, 0).decode(errors="replace").split()
    if not words:
        return "pid unknown"  # it has just locked the file and not yet written its pid
    host = words[1] if len(words) > 1 else None
    return f"pid {words[0]}" + (f" on {host}" if host not in (None, socket.gethostname()) else "")


@contextlib.contextmanager
def training_run(run_dir: str | Path, kind: str, cfg: Config, resume: bool, identity: Optional[dict] = None,
                 finished: Optional[dict] = None, **fields) -> Iterator[Path]:
    """Train in ``run_dir`` as its one process: lock it, begin the run, copy the log to run.log.

    Use it once :func:`check_run_dir` (with the same arguments, and what it
    returned as ``finished``) has said the run must be trained and the data
    checks passed; train in its body. The lock (:func:`run_lock`) is taken
    before anything is written and released when the body ends, normally or
    by an exception. Holding it, the folder is checked again (another
    process may have used it since) and the temp files of killed writes are
    deleted; then :func:`begin_run` writes config.yaml and run.json with
    ``identity`` and ``fields``. Under torchrun every process calls it and rank 0 locks and
    writes on behalf of all; if rank 0 stops with an error, torchrun stops
    the other processes.
    """
    run_dir = Path(run_dir)
    barrier()  # every process has checked the run directory before rank 0 writes to it
    with main_only(run_lock(run_dir)):
        removed = []
        if is_main_process():
            again = check_run_dir(run_dir, kind, cfg, resume, identity, data_root=fields.get("data_root"))
            if again is not None and finished is None:
                raise SelmaskError(f"{run_dir} was finished by another selmask process while this one started; "
                                   f"run again to reuse it")
            removed = remove_temp_files(run_dir)
            begin_run(run_dir, kind, cfg, **(identity or {}), **fields)  # what check_run_dir compares, recorded
        barrier()
        with main_only(run_log(run_dir, RUN_LOG_FILE)):
            if removed:
                log.info("deleted %d temporary files of interrupted writes: %s", len(removed),
                         ", ".join(str(path.relative_to(run_dir)) for path in removed))
            yield run_dir
