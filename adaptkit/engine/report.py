"""What a finished run tells a person: its model card (the run folder's README.md), written from
the summary that ``runner`` records as metrics.json; ``card_data`` is the card's metadata, which
``publish`` also pushes. Nothing here writes a file."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Optional

import yaml


def shareable_recipe(recipe: dict[str, Any], base: Optional[Path]) -> dict[str, Any]:
    """The run's recipe with its local paths relative to ``base`` (the recipe's folder), for the card.

    A run records absolute data paths (metrics.json, recipe.yaml: the run must find its files
    again), but the card is what ``push`` publishes: its front matter showed the author's home
    folder. Data files and dataset folders, ``output.dir``, a local ``model.name``/``model.tokenizer``
    and a DeepSpeed file are rewritten; Hub ids and relative paths are left as they are.
    """
    data = copy.deepcopy(recipe)

    def relative(value: Any) -> Any:
        if isinstance(value, str) and os.path.isabs(value):
            return Path(os.path.relpath(value, base)).as_posix() if base is not None else Path(value).name
        return value

    section = data.get("data") or {}
    for key in ("train", "eval"):
        value = section.get(key)
        if isinstance(value, str):
            section[key] = relative(value)
        for source in value if isinstance(value, list) else [value]:
            if isinstance(source, dict):
                for field in ("path", "name"):
                    if field in source:
                        source[field] = relative(source[field])
    for part, key in (("output", "dir"), ("model", "name"), ("model", "tokenizer"), ("distributed", "deepspeed_config")):
        if isinstance(data.get(part), dict) and key in data[part]:
            data[part][key] = relative(data[part][key])
    return data


def card_data(summary: dict[str, Any]):
    """The card's Hugging Face metadata (``huggingface_hub.ModelCardData``), which the Hub shows and
    searches: base model by Hub id, library, pipeline tag, eval metrics as ``model-index``.

    The data of an adaptkit run are local files, not Hub datasets, so ``datasets`` is left out
    (the Hub would link names that do not exist) and the eval file is named in ``model-index``.
    """
    from huggingface_hub import EvalResult, ModelCardData

    from adaptkit.engine.publish import pipeline_tag

    recipe = summary["recipe"]
    base = summary.get("base_model_id")
    pipeline = pipeline_tag(summary.get("task"))
    name = f"{summary['strategy']}-{(base or summary['task']).rsplit('/', 1)[-1]}"
    source = str(summary.get("eval_source") or "eval")
    source = source.replace("\\", "/").rsplit("/", 1)[-1] if "/" in source or "\\" in source else source  # no local path
    results = [EvalResult(task_type=pipeline or summary["task"], dataset_type="local", dataset_name=source,
                          dataset_split="eval", metric_type=metric, metric_name=f"eval {metric}",
                          metric_value=round(float(value), 6))
               for metric, value in summary["eval"].items()]
    return ModelCardData(
        base_model=base, library_name="peft" if summary["export"]["kind"] == "adapter" else "transformers",
        pipeline_tag=pipeline, model_name=name, eval_results=results or None,
        tags=["adaptkit", summary["strategy"], *([f"base_model:adapter:{base}"] if base and
                                                 summary["export"]["kind"] == "adapter" else [])],
        adaptkit={"version": summary["adaptkit_version"], "strategy": summary["strategy"],
                  "task": summary["task"], "recipe": recipe},
    )


def model_card(summary: dict[str, Any], recipe_dir: Optional[Path] = None) -> str:
    """A README.md for the run folder: Hugging Face metadata (``card_data``), then what was trained,
    how, how well, how to load it, and the recipe that made it; written by ``huggingface_hub.ModelCard``.

    Local paths in the recipe and the eval source are shown relative to ``recipe_dir`` (``shareable_recipe``).
    """
    from huggingface_hub import ModelCard

    summary = {**summary, "recipe": shareable_recipe(summary["recipe"], recipe_dir)}
    source = summary.get("eval_source")
    if isinstance(source, str) and os.path.isabs(source):
        summary["eval_source"] = shareable_recipe({"data": {"eval": source}}, recipe_dir)["data"]["eval"]

    body = _card_body(summary)
    return str(ModelCard(f"---\n{card_data(summary).to_yaml()}\n---\n\n{body}"))


def _chain_lines(chain: Optional[list[dict[str, Any]]]) -> list[str]:
    """The card's "Built on a finished run" section: each run under this one (folder name, strategy,
    metric), oldest first; none when the base is no run. Folder names only: the card travels."""
    if not chain:
        return []
    from adaptkit.engine.stacking import describe_chain

    shown = [{**link, "run": Path(str(link["run"])).name} if "run" in link else link for link in chain]
    if chain[-1].get("previous_adapter") == "keep":
        how = ("The last run's adapter was loaded frozen beside this run's (`model.previous_adapter: keep`) and is "
               "saved with it in `adapter/previous/`; both are active when `adaptkit.load` loads this folder.")
    else:
        how = ("Each run's change was merged into the base before the next trained on it, so this export applies "
               "to the last run's merged model, not to the first base alone: `adaptkit.load` on this folder "
               "rebuilds the chain.")
    return ["## Built on a finished run", "", f"Chain: {describe_chain(shown)}.", "", how, ""]


def _card_body(summary: dict[str, Any]) -> str:
    recipe = summary["recipe"]
    metrics = summary["eval"]
    base_id = summary.get("base_model_id")
    lines = [
        f"# {recipe['strategy']['name']} on {recipe['model'].get('name') or recipe['model'].get('config', {}).get('model_type')}",
        "",
        f"Trained with adaptkit {summary['adaptkit_version']} on {summary['train_examples']} training rows, "
        f"evaluated on {summary['eval_examples']} rows ({summary['eval_source']}).",
        "",
        "| metric | value |",
        "|---|---:|",
        *[f"| eval {k} | {v:.4f} |" for k, v in metrics.items()],
        f"| trainable parameters | {summary['parameters']['trainable']:,} |",
        f"| total parameters | {summary['parameters']['total']:,} |",
        *([f"| exported epoch | {summary['exported_epoch']} of {len(summary['history'])} (best on "
           f"{summary['best'].get('metric')}) |"] if summary.get("exported_epoch") and summary.get("history") else []),
        f"| training time (s) | {summary['train_seconds']:.1f} |",
        f"| peak memory (MiB) | {summary['peak_memory_bytes'] / 2**20:.0f} |",
        "",
        f"Base model: [{base_id}](https://huggingface.co/{base_id})" if base_id else
        "Base model: none on the Hub (built from a config or a local folder).",
        "",
        *_chain_lines(summary.get("chain")),
        "## Contract",
        "",
        *[f"- {check}" for check in summary["contract"]],
        "",
        "## Load it",
        "",
        "```python",
    ]
    loader = summary["export"].get("loader", "peft" if summary["export"]["kind"] == "adapter" else "transformers")
    folder = summary["export"]["path"].replace("\\", "/").rsplit("/", 1)[-1]  # relative: the card travels
    base = base_id or summary["base_model"]
    if summary.get("chain"):  # the base is a finished run merged in adaptkit's cache: adaptkit rebuilds it
        lines += [
            "import adaptkit",
            "predictor = adaptkit.load('.')  # this folder: its base run merged, then this run's export",
        ]
    elif loader not in ("peft", "transformers"):
        lines += [
            "import adaptkit",
            "predictor = adaptkit.load('.')  # this folder"
            f"  # the export loads with {loader}",
        ]
    elif summary["export"]["kind"] == "adapter":
        lines += [
            "from peft import PeftModel",
            f"from transformers import AutoTokenizer, {summary['model_class']}",
            f"base = {summary['model_class']}.from_pretrained({base!r}, "
            f"num_labels={summary.get('num_labels')})" if summary.get("num_labels") else
            f"base = {summary['model_class']}.from_pretrained({base!r})",
            f"model = PeftModel.from_pretrained(base, {folder!r})  # or the Hub repo id, once pushed",
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
        ]
    else:
        lines += [
            f"from transformers import AutoTokenizer, {summary['model_class']}",
            f"model = {summary['model_class']}.from_pretrained({folder!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
        ]
    lines += ["```", "", "or `adaptkit predict <this folder> --input rows.csv`.", ""]
    if summary.get("task_notes"):  # what a plain from_pretrained does not reproduce (a head's pooling)
        lines += [*summary["task_notes"], ""]
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
