"""Many runs' adapters on one base model (issue 25, item 5): ``adaptkit.load_runs([a, b, c])``.

The base is built once, by the first run (as ``adaptkit.load`` builds it); every other run's peft
adapter is added beside it with peft's ``PeftModel.load_adapter`` and chosen per call with
``set_adapter``, so serving many small task adapters costs one base in memory, not one per task.
Each run keeps its own task (label names, lengths) and tokenizer folder for its rows.

What cannot share a base is refused before any weight is read, with the reason:

- a run that exported a whole model (full fine-tune, partial freeze): its weights *are* a base;
- adapters of different peft types (peft holds one type per ``PeftModel``);
- runs on different bases (model, revision or config and seed, model class, task, labels, dtype:
  the same identity ``adaptkit merge`` requires) or one quantizing its base and another not.

Its engine imports are inside the functions: ``adaptkit.RunAdapters`` is a lazy export of a light
``import adaptkit``, and predict and stacking import each other through the functions they call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from adaptkit.errors import AdaptkitError

FIRST = "default"  # the name peft's PeftModel.from_pretrained gives the first run's adapter


@dataclass
class _Adapter:
    """One run on the shared base: its peft adapter name, task and tokenizer."""

    run: Path
    name: str
    task: Any
    tokenizer: Any


@dataclass
class RunAdapters:
    """Several runs' adapters on one loaded base; ``predict(rows, adapter=...)`` switches with ``set_adapter``.

    ``adapter`` is the run's index in the list given to ``load_runs``, its folder as given, or its
    folder's name.
    """

    model: Any
    adapters: list[_Adapter] = field(default_factory=list)
    batch_size: int = 64

    @property
    def runs(self) -> list[Path]:
        return [adapter.run for adapter in self.adapters]

    def adapter(self, adapter: Union[int, str, Path]) -> _Adapter:
        """The run ``adapter`` names (index, folder as given, folder name), else an error listing them."""
        if isinstance(adapter, int) and not isinstance(adapter, bool):
            if 0 <= adapter < len(self.adapters):
                return self.adapters[adapter]
        else:
            wanted = str(adapter)
            for candidate in self.adapters:  # the folder itself, however it is spelt
                if wanted == str(candidate.run) or Path(wanted).resolve() == candidate.run.resolve():
                    return candidate
            named = [candidate for candidate in self.adapters if candidate.run.name == wanted]
            if len(named) > 1:
                raise AdaptkitError(f"{wanted!r} is the folder name of {len(named)} loaded runs "
                                    f"({', '.join(str(c.run) for c in named)}); name the run by its index or path")
            if named:
                return named[0]
        raise AdaptkitError(f"no loaded run is {adapter!r}; the loaded runs are "
                            f"{', '.join(f'{i}: {a.run}' for i, a in enumerate(self.adapters))}")

    def predictor(self, adapter: Union[int, str, Path]) -> Any:
        """A ``Predictor`` for one run on the shared model: its adapter is made active each time it predicts,
        so predictors of different runs can be used in any order (``write_predictions`` takes one)."""
        from adaptkit.engine.predict import Predictor

        chosen = self.adapter(adapter)
        model = self.model

        class _Switching(Predictor):  # made here: predict (engine.predict) is imported lazily, like torch
            def predict(self, rows: Any, source: str = "the rows to predict") -> list[Any]:
                model.set_adapter(chosen.name)
                chosen.task.prepare_loaded(model)  # this run's pooling (runs on one base may pool differently)
                return super().predict(rows, source)

        return _Switching(model=model, tokenizer=chosen.tokenizer, task=chosen.task, batch_size=self.batch_size)

    def predict(self, rows: Any, adapter: Union[int, str, Path] = 0, source: str = "the rows to predict") -> list[Any]:
        """One prediction per row with run ``adapter``'s adapter active (see ``Predictor.predict``)."""
        return self.predictor(adapter).predict(rows, source=source)


def _check_runs(runs: Sequence[Union[str, Path]]) -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """Each run's folder, summary and adapter config, refused (with the reason) where they cannot share a base."""
    from adaptkit.engine.merge import base_identity, check_same_base
    from adaptkit.engine.outputs import read_run_summary
    from adaptkit.engine.stacking import run_folder
    from adaptkit.plugin.registry import get_registry

    folders = [Path(run) for run in runs]
    if not folders:
        raise AdaptkitError("load_runs needs at least one run folder")
    if len({folder.resolve() for folder in folders}) != len(folders):
        raise AdaptkitError("the same run is named twice; each run's adapter is loaded once")
    found = []
    strategies = get_registry().strategies
    for folder in folders:
        summary = read_run_summary(folder)
        export = summary["export"]
        strategy = summary.get("strategy")
        kept = ((summary.get("recipe") or {}).get("model") or {}).get("previous_adapter") == "keep"
        if kept and len(folders) > 1:
            raise AdaptkitError(f"{folder} trained beside the frozen adapter of the run it was built on "
                                f"(model.previous_adapter: keep), and predicts only with both active; one base "
                                f"serves one active adapter per run here: predict it alone with adaptkit predict {folder}")
        if export.get("kind") == "adapter" and export.get("loader") != "peft":
            raise AdaptkitError(f"{folder}: strategy {strategy!r} exported an adapter that {export.get('loader')} "
                                f"loads, not peft, so peft's load_adapter cannot put it beside others; predict it "
                                f"alone with adaptkit predict {folder}")
        if export.get("kind") != "adapter":
            raise AdaptkitError(f"{folder}: strategy {strategy!r} exported a whole {export.get('kind')} (its "
                                f"weights are a base of their own, not an adapter on a shared one); predict it "
                                f"alone with adaptkit predict {folder}")
        config_path = folder / Path(export["path"]).name / "adapter_config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise AdaptkitError(f"{config_path}: cannot be read ({exc}); the run folder is damaged") from None
        found.append((folder, summary, config))
    first_folder, first, first_config = found[0]
    quantized = getattr(strategies.get(str(first.get("strategy"))), "quantization", None)
    for folder, summary, config in found[1:]:
        if config.get("peft_type") != first_config.get("peft_type"):
            raise AdaptkitError(f"{folder}: its adapter is peft {config.get('peft_type')} (strategy "
                                f"{summary.get('strategy')!r}) and {first_folder}'s is peft "
                                f"{first_config.get('peft_type')} ({first.get('strategy')!r}); one peft model holds "
                                f"adapters of one type, so these runs cannot share a base")
        check_same_base(first_folder, first, folder, summary, "share one")
        identity = base_identity(summary)
        if run_folder(identity["model"]) is not None and summary.get("base_model") != first.get("base_model"):
            raise AdaptkitError(f"{folder} and {first_folder} were built on the run {identity['model']} as it was at "
                                f"different times (its merged base differs: it was trained again in between); only "
                                f"runs on the same base share one")
        other = getattr(strategies.get(str(summary.get("strategy"))), "quantization", None)
        if other != quantized:
            raise AdaptkitError(f"{folder}: strategy {summary.get('strategy')!r} loads its base "
                                f"{other or 'unquantized'} and {first_folder}'s {first.get('strategy')!r} "
                                f"{quantized or 'unquantized'}; one base is loaded one way")
    return found


def load_runs(runs: Sequence[Union[str, Path]], trust_remote_code: bool = False) -> RunAdapters:
    """Load the adapters of ``runs`` (peft runs on one base) onto one base model, built once.

    Refused before any weight is read where they cannot share it (see the module docstring).
    ``trust_remote_code`` is the caller's decision, as in ``adaptkit.load``.
    """
    from adaptkit.engine.predict import run_parts, load_run

    checked = _check_runs(runs)
    first = load_run(checked[0][0], trust_remote_code=trust_remote_code)
    model = first.model
    adapters = [_Adapter(checked[0][0], FIRST, first.task, first.tokenizer)]
    for index, (folder, _, _) in enumerate(checked[1:], start=1):
        parts = run_parts(folder, trust_remote_code)
        name = f"run{index}"
        try:
            model.load_adapter(str(parts.export), adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise AdaptkitError(f"{folder}: peft could not load its adapter beside {checked[0][0]}'s: "
                                f"{str(exc).splitlines()[0]}") from None
        model = parts.task.prepare_loaded(model)
        adapters.append(_Adapter(folder, name, parts.task, parts.tokenizer))
    model.set_adapter(FIRST)
    return RunAdapters(model=model, adapters=adapters)


def predict_files(runs: Sequence[Union[str, Path]], inputs: Sequence[Union[str, Path]],
                  outputs: Sequence[Union[str, Path]], overwrite: bool = False,
                  trust_remote_code: bool = False) -> list[int]:
    """``adaptkit predict RUN1 RUN2 --input a.csv --input b.csv``: the i-th input predicted by the i-th run,
    all runs' adapters on one base (``load_runs``); returns the row counts. Every output path is checked
    before the model loads."""
    from adaptkit.engine.predict import check_output_path, write_predictions

    if not (len(runs) == len(inputs) == len(outputs)):
        raise AdaptkitError(f"{len(runs)} runs and {len(inputs)} --input files: give one --input per run, in the "
                            f"same order (the i-th input is predicted by the i-th run)"
                            + (f", and one --output per run or none ({len(outputs)} given)"
                               if len(outputs) != len(runs) else ""))
    if len({Path(o).resolve() for o in outputs}) != len(outputs):
        raise AdaptkitError("two runs would write the same --output file; give each run its own")
    for source, output in zip(inputs, outputs):
        check_output_path(source, output, overwrite)
    served = load_runs(runs, trust_remote_code=trust_remote_code)
    return [write_predictions(served.predictor(index), source, output, overwrite)
            for index, (source, output) in enumerate(zip(inputs, outputs))]
