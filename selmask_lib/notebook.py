"""Plumbing shared by the notebooks: parameter checks, quiet progress, one log line per run.

Notebooks are run by people in JupyterLab and in batch by papermill, which
injects parameters as text with ``-p`` (``-p datasets '["voc"]'`` arrives as
the *string* ``'["voc"]'``; lists and dicts need ``-y``). A wrong parameter
must stop the notebook in the cell after the parameters with one line that
names the parameter, not as a traceback ten cells later.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import SelmaskError

_HANDLER_NAME = "selmask-notebook"


def setup_notebook(figures_dir: Optional[str] = None) -> Optional[Path]:
    """Call once at the top of a notebook; returns ``figures_dir`` as a Path (created), or None.

    Progress bars are turned off (in a notebook each is a widget that stays
    behind as a stale "0%" line and weighs megabytes in the saved file);
    instead the kit's INFO messages (one line when a run starts, is reused or
    finishes) are printed.
    """
    os.environ["SELMASK_NO_PROGRESS"] = "1"
    logger = logging.getLogger("selmask_lib")
    if not any(handler.get_name() == _HANDLER_NAME for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.set_name(_HANDLER_NAME)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    if figures_dir is None:
        return None
    path = Path(figures_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SelmaskError(f"notebook parameter 'figures_dir': cannot create {path} ({error.strerror})") from None
    return path


def check_parameter(notebook: str, name: str, value: Any, kind: type | tuple[type, ...],
                    choices: Optional[Iterable[Any]] = None) -> Any:
    """``value`` if it is a ``kind`` (and each item, or the value, is one of ``choices``); else one clear error.

    A string where a list or dict is expected is almost always papermill's
    ``-p`` at work, so the message says to use ``-y``.
    """
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds):
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        hint = ""
        if isinstance(value, str) and (list in kinds or dict in kinds):
            hint = (f"; papermill's -p passes text, give lists and dicts with -y, "
                    f"e.g. -y '{name}: {value}'")
        raise SelmaskError(f"{notebook}: parameter '{name}' must be a {wanted}, "
                           f"got {type(value).__name__} {value!r}{hint}")
    if choices is not None:
        allowed = list(choices)
        items = value if isinstance(value, (list, tuple, dict)) else [value]
        for item in items:
            if item not in allowed:
                raise SelmaskError(f"{notebook}: parameter '{name}' has {item!r}, "
                                   f"which is not one of {', '.join(map(str, allowed))}")
    return value


def require_imagenet_weights(notebook: str, names: dict[str, str], weights: Optional[str]) -> None:
    """Stop with one line if a parameter in ``names`` (parameter -> variant) asks for the ImageNet
    column and there are no weights on disk: offline, that column cannot be produced."""
    from .models import imagenet_weights_path

    for parameter, variant in names.items():
        if variant == "imagenet" and not imagenet_weights_path(weights).is_file():
            raise SelmaskError(
                f"{notebook}: parameter '{parameter}' is 'imagenet', but there are no ImageNet weights at "
                f"{imagenet_weights_path(weights)}; set 'imagenet_weights' to a local resnet34-b627a593.pth "
                f"or pick another initialisation")
