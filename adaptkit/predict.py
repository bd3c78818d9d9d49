"""Use a finished run without writing code: ``adaptkit predict RUN_DIR --input rows.csv``."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from adaptkit.errors import AdaptkitError


@dataclass
class Predictor:
    """A loaded run: the trained model, its tokenizer and task, ready for new rows."""

    model: Any
    tokenizer: Any
    task: Any
    batch_size: int = 64

    def predict(self, rows: Union[list[dict[str, Any]], Any]) -> list[Any]:
        """One prediction per row (dicts with the task's text columns), in input order."""
        import datasets
        import torch

        table = rows if isinstance(rows, datasets.Dataset) else datasets.Dataset.from_list(list(rows))
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


def load_run(run_dir: Union[str, Path]) -> Predictor:
    """Rebuild the trained model of ``run_dir`` from its saved export and recipe.

    Only the plugins the run's recipe allowed (its ``plugins:`` key) are loaded to do it.
    """
    from adaptkit.plugins import for_recipe

    summary_path = Path(run_dir) / "metrics.json"
    saved: dict = {}
    if summary_path.is_file():
        saved = json.loads(summary_path.read_text()).get("recipe", {})
    with for_recipe(saved):  # the run's plugins: allow-list and the distributions it chose
        return _load_run(run_dir)


def _load_run(run_dir: Union[str, Path]) -> Predictor:
    from adaptkit.models import quiet_hf_logging, resolve_model_source, build_model
    from adaptkit.plugins import get_registry
    from adaptkit.recipe import Recipe

    quiet_hf_logging()
    folder = Path(run_dir)
    summary_path = folder / "metrics.json"
    if not summary_path.is_file():
        raise AdaptkitError(f"{folder} is not an adaptkit run folder (no metrics.json)")
    summary = json.loads(summary_path.read_text())
    recipe = Recipe.from_dict(summary["recipe"], check_files=False)
    registry = get_registry()
    if recipe.strategy.name not in registry.strategies:
        raise AdaptkitError(f"{folder} was trained with strategy {recipe.strategy.name!r}, "
                            f"which no installed plugin provides")
    task = registry.tasks[recipe.task.type](recipe.task_options)
    task.load_state(summary["task_state"])
    strategy = registry.strategies[recipe.strategy.name](recipe.strategy_options)
    recipe.model.tokenizer = str(folder / "tokenizer")
    source = (resolve_model_source(recipe.model.name, recipe.model.revision, recipe.model.allow_pickle)
              if recipe.model.name else None)
    tokenizer = task.load_processor(recipe, source)
    base = build_model(recipe, task, tokenizer, source, recipe.training.seed)
    model = strategy.load(base, folder / Path(summary["export"]["path"]).name)
    return Predictor(model=model, tokenizer=tokenizer, task=task)


def _cell(value: Any) -> Any:
    """A CSV cell: lists and dicts as JSON (readable back with json.loads), not Python's repr."""
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (list, dict)) else value


def predict_file(run_dir: Union[str, Path], input_path: Union[str, Path], output_path: Union[str, Path]) -> int:
    """Write ``input_path``'s rows plus a prediction column to ``output_path``; returns the row count."""
    from adaptkit.data import load_table
    from adaptkit.outputs import atomic_file

    predictor = load_run(run_dir)
    table = load_table(Path(input_path))
    predictions = predictor.predict(table)
    output = Path(output_path)
    columns = list(table.column_names)
    if output.suffix.lower() in (".jsonl", ".json"):  # lists (tags, generated tokens) stay lists
        with atomic_file(output) as handle:
            for row, prediction in zip(table, predictions):
                record = {c: row[c] for c in columns}
                if isinstance(prediction, dict):
                    record.update(prediction=prediction["label"], score=prediction["score"])
                else:
                    record["prediction"] = prediction
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        return len(predictions)
    with atomic_file(output, newline="") as handle:
        writer = csv.writer(handle, delimiter="\t" if output.suffix.lower() == ".tsv" else ",")
        extra = ["prediction", "score"] if predictions and isinstance(predictions[0], dict) else ["prediction"]
        writer.writerow(columns + extra)
        for row, prediction in zip(table, predictions):
            values = [_cell(row[c]) for c in columns]
            if isinstance(prediction, dict):
                values += [prediction["label"], prediction["score"]]
            else:
                values.append(_cell(prediction))
            writer.writerow(values)
    return len(predictions)
