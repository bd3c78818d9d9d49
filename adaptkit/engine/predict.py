"""Use a finished run without writing code: ``adaptkit predict RUN_DIR --input rows.csv``.

Model building and tokenizing are imported inside ``load_run`` and ``Predictor``'s methods: the
``Predictor`` type is exported lazily by ``adaptkit`` and its module stays a light import.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from adaptkit.engine.outputs import read_run_summary
from adaptkit.errors import AdaptkitError, DataError

# Columns pandas adds for a DataFrame index (a CSV row with one field too many, a Parquet file
# saved with its index): never the user's data, never written back out.
_INDEX_COLUMN_PREFIX = "__index_level_"


def input_columns(task: Any) -> list[str]:
    """The columns a prediction reads: the task's required columns less what it learns to
    predict (``label_column``, ``tags_column``, ``response_column``), which new rows lack."""
    targets = set(task.target_columns())
    return [column for column in task.required_columns() if column not in targets]


def check_input(table: Any, task: Any, source: str) -> None:
    """Every column the task reads is present and, for text, never empty-as-null: a clear
    ``DataError`` naming ``source``, the column and the row, instead of a KeyError in the tokenizer."""
    columns = input_columns(task)
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise DataError(f"{source}: lacks the column(s) {', '.join(map(repr, missing))} the run's task reads "
                        f"(columns: {', '.join(table.column_names) or 'none'})")
    for column in columns:
        feature = table.features[column]
        if getattr(feature, "dtype", None) in ("string", "large_string", "null"):
            for index, value in enumerate(table[column]):
                if value is None:
                    raise DataError(f"{source}: row {index + 1} has no value in column {column!r}")


@dataclass
class Predictor:
    """A loaded run: the trained model, its tokenizer and task, ready for new rows."""

    model: Any
    tokenizer: Any
    task: Any
    batch_size: int = 64

    def predict(self, rows: Union[list[dict[str, Any]], Any], source: str = "the rows to predict") -> list[Any]:
        """One prediction per row (dicts with the task's text columns), in input order.

        Rows that lack a column the task reads are a ``DataError`` naming ``source``.
        """
        import datasets
        import torch

        if isinstance(rows, datasets.Dataset):
            table = rows
        else:
            rows = list(rows)
            needed = input_columns(self.task)
            for index, row in enumerate(rows):
                lacking = [column for column in needed if not isinstance(row, dict) or column not in row]
                if lacking:
                    raise DataError(f"{source}: row {index + 1} lacks the column(s) "
                                    f"{', '.join(map(repr, lacking))} the run's task reads")
            table = datasets.Dataset.from_list(rows)
        check_input(table, self.task, source)
        encoded = self.task.preprocess(table, self.tokenizer)
        collate = self.task.collate(self.tokenizer)
        outputs = []
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded.select(range(start, min(start + self.batch_size, len(encoded))))
                batch = collate([chunk[i] for i in range(len(chunk))])
                outputs.extend(self.task.predict_batch(self.model, batch))
        return outputs


def load_run(run_dir: Union[str, Path], trust_remote_code: bool = False) -> Predictor:
    """Rebuild the trained model of ``run_dir`` from its saved export and recipe.

    Only the plugins the run's recipe allowed (its ``plugins:`` key) are loaded to do it.
    ``trust_remote_code`` is the caller's decision alone: a run folder is data, often someone
    else's, so its recipe's ``model.trust_remote_code: true`` never lets the Python files it
    carries (a tokenizer's ``auto_map``) or its model repository's run; such a folder is refused
    until the caller passes ``trust_remote_code=True`` (``adaptkit predict --trust-remote-code``).
    """
    from adaptkit.plugin.registry import recipe_plugins

    summary_path = Path(run_dir) / "metrics.json"
    saved: dict = {}
    if summary_path.is_file():
        saved = read_run_summary(Path(run_dir))["recipe"]  # a damaged file: an error naming it, no traceback
    model_section = saved.get("model") if isinstance(saved, dict) else None
    if isinstance(model_section, dict) and model_section.get("trust_remote_code") is True and not trust_remote_code:
        raise AdaptkitError(
            f"{summary_path}: the run's recipe sets model.trust_remote_code: true, so loading it would run "
            f"Python code shipped with the run folder or its model repository; a run folder cannot allow that "
            f"by itself. If you trust where {Path(run_dir)} came from, pass --trust-remote-code to adaptkit "
            f"predict (adaptkit.load(run, trust_remote_code=True) in Python)")
    with recipe_plugins(saved):  # the run's plugins: allow-list and the distributions it chose
        return _load_run(run_dir, trust_remote_code)


@dataclass
class RunParts:
    """What rebuilding a run needs, read from its folder, before any weight is loaded."""

    folder: Path
    summary: dict
    recipe: Any
    task: Any
    strategy: Any
    source: Any
    tokenizer: Any

    @property
    def export(self) -> Path:
        return self.folder / Path(self.summary["export"]["path"]).name


def run_parts(run_dir: Union[str, Path], trust_remote_code: bool = False) -> RunParts:
    from adaptkit.engine.models import quiet_hf_logging
    from adaptkit.engine.session import strategy_for
    from adaptkit.engine.stacking import resolve_base_source
    from adaptkit.plugin.registry import get_registry
    from adaptkit.recipe.schema import Recipe

    quiet_hf_logging()
    folder = Path(run_dir)
    summary_path = folder / "metrics.json"
    if not summary_path.is_file():
        raise AdaptkitError(f"{folder} is not an adaptkit run folder (no metrics.json)")
    summary = read_run_summary(folder)
    recipe = Recipe.from_dict(summary["recipe"], check_files=False)
    recipe.model.trust_remote_code = bool(trust_remote_code)  # the caller's choice, never the folder's
    registry = get_registry()
    if recipe.strategy.name not in registry.strategies:
        raise AdaptkitError(f"{folder} was trained with strategy {recipe.strategy.name!r}, "
                            f"which no installed plugin provides")
    task = registry.tasks[recipe.task.type](recipe.task_options)
    task.load_state(summary["task_state"])
    strategy = strategy_for(registry, recipe)
    if recipe.model.previous_adapter == "keep":  # trained beside a run's frozen adapter, saved in previous/
        from adaptkit.engine.stacking import keep_beside, run_folder

        strategy = keep_beside(strategy, run_folder(recipe.model.name) or Path(str(recipe.model.name)))
    recipe.model.tokenizer = str(folder / "tokenizer")
    source = (resolve_base_source(recipe.model.name, recipe.model.revision, recipe.model.allow_pickle,
                                  trust_remote_code, recipe.model.previous_adapter)
              if recipe.model.name else None)  # a run as base: merged, or the model it started from (keep)
    tokenizer = task.load_processor(recipe, source)
    return RunParts(folder, summary, recipe, task, strategy, source, tokenizer)


def _load_run(run_dir: Union[str, Path], trust_remote_code: bool = False) -> Predictor:
    from adaptkit.engine.models import build_model

    parts = run_parts(run_dir, trust_remote_code)
    base = build_model(parts.recipe, parts.task, parts.tokenizer, parts.source, parts.recipe.training.seed)
    model = parts.strategy.load(base, parts.export)
    model = parts.task.prepare_loaded(model)  # what save_pretrained does not keep: the head's pooling
    return Predictor(model=model, tokenizer=parts.tokenizer, task=parts.task)


def _cell(value: Any) -> Any:
    """A CSV cell: lists and dicts as JSON (readable back with json.loads), not Python's repr."""
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (list, dict)) else value


def predict_file(run_dir: Union[str, Path], input_path: Union[str, Path], output_path: Union[str, Path],
                 overwrite: bool = False, trust_remote_code: bool = False) -> int:
    """Write ``input_path``'s rows plus a prediction column to ``output_path``; returns the row count.

    Refused before the model is loaded: an existing ``output_path`` without ``overwrite``, the
    input file itself, a folder, or a file of a run folder (its metrics.json...); then a CSV/TSV
    row with more or fewer fields than the header (an unquoted comma would shift the columns and
    predict on the wrong field) and a file lacking a column the task reads, each named.
    ``trust_remote_code`` is passed to ``load_run``: only the caller can allow the run's code.
    """
    check_output_path(input_path, output_path, overwrite)
    predictor = load_run(run_dir, trust_remote_code=trust_remote_code)
    return write_predictions(predictor, input_path, output_path, overwrite)


def check_output_path(input_path: Union[str, Path], output_path: Union[str, Path], overwrite: bool) -> None:
    """Refuse, before any model loads, an ``output_path`` that is the input, a folder, a run's own file,
    or an existing file without ``overwrite``."""
    from adaptkit.engine.outputs import check_output_file

    source, output = Path(input_path), Path(output_path)
    if output.exists() and source.exists() and os.path.samefile(output, source):
        raise AdaptkitError(f"--output {output} is the input file; give another path")
    check_output_file(output, overwrite)


def read_input(input_path: Union[str, Path], task: Any) -> Any:
    """The rows of ``input_path`` as a ``datasets.Dataset``, ragged CSV/TSV/JSONL rows refused with their line."""
    from adaptkit.engine.data import load_table
    from adaptkit.recipe.datafiles import data_format, scan_rows

    source = Path(input_path)
    kind = data_format(source)
    if kind in ("csv", "tsv", "jsonl") and source.is_file():  # ragged rows, with their line
        scan_rows(source, kind, input_columns(task), {}, None, is_train=False)
    table = load_table(source)
    index_columns = [c for c in table.column_names if c.startswith(_INDEX_COLUMN_PREFIX)]
    if index_columns:
        table = table.remove_columns(index_columns)
    return table


def write_predictions(predictor: Any, input_path: Union[str, Path], output_path: Union[str, Path],
                      overwrite: bool = False) -> int:
    """Predict the rows of ``input_path`` with ``predictor`` (anything with ``task`` and ``predict``) and
    write them with a prediction column to ``output_path``; returns the row count."""
    from adaptkit.engine.outputs import atomic_file, check_output_file, record_in_manifest

    source, output = Path(input_path), Path(output_path)
    table = read_input(source, predictor.task)
    predictions = predictor.predict(table, source=str(source))
    columns = list(table.column_names)
    check_output_file(output, overwrite)  # again: predicting took a while, the path may be taken now
    if output.suffix.lower() in (".jsonl", ".json"):  # lists (tags, generated tokens) stay lists
        with atomic_file(output, replace=overwrite) as handle:  # never one that appeared meanwhile
            for row, prediction in zip(table, predictions):
                record = {c: row[c] for c in columns}
                if isinstance(prediction, dict):  # its first value is the prediction, the rest keep their names
                    first, *rest = prediction.items()
                    record.update({"prediction": first[1], **dict(rest)})
                else:
                    record["prediction"] = prediction
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    else:
        with atomic_file(output, newline="", replace=overwrite) as handle:
            writer = csv.writer(handle, delimiter="\t" if output.suffix.lower() == ".tsv" else ",")
            # a dict prediction ({"label", "score"}, {"answer", "start", "end", "score"}): its first value is
            # the prediction column, the others keep their names
            extra = (["prediction", *list(predictions[0])[1:]] if predictions and isinstance(predictions[0], dict)
                     else ["prediction"])
            writer.writerow(columns + extra)
            for row, prediction in zip(table, predictions):
                values = [_cell(row[c]) for c in columns]
                if isinstance(prediction, dict):
                    values += [_cell(value) for value in prediction.values()]
                else:
                    values.append(_cell(prediction))
                writer.writerow(values)
    record_in_manifest(output)  # predictions in a run folder: a later `run --overwrite` may replace them
    return len(predictions)
