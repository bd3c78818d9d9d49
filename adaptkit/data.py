"""Load a recipe's data files through ``datasets`` and split them the same way every time."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from adaptkit.errors import DataError
from adaptkit.recipe import Recipe, data_format

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class Splits:
    train: "datasets.Dataset"  # noqa: F821
    eval: "datasets.Dataset"  # noqa: F821
    eval_source: str  # the eval file, or "N% of train (seed S)"
    validation: Optional["datasets.Dataset"] = None  # noqa: F821  # carved from train: chooses, never reported


def load_table(path: Path) -> "datasets.Dataset":  # noqa: F821
    """One local file as a ``datasets.Dataset`` (cached by datasets, keyed by file content).

    A folder is read by datasets' ``imagefolder`` builder: one sub-folder per class gives an
    ``image`` column and a ``label`` column (class names from the sub-folder names).
    """
    import datasets

    if path.is_dir():
        try:
            table = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        except Exception as exc:  # datasets raises several kinds for an empty or odd folder
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot read as an image folder: {reason}") from None
        if len(table) == 0:
            raise DataError(f"{path}: no images")
        return table
    kind = data_format(path)
    if kind is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    kwargs = {"delimiter": "\t"} if kind == "tsv" else {}
    if kind in ("csv", "tsv"):
        kwargs["keep_default_na"] = False  # the text "NA" or "null" is text, not a missing value
    try:
        table = datasets.load_dataset(_BUILDERS[kind], data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets wraps parser errors several layers deep
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise DataError(f"{path}: cannot read as {kind.upper()}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows")
    return table


# ---------------------------------------------------------------------------- row checks
# Cheap checks of a data file's rows, pure Python (no torch, no datasets), so `adaptkit validate`
# and the start of `adaptkit run` report a bad row as file:line before any model is built.

class _LabelRules:
    """What a classification task's options say about its label column (nothing for other tasks)."""

    def __init__(self, options: Any):
        self.column = getattr(options, "label_column", None)
        labels = getattr(options, "labels", None)
        self.labels = [str(label) for label in labels] if labels else None
        self.source = "task.labels"
        self.multi = bool(getattr(options, "multi_label", False))
        self.separator = getattr(options, "label_separator", ",")
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


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) of a CSV/TSV file; ragged rows and undecodable bytes are errors with the line.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped, not read into the first column's name.
    """
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


def scan_rows(path: Path, kind: str, required: list[str], renames: dict[str, str], options: Any,
              is_train: bool = True) -> None:
    """Read every row of a CSV, TSV or JSONL file and raise ``DataError`` at the first bad one.

    Checks: the file has rows (an empty split is an error), every row has every field of the
    header, required columns are present in each row, labels are not empty and belong to
    ``task.labels`` when it is given, and a training file holds at least two classes. Other
    formats (JSON, Parquet, image folders) are checked when loaded (``check_table``).
    """
    if kind in ("csv", "tsv"):
        rows = _csv_rows(path, "\t" if kind == "tsv" else ",")
    elif kind == "jsonl":
        rows = _jsonl_rows(path)
    else:
        return
    rules = _LabelRules(options)
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
    if count == 0:
        raise DataError(f"{path}: no rows (an empty {'training' if is_train else 'evaluation'} split)")
    if is_train:
        rules.finish(path)


def check_table(table, path: Path, options: Any, is_train: bool,
                known: Optional[set[str]] = None) -> set[str]:
    """The label checks of ``scan_rows`` on a loaded table (any format); rows are numbered from 1.

    ``known``: the labels seen in training, which an eval table's labels must be among when the
    recipe gives no ``task.labels``. Returns the labels seen.
    """
    rules = _LabelRules(options)
    if rules.column is None or rules.column not in table.column_names:
        return set()
    if rules.labels is None and known:
        rules.labels, rules.source = sorted(known), "the labels of the training data"
    feature = table.features.get(rules.column)
    names = getattr(feature, "names", None)  # a ClassLabel (image folders): ints naming the classes
    for index, value in enumerate(table[rules.column]):
        rules.check(names[value] if names is not None and isinstance(value, int) else value,
                    f"{path}: row {index + 1}")
    if is_train:
        rules.finish(path)
    return rules.seen


def _rename(table, columns: dict[str, str], path: Path):
    for old, new in columns.items():
        if old in table.column_names:
            table = table.rename_column(old, new)
    return table


def _check_columns(table, required: list[str], path: Path) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: lacks column(s) {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(table.column_names)})")


def _stratified_split(table, fraction: float, seed: int, column: Optional[str]):
    if column and column in table.column_names:
        try:
            encoded = table.class_encode_column(column) if not hasattr(table.features[column], "names") else table
            parts = encoded.train_test_split(test_size=fraction, seed=seed, stratify_by_column=column)
            return parts["train"].cast(table.features), parts["test"].cast(table.features)
        except (ValueError, TypeError):
            pass  # too few rows of a class to stratify: fall back to a plain seeded split
    parts = table.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def load_splits(recipe: Recipe, required: list[str], stratify_column: Optional[str] = None) -> Splits:
    """Train and eval tables with the recipe's renames, sizes and (stratified, seeded) split."""
    section = recipe.data
    seed = recipe.training.seed
    train_path = recipe.resolve_path(section.train)
    train = _rename(load_table(train_path), section.columns, train_path)
    _check_columns(train, required, train_path)
    seen = check_table(train, train_path, recipe.task_options, is_train=True)
    if section.eval is not None:
        eval_path = recipe.resolve_path(section.eval)
        evaluation = _rename(load_table(eval_path), section.columns, eval_path)
        _check_columns(evaluation, [c for c in required if c in train.column_names], eval_path)
        check_table(evaluation, eval_path, recipe.task_options, is_train=False, known=seen)
        source = str(eval_path)
    else:
        if len(train) < 4:
            raise DataError(f"{train_path}: {len(train)} rows are too few to hold some out for evaluation; "
                            f"give data.eval")
        train, evaluation = _stratified_split(train, section.eval_fraction, seed, stratify_column)
        source = f"{section.eval_fraction:.0%} of {train_path.name} (stratified, seed {seed})"
    if section.max_train_samples and section.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(section.max_train_samples))
    if section.max_eval_samples and section.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(section.max_eval_samples))
    validation = None
    if section.validation_fraction:
        train, validation = split_validation(train, section.validation_fraction, seed, stratify_column, train_path)
    return Splits(train=train, eval=evaluation, eval_source=source, validation=validation)


def split_validation(table, fraction: float, seed: int, column: Optional[str], where: Any = "the training data"):
    """(train, validation): ``fraction`` of ``table``'s rows held out, stratified on ``column`` when it can be.

    The validation rows choose (the best epoch, a learning rate); the eval rows a verdict is
    computed on are never among them. At least one row stays on each side.
    """
    if len(table) < 4:
        raise DataError(f"{where}: {len(table)} training rows are too few to carve a validation split from")
    count = min(max(1, round(fraction * len(table))), len(table) - 2)
    return _stratified_split(table, count / len(table), seed, column)
