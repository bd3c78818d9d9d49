"""A finished run as the base of a new recipe: ``model.name: runs/a`` (issue 25, item 4).

A folder is a run folder when it holds what every finished run writes: ``metrics.json`` (with the
recipe, task state and export it records) beside its ``adapter/`` or ``model/`` export. Such a base
is resolved to a plain transformers model folder, so everything downstream (``plan``'s meta model,
a 4-bit ``from_pretrained`` for qlora, ``device_map``, the contract's fresh base for the export
check, ``adaptkit predict`` of the new run) reads it like any local model:

- a run that exported a whole model (full fine-tune, partial freeze, frozen head) *is* a model
  folder: its ``model/`` (when its head read another pooling than the architecture's, a cached
  folder of links to those files plus the pooling's declaration: the weights are not copied);
- an adapter run with ``output.merge: true`` already wrote its merged ``model/``, which the run's
  own contract checked against the trained model, and is read the same way;
- any other adapter run is loaded (base + adapter, as ``adaptkit predict`` loads it), merged with
  its strategy's ``unwrap`` (peft's ``merge_and_unload``) and written once to adaptkit's cache
  (``$ADAPTKIT_CACHE``, default ``~/.cache/adaptkit``), under a key made of the run's metrics.json
  and adapter files, so a second ``plan``/``run``/``predict`` reuses it. The write is atomic (a
  temporary folder renamed into place): an interrupted merge never leaves a half model behind. The
  pooling the run's head was trained with (``apply_pooling``: not kept by ``save_pretrained``) is
  declared beside the weights (``declare_pooling``), so ``task.pooling: auto`` continues with it.

Only mergeable adapters become a base: a strategy whose ``unwrap`` removes what it learned (prompt
tuning, bottleneck adapters) would hand the new recipe the old base, not run A, and is refused.
The new run records the chain (base -> run A (strategy, metric) -> this run) in metrics.json, its
recipe copy and its card; ``chain_of`` builds it.

The engine modules this one uses are imported inside its functions: ``predict`` asks this module to
resolve a run-folder base while this module loads runs through ``predict`` (and ``merge`` loads
through ``predict`` too), so top-level imports would be a cycle.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from adaptkit.errors import AdaptkitError, ModelSourceError
from adaptkit.plugin.sources import ModelSource, resolve_model_source

RUN_ORIGIN = "run"  # ModelSource.origin of a base that is a finished adaptkit run, its adapter merged
KEPT_ORIGIN = "run-kept"  # ... the run's own base, its adapter to be loaded frozen beside (previous_adapter: keep)
PREVIOUS = "previous"  # the peft adapter name of the kept run's adapter (and its subfolder in the export)


def run_folder(name: Optional[str]) -> Optional[Path]:
    """``name`` as a finished adaptkit run folder (metrics.json beside adapter/ or model/), else None."""
    if not name:
        return None
    folder = Path(name).expanduser()
    if not (folder / "metrics.json").is_file():
        return None
    if not ((folder / "adapter").is_dir() or (folder / "model").is_dir()):
        return None
    return folder


def read_run(folder: Path) -> dict[str, Any]:
    """The run's summary (metrics.json), checked to hold what a base needs: its export and task."""
    from adaptkit.engine.outputs import read_run_summary

    summary = read_run_summary(folder)
    export = summary["export"]
    if export.get("kind") not in ("adapter", "model"):
        raise ModelSourceError(f"{folder}/metrics.json: export kind {export.get('kind')!r} is neither an adapter "
                               f"nor a model; this run cannot be the base of a recipe")
    return summary


def cache_root() -> Path:
    """Where merged run bases are kept: ``$ADAPTKIT_CACHE``, else ``~/.cache/adaptkit`` (XDG_CACHE_HOME)."""
    given = os.environ.get("ADAPTKIT_CACHE")
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "adaptkit"


def _cache_key(folder: Path, summary: dict[str, Any], trust_remote_code: bool = False) -> str:
    """The merged base's identity: the run's metrics.json, every file of its adapter (a re-run that wrote
    another adapter into the same folder gets another key, never the stale merge) and, when the run was
    itself built on a run, that run's merged base (so re-running any run of a chain renews the ones above)."""
    digest = hashlib.sha256()
    digest.update((folder / "metrics.json").read_bytes())
    below = run_folder(((summary.get("recipe") or {}).get("model") or {}).get("name"))
    if below is not None:
        digest.update(str(merged_run_folder(below, trust_remote_code)).encode())
    for path in sorted((folder / "adapter").rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def merged_run_folder(folder: Path, trust_remote_code: bool = False) -> Path:
    """A transformers model folder computing what the run in ``folder`` computes (see the module doc)."""
    summary = read_run(folder)
    whole = folder / "model"
    if summary["export"]["kind"] == "model" or (whole / "config.json").is_file():
        return _whole_model_folder(folder, whole, trust_remote_code)
    strategy = summary.get("strategy")
    from adaptkit.plugin.registry import get_registry

    strategy_cls = get_registry().strategies.get(str(strategy))
    if strategy_cls is not None and not strategy_cls.mergeable:
        raise ModelSourceError(
            f"{folder}: strategy {strategy!r} cannot be merged into its base (its unwrap removes what it learned "
            f"instead of folding it into the weights), so the run cannot be the base of a new recipe. Use a "
            f"mergeable strategy (lora, full, ...) for the run you build on")
    target = cache_root() / "run-bases" / _cache_key(folder, summary, trust_remote_code)
    if (target / "config.json").is_file():
        return target
    from adaptkit.engine.predict import load_run
    from adaptkit.plugin.pooling import declare_pooling, model_pooling

    predictor = load_run(folder, trust_remote_code=trust_remote_code)
    pooling = model_pooling(predictor.model)  # how the run's head reads the tokens: not kept by save_pretrained
    unwrap = (strategy_cls(None).unwrap if strategy_cls is not None else (lambda model: model.merge_and_unload()))
    model = unwrap(predictor.model)

    def write(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        predictor.tokenizer.save_pretrained(staging)
        declare_pooling(staging, pooling, getattr(model.config, "hidden_size", None))  # auto pooling reads it back

    return _publish(target, folder, write)


def _whole_model_folder(folder: Path, whole: Path, trust_remote_code: bool) -> Path:
    """A run's whole-model export (full fine-tune, or ``output.merge: true``) as a base: the folder itself,
    unless the run's head read a pooling other than the architecture's; then a cached folder of links to its
    files plus the pooling's declaration (the weights are never copied)."""
    from adaptkit.plugin.pooling import NATIVE, declare_pooling

    pooling = _whole_model_pooling(folder, whole, trust_remote_code)
    if pooling == NATIVE:
        return whole.resolve()
    digest = hashlib.sha256((folder / "metrics.json").read_bytes())
    for path in sorted(whole.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(whole).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_root() / "run-bases" / digest.hexdigest()[:24]
    if (target / "config.json").is_file():
        return target

    def write(staging: Path) -> None:
        for entry in whole.iterdir():
            if entry.name not in ("modules.json", "1_Pooling"):
                os.symlink(entry.resolve(), staging / entry.name)
        config = json.loads((whole / "config.json").read_text())
        declare_pooling(staging, pooling, config.get("hidden_size"))

    return _publish(target, folder, write)


def _whole_model_pooling(folder: Path, whole: Path, trust_remote_code: bool) -> str:
    """The pooling the run's head reads, asked of its task on a weightless copy of the model (no weight read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from adaptkit.engine.predict import run_parts
    from adaptkit.plugin.pooling import model_pooling

    parts = run_parts(folder, trust_remote_code)
    config = AutoConfig.from_pretrained(whole, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        meta = parts.task.build_model("", config, True, trust_remote_code=trust_remote_code)
    return model_pooling(parts.task.prepare_loaded(meta))


def _publish(target: Path, folder: Path, write: Any) -> Path:
    """``write(staging)`` into a temporary folder beside ``target``, then renamed into place: a killed merge
    leaves no half model where the next session would read it. The run's older merges (the same folder,
    trained again since: another key) are removed then; the cache holds one model per run folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".adaptkit-tmp-", dir=target.parent))
    try:
        write(staging)
        (staging / "adaptkit-run.json").write_text(json.dumps({"run": str(folder.resolve())}) + "\n")
        try:
            os.replace(staging, target)
        except OSError:  # another process merged the same run first: its folder is the same model
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_stale_merges(target, folder)
    return target


def remove_stale_merges(current: Path, folder: Path) -> list[Path]:
    """Delete the cache entries beside ``current`` made from the same run folder (by ``adaptkit-run.json``):
    a run trained again gets a new key, and its old merged model would otherwise stay forever. The removed."""
    removed = []
    source = str(folder.resolve())
    for entry in current.parent.iterdir():
        if entry == current or entry.name.startswith(".") or not (entry / "adaptkit-run.json").is_file():
            continue
        try:
            owner = json.loads((entry / "adaptkit-run.json").read_text()).get("run")
        except (OSError, ValueError):
            continue
        if owner == source:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def resolve_base_source(name: str, revision: Optional[str] = None, allow_pickle: bool = False,
                        trust_remote_code: bool = False, previous_adapter: str = "merge") -> ModelSource:
    """``model.name``'s files: a finished run's merged model (origin "run"), or with ``previous_adapter: keep``
    the model the run started from (origin "run-kept"), else ``resolve_model_source``."""
    folder = run_folder(name)
    if folder is None:
        if previous_adapter == "keep":
            raise ModelSourceError(f"model.previous_adapter: keep applies when model.name is a finished adaptkit run "
                                   f"folder (metrics.json beside adapter/), and {name!r} is not one")
        return resolve_model_source(name, revision, allow_pickle)
    if previous_adapter == "keep":
        return ModelSource(name, str(kept_base_folder(folder, trust_remote_code)), KEPT_ORIGIN, True)
    return ModelSource(name, str(merged_run_folder(folder, trust_remote_code)), RUN_ORIGIN, True)


def _peft_adapter(folder: Path, summary: dict[str, Any]) -> Path:
    """The run's peft adapter folder, or a refusal saying why ``previous_adapter: keep`` has nothing to keep."""
    export = summary["export"]
    if export.get("kind") != "adapter" or export.get("loader") != "peft":
        raise ModelSourceError(f"{folder}: model.previous_adapter: keep loads the run's peft adapter beside the new "
                               f"one, and strategy {summary.get('strategy')!r} exported a whole {export.get('kind')}: "
                               f"use previous_adapter: merge (the run's model is the base)")
    return folder / Path(export["path"]).name


def kept_base_folder(folder: Path, trust_remote_code: bool = False) -> Path:
    """The model the run in ``folder`` started from (its adapter taken out, its head the base's own), written
    once to the cache like a merged base, with the run's tokenizer and pooling: what ``keep`` trains beside."""
    summary = read_run(folder)
    _peft_adapter(folder, summary)
    target = cache_root() / "run-bases" / f"{_cache_key(folder, summary, trust_remote_code)}-base"
    if (target / "config.json").is_file():
        return target
    from adaptkit.engine.merge import unwrapped_base
    from adaptkit.engine.predict import load_run
    from adaptkit.plugin.pooling import declare_pooling, model_pooling

    predictor = load_run(folder, trust_remote_code=trust_remote_code)
    pooling = model_pooling(predictor.model)
    model = unwrapped_base(predictor.model.get_base_model())

    def write(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        predictor.tokenizer.save_pretrained(staging)
        declare_pooling(staging, pooling, getattr(model.config, "hidden_size", None))

    return _publish(target, folder, write)


def keep_beside(strategy: Any, folder: Path) -> Any:
    """``strategy`` (an instance) made to train beside the run in ``folder``, whose adapter stays loaded, frozen.

    The result is an instance of a subclass of the strategy's own class, so everything else (options,
    parameter groups, per-step hooks, loading arguments) is the strategy's. Its ``wrap`` loads the run's
    adapter onto the base (peft ``PeftModel.from_pretrained`` as ``previous``), adds the strategy's own
    (``add_adapter``, its ``peft_config``) and makes both active, the run's frozen; ``unwrap`` (peft's
    ``merge_and_unload``) merges both, so the unwrapped model has the base's architecture; ``save`` writes
    both (the run's in ``previous/``), and ``load`` puts both back. ``preflight`` refuses, before any weight is
    read, what peft cannot hold: another kind of strategy, another peft type, a method that does not merge,
    and a task head trained by both runs (peft's ``ModulesToSaveWrapper`` makes one adapter's head active at a
    time: "Only one adapter can be set at a time for ModulesToSaveWrapper").
    """
    from adaptkit.errors import PreflightError
    from adaptkit.plugin.strategy import PeftStrategy

    summary = read_run(folder)
    previous = _peft_adapter(folder, summary)
    try:
        previous_config = json.loads((previous / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{previous}/adapter_config.json cannot be read ({exc}); the run folder is damaged") from None
    where = f"model.previous_adapter: keep ({folder})"

    class Kept(type(strategy)):  # type: ignore[misc, valid-type]
        export_loader = f"peft PeftModel.from_pretrained with {PREVIOUS}/ loaded beside (load_adapter)"

        def preflight(self, context: Any) -> None:
            if not isinstance(self, PeftStrategy):
                raise PreflightError(f"{where}: strategy {self.name!r} does not build a peft adapter, so the run's "
                                     f"adapter cannot be held beside what it trains; use previous_adapter: merge")
            if not self.mergeable:
                raise PreflightError(f"{where}: strategy {self.name!r} cannot be merged, and peft runs two adapters "
                                     f"in one forward pass only for mergeable methods; use previous_adapter: merge")
            super().preflight(context)
            config = self.peft_config(context)
            kind = str(getattr(config.peft_type, "value", config.peft_type))
            if kind != str(previous_config.get("peft_type")):
                raise PreflightError(f"{where}: the run's adapter is peft {previous_config.get('peft_type')} and "
                                     f"strategy {self.name!r} builds peft {kind}; one peft model holds adapters of one "
                                     f"type, so use previous_adapter: merge")
            if previous_config.get("modules_to_save") and getattr(config, "modules_to_save", None):
                raise PreflightError(
                    f"{where}: both runs train the task head ({', '.join(sorted(set(previous_config['modules_to_save'])))}) and "
                    f"peft makes one adapter's copy of a head active at a time (ModulesToSaveWrapper), so the head "
                    f"cannot be kept beside; use previous_adapter: merge")

        def wrap(self, model: Any, context: Any) -> Any:
            from peft import PeftModel

            wrapped = PeftModel.from_pretrained(model, str(previous), adapter_name=PREVIOUS)
            wrapped.add_adapter("default", self.peft_config(context))
            wrapped.base_model.set_adapter([PREVIOUS, "default"])
            for name, parameter in wrapped.named_parameters():
                if f".{PREVIOUS}." in name:
                    parameter.requires_grad_(False)
            return wrapped

        def load(self, base_model: Any, directory: Path) -> Any:
            model = super().load(base_model, directory)
            model.load_adapter(str(Path(directory) / PREVIOUS), adapter_name=PREVIOUS)
            model.base_model.set_adapter([PREVIOUS, "default"])
            return model

    Kept.__name__ = Kept.__qualname__ = f"{type(strategy).__name__}KeptBeside"
    return Kept(strategy.options)


def _model_class(task_type: Optional[str]) -> Optional[str]:
    from adaptkit.plugin.registry import get_registry

    task_cls = get_registry().tasks.get(str(task_type))
    return getattr(task_cls, "model_class", None) if task_cls is not None else None


def check_task_fits(folder: Path, task: Any, where: str = "model.name") -> None:
    """Refuse a run whose model the new task cannot continue: another model class (a classifier run under
    a causal LM recipe), or another label set; the message names both sides."""
    summary = read_run(folder)
    before, now = summary.get("task"), task.name
    before_class, now_class = _model_class(before), getattr(task, "model_class", None)
    if before != now and (not before_class or before_class != now_class):
        raise AdaptkitError(f"{where}: {folder} is a {before!r} run ({before_class or 'its own model class'}) and "
                            f"this recipe's task is {now!r} ({now_class or 'its own model class'}): a run is the "
                            f"base of a recipe only for a task on the same model class")
    old_labels = (summary.get("task_state") or {}).get("labels")
    new_labels = (task.state() or {}).get("labels") if hasattr(task, "state") else None
    if old_labels is not None and new_labels is not None and list(old_labels) != list(new_labels):
        raise AdaptkitError(f"{where}: {folder} was trained on the labels {list(old_labels)} and this recipe's data "
                            f"has the labels {list(new_labels)}: continuing a run keeps its head, so the label sets "
                            f"must be the same (in the same order)")


def _headline(summary: dict[str, Any]) -> Optional[str]:
    """The run's eval figure on the metric that chose its epoch (``best.metric``), else its first eval metric."""
    metrics = summary.get("eval")
    if not isinstance(metrics, dict) or not metrics:
        return None
    chosen = (summary.get("best") or {}).get("metric")
    key = chosen if chosen in metrics else next((k for k in metrics if k != "loss"), next(iter(metrics)))
    value = metrics[key]
    return f"{key} {value:.4f}" if isinstance(value, (int, float)) else f"{key} {value}"


def chain_of(source: Optional[ModelSource]) -> list[dict[str, Any]]:
    """The chain of bases under a run built on ``source``: the first base, then each run built on it, oldest
    first (empty when the base is no run). Each run's entry: folder, strategy, task, headline eval metric."""
    if source is None or source.origin not in (RUN_ORIGIN, KEPT_ORIGIN):
        return []
    folder = run_folder(source.name)
    summary = read_run(folder)
    chain = list(summary.get("chain") or [])
    if not chain:
        recipe_model = (summary.get("recipe") or {}).get("model") or {}
        chain.append({"base": summary.get("base_model_id") or recipe_model.get("name") or
                      f"{(recipe_model.get('config') or {}).get('model_type', 'model')} built from model.config"})
    chain.append({"run": str(folder.resolve()), "strategy": summary.get("strategy"), "task": summary.get("task"),
                  "metric": _headline(summary), "previous_adapter": "keep" if source.origin == KEPT_ORIGIN else "merge"})
    return chain


def describe_chain(chain: list[dict[str, Any]], this: str = "this run") -> str:
    """One line: ``base -> run A (lora, accuracy 0.8125) -> this run``."""
    parts = []
    for link in chain:
        if "base" in link:
            parts.append(str(link["base"]))
        else:
            kept = "kept beside, frozen" if link.get("previous_adapter") == "keep" else None
            detail = ", ".join(str(x) for x in (link.get("strategy"), link.get("metric"), kept) if x)
            parts.append(f"{link['run']} ({detail})" if detail else str(link["run"]))
    return " -> ".join(parts + [this])


def chain_comment(chain: list[dict[str, Any]]) -> str:
    """The header a run's recipe.yaml carries when its base is a run: the chain as YAML comments, so the
    recipe copy records it and still loads as a recipe (a key would be refused as unknown)."""
    if not chain:
        return ""
    return f"# base chain: {describe_chain(chain)}\n"
