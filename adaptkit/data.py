"""Load a recipe's data files through ``datasets`` and split them the same way every time."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adaptkit.errors import DataError
from adaptkit.recipe import Recipe, data_format

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class Splits:
    train: "datasets.Dataset"  # noqa: F821
    eval: "datasets.Dataset"  # noqa: F821
    eval_source: str  # the eval file, or "N% of train (seed S)"


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
    if section.eval is not None:
        eval_path = recipe.resolve_path(section.eval)
        evaluation = _rename(load_table(eval_path), section.columns, eval_path)
        _check_columns(evaluation, [c for c in required if c in train.column_names], eval_path)
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
    return Splits(train=train, eval=evaluation, eval_source=source)
