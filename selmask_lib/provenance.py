"""What software a run was made with: package versions, the kit's git commit, device and world size.

Every ``run.json`` (:func:`selmask_lib.runs.begin_run`) and every
``results.json`` (:func:`selmask_lib.results.write_results`) carries an
``environment`` record, so a number can be traced to the code and the
libraries that produced it::

    {"packages": {"torch": "2.14.1", ..., "selmask": "0.1.0"},
     "python": "3.11.7", "git_commit": "a13c96c...", "git_dirty": false,
     "device": "cuda:0", "world_size": 4}

It is recorded, never part of a run's identity: upgrading a package must
not make a finished run unusable, so nothing here enters ``config_hash``.

Cheap on purpose: versions come from the installed packages' metadata
(``importlib.metadata``, no imports of the packages themselves) and git is
asked once per process (two short subprocesses with a timeout). Without git,
or outside a git checkout of the kit (e.g. an installed wheel), the commit
and the dirty flag are ``None``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Optional

# The packages whose versions can change a number (the kit itself last).
RECORDED_PACKAGES = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "torchmetrics",
                     "pytorch-msssim", "numpy", "selmask")
GIT_TIMEOUT_SECONDS = 5
KIT_ROOT = Path(__file__).resolve().parent.parent  # the checkout holding selmask_lib/


def environment_record(device: Optional[str], world_size: int) -> dict:
    """The ``environment`` field of run.json and results.json for a run on ``device`` with ``world_size`` processes.

    ``device`` is the device the run trained on (e.g. "cpu", "cuda:0"), or None when unknown.
    """
    return {**_software_record(), "device": None if device is None else str(device), "world_size": int(world_size)}


@functools.lru_cache(maxsize=1)
def _software_record() -> dict:
    """Versions and commit: the same for the whole process, so looked up once."""
    commit, dirty = git_state(KIT_ROOT)
    return {"packages": package_versions(), "python": platform.python_version(),
            "git_commit": commit, "git_dirty": dirty}


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, Optional[str]]:
    """``{name: installed version}``; None for a package that is not installed."""
    return {name: _installed_version(name) for name in names}


def _installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


OUTPUTS_DIR = "figures"  # rendered outputs kept in git: regenerating them does not make the code dirty


def git_state(directory: str | Path) -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the git checkout whose top folder is ``directory``; (None, None) otherwise.

    ``directory`` must be the checkout's top folder itself: an installed copy
    of the kit that happens to sit inside some other repository (a user's
    project with a virtual environment in it) must not record that
    repository's commit. ``dirty`` is True when tracked files differ from the
    commit (untracked files, e.g. run outputs, do not count, nor do the
    rendered figures under ``figures/``: ``make figures`` rewrites them while
    its runs go on, and they are outputs, not code).
    """
    directory = Path(directory).resolve()
    lines = _git(directory, "rev-parse", "--show-toplevel", "HEAD")
    if lines is None or len(lines) != 2 or Path(lines[0]).resolve() != directory:
        return None, None
    changes = _git(directory, "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){OUTPUTS_DIR}")
    return lines[1], None if changes is None else bool(changes)


def _git(directory: Path, *args: str) -> Optional[list[str]]:
    """The output lines of ``git -C directory args``, or None if git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines() if done.returncode == 0 else None
