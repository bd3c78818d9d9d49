"""Data files read the cheap way: format by suffix, header, every row checked with its line
number, and whether a Hub dataset sits in the local caches — all without importing ``datasets``,
so ``adaptkit validate`` answers at once. The engine loads the same files through ``datasets``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from adaptkit.errors import DataError
from adaptkit.plugin.sources import hub_offline
from adaptkit.plugin.task import LabelRules
from adaptkit.recipe.schema import DataSource


def _offline_env() -> bool:
    """Whether HF_HUB_OFFLINE is set, read as ``sources.hub_offline`` reads it."""
    return hub_offline()


def datasets_cache_dir() -> Path:
    """datasets' own cache (prepared Arrow tables): datasets' setting once it is imported, else located the
    way datasets locates it (``adaptkit validate`` does not import datasets)."""
    if "datasets.config" in sys.modules:
        return Path(sys.modules["datasets.config"].HF_DATASETS_CACHE)
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "datasets"


def cached_in_datasets(name: str) -> Optional[Path]:
    """Where datasets keeps ``name`` once loaded (``owner___name/config/version/hash``), if it is there."""
    parts = name.split("/")  # datasets.naming.camelcase_to_snakecase, without importing datasets
    parts[-1] = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", parts[-1])).lower()
    root = datasets_cache_dir() / "___".join(parts)
    return root if root.is_dir() and any(p.is_dir() for p in root.glob("*/*/*")) else None


def hub_snapshot(name: str, revision: Optional[str]) -> Optional[Path]:
    """The folder ``huggingface-cli download --repo-type dataset NAME`` left in the Hub cache, if any."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, repo_type="dataset", revision=revision, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or an id the hub client refuses: nothing cached
        return None


def fetch_hint(source: DataSource) -> str:
    args = ", ".join(repr(a) for a in (source.name, source.config) if a is not None)
    return (f"on a machine that reaches the Hub, with the same HF_HOME, run `huggingface-cli download --repo-type "
            f"dataset {source.name}`{f' --revision {source.revision}' if source.revision else ''} or `python -c "
            f"\"import datasets; datasets.load_dataset({args})\"`, then copy the cache (or give the downloaded "
            f"folder as name)")


def offline_cache_problem(source: DataSource, key: str) -> Optional[str]:
    """Why a Hub dataset cannot load when HF_HUB_OFFLINE is set (not in either cache), else None.

    Pure file checks, no import of datasets: ``adaptkit validate`` says it at once, not the run.
    """
    if not _offline_env() or cached_in_datasets(source.name) or hub_snapshot(source.name, source.revision):
        return None
    return (f"{key}: dataset {source.name!r} is not in the local cache ({datasets_cache_dir()} nor the Hub cache) "
            f"and HF_HUB_OFFLINE is set; {fetch_hint(source)}")


class LabelChecker:
    """Checks rows against a task's ``LabelRules`` (``Task.label_rules``; None: nothing to check)."""

    def __init__(self, rules: "Optional[LabelRules]"):
        self.column = rules.column if rules is not None else None
        self.labels = list(rules.labels) if rules is not None and rules.labels else None
        self.source = "task.labels"
        self.multi = bool(rules.multi) if rules is not None else False
        self.separator = rules.separator if rules is not None else ","
        self.seen: set[str] = set()

    def check(self, value: Any, where: str) -> None:
        if self.column is None or isinstance(value, (list, dict)):
            return  # not a classification label (token tags, ...): the task checks those
        if isinstance(value, float) and not math.isfinite(value):
            # pandas writes a missing value as NaN into Parquet and JSON: it is no class called "nan"
            raise DataError(f"{where}: the label column {self.column!r} holds {value} (a missing value); "
                            f"give every row a label or drop the rows without one")
        if value is None or (isinstance(value, str) and not value.strip()):
            if self.multi:
                return  # no label at all is a valid multi-label row
            raise DataError(f"{where}: the label column {self.column!r} is empty")
        names = ([part.strip() for part in str(value).split(self.separator) if part.strip()]
                 if self.multi else [str(value)])
        for name in names:
            if self.labels is not None and name not in self.labels:
                raise DataError(f"{where}: label {name!r} is not in {self.source} {self.labels}")
        self.seen.update(names)

    def finish(self, path: Path) -> None:
        if self.column is None or self.labels is not None or self.multi:
            return
        if len(self.seen) < 2:
            raise DataError(f"{path}: column {self.column!r} holds {len(self.seen)} distinct label(s) "
                            f"({', '.join(sorted(self.seen)) or 'none'}); classification needs at least two "
                            f"classes (a single class cannot be learnt)")


def _undecodable_line(path: Path) -> int:
    """The line of the first byte that is not UTF-8: a text reader decodes in 8 KiB blocks, so
    the line it is at when decoding fails can be far past the bad byte."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[: exc.start].count(b"\n") + 1
    return 1


# The largest CSV cell read, in characters. Python's csv module stops at 131,072 by default, so a
# valid file with a 150 KB text cell (a long document) was called "malformed CSV: field larger than
# field limit". A bound remains: an unclosed quote would otherwise read the rest of a file into one cell.
MAX_CSV_FIELD = 256 * 2**20


def allow_large_csv_fields() -> None:
    """Raise the csv module's field limit to ``MAX_CSV_FIELD`` (never lower it: the limit is process-wide)."""
    if csv.field_size_limit() < MAX_CSV_FIELD:
        csv.field_size_limit(MAX_CSV_FIELD)


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) of a CSV/TSV file; ragged rows and undecodable bytes are errors with the line.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped, not read into the first column's name.
    """
    allow_large_csv_fields()
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = None
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                raise DataError(f"{path}:{_undecodable_line(path)}: not UTF-8 text (a binary file?)") from None
            except csv.Error as exc:
                if "field larger than field limit" in str(exc):
                    raise DataError(f"{path}:{reader.line_num}: a cell is longer than {MAX_CSV_FIELD:,} characters, "
                                    f"the most adaptkit reads in one CSV cell (an unclosed quote makes the rest of "
                                    f"the file one cell)") from None
                raise DataError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
            if header is None:
                header = fields
                continue
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise DataError(f"{path}:{reader.line_num}: row has {len(fields)} field(s), the header has "
                                f"{len(header)} ({', '.join(header)})")
            yield reader.line_num, dict(zip(header, fields))
    finally:
        handle.close()


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is no JSON
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: not UTF-8 text (a binary file?)") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}:{number}: a JSON Lines row must be an object, not {type(value).__name__}")
            yield number, value


def scan_rows(path: Path, kind: str, required: list[str], renames: dict[str, str],
              label_rules: "Optional[LabelRules]", is_train: bool = True,
              row_problem: Optional[Callable[[dict[str, Any]], Optional[str]]] = None) -> None:
    """Read every row of a CSV, TSV or JSONL file and raise ``DataError`` at the first bad one.

    Checks: the file has rows (an empty split is an error), every row has every field of the
    header, required columns are present in each row, labels are not empty and belong to
    ``task.labels`` when it is given, and a training file holds at least two classes. Other
    formats (JSON, Parquet, image folders) are checked when loaded (``check_table``).
    ``row_problem`` is the task's own check of one row (``Task.row_problem``).
    """
    if kind in ("csv", "tsv"):
        rows = _csv_rows(path, "\t" if kind == "tsv" else ",")
    elif kind == "jsonl":
        rows = _jsonl_rows(path)
    else:
        return
    rules = LabelChecker(label_rules)
    count = 0
    for line, row in rows:
        count += 1
        row = {renames.get(key, key): value for key, value in row.items()}
        if kind == "jsonl":
            missing = [column for column in required if column not in row]
            if missing:
                raise DataError(f"{path}:{line}: row lacks column(s) {', '.join(map(repr, missing))}")
        if rules.column is not None and rules.column in row:
            rules.check(row[rules.column], f"{path}:{line}")
        problem = row_problem(row) if row_problem is not None else None
        if problem:
            raise DataError(f"{path}:{line}: {problem}")
    if count == 0:
        raise DataError(f"{path}: no rows (an empty {'training' if is_train else 'evaluation'} split)")
    if is_train:
        rules.finish(path)


DATA_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}


def read_header(path: Path, kind: str) -> Optional[list[str]]:
    """Column names of a data file, read cheaply (no pandas, no datasets)."""
    if kind in ("csv", "tsv"):  # utf-8-sig: Excel starts a UTF-8 CSV with a byte-order mark
        allow_large_csv_fields()
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            row = next(csv.reader(handle, delimiter="\t" if kind == "tsv" else ","), None)
        return row or []
    if kind == "jsonl":
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
            first = handle.readline()
        try:
            value = json.loads(first) if first.strip() else {}
        except json.JSONDecodeError:
            return None
        return list(value) if isinstance(value, dict) else None
    return None


def data_format(path: Path) -> Optional[str]:
    return DATA_FORMATS.get(path.suffix.lower())
