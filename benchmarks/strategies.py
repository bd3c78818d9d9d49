"""Every installed strategy on the same data, model and budget, each at its own tuned learning rate.

A table a user can choose a method from (issue 25 item 6): for every strategy adaptkit lists
(``adaptkit.list_strategies()``: the first-party ones and every peft method the installed peft
registers), on all-MiniLM-L6-v2 sequence classification of SST-2:

1. ``adaptkit.plan`` on the meta device: a method that refuses the BERT family (peft's own reason,
   or adaptkit's) is listed under "not run here" with the reason, and not trained.
2. The learning rate is tuned exactly as ``adaptkit compare`` tunes an arm, by calling it
   (``adaptkit.compare(recipe, [method], trials=..., baselines=[])``): ``trials`` rates log-spaced a
   factor of 3 either side of the rate a run of this strategy would use (``tuning.arm_learning_rate``),
   and, when the best of them is an end of that grid, up to ``edge_rates`` more past it (the first
   table, without that, had every peft method at the top of its grid), each trained on the rows minus
   a 20 % validation split carved from them and chosen on that split, never on the dev set the table
   reports. A rate still at an end of what was tried is marked "(end)" in the table.
3. One ``adaptkit.run`` at the chosen rate on all the rows measures what the table shows: dev
   accuracy (the full 872-row SST-2 dev split, last epoch's weights), trainable parameters, seconds
   per epoch (the loop's own clock), examples/s and memory: on a GPU the CUDA allocator's peak; on a
   CPU the process's peak resident set above the one after the libraries are imported (as
   ``speed.py`` measures training memory; the same ~0.45 GiB of libraries for every method), with
   glibc's default allocator, so a method of many short-lived activation copies can look larger
   than its live tensors (benchmarks/README.md, "Memory measurement on a CPU"). The peak with the
   imports is in the JSON.

Each step runs in its own fresh subprocess, so a method's peak memory is its own and a crash is a
row saying why. Every finished method is written at once to the JSON file (keyed by method, with the
settings and the adaptkit/peft/torch/transformers versions) and the markdown table is regenerated
from it, so the table fills over several sessions: a rerun skips every method already measured (or
refused) with the same settings and options, and retries failed ones; ``--redo`` measures again.
``--only a,b`` picks methods; ``--quick`` (200 rows, 1 trial, 1 epoch, no step floor) is for
development and writes to a temporary folder unless ``--out`` says otherwise, never over the table.

Usage: python benchmarks/strategies.py [--only lora,vera] [--trials 3] [--redo] [--quick] [--out FILE.json]
       python benchmarks/strategies.py --render      (the markdown again from the JSON, nothing trained)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN = ROOT / "data" / "sst2" / "train_2k.tsv"  # the first 2,000 rows of ../shared/data/sst2_train_4k.tsv
DEV = ROOT / "data" / "sst2" / "dev.tsv"  # the full 872-row SST-2 dev split
RESULTS = ROOT / "benchmarks" / "results"
TABLE = RESULTS / "strategies.json"

# The table's settings; --quick replaces some (QUICK), --rows/--trials/--epochs any.
FULL = {"rows": 1000, "trials": None, "epochs": 3, "min_steps": None, "batch_size": 32, "max_length": 128,
        "seed": 42}  # None: adaptkit's defaults (compare's DEFAULT_TRIALS, the recipe's step floor)
QUICK = {"rows": 200, "trials": 1, "epochs": 1, "min_steps": 0}

# What a user reads the table by: how each method adapts the model. A method a newer peft adds is
# "other" until it is placed here.
FAMILIES = {
    "full & partial": ("full", "partial_freeze"),
    "head only": ("frozen_head",),
    "LoRA-kin": ("lora", "qlora", "adalora", "loha", "lokr", "vera", "pvera", "randlora", "vblora", "tinylora",
                 "unilora", "delora", "gralora", "hira", "lily", "miss", "glora", "adamss", "deft", "peanut"),
    "orthogonal": ("oft", "boft", "hra", "road", "psoft", "osf"),
    "spectral & structured": ("fourierft", "waveft", "c3a"),
    "sparse": ("shira", "frod", "supertuning"),
    "scaling & bias": ("ia3", "beft", "ln_tuning"),
    "adapters & side networks": ("adapters", "shadow"),
    "prompt": ("prompt_tuning", "p_tuning", "prefix_tuning", "adaption_prompt"),
    "token embeddings": ("trainable_tokens",),
}

# Options the table gives methods that cannot run without them (peft declares no default); every other
# method runs with its defaults. TRAIN_TOKENS: every token id the training file uses (``train_tokens``).
TRAIN_TOKENS = "<train tokens>"
OPTIONS: dict[str, dict[str, Any]] = {
    "p_tuning": {"num_virtual_tokens": 20},  # prompt_tuning's default
    "prefix_tuning": {"num_virtual_tokens": 20},
    "adaption_prompt": {"adapter_len": 10, "adapter_layers": 1},
    "trainable_tokens": {"token_indices": TRAIN_TOKENS},
    # peft's Shadow looks for a decoder stack (``.layers``/``.h``) and refuses BERT without targets; BERT's
    # blocks named, it keeps adaptkit's contract on a tiny BERT (frozen, export, signature, removal)
    "shadow": {"target_modules": r".*\.encoder\.layer\.\d+$"},
}


# ------------------------------------------------------------ pure parts (tests/test_strategies_benchmark.py)

def family(method: str) -> str:
    """The family a method is listed under ("other" for one not placed in ``FAMILIES``)."""
    return next((name for name, members in FAMILIES.items() if method in members), "other")


def settings_for(quick: bool = False, **given: Any) -> dict[str, Any]:
    """The run's settings: the table's (or --quick's), with the ones given (None: not given) replacing them,
    and adaptkit's defaults written out, so two runs compare equal exactly when they train alike."""
    from adaptkit.judge.tuning import DEFAULT_TRIALS, EDGE_EXTENSIONS, VALIDATION_FRACTION
    from adaptkit.recipe.schema import DEFAULT_MIN_STEPS

    settings = {**FULL, **(QUICK if quick else {})}
    settings.update({k: v for k, v in given.items() if v is not None})
    settings["trials"] = settings["trials"] or DEFAULT_TRIALS
    settings["min_steps"] = DEFAULT_MIN_STEPS if settings["min_steps"] is None else settings["min_steps"]
    settings["edge_rates"] = EDGE_EXTENSIONS  # compare's default: a best rate at a grid end is followed past it
    settings.update(model=MODEL, train=TRAIN.relative_to(ROOT).as_posix(), dev=DEV.relative_to(ROOT).as_posix(),
                    task="sequence_classification", validation_fraction=VALIDATION_FRACTION, quick=quick)
    return settings


def versions() -> dict[str, str]:
    """The versions a figure was measured with (read from the installed distributions, nothing imported)."""
    found = {}
    for name in ("adaptkit", "peft", "torch", "transformers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def load_store(path: Path) -> dict[str, Any]:
    """The results file, in this script's format. The first format (one run of the 8 first-party
    strategies: ``{"train_rows", "epochs", ..., "results": [...]}``) is kept whole under ``legacy``:
    measured data is never dropped, only moved where the table says what it was."""
    if not path.exists():
        return {"methods": {}}
    data = json.loads(path.read_text())
    if "methods" in data:
        return data
    return {"methods": {}, "legacy": data}


def is_done(entry: Optional[dict[str, Any]], settings: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether a stored entry answers this run: measured or refused with the same settings and options.
    A failed one is retried (a crash or a killed session is not an answer)."""
    return (entry is not None and entry.get("status") in ("measured", "refused")
            and entry.get("settings") == settings and entry.get("options", {}) == options)


def pending(store: dict[str, Any], methods: list[str], settings: dict[str, Any],
            options_of: Callable[[str], dict[str, Any]], redo: bool = False) -> list[str]:
    """The methods this run must measure, in the given order: all with ``redo``, else those not done."""
    return [m for m in methods if redo or not is_done(store["methods"].get(m), settings, options_of(m))]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def record(store: dict[str, Any], method: str, entry: dict[str, Any], path: Path) -> None:
    """Put one method's entry in the store and write the JSON and the markdown beside it at once."""
    store["methods"][method] = entry
    store["methods"] = dict(sorted(store["methods"].items()))
    write_atomic(path, json.dumps(store, indent=2) + "\n")
    write_atomic(path.with_suffix(".md"), render(store))


def _settings_line(settings: dict[str, Any]) -> str:
    floor = f", at least {settings['min_steps']} optimizer steps" if settings["min_steps"] else ""
    return (f"{settings['model']}, SST-2: {settings['rows']:,} training rows of `{settings['train']}` (seed "
            f"{settings['seed']}), dev accuracy on the full dev split (`{settings['dev']}`); {settings['epochs']} "
            f"epoch(s){floor}, batch {settings['batch_size']}, max_length {settings['max_length']}; learning rate "
            f"tuned as `adaptkit compare` tunes an arm ({settings['trials']} trial(s)"
            + (f", up to {settings['edge_rates']} more past an end of the grid where the best lay"
               if settings.get("edge_rates") else ", the grid only") +
            f", chosen on a {settings['validation_fraction']:.0%} validation split of the training rows), then one "
            f"run at that rate on all the rows"
            + (" (QUICK: a development check, not figures to compare)" if settings.get("quick") else ""))


def _legacy(legacy: dict[str, Any]) -> list[str]:
    lines = ["", f"## Legacy: the first table (8 first-party strategies, {legacy.get('train_rows')} rows, "
                 f"{legacy.get('epochs')} epochs, batch {legacy.get('batch_size')}, each at its own default rate, "
                 f"untuned)", "",
             "Measured by the first version of this script; kept until the table above has every one of them.", "",
             "| strategy | lr | dev accuracy | trainable params | train time (s) | examples/s | peak memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in legacy.get("results", []):
        if "error" in row:
            lines.append(f"| {row['strategy']} | | failed: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['strategy']} | {row['learning_rate']:g} | {row['accuracy']:.4f} | "
                     f"{row['trainable_parameters']:,} | {row['train_seconds']:.1f} | {row['examples_per_second']:.1f} "
                     f"| {row['peak_memory_mib']:.0f} |")
    return lines


def _rows(measured: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Table rows; a rate still at an end of the rates tried is marked "(end)": a bound, not the rate."""
    return [f"| {method} | {family(method)} | {e['trainable_parameters']:,} | {e['memory_mib']:,.0f} | "
            f"{e['seconds_per_epoch']:.1f} | {e['learning_rate']:.3g}"
            f"{' (end)' if e.get('tuning', {}).get('at_edge') else ''} | {e['accuracy']:.4f} |"
            for method, e in measured]


def _difference(old: dict[str, Any], new: Optional[dict[str, Any]]) -> str:
    """``edge_rates: none (now 2)``: the settings where an earlier entry differs from the current ones."""
    new = new or {}
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k, 'none')} (now {new.get(k, 'none')})" for k in keys if old.get(k) != new.get(k))


def render(store: dict[str, Any]) -> str:
    """The markdown table from the store: the entries of the latest settings, best dev accuracy first;
    the methods not run (refused at plan, or failed) with the reason; entries measured under other
    settings named; the legacy table while some strategy of it has no new figure."""
    entries = store["methods"]
    settings = store.get("settings") or next((e["settings"] for e in entries.values()), None)
    current = {m: e for m, e in entries.items() if e.get("settings") == settings}
    measured = sorted(((m, e) for m, e in current.items() if e["status"] == "measured"),
                      key=lambda item: (-item[1]["accuracy"], item[0]))
    lines = ["# Every strategy on MiniLM / SST-2", ""]
    if settings:
        lines += [_settings_line(settings) + ".", ""]
    lines += ["| method | family | trainable params | memory (MiB) | s/epoch | lr | dev accuracy |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += _rows(measured)
    if not measured:
        lines.append("| (none measured yet) | | | | | | |")
    devices = sorted({e.get("device", "?") for _, e in measured})
    shown_versions = sorted({json.dumps(e.get("versions", {}), sort_keys=True) for _, e in measured})
    if measured:
        lines += ["", f"Device: {', '.join(devices)}. Memory: the CUDA allocator's peak on a GPU; on a CPU the "
                      f"process's peak resident set above the one after the imports (glibc's default allocator). "
                      f"s/epoch: the training loop's clock (evaluation excluded). Versions: "
                      + "; ".join(", ".join(f"{k} {v}" for k, v in json.loads(v).items()) for v in shown_versions)
                      + ". Options other than a method's defaults: "
                      + (", ".join(f"{m} {json.dumps(e.get('options'))}" for m, e in measured if e.get("options"))
                         or "none") + "." + (f" {TRAIN_TOKENS}: every token id the training file uses."
                                             if any(TRAIN_TOKENS in json.dumps(e.get("options")) for _, e in measured)
                                             else "")]
    not_run = sorted((m, e) for m, e in current.items() if e["status"] != "measured")
    if not_run:
        lines += ["", "## Not run here", ""]
        for method, e in not_run:
            why = "refused at plan" if e["status"] == "refused" else "failed (retried by the next run)"
            lines.append(f"- **{method}** ({family(method)}), {why}: {e['reason']}")
    earlier = sorted(((m, e) for m, e in entries.items() if e.get("settings") != settings and e["status"] == "measured"),
                     key=lambda item: (-item[1]["accuracy"], item[0]))
    if earlier:
        lines += ["", "## Measured under earlier settings", "",
                  "Not comparable with the table above; kept until each is measured again. Differences: "
                  + "; ".join(sorted({_difference(e["settings"], settings) for _, e in earlier})) + ".", "",
                  "| method | family | trainable params | memory (MiB) | s/epoch | lr | dev accuracy |",
                  "|---|---|---:|---:|---:|---:|---:|"] + _rows(earlier)
    other = sorted(m for m, e in entries.items() if e.get("settings") != settings and e["status"] != "measured")
    if other:
        lines += ["", f"Not run under the current settings (in the JSON file, not shown): {', '.join(other)}."]
    legacy = store.get("legacy")
    if legacy and any(r.get("strategy") not in dict(measured) for r in legacy.get("results", [])):
        lines += _legacy(legacy)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- measuring (subprocesses)

def train_tokens() -> list[int]:
    """Every token id the training file's sentences use (special tokens excluded): what
    ``trainable_tokens`` retrains here, the embeddings of the words the classifier reads."""
    import csv

    import adaptkit
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adaptkit.resolve_model_source(MODEL).location)
    with TRAIN.open(newline="") as handle:
        sentences = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
    ids = {i for text in sentences for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
    return sorted(ids - set(tokenizer.all_special_ids))


def options_for(method: str, tokens: Callable[[], list[int]] = train_tokens) -> dict[str, Any]:
    """The strategy options a recipe gives ``method``: ``OPTIONS``, placeholders filled (the results keep
    the placeholders: the same file gives the same ids, and thousands of them would fill the table)."""
    return {k: (tokens() if v == TRAIN_TOKENS else v) for k, v in OPTIONS.get(method, {}).items()}


def recipe_for(method: str, options: dict[str, Any], settings: dict[str, Any], output: Path,
               learning_rate: Optional[float] = None) -> dict[str, Any]:
    training = {"epochs": settings["epochs"], "batch_size": settings["batch_size"], "seed": settings["seed"],
                "min_steps": settings["min_steps"]}
    if learning_rate is not None:
        training["learning_rate"] = learning_rate
    return {
        "model": {"name": settings["model"]},
        "task": {"type": "sequence_classification", "text_column": "sentence", "label_column": "label",
                 "max_length": settings["max_length"]},
        "data": {"train": str(ROOT / settings["train"]), "eval": str(ROOT / settings["dev"]),
                 "max_train_samples": settings["rows"]},
        "strategy": {"name": method, **options},
        "training": training,
        "output": {"dir": str(output)},
    }


def child_tune(job: dict[str, Any], work: Path) -> dict[str, Any]:
    """The learning rate ``compare`` chooses for this method (its search, validation split and pruner)."""
    import adaptkit

    recipe = recipe_for(job["method"], job["options"], job["settings"], work / "run")
    report = adaptkit.compare(recipe, [job["method"]], trials=job["settings"]["trials"], baselines=[],
                              edge_rates=job["settings"]["edge_rates"],
                              validation_fraction=job["settings"]["validation_fraction"],
                              output_dir=work / "compare", bootstrap_rounds=100,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    run = report.runs[0]
    return {"learning_rate": run.learning_rate, "grid": run.search.get("grid"),
            "extended": run.search.get("extended", []), "at_edge": run.search.get("at_edge", False),
            "trials": [{"learning_rate": t["learning_rate"], "state": t["state"], "validation": t["validation"]}
                       for t in run.trials],
            "tuning_dev_accuracy": run.metrics.get("accuracy"), "tuning_train_rows": run.train_examples,
            "validation_rows": run.validation_examples}


def child_measure(job: dict[str, Any], work: Path) -> dict[str, Any]:
    """One run at the chosen rate on all the rows: the table's figures."""
    import psutil

    import accelerate  # noqa: F401  (the libraries every method imports, before the baseline)
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import adaptkit
    import adaptkit.engine.runner  # noqa: F401
    import adaptkit.engine.train  # noqa: F401

    baseline = psutil.Process().memory_info().rss / 2**20
    recipe = recipe_for(job["method"], job["options"], job["settings"], work / "run", job["learning_rate"])
    metrics = adaptkit.run(recipe, progress=False).metrics
    per_epoch = math.ceil(metrics["train_examples"] / job["settings"]["batch_size"])
    peak = metrics["peak_memory_bytes"] / 2**20
    return {"accuracy": metrics["eval"]["accuracy"], "trainable_parameters": metrics["parameters"]["trainable"],
            "total_parameters": metrics["parameters"]["total"], "learning_rate": metrics["learning_rate"],
            "train_seconds": metrics["train_seconds"], "steps": metrics["steps"],
            "seconds_per_epoch": round(metrics["train_seconds"] * per_epoch / max(metrics["steps"], 1), 2),
            "examples_per_second": metrics["train_examples_per_second"],
            "peak_memory_mib": round(peak, 1), "imports_rss_mib": round(baseline, 1),
            "memory_mib": round(peak if metrics["device"].startswith("cuda") else peak - baseline, 1),
            "device": metrics["device"],
            "train_examples": metrics["train_examples"], "eval_examples": metrics["eval_examples"],
            "contract": metrics["contract"]}


def in_subprocess(kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """``child_<kind>(job)`` in a fresh interpreter; ``{"error": last line}`` when it fails."""
    with tempfile.TemporaryDirectory(prefix="strategies-bench-") as tmp:
        job_file, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(job_file), str(out)],
                              capture_output=True, text=True)
        result = json.loads(out.read_text()) if out.exists() else {}
        if proc.returncode != 0 or not result or "error" in result:
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            return {"error": result.get("error") or (lines[-1] if lines else f"exit status {proc.returncode}")}
        return {**result, "wall_seconds": round(time.perf_counter() - started, 1)}


def refusal(method: str, options: dict[str, Any], settings: dict[str, Any]) -> Optional[str]:
    """Why ``adaptkit.plan`` refuses this method on the table's model and task, or None when it plans."""
    import adaptkit

    with tempfile.TemporaryDirectory() as tmp:
        try:
            adaptkit.plan(recipe_for(method, options, settings, Path(tmp) / "run"))
        except adaptkit.AdaptkitError as exc:  # a refusal (pre-flight, targets, a recipe option); others raise
            return str(exc).strip().splitlines()[0]
    return None


def measure(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One method's entry: refused at plan, failed (tuning or measuring), or measured."""
    entry: dict[str, Any] = {"settings": settings, "options": OPTIONS.get(method, {}), "versions": versions(),
                             "family": family(method), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime())}
    options = options_for(method)
    try:
        reason = refusal(method, options, settings)
    except Exception as exc:  # not a refusal: a failure, retried by the next run
        return {**entry, "status": "failed", "reason": f"plan: {type(exc).__name__}: {str(exc).strip()[:300]}"}
    if reason:
        return {**entry, "status": "refused", "reason": reason}
    job = {"method": method, "options": options, "settings": settings}
    tuned = in_subprocess("tune", job)
    if "error" in tuned:
        return {**entry, "status": "failed", "reason": f"tuning: {tuned['error']}"}
    measured = in_subprocess("measure", {**job, "learning_rate": tuned["learning_rate"]})
    if "error" in measured:
        return {**entry, "status": "failed", "reason": f"measuring at lr {tuned['learning_rate']:.3g}: "
                                                       f"{measured['error']}", "tuning": tuned}
    return {**entry, "status": "measured", **measured, "tuning": tuned}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated methods (default: every installed strategy)")
    parser.add_argument("--redo", action="store_true", help="measure again methods already in the results")
    parser.add_argument("--quick", action="store_true", help="200 rows, 1 trial, 1 epoch: a development check")
    parser.add_argument("--trials", type=int, help="learning rates tried per method (default: compare's)")
    parser.add_argument("--rows", type=int, help=f"training rows (default {FULL['rows']})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {FULL['epochs']}; the step floor may add some)")
    parser.add_argument("--out", type=Path, help=f"results JSON, markdown beside it (default "
                                                 f"{TABLE.relative_to(ROOT)}; --quick: a temporary folder)")
    parser.add_argument("--render", action="store_true", help="write the markdown from the JSON, train nothing")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, job_file, out = args.child
        job = json.loads(Path(job_file).read_text())
        try:
            with tempfile.TemporaryDirectory(prefix=f"strategies-{kind}-") as work:
                result = {"tune": child_tune, "measure": child_measure}[kind](job, Path(work))
        except Exception as exc:  # the row says why; the table goes on with the next method
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            Path(out).write_text(json.dumps({"error": f"{type(exc).__name__}: {message}"}))
            raise
        Path(out).write_text(json.dumps(result))
        return 0
    path = args.out or (Path(tempfile.mkdtemp(prefix="strategies-quick-")) / "strategies.json" if args.quick
                        else TABLE)
    if args.quick and path.resolve() == TABLE.resolve():
        parser.error("--quick does not write into the table (its figures are a development check)")
    store = load_store(path)
    if args.render:
        write_atomic(path.with_suffix(".md"), render(store))
        print(render(store))
        return 0
    import adaptkit

    settings = settings_for(args.quick, rows=args.rows, trials=args.trials, epochs=args.epochs)
    installed = sorted(adaptkit.list_strategies())
    methods = installed
    if args.only:
        methods = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = [m for m in methods if m not in installed]
        if unknown:
            parser.error(f"not installed: {', '.join(unknown)} (installed: {', '.join(installed)})")
    todo = pending(store, methods, settings, lambda method: OPTIONS.get(method, {}), args.redo)
    print(f"{len(methods) - len(todo)} of {len(methods)} already in {path} with these settings; measuring "
          f"{len(todo)}: {', '.join(todo) or 'none'}", flush=True)
    store["settings"] = settings
    for number, method in enumerate(todo, 1):
        started = time.perf_counter()
        print(f"[{number}/{len(todo)}] {method} ({family(method)}) ...", flush=True)
        entry = measure(method, settings)
        record(store, method, entry, path)
        figures = (f"dev accuracy {entry['accuracy']:.4f} at lr {entry['learning_rate']:.3g}, "
                   f"{entry['seconds_per_epoch']:.1f} s/epoch, {entry['memory_mib']:.0f} MiB"
                   if entry["status"] == "measured" else f"{entry['status']}: {entry['reason']}")
        print(f"  {figures} [{time.perf_counter() - started:.0f} s]", flush=True)
    write_atomic(path, json.dumps(store, indent=2) + "\n")  # the settings of this run head the table
    write_atomic(path.with_suffix(".md"), render(store))
    print(render(store))
    print(f"written: {path}, {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
