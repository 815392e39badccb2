"""The ``results.json`` file format: one file per downstream run, and loading many into a DataFrame.

File format (JSON object, written atomically: temp file + ``os.replace``)::

    format            "selmask-results"          (added by write_results)
    format_version    2 (1: before data_fingerprint; both are read)
    dataset           downstream dataset name, e.g. "voc"
    init              "none" | "imagenet" | "random_ir" | "selective_ir"
    pretrain_run      path/id of the pretraining run, or null
    pretrain_dataset  dataset the IR weights were pretrained on, or null
                      (required, non-null, for random_ir / selective_ir)
    seed              int
    miou              test mIoU, a fraction in [0, 1]
    per_class_iou     {class name: IoU fraction or null}; null = class absent
                      from ground truth and prediction (see selmask_lib.metrics)
    confusion_matrix  [C][C] ints, rows = ground truth, cols = prediction
    class_names       [C] names, same order as the matrix
    config            dict (the run's configuration)
    timings           {name: seconds}
    library_version   selmask_lib.__version__      (added by write_results)
    created           ISO-8601 UTC timestamp        (added unless given)
    pretrain_masking  optional: masking of the pretraining run
                      ("random", "selective", "random_fixed", a user's name)
    pretrain_recon_loss  optional: reconstruction loss of the pretraining run
                      ("ms_ssim", "ssim3"; absent before the setting existed)
    per_image_confusions  optional: each test image's confusion counts, sparse, in
                      the test split's order: [{"id": image id, "cells": [[truth,
                      prediction, count], ...]}, ...], only the non-zero cells;
                      their sum is confusion_matrix (a trained void class is the
                      last id: its column sums to predicted_void). The bootstrap over test images
                      (selmask_lib.statistics) needs them; files without them stay
                      valid (their intervals are NaN). Sparse because a VOC test image
                      shows a handful of its 21 x 21 cells: ~0.2 MB for 1,449 images
                      where dense lists would take ~1.3 MB.
    data_fingerprint  optional (version 2): id of the files the run read
                      (selmask_lib.data.fingerprint)
    environment       optional: package versions, the kit's git commit and
                      dirty flag, device and world size of the process that
                      wrote the file (selmask_lib.provenance; added by
                      write_results). Readers ignore keys they do not know,
                      so it needed no new format version.
    predicted_void    optional: per class, its pixels predicted as the trained
                      void class (config void_as_class; see selmask_lib.metrics)
    val_miou, best_epoch, pixel_accuracy, ...       optional; extra keys are kept

NaN anywhere becomes ``null`` (strict JSON). IoUs are stored as fractions.

:func:`load_results` keys each run by a *variant* (the column of the paper's
comparison it belongs to, see :mod:`selmask_lib.tables`), derived from
``init`` and whether the pretraining dataset equals the downstream dataset:

    none, imagenet, random_ir_self, selective_ir_self, selective_ir_cross

(``random_ir_cross`` exists as a variant but is not a paper column.) A
``selective_ir`` run whose pretraining used another masking of the
iterative loop (the optional ``pretrain_masking`` field, e.g. the
``random_fixed`` ablation or a function of your own named ``mine``) gets the
variant ``<masking>_ir_self`` / ``_cross`` (``mine_ir_self``), so it has a
column of its own next to the paper's: pass it in
``selmask_lib.tables.results_table(columns=...)``. Likewise a ``random_ir``
run pretrained on another loss than the paper's random baseline
(L1 + MS-SSIM; field ``pretrain_recon_loss``) is ``random_ir_<loss>_self``,
e.g. ``random_ir_ssim3_self``: the controlled comparison "random masking,
same loss as selective" (docs/METHOD.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .config import INITS, IR_INITS
from .errors import SelmaskError
from .files import write_text_atomic

__all__ = [
    "RESULTS_FILENAME",
    "REQUIRED_FIELDS",
    "write_results",
    "read_results",
    "load_results",
    "variant_of",
    "ir_variant",
    "PerImageConfusions",
    "per_image_entries",
    "read_per_image_confusions",
]

RESULTS_FILENAME = "results.json"
FORMAT = "selmask-results"
FORMAT_VERSION = 2  # 2 added data_fingerprint; files of version 1 stay readable

REQUIRED_FIELDS = (
    "dataset", "init", "pretrain_run", "pretrain_dataset", "seed", "miou",
    "per_class_iou", "confusion_matrix", "class_names", "config", "timings",
    "library_version", "created",
)
_KEY_ORDER = ("format", "format_version") + REQUIRED_FIELDS + (
    "val_miou", "best_epoch", "pixel_accuracy",
)
_BASE_COLUMNS = [
    "dataset", "init", "pretrain_dataset", "pretrain_run", "pretrain_masking", "pretrain_recon_loss",
    "data_fingerprint", "variant",
    "seed", "miou",
    "val_miou", "best_epoch", "pixel_accuracy", "created", "library_version",
    "class_names", "run_dir", "path",
]


# --------------------------------------------------------------------- helpers
def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types; NaN/inf -> None; tensors/arrays/paths/dataclasses converted."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / numpy
        return _jsonable(value.tolist(), where)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _jsonable(value.to_dict(), where)
    raise SelmaskError(f"results field '{where}' has a value of type {type(value).__name__} "
                       "that cannot be written to JSON")


def _environment(device) -> dict:
    """This process's environment record (selmask_lib.provenance) for a run on ``device``."""
    from .distributed import world_size  # torch: imported only when a results file is written
    from .provenance import environment_record

    return environment_record(None if device is None else str(device), world_size())


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_fraction(v, where: str, allow_none: bool) -> None:
    if v is None and allow_none:
        return
    if not _is_number(v) or not (0.0 <= float(v) <= 1.0):
        raise SelmaskError(f"results field '{where}' must be a fraction in [0, 1], got {v!r}")


#: The loss of the paper's random-masking baseline; a random_ir run on another loss gets its own column.
RANDOM_BASELINE_LOSS = "ms_ssim"


def variant_of(init: str, dataset: str | None, pretrain_dataset: str | None,
               pretrain_masking: str | None = None, pretrain_recon_loss: str | None = None) -> str:
    """Table column key of a run: ``none``, ``imagenet``, ``<ir init>_self`` / ``_cross``.

    A ``selective_ir`` run pretrained with another masking of the iterative
    loop is keyed by that masking instead: ``<pretrain_masking>_ir_self`` / ``_cross``;
    a ``random_ir`` run pretrained on another loss than MS-SSIM by its loss (:func:`ir_variant`).
    """
    if init not in IR_INITS:
        return init
    if pretrain_dataset is None or (isinstance(pretrain_dataset, float) and math.isnan(pretrain_dataset)):
        return ir_variant(init, "unknown", pretrain_masking, pretrain_recon_loss)
    relation = "self" if str(pretrain_dataset) == str(dataset) else "cross"
    return ir_variant(init, relation, pretrain_masking, pretrain_recon_loss)


def ir_variant(init: str, relation: str, pretrain_masking: str | None = None,
               pretrain_recon_loss: str | None = None) -> str:
    """``<init>_<relation>`` (relation: self, cross or unknown); ``<masking>_ir_<relation>`` for a
    ``selective_ir`` run pretrained with a masking other than the paper's selective scoring;
    ``random_ir_<loss>_<relation>`` for a ``random_ir`` run trained on another loss than the
    paper's random baseline (e.g. the selective arm's ``ssim3``)."""
    if init == "selective_ir" and isinstance(pretrain_masking, str) and pretrain_masking != "selective":
        return f"{pretrain_masking}_ir_{relation}"
    if init == "random_ir" and isinstance(pretrain_recon_loss, str) and pretrain_recon_loss != RANDOM_BASELINE_LOSS:
        return f"random_ir_{pretrain_recon_loss}_{relation}"
    return f"{init}_{relation}"


def _validate(data: dict, source: str) -> None:
    """Check required fields and their types; ``source`` names the file or call."""
    for key in REQUIRED_FIELDS:
        if key not in data:
            raise SelmaskError(f"{source}: missing required results field '{key}'")
    if not isinstance(data["dataset"], str) or not data["dataset"]:
        raise SelmaskError(f"{source}: results field 'dataset' must be a non-empty string")
    if data["init"] not in INITS:
        raise SelmaskError(
            f"{source}: results field 'init' must be one of {list(INITS)}, got {data['init']!r}"
        )
    if data["init"] in IR_INITS and not data["pretrain_dataset"]:
        raise SelmaskError(
            f"{source}: results field 'pretrain_dataset' is required for init={data['init']!r}"
        )
    for key in ("pretrain_dataset", "pretrain_run", "pretrain_masking", "pretrain_recon_loss", "data_fingerprint"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise SelmaskError(f"{source}: results field '{key}' must be a string or null")
    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        raise SelmaskError(f"{source}: results field 'seed' must be an integer, got {data['seed']!r}")
    _check_fraction(data["miou"], "miou", allow_none=True)
    names = data["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise SelmaskError(f"{source}: results field 'class_names' must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise SelmaskError(f"{source}: results field 'class_names' has duplicate names: {names}")
    pci = data["per_class_iou"]
    if not isinstance(pci, dict) or set(pci) != set(names):
        raise SelmaskError(
            f"{source}: results field 'per_class_iou' must map exactly the class_names "
            f"{names} to IoU values"
        )
    for name, v in pci.items():
        _check_fraction(v, f"per_class_iou.{name}", allow_none=True)
    cm = data["confusion_matrix"]
    n = len(names)
    if (not isinstance(cm, list) or len(cm) != n
            or any(not isinstance(r, list) or len(r) != n for r in cm)
            or any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for r in cm for x in r)):
        raise SelmaskError(
            f"{source}: results field 'confusion_matrix' must be a {n}x{n} list of "
            "non-negative integers (rows = ground truth, cols = prediction)"
        )
    for key in ("config", "timings"):
        if not isinstance(data[key], dict):
            raise SelmaskError(f"{source}: results field '{key}' must be a dict")
    if data.get("environment") is not None and not isinstance(data["environment"], dict):
        raise SelmaskError(f"{source}: results field 'environment' must be a dict or null")
    for k, v in data["timings"].items():
        if v is not None and not _is_number(v):
            raise SelmaskError(f"{source}: results field 'timings.{k}' must be seconds (a number)")
    for key in ("val_miou", "pixel_accuracy"):
        if key in data:
            _check_fraction(data[key], key, allow_none=True)
    if data.get("best_epoch") is not None and (
            not isinstance(data["best_epoch"], int) or isinstance(data["best_epoch"], bool)):
        raise SelmaskError(f"{source}: results field 'best_epoch' must be an integer or null")
    if data.get("per_image_confusions") is not None:
        _check_per_image(data["per_image_confusions"], cm, data.get("predicted_void"), source)


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_per_image(entries, confusion: list[list[int]], predicted_void, source: str) -> None:
    """Each entry ``{"id", "cells": [[t, p, n], ...]}`` well formed, ids unique, cells summing to the matrix
    (and to ``predicted_void`` in the void column of a run that trained void as a class)."""
    where = f"{source}: results field 'per_image_confusions'"
    if not isinstance(entries, list):
        raise SelmaskError(f"{where} must be a list of {{'id', 'cells'}} objects")
    c, n = len(confusion), len(confusion) + (predicted_void is not None)
    total = [[0] * n for _ in range(n)]
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("cells"), list):
            raise SelmaskError(f"{where}[{i}] must be an object with a string 'id' and a list 'cells'")
        if entry["id"] in seen:
            raise SelmaskError(f"{where}: image id {entry['id']!r} appears twice")
        seen.add(entry["id"])
        for cell in entry["cells"]:
            if (not isinstance(cell, list) or len(cell) != 3 or not all(map(_is_count, cell))
                    or cell[0] >= c or cell[1] >= n):
                raise SelmaskError(f"{where}[{i}] (image {entry['id']!r}): cell {cell!r} is not "
                                   f"[truth, prediction, count] with class ids below {c} (predictions {n})")
            total[cell[0]][cell[1]] += cell[2]
    if [row[:c] for row in total[:c]] != confusion:
        raise SelmaskError(f"{where}: the images' counts do not sum to 'confusion_matrix'")
    if predicted_void is not None and [row[c] for row in total[:c]] != predicted_void:
        raise SelmaskError(f"{where}: the images' void column does not sum to 'predicted_void'")


# ------------------------------------------------------------------ write/read
def write_results(run_dir, **fields) -> Path:
    """Validate ``fields`` and write ``<run_dir>/results.json`` atomically; return its path.

    Required: dataset, init, seed, miou, per_class_iou, confusion_matrix,
    class_names, config, timings; pretrain_run and pretrain_dataset default to
    None (pretrain_dataset is required for the IR inits). ``library_version``,
    ``created`` and ``environment`` (for the ``device`` field, if given) are filled in. ``scores=SegmentationScores`` may be passed
    instead of miou/per_class_iou/confusion_matrix/class_names/pixel_accuracy.
    Tensors, numpy values, dataclasses and paths are converted; NaN -> null.
    Raises :class:`SelmaskError` naming the offending field.
    """
    from . import __version__

    fields = dict(fields)
    scores = fields.pop("scores", None)
    if scores is not None:
        sd = scores.to_dict() if hasattr(scores, "to_dict") else dict(scores)
        for key in ("miou", "per_class_iou", "confusion_matrix", "class_names", "pixel_accuracy"):
            if key in sd and key not in fields:
                fields[key] = sd[key]
        if "class_names" not in fields or not fields["class_names"]:
            fields["class_names"] = list(sd.get("per_class_iou", {}))
    fields.setdefault("pretrain_run", None)
    fields.setdefault("pretrain_dataset", None)
    fields.setdefault("library_version", __version__)
    fields.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    fields.setdefault("environment", _environment(fields.get("device")))
    fields["format"] = FORMAT
    fields["format_version"] = FORMAT_VERSION

    data = {str(k): _jsonable(v, str(k)) for k, v in fields.items()}
    _validate(data, "write_results")
    ordered = {k: data[k] for k in _KEY_ORDER if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    if "per_image_confusions" in ordered:  # long: last, after everything a reader looks at
        ordered["per_image_confusions"] = ordered.pop("per_image_confusions")

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS_FILENAME
    # one line per confusion-matrix row and per test image, not one line per count
    blocks = {"confusion_matrix": [json.dumps(r) for r in ordered["confusion_matrix"]]}
    if ordered.get("per_image_confusions"):
        blocks["per_image_confusions"] = [json.dumps(e, separators=(",", ":")) for e in ordered["per_image_confusions"]]
    text = json.dumps({**ordered, **{key: f"__selmask_{key}__" for key in blocks}}, indent=2, allow_nan=False)
    for key, lines in blocks.items():
        text = text.replace(json.dumps(f"__selmask_{key}__"), "[\n    " + ",\n    ".join(lines) + "\n  ]", 1)
    write_text_atomic(path, text + "\n")
    return path


def read_results(path) -> dict:
    """Read and validate one results file (or a run directory holding ``results.json``).

    Undefined IoUs come back as ``None``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILENAME
    if not path.is_file():
        raise SelmaskError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SelmaskError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SelmaskError(f"{path}: a results file must hold a JSON object")
    _validate(data, str(path))
    return data


# ------------------------------------------------------------------ per-image counts
def per_image_entries(ids, confusions) -> list[dict]:
    """The ``per_image_confusions`` field: ``[{"id", "cells": [[truth, prediction, count], ...]}]``.

    ``confusions`` is ``[N, C, C]`` (tensor or array) in the order of ``ids``;
    only non-zero cells are kept.
    """
    counts = np.asarray(confusions.cpu() if hasattr(confusions, "cpu") else confusions, dtype=np.int64)
    ids = [str(i) for i in ids]
    if counts.ndim != 3 or counts.shape[0] != len(ids) or counts.shape[1] != counts.shape[2]:
        raise SelmaskError(f"per-image confusions must be [N, C, C] for {len(ids)} image ids, "
                           f"got shape {counts.shape}")
    entries = []
    for image_id, matrix in zip(ids, counts):
        truth, prediction = np.nonzero(matrix)
        cells = np.stack([truth, prediction, matrix[truth, prediction]], axis=1)
        entries.append({"id": image_id, "cells": cells.tolist()})
    return entries


@dataclasses.dataclass(frozen=True)
class PerImageConfusions:
    """Each test image's confusion counts of one run, as the bootstrap takes them."""

    ids: tuple[str, ...]  # test image ids, in the split's order
    counts: np.ndarray  # [N, K, K] int64, rows = truth, cols = prediction; K = C, or C + 1 with a trained void class
    class_names: tuple[str, ...]
    absent_class_iou: str  # the run's rule for a class in neither truth nor prediction ("nan" by default)


def read_per_image_confusions(path) -> PerImageConfusions | None:
    """The per-image counts of a results file (or run directory); None for a file written without them."""
    data = read_results(path)
    entries = data.get("per_image_confusions")
    if entries is None:
        return None
    n = len(data["class_names"]) + (data.get("predicted_void") is not None)  # a trained void class: one more
    counts = np.zeros((len(entries), n, n), dtype=np.int64)
    for i, entry in enumerate(entries):
        if entry["cells"]:
            truth, prediction, count = np.asarray(entry["cells"], dtype=np.int64).T
            counts[i, truth, prediction] = count
    rule = data["config"].get("absent_class_iou") or "nan"
    return PerImageConfusions(tuple(e["id"] for e in entries), counts, tuple(data["class_names"]), rule)


# ------------------------------------------------------------------ DataFrame
def _find_files(paths_or_root) -> list[Path]:
    if isinstance(paths_or_root, (str, os.PathLike)):
        items = [paths_or_root]
    else:
        items = list(paths_or_root)
    found: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            cands = sorted(p.rglob(RESULTS_FILENAME))
        elif p.is_file():
            cands = [p]
        else:
            raise SelmaskError(f"results path does not exist: {p}")
        for c in cands:
            key = c.resolve()
            if key not in seen:
                seen.add(key)
                found.append(c)
    return found


def load_results(paths_or_root, on_error: str = "raise") -> pd.DataFrame:
    """One row per run from results files.

    ``paths_or_root``: a directory (searched recursively for ``results.json``),
    a file, or a list of files/directories. Columns: dataset, init,
    pretrain_dataset, pretrain_run, pretrain_masking, variant, seed, miou, val_miou, best_epoch,
    pixel_accuracy, created, library_version, class_names (tuple), run_dir,
    path, ``iou/<class>`` per class (union over runs) and ``time/<name>`` per
    timing. Null values are NaN. ``on_error='skip'`` warns about and skips
    unreadable files instead of raising.
    """
    if on_error not in ("raise", "skip"):
        raise SelmaskError(f"load_results: on_error must be 'raise' or 'skip', got {on_error!r}")
    rows: list[dict] = []
    iou_cols: list[str] = []
    time_cols: list[str] = []
    for path in _find_files(paths_or_root):
        try:
            data = read_results(path)
        except SelmaskError as exc:
            if on_error == "raise":
                raise
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            continue
        row = {
            "dataset": data["dataset"],
            "init": data["init"],
            "pretrain_dataset": data["pretrain_dataset"],
            "pretrain_run": data["pretrain_run"],
            "pretrain_masking": data.get("pretrain_masking"),
            "data_fingerprint": data.get("data_fingerprint"),  # None in version-1 files
            "pretrain_recon_loss": data.get("pretrain_recon_loss"),
            "variant": variant_of(data["init"], data["dataset"], data["pretrain_dataset"],
                                  data.get("pretrain_masking"), data.get("pretrain_recon_loss")),
            "seed": data["seed"],
            "miou": data["miou"],
            "val_miou": data.get("val_miou"),
            "best_epoch": data.get("best_epoch"),
            "pixel_accuracy": data.get("pixel_accuracy"),
            "created": data["created"],
            "library_version": data["library_version"],
            "class_names": tuple(data["class_names"]),
            "run_dir": str(path.parent),
            "path": str(path),
        }
        for name in data["class_names"]:
            col = f"iou/{name}"
            if col not in iou_cols:
                iou_cols.append(col)
            row[col] = data["per_class_iou"][name]
        for name, v in data["timings"].items():
            col = f"time/{name}"
            if col not in time_cols:
                time_cols.append(col)
            row[col] = v
        rows.append(row)
    columns = _BASE_COLUMNS + iou_cols + time_cols
    df = pd.DataFrame(rows, columns=columns)
    for col in ["miou", "val_miou", "pixel_accuracy"] + iou_cols + time_cols:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)  # None -> NaN
    df["best_epoch"] = pd.to_numeric(df["best_epoch"], errors="coerce").astype("Int64")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    dup = df.duplicated(["dataset", "variant", "pretrain_dataset", "seed"], keep=False)
    if bool(dup.any()):
        warnings.warn(
            "several runs share dataset/variant/pretrain_dataset/seed; all of them are "
            "counted in the tables:\n  " + "\n  ".join(df.loc[dup, "path"]),
            stacklevel=2,
        )
    return df
