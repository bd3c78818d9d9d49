"""``adaptkit merge``: one adapter built from several runs on the same base, with peft's weighted merge.

The merge itself is peft's ``add_weighted_adapter`` (linear, cat, svd, ties, dare_linear, dare_ties,
magnitude_prune); this module decides what may be merged and writes the result as a run folder that
``adaptkit predict``/``adaptkit.load`` read like any other. Everything is checked before anything is
written: the runs exist, share their base (model, revision or config and seed, class, task, labels),
exported peft adapters of a kind ``add_weighted_adapter`` merges (LoRA), the method fits their ranks
(linear, ties, dare and magnitude pruning need equal ranks: peft's rule), weights and density are
given where the method needs them. The merged model is then built and verified in memory, and the
folder is written in one rename (``staged_output``).

The task head: a classification run trains its head whole (peft ``modules_to_save``), and peft
refuses to merge adapters that each carry one ("Cannot add weighted adapters if they target the same
module with modules_to_save"). A head is a whole weight, not a low-rank change, so adaptkit merges
the heads itself as the weighted mean of the runs' heads (weights normalised to sum 1), and the
low-rank adapters through peft. The card says so.

The contract lines the folder records are measured: the written adapter, loaded with plain peft
(``PeftModel.from_pretrained``) on a freshly built base, computes what the merged model computed;
``merge_and_unload`` of it has the base architecture and computes the same.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper

from adaptkit.errors import AdaptkitError
from adaptkit.engine.data import load_table
from adaptkit.engine.outputs import check_output_dir, read_run_summary, staged_output, write_json
from adaptkit.engine.predict import check_input, load_run
from adaptkit.engine.train import eval_loader, evaluate
from adaptkit.plugin.contract import architecture_signature, check_close, check_signature, model_outputs
from adaptkit.recipe.loading import closest

METHODS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
# Methods that prune each adapter to a share of its values first: they need --density.
NEED_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
# Methods peft runs on equal ranks only (its _check_add_weighted_adapter).
EQUAL_RANKS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
# peft adapter types whose tuner merges weighted adapters with these methods.
MERGEABLE_TYPES = ("LORA",)
MERGED = "merged"


@dataclass
class MergeResult:
    """What ``merge_runs`` wrote: the run folder, its summary, and the eval metrics when asked."""

    output_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Source:
    folder: Path
    summary: dict[str, Any]
    adapter: Path
    config: dict[str, Any]


def check_same_base(first_folder: Any, first: dict[str, Any], folder: Any, summary: dict[str, Any],
                    purpose: str) -> None:
    """Refuse ``folder``'s run unless its base is ``first_folder``'s (``base_identity``), naming the first
    key that differs; ``purpose`` ends the message ("merge", "share one"). merge and serving ask here."""
    reference, identity = base_identity(first), base_identity(summary)
    differs = [key for key in reference if reference[key] != identity[key]]
    if differs:
        key = differs[0]
        raise AdaptkitError(f"{folder} was trained on another base than {first_folder}: {key} "
                            f"{identity[key]!r} against {reference[key]!r}"
                            + (f" (also differs: {', '.join(differs[1:])})" if len(differs) > 1 else "")
                            + f"; only runs on the same base {purpose}")


def base_identity(summary: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' bases the same model: the model (name and revision, or config and seed,
    which builds the same random weights), the model class, the task and its labels."""
    recipe = summary.get("recipe") or {}
    model = recipe.get("model") or {}
    built_from_config = not model.get("name")
    return {
        "model": model.get("name"), "revision": model.get("revision"), "base_model_id": summary.get("base_model_id"),
        "config": model.get("config") if built_from_config else None,
        "seed": (recipe.get("training") or {}).get("seed") if built_from_config else None,
        "model_class": summary.get("model_class"), "task": summary.get("task"),
        "labels": (summary.get("task_state") or {}).get("labels"), "dtype": model.get("dtype"),
    }


def _read_source(folder: Path) -> _Source:

    summary = read_run_summary(folder)
    export = summary.get("export") or {}
    if export.get("kind") != "adapter" or export.get("loader") != "peft":
        raise AdaptkitError(f"{folder}: run of strategy {summary.get('strategy')!r} exported a "
                            f"{export.get('kind') or 'model'} folder, not a peft adapter; only adapters merge")
    adapter = folder / Path(str(export.get("path", "adapter"))).name
    config_path = adapter / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdaptkitError(f"{config_path}: cannot be read as the run's adapter config ({exc})") from None
    return _Source(folder, summary, adapter, config)


def check_merge(runs: Sequence[Union[str, Path]], method: str, weights: Optional[Sequence[float]] = None,
                density: Optional[float] = None) -> list[_Source]:
    """Every reason the merge cannot run, raised before anything is built or written."""
    if len(runs) < 2:
        raise AdaptkitError(f"merge needs at least two runs, got {len(runs)}")
    if method not in METHODS:

        near = closest(method, list(METHODS))
        raise AdaptkitError(f"--method {method!r} is not a merge method ({', '.join(METHODS)})"
                            + (f"; did you mean {near!r}?" if near else ""))
    if weights is not None and len(weights) != len(runs):
        raise AdaptkitError(f"--weights gives {len(weights)} value(s) for {len(runs)} runs; give one per run")
    if method in NEED_DENSITY and density is None:
        raise AdaptkitError(f"--method {method} prunes each adapter first: give --density (the share of values "
                            f"kept, between 0 and 1)")
    if density is not None and not 0 < density <= 1:
        raise AdaptkitError(f"--density {density} is outside (0, 1]: it is the share of each adapter's values kept")
    if density is not None and method not in NEED_DENSITY:
        raise AdaptkitError(f"--density means nothing to --method {method} (only {', '.join(NEED_DENSITY)} prune)")
    folders = [Path(run) for run in runs]
    if len({f.resolve() for f in folders}) != len(folders):
        raise AdaptkitError("the same run is named twice; merge distinct runs")
    sources = [_read_source(folder) for folder in folders]
    first = sources[0]
    for source in sources:
        kind = str(source.config.get("peft_type", "?"))
        if kind not in MERGEABLE_TYPES:
            raise AdaptkitError(f"{source.folder}: its adapter is peft {kind} (strategy "
                                f"{source.summary.get('strategy')!r}); peft's add_weighted_adapter merges "
                                f"{', '.join(MERGEABLE_TYPES)} adapters with these methods")
        if source.config.get("use_dora"):
            raise AdaptkitError(f"{source.folder}: its adapter uses DoRA, whose magnitude vectors peft's "
                                f"add_weighted_adapter does not merge")
    for source in sources[1:]:
        check_same_base(first.folder, first.summary, source.folder, source.summary, "merge")
    ranks = [int(s.config.get("r", 0)) for s in sources]
    if method in EQUAL_RANKS and len(set(ranks)) != 1:
        raise AdaptkitError(f"--method {method} needs adapters of equal rank (peft's rule); the runs have ranks "
                            f"{', '.join(map(str, ranks))}: use cat or svd, which take any ranks")
    targets = [sorted(s.config.get("target_modules") or []) if isinstance(s.config.get("target_modules"), list)
               else s.config.get("target_modules") for s in sources]
    if method in ("linear",) and any(t != targets[0] for t in targets):
        raise AdaptkitError("--method linear needs adapters on the same modules; these runs adapted different "
                            "target_modules: use cat or svd")
    return sources


def _heads(model: Any) -> list[Any]:

    return [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]


def _merge_heads(model: Any, names: list[str], weights: list[float]) -> None:
    """Each task head (a peft ``ModulesToSaveWrapper``) becomes the weighted mean of the runs' heads, kept
    under the first run's name only, so peft's ``add_weighted_adapter`` sees one head per module."""

    total = sum(weights)
    if abs(total) < 1e-12:
        raise AdaptkitError("--weights sum to 0: the task heads, merged as a weighted mean, would be undefined")
    for wrapper in _heads(model):
        present = [(n, w) for n, w in zip(names, weights) if n in wrapper.modules_to_save]
        if len(present) < 2:
            continue
        states = [wrapper.modules_to_save[n].state_dict() for n, _ in present]
        share = sum(w for _, w in present)
        merged = {key: sum(state[key].float() * (w / share) for state, (_, w) in zip(states, present)).to(
            states[0][key].dtype) for key in states[0]}
        with torch.no_grad():
            wrapper.modules_to_save[present[0][0]].load_state_dict(merged)
        for name, _ in present[1:]:
            del wrapper.modules_to_save[name]


def _copy_head_into(model: Any, source: str, target: str) -> None:

    for wrapper in _heads(model):
        if source in wrapper.modules_to_save and target in wrapper.modules_to_save:
            with torch.no_grad():
                wrapper.modules_to_save[target].load_state_dict(wrapper.modules_to_save[source].state_dict())


def _probe_batch(predictor: Any, folder: Path, rows: int = 8) -> dict[str, Any]:
    """Real rows to compare outputs on: the first run's eval (or train) data, as the task encodes them."""

    data = read_run_summary(folder).get("recipe", {}).get("data") or {}
    for key in ("eval", "train"):
        path = data.get(key)
        if isinstance(path, str) and Path(path).is_file():
            table = load_table(Path(path))
            table = table.select(range(min(rows, len(table))))
            encoded = predictor.task.preprocess(table, predictor.tokenizer)
            collate = predictor.task.collate(predictor.tokenizer)
            return collate([encoded[i] for i in range(len(encoded))])
    raise AdaptkitError(f"{folder}: neither the run's eval nor its train file ({data.get('eval')}, "
                        f"{data.get('train')}) is there to check the merged adapter on")


def _outputs(model: Any, batch: dict[str, Any]) -> Any:

    return model_outputs(model, batch)


def _card(summary: dict[str, Any]) -> str:
    merge = summary["merge"]
    lines = ["---", "library_name: peft", "tags:", "- adaptkit", "- merge", f"- {merge['method']}"]
    if summary.get("base_model"):
        lines.append(f"base_model: {summary['base_model']}")
    lines += ["---", "", f"# Merged adapter ({merge['method']})", "",
              f"Built by `adaptkit merge` from {len(merge['sources'])} runs on the same base with peft's "
              f"`add_weighted_adapter` (combination_type `{merge['method']}`"
              + (f", density {merge['density']}" if merge.get("density") is not None else "") + ").", "",
              "| source run | strategy | weight | rank |", "|---|---|---|---|"]
    for source in merge["sources"]:
        lines.append(f"| {source['run']} | {source['strategy']} | {source['weight']:g} | {source['r']} |")
    lines += ["", "Task heads trained whole by the sources are merged as the weighted mean of the sources' heads "
              "(weights normalised to sum 1); the low-rank adapters by peft.", "",
              "Load it with plain peft: `PeftModel.from_pretrained(base, \"adapter\")`, or "
              "`adaptkit predict` on this folder.", "", "## Contract checks", ""]
    lines += [f"- {line}" for line in summary["contract"]]
    if summary.get("eval"):
        lines += ["", "## Evaluation", "", f"On `{summary.get('eval_source')}`:", ""]
        lines += [f"- {key}: {value:.4f}" for key, value in summary["eval"].items()]
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: Union[str, Path], eval_file: Union[str, Path], batch_size: int = 32) -> dict[str, float]:
    """The task's metrics and mean loss of the run in ``run_dir`` on the labelled rows of ``eval_file``."""

    path = Path(eval_file)
    if not path.is_file():
        raise AdaptkitError(f"--eval {path}: no such file")
    predictor = load_run(run_dir)
    table = load_table(path)
    check_input(table, predictor.task, str(path))
    encoded = predictor.task.preprocess(table, predictor.tokenizer)
    loader = eval_loader(encoded, batch_size, predictor.task.collate(predictor.tokenizer))
    return evaluate(predictor.model, loader, None, predictor.task)


def merge_runs(runs: Sequence[Union[str, Path]], method: str, output: Union[str, Path],
               weights: Optional[Sequence[float]] = None, density: Optional[float] = None,
               eval_file: Optional[Union[str, Path]] = None, overwrite: bool = False) -> MergeResult:
    """Merge the adapters of ``runs`` (same base) by ``method`` into a run folder at ``output``.

    ``weights`` default to 1 per run (peft's convention for task arithmetic); ``density`` is the share
    of values ties, dare and magnitude pruning keep. Everything that can be refused is refused before
    anything is built or written (``check_merge``; an existing ``output`` without ``overwrite``).
    ``eval_file`` (labelled rows in the runs' format) is evaluated with the merged adapter and its
    metrics are recorded in the folder's metrics.json and card.
    """

    output_dir = Path(output)
    sources = check_merge(runs, method, weights, density)
    check_output_dir(output_dir, overwrite, kind="run")
    if eval_file is not None and not Path(eval_file).is_file():
        raise AdaptkitError(f"--eval {eval_file}: no such file")
    weights = [float(w) for w in weights] if weights is not None else [1.0] * len(sources)

    predictor = load_run(sources[0].folder)  # the first run's model: base + its adapter as "default"
    model = predictor.model
    names = ["default"] + [f"source{i}" for i in range(1, len(sources))]
    for name, source in zip(names[1:], sources[1:]):
        model.load_adapter(str(source.adapter), adapter_name=name)
    _merge_heads(model, names, weights)
    try:
        model.add_weighted_adapter(names, weights, MERGED, combination_type=method, density=density)
    except ValueError as exc:
        raise AdaptkitError(f"peft refused to merge these adapters by {method}: {exc}") from None
    _copy_head_into(model, names[0], MERGED)
    model.set_adapter(MERGED)
    for name in names:
        model.delete_adapter(name)
    batch = _probe_batch(predictor, sources[0].folder)
    merged_outputs = _outputs(model, batch)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        saved = Path(tmp) / MERGED if (Path(tmp) / MERGED).is_dir() else Path(tmp)
        with staged_output(output_dir, overwrite, kind="run") as staging:
            shutil.copytree(saved, staging / "adapter")
            config_path = staging / "adapter" / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = sources[0].config.get("base_model_name_or_path")
            config_path.write_text(json.dumps(config, indent=2))
            if (sources[0].folder / "tokenizer").is_dir():
                shutil.copytree(sources[0].folder / "tokenizer", staging / "tokenizer")
            contract = _verify(staging / "adapter", merged_outputs, batch, sources[0])
            summary = _merged_summary(sources, method, weights, density, output_dir, contract)
            write_json(staging / "metrics.json", summary)
            if eval_file is not None:
                summary["eval"] = evaluate_run(staging, eval_file)
                summary["eval_source"] = str(eval_file)
                write_json(staging / "metrics.json", summary)
            (staging / "README.md").write_text(_card(summary))
    return MergeResult(output_dir, summary, dict(summary.get("eval") or {}))


def _verify(adapter: Path, merged_outputs: Any, batch: dict[str, Any], first: _Source) -> list[str]:
    """The written adapter on a fresh base with plain peft computes what the merged model did; merged
    into the base it has the base architecture and computes the same."""


    first_run, label = first.folder, str(first.summary.get("strategy") or "merge")
    fresh = load_run(first_run).model.get_base_model()  # the same base, built anew (its own adapter removed below)
    base = unwrapped_base(fresh)
    signature = architecture_signature(base)
    reloaded = PeftModel.from_pretrained(base, str(adapter))
    check_close(label, "export", merged_outputs, _outputs(reloaded, batch), 1e-4,
                "merged adapter reloaded with peft PeftModel.from_pretrained")
    unloaded = reloaded.merge_and_unload()
    check_signature(label, signature, architecture_signature(unloaded))
    check_close(label, "equivalence", merged_outputs, _outputs(unloaded, batch), 1e-4, "merge_and_unload of it")
    rows = len(merged_outputs)
    return [f"export: adapter/ reloads with peft PeftModel.from_pretrained on a freshly built base and gives the "
            f"merged model's outputs on {rows} rows",
            f"signature: merge_and_unload has exactly the base architecture ({len(signature.parameters)} parameter "
            f"tensors)",
            f"equivalence: merged into the base it matches the merged adapter within 0.0001 on {rows} rows"]


def unwrapped_base(model: Any) -> Any:
    """A base model taken out of a loaded run: its peft layers unloaded and heads restored to the base's."""

    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, (ModulesToSaveWrapper, BaseTunerLayer))]
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        original = module.original_module if isinstance(module, ModulesToSaveWrapper) else module.get_base_layer()
        setattr(parent, child, original)
    return model


def _merged_summary(sources: list[_Source], method: str, weights: list[float], density: Optional[float],
                    output_dir: Path, contract: list[str]) -> dict[str, Any]:
    first = dict(sources[0].summary)
    keep = ("adaptkit_version", "strategy", "task", "task_state", "task_notes", "base_model", "base_model_id",
            "model_class", "num_labels", "recipe")
    summary = {key: first[key] for key in keep if key in first}
    summary["recipe"] = json.loads(json.dumps(summary.get("recipe") or {}))
    summary["recipe"].setdefault("output", {})["dir"] = str(output_dir)
    summary["export"] = {"kind": "adapter", "path": str(output_dir / "adapter"), "loader": "peft"}
    summary["merge"] = {"method": method, "density": density, "sources": [
        {"run": str(s.folder), "strategy": s.summary.get("strategy"), "weight": w, "r": s.config.get("r"),
         "eval": s.summary.get("eval")} for s, w in zip(sources, weights)]}
    summary["contract"] = contract
    return summary
