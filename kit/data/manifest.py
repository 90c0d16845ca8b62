"""`manifest.csv`: one row per image of a dataset folder; build, validate, read and write it.

Columns (in this order): ``id, split, height, width, channels, dtype, n_nuclei, style, fold,
sha256_image, sha256_masks, source, note, label_source, label_score``. ``n_nuclei`` is empty when the
truth is unknown (no masks/ folder); ``style`` is −1 until images are clustered and ``fold`` is −1 for rows
outside the train split or before folds are assigned; ``sha256_masks`` hashes the mask files' bytes in
``k`` order (empty without masks). ``label_source`` is empty for labels drawn or imported as truth, and
names the model that made them for automatic labels (`kit data autolabel`), with that model's confidence
in ``label_score``; automatic labels train models but are never scoring truth
(`kit.data.dataset.NucleiDataset.truth`). A manifest written before these two columns existed reads as
all labels drawn.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kit.data.sample import SPLITS
from kit.errors import DataError
from kit.fileio import atomic_write_text

MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "split",
    "height",
    "width",
    "channels",
    "dtype",
    "n_nuclei",
    "style",
    "fold",
    "sha256_image",
    "sha256_masks",
    "source",
    "note",
    "label_source",
    "label_score",
)
_OPTIONAL_COLUMNS = {"label_source": "", "label_score": ""}
"""Columns added after the first manifests were written, and what an older manifest reads as."""
_INT_COLUMNS = ("height", "width", "channels", "style", "fold")
_TEXT_COLUMNS = ("id", "split", "dtype", "sha256_image", "sha256_masks", "source", "note", "label_source")
_DTYPES = ("uint8", "uint16")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def build_manifest(rows: Sequence[dict]) -> pd.DataFrame:
    """A manifest DataFrame from row dicts (missing ``style``/``fold`` default to −1), checked."""
    frame = pd.DataFrame(list(rows), columns=list(MANIFEST_COLUMNS))
    frame[["style", "fold"]] = frame[["style", "fold"]].fillna(-1)
    text = ["sha256_masks", "source", "note", "label_source"]
    frame[text] = frame[text].fillna("")
    return _validated(frame, "manifest")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a `manifest.csv`; raises `DataError` naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).strip()})") from None
    return _validated(frame, str(path))


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate `manifest` and write it as CSV atomically (columns in the canonical order)."""
    frame = _validated(manifest, str(path))
    return atomic_write_text(path, frame.to_csv(index=False))


def _validated(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check columns and values; return a copy with canonical column order and dtypes."""
    frame = frame.assign(**{c: v for c, v in _OPTIONAL_COLUMNS.items() if c not in frame.columns})
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {', '.join(missing)}; expected {', '.join(MANIFEST_COLUMNS)}"
        )
    out = frame[list(MANIFEST_COLUMNS)].copy()
    for col in _TEXT_COLUMNS:
        out[col] = out[col].astype(str)
    for col in _INT_COLUMNS:
        out[col] = _to_int(out[col], col, name, out["id"], nullable=False)
    out["n_nuclei"] = _to_int(out["n_nuclei"], "n_nuclei", name, out["id"], nullable=True)
    out["label_score"] = _to_float(out["label_score"], "label_score", name, out["id"])

    problems = []
    bad_ids = [i for i in out["id"] if not ID_PATTERN.match(i)]
    if bad_ids:
        problems.append(f"invalid id(s) {_few(bad_ids)} (use letters, digits, '.', '_', '-')")
    dup = out.loc[out["id"].duplicated(), "id"].tolist()
    if dup:
        problems.append(f"duplicate id(s) {_few(dup)}")
    bad_split = sorted(set(out["split"]) - set(SPLITS))
    if bad_split:
        problems.append(f"unknown split(s) {_few(bad_split)} (expected {', '.join(SPLITS)})")
    bad_dtype = sorted(set(out["dtype"]) - set(_DTYPES))
    if bad_dtype:
        problems.append(f"unsupported dtype(s) {_few(bad_dtype)} (expected {', '.join(_DTYPES)})")
    bad_hash = out.loc[~out["sha256_image"].str.match(_SHA256), "id"].tolist()
    bad_hash += out.loc[(out["sha256_masks"] != "") & ~out["sha256_masks"].str.match(_SHA256), "id"].tolist()
    if bad_hash:
        problems.append(f"malformed sha256 in row(s) {_few(bad_hash)}")
    if ((out["height"] < 1) | (out["width"] < 1) | (out["channels"] < 1)).any():
        problems.append("height, width and channels must be >= 1")
    if problems:
        raise DataError(f"{name}: " + "; ".join(problems))
    return out.reset_index(drop=True)


def _to_int(column: pd.Series, col: str, name: str, ids: pd.Series, *, nullable: bool) -> pd.Series:
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    empty = text == ""
    numbers = pd.to_numeric(text.where(~empty), errors="coerce")
    bad = (numbers.isna() & ~empty) | (numbers.notna() & (numbers % 1 != 0))
    if not nullable:
        bad |= empty
    if bad.any():
        rows = ids[bad].tolist()
        raise DataError(f"{name}: column {col} needs whole numbers; bad value(s) in row(s) {_few(rows)}")
    return numbers.astype("Int64") if nullable else numbers.astype("int64")


def _to_float(column: pd.Series, col: str, name: str, ids: pd.Series) -> pd.Series:
    """Numbers or empty (NaN)."""
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = numbers.isna() & (text != "") & (text.str.lower() != "nan")
    if bad.any():
        raise DataError(
            f"{name}: column {col} needs numbers; bad value(s) in row(s) {_few(ids[bad].tolist())}"
        )
    return numbers.astype("float64")


def _few(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(str(i)) for i in list(items)[:limit])
    more = len(items) - limit
    return shown + (f" and {more} more" if more > 0 else "")
