"""Load a recipe's data files through ``datasets`` and split them the same way every time."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from adaptkit.errors import DataError
from adaptkit.recipe.datafiles import (LabelChecker, cached_in_datasets, data_format, datasets_cache_dir, fetch_hint,
                                       hub_snapshot)
from adaptkit.plugin.task import LabelRules
from adaptkit.recipe.schema import DataSource, Recipe, local_dataset_dir, looks_like_path

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class Splits:
    train: "datasets.Dataset"  # noqa: F821
    eval: "datasets.Dataset"  # noqa: F821
    eval_source: str  # the eval file, or "N% of train (seed S)"
    validation: Optional["datasets.Dataset"] = None  # noqa: F821  # carved from train: chooses, never reported


def load_table(path: Path, field: Optional[str] = None) -> "datasets.Dataset":  # noqa: F821
    """One local file as a ``datasets.Dataset`` (cached by datasets, keyed by file content).

    A folder is read by datasets' ``imagefolder`` builder: one sub-folder per class gives an
    ``image`` column and a ``label`` column (class names from the sub-folder names).
    ``field``: the key of a JSON file's object that holds the list of rows (nested JSON).
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
    if field is not None:
        kwargs["field"] = field
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


# ---------------------------------------------------------------------------- named datasets
# data.train / data.eval may name a dataset `datasets.load_dataset` reads: a Hub id or a dataset folder.
# A Hub id is read from the Hub when it answers and from the local caches when it does not; neither
# wait on datasets' own retries: an unreachable Hub is found by a 3 s TCP connect (or HF_HUB_OFFLINE).

def _first_line(exc: BaseException) -> str:
    """The first line of what went wrong; datasets wraps a builder's error ("An error occurred while
    generating the dataset"), so a wrapped cause speaks instead (a missing JSON field: KeyError 'rows')."""
    while type(exc).__name__ == "DatasetGenerationError" and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    if isinstance(exc, KeyError):
        return f"KeyError: {text}"
    return text.splitlines()[0] if text else type(exc).__name__














@contextmanager
def _hub_offline() -> Iterator[None]:
    """Offline mode for datasets and huggingface_hub for the length of one load (they read it at import)."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_dataset(target: str, source: DataSource, split: str, key: str, what: str) -> "datasets.Dataset":  # noqa: F821
    import datasets

    kwargs: dict[str, Any] = {"split": split}
    if source.field is not None:
        kwargs["field"] = source.field
    if source.revision is not None and what == "Hub dataset":
        kwargs["revision"] = source.revision
    try:
        table = datasets.load_dataset(target, source.config, **kwargs)
    except Exception as exc:  # ValueError (config, split, field), FileNotFoundError, DatasetNotFoundError, ...
        reason = _first_line(exc)
        if source.field is not None and reason.startswith("KeyError"):
            reason += f" (field {source.field!r} names no key of the JSON files)"
        raise DataError(f"{key}: cannot load {what} {source.name!r}"
                        f"{f' (config {source.config!r})' if source.config else ''}, split {split!r}: "
                        f"{reason}") from None
    if not isinstance(table, datasets.Dataset):
        raise DataError(f"{key}: {what} {source.name!r} did not give one table for split {split!r}")
    return table


def load_named(source: DataSource, base: Path, key: str, split: str) -> "datasets.Dataset":  # noqa: F821
    """A dataset given by ``name``: a local dataset folder, else a Hub id (cache first when offline).

    Offline (HF_HUB_OFFLINE, or no TCP answer from the Hub within 3 s) a Hub id is read from datasets'
    cache of an earlier load, else from a ``huggingface-cli download`` snapshot in the Hub cache; when
    neither holds it the error says how to fetch it, at once.
    """
    folder = local_dataset_dir(source.name, base)
    if folder is not None:
        return _load_dataset(str(folder), source, split, key, "dataset folder")
    if looks_like_path(source.name):
        raise DataError(f"{key}: dataset folder not found: {base / Path(source.name).expanduser()}")
    from adaptkit.plugin import sources

    unreachable = sources.hub_unreachable()
    if unreachable is None:
        return _load_dataset(source.name, source, split, key, "Hub dataset")
    with _hub_offline():
        if cached_in_datasets(source.name):
            return _load_dataset(source.name, source, split, key, "cached Hub dataset")
        snapshot = hub_snapshot(source.name, source.revision)
        if snapshot is not None:
            return _load_dataset(str(snapshot), source, split, key, "downloaded Hub dataset")
    raise DataError(f"{key}: dataset {source.name!r} is not in the local cache ({datasets_cache_dir()} nor the Hub "
                    f"cache) and the Hub cannot be reached ({unreachable}); {fetch_hint(source)}")


def load_source(source: DataSource, base: Path, key: str) -> tuple["datasets.Dataset", Union[Path, str], str]:  # noqa: F821
    """(table, where, short name) of one source: ``where`` heads its error messages, ``short`` names it."""
    if source.path is not None:
        path = source.path if source.path.is_absolute() else base / source.path
        return _rename(load_table(path, field=source.field), source.columns, path), path, path.name
    split = source.split or "train"
    table = load_named(source, base, key, split)
    where = f"{key} ({source.name}{f' {source.config}' if source.config else ''}, split {split})"
    if len(table) == 0:
        raise DataError(f"{where}: no rows")
    return _rename(table, source.columns, where), where, f"{source.name}[{split}]"


# ---------------------------------------------------------------------------- row checks
# Cheap checks of a data file's rows, pure Python (no torch, no datasets), so `adaptkit validate`
# and the start of `adaptkit run` report a bad row as file:line before any model is built.











def check_table(table, path: Path, label_rules: Optional[LabelRules], is_train: bool,
                known: Optional[set[str]] = None) -> set[str]:
    """The label checks of ``scan_rows`` on a loaded table (any format); rows are numbered from 1.

    ``known``: the labels seen in training, which an eval table's labels must be among when the
    recipe gives no ``task.labels``. Returns the labels seen.
    """
    rules = LabelChecker(label_rules)
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


def load_splits(recipe: Recipe, required: list[str], stratify_column: Optional[str] = None,
                label_rules: Optional[LabelRules] = None) -> Splits:
    """Train and eval tables with the recipe's renames, sizes and (stratified, seeded) split.

    A list of sources in ``data.train`` is a mixture (``mix_sources``); one source, a path or a named
    dataset, is read as it always was.
    """
    section = recipe.data
    seed = recipe.training.seed
    if isinstance(section.train, list):
        return mix_sources(recipe, required, stratify_column, label_rules)
    train, train_where, train_name = load_source(section.sources("train")[0], recipe.base_dir(), "data.train")
    train = _rename(train, section.columns, train_where)
    _check_columns(train, required, train_where)
    seen = check_table(train, train_where, label_rules, is_train=True)
    if section.eval is not None:
        evaluation, source = _load_eval(recipe, required, train.column_names, seen, label_rules)
    else:
        if len(train) < 4:
            raise DataError(f"{train_where}: {len(train)} rows are too few to hold some out for evaluation; "
                            f"give data.eval")
        train, evaluation = _stratified_split(train, section.eval_fraction, seed, stratify_column)
        source = f"{section.eval_fraction:.0%} of {train_name} (stratified, seed {seed})"
    if section.max_train_samples and section.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(section.max_train_samples))
    if section.max_eval_samples and section.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(section.max_eval_samples))
    validation = None
    if section.validation_fraction:
        train, validation = split_validation(train, section.validation_fraction, seed, stratify_column, train_where)
    return Splits(train=train, eval=evaluation, eval_source=source, validation=validation)


def _load_eval(recipe: Recipe, required: list[str], train_columns: list[str], seen: set[str],
               label_rules: Optional[LabelRules]):
    """(table, its name for the report) of ``data.eval``, checked against what training holds."""
    section = recipe.data
    evaluation, where, _ = load_source(section.sources("eval")[0], recipe.base_dir(), "data.eval")
    evaluation = _rename(evaluation, section.columns, where)
    _check_columns(evaluation, [c for c in required if c in train_columns], where)
    check_table(evaluation, where, label_rules, is_train=False, known=seen)
    return evaluation, str(where)


def mixture_counts(total: int, weights: list[float]) -> list[int]:
    """Rows per source: ``total`` shared in proportion to ``weights``, rounded so they sum to ``total``
    (largest remainders first, ties to the earlier source)."""
    whole = sum(weights)
    exact = [total * weight / whole for weight in weights]
    counts = [math.floor(value) for value in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def _draw(table, count: int, rng: "numpy.random.Generator"):  # noqa: F821
    """``count`` rows of ``table``: a seeded sample without replacement when it has that many, else every
    row ``count // len`` times and a sample without replacement of the remainder (no row twice more than another)."""
    import numpy

    size = len(table)
    whole, rest = divmod(count, size)
    indices = numpy.concatenate([numpy.tile(numpy.arange(size), whole), rng.permutation(size)[:rest]])
    return table.select(indices.tolist())


def mix_sources(recipe: Recipe, required: list[str], stratify_column: Optional[str] = None,
                label_rules: Optional[LabelRules] = None) -> Splits:
    """Splits of a mixture: ``data.train`` as a list of sources, each with an optional ``weight``.

    1. Each source is loaded and renamed (its own ``columns``, then ``data.columns``); the columns every
       source has are kept, cast to the first source's types.
    2. Without ``data.eval``, ``eval_fraction`` of each source's rows is held out (stratified, seeded):
       the eval set holds each source in its own size, and no eval row can be drawn for training.
    3. The training total is ``data.max_train_samples``, else the rows left in all sources together;
       each source gets ``total x weight / sum(weights)`` of it (largest remainders; without weights a
       source's weight is its row count, so the mixture is the plain concatenation).
    4. With ``validation_fraction``, that share of each source's count is carved from its distinct rows
       first, so a validation row (or a copy of it) is never among the training rows.
    5. A source with more rows than its count is sampled without replacement (seeded); one with fewer is
       repeated whole and topped up with a sample without replacement (upsampling).
    The training rows are shuffled (seeded) across sources.
    """
    import datasets
    import numpy

    section = recipe.data
    seed = recipe.training.seed
    rng = numpy.random.default_rng(seed)
    sources = section.sources("train")
    tables, names = [], []
    for index, spec in enumerate(sources):
        table, where, name = load_source(spec, recipe.base_dir(), f"data.train.{index}")
        table = _rename(table, section.columns, where)
        _check_columns(table, required, where)
        tables.append(table)
        names.append(name)
    common = [c for c in tables[0].column_names if all(c in t.column_names for t in tables[1:])]
    tables = [table.select_columns(common) for table in tables]
    for index, table in enumerate(tables[1:], start=1):
        if table.features != tables[0].features:
            try:
                tables[index] = table.cast(tables[0].features)
            except Exception as exc:  # ArrowInvalid, ValueError: a column whose values do not convert
                raise DataError(f"data.train.{index}: its columns {dict(table.features)} cannot take the types of "
                                f"data.train.0's {dict(tables[0].features)}: {_first_line(exc)}") from None
    if section.eval is not None:
        pools, held_out = tables, []
    else:
        pools, held_out = [], []
        for index, table in enumerate(tables):
            if len(table) < 4:
                raise DataError(f"data.train.{index} ({names[index]}): {len(table)} rows are too few to hold some "
                                f"out for evaluation; give data.eval")
            kept, out = _stratified_split(table, section.eval_fraction, seed, stratify_column)
            pools.append(kept)
            held_out.append(out)
    weights = [spec.weight if spec.weight is not None else len(pool) for spec, pool in zip(sources, pools)]
    total = section.max_train_samples or sum(len(pool) for pool in pools)
    counts = mixture_counts(total, weights)
    parts, validation_parts = [], []
    for index, (pool, count) in enumerate(zip(pools, counts)):
        if count == 0:
            continue
        if section.validation_fraction:
            carve = min(round(section.validation_fraction * count), len(pool) - 1, count - 1)
            if carve > 0:
                pool, carved = _stratified_split(pool, carve, seed, stratify_column)
                validation_parts.append(carved)
                count -= carve
        parts.append(_draw(pool, count, rng))
    train = datasets.concatenate_datasets(parts)
    train = train.select(rng.permutation(len(train)).tolist())
    seen = check_table(train, "data.train (the mixture)", label_rules, is_train=True)
    if section.eval is not None:
        evaluation, source = _load_eval(recipe, required, train.column_names, seen, label_rules)
    else:
        evaluation = datasets.concatenate_datasets(held_out)
        evaluation = evaluation.select(rng.permutation(len(evaluation)).tolist())  # max_eval_samples keeps each share
        source = f"{section.eval_fraction:.0%} of each of {', '.join(names)} (stratified, seed {seed})"
    if section.max_eval_samples and section.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(section.max_eval_samples))
    validation = None
    if section.validation_fraction:
        if not validation_parts:
            raise DataError(f"data.train: the mixture's {len(train)} training rows are too few to carve a "
                            f"validation split from")
        validation = datasets.concatenate_datasets(validation_parts)
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
