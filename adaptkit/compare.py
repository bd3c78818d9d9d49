"""``adaptkit compare``: several strategies and a from-scratch baseline, one data set, one verdict.

Each named strategy is trained by ``adaptkit.run`` on the same data, seed and budget (epochs /
steps from the recipe), for every seed and training-set size asked for. ``scratch`` is a
compare-level pseudo-strategy: the same architecture from random weights (``model.init:
random``), trained by the strategy named by ``scratch_strategy`` (default ``"full"``, the
first-party full fine-tune; any installed strategy that trains every weight will do). It is the
baseline a transfer claim must beat.

Learning rates: an explicit ``learning_rates[name]`` wins; else the recipe's
``training.learning_rate`` for the recipe's own strategy; else the strategy's own default; and
for scratch ``SCRATCH_LEARNING_RATE`` (1e-4, the rate BERT was pretrained with: random weights
want a larger step than fine-tuning does).

Every run's eval predictions are recomputed from its saved export (``adaptkit.load``), so the
task's own metric can be bootstrapped over eval examples. The verdict compares the best transfer
strategy against scratch with a *paired* bootstrap of the metric difference (the same resampled
eval rows for both): positive transfer when the 95% interval of the difference lies above
zero, negative transfer when it lies below, no clear difference otherwise.

Outputs in one folder: ``compare.json``, ``table.md``, ``compare.png`` (metric vs training-set
size, or vs trainable parameters when there is one size), ``report.html`` (the PNG embedded),
and ``runs/`` with every run's own output folder.
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from adaptkit.errors import AdaptkitError
from adaptkit.recipe import Recipe

SCRATCH = "scratch"
# The strategy that trains the random-weight baseline unless told otherwise: the first-party full
# fine-tune's registered name. Configurable (``scratch_strategy``, ``--scratch-strategy``) because
# the core must not depend on any one plugin being installed.
DEFAULT_SCRATCH_STRATEGY = "full"
SCRATCH_LEARNING_RATE = 1e-4
BOOTSTRAP = 1000
VERDICTS = ("positive transfer", "no clear difference", "negative transfer")


@dataclass
class RunRecord:
    """One trained run: strategy, size, seed, the metric, cost, and where its folder is."""

    strategy: str
    size: Optional[int]
    seed: int
    train_examples: int
    metric: float
    trainable: int
    wall_seconds: float
    train_seconds: float
    peak_memory_bytes: int
    energy_wh: float
    g_co2e: float
    energy_method: str
    learning_rate: float
    run_dir: str


@dataclass
class Row:
    """One (strategy, size) cell of the table: mean metric over seeds and its bootstrap 95% CI."""

    strategy: str
    size: Optional[int]
    train_examples: int
    metric: float
    ci_low: float
    ci_high: float
    trainable: int
    wall_seconds: float
    peak_memory_bytes: int
    energy_wh: float
    g_co2e: float
    seeds: int


@dataclass
class CompareReport:
    """What ``compare`` found; ``to_dict()`` is compare.json."""

    output_dir: Path
    metric: str
    greater_is_better: bool
    strategies: list[str]
    sizes: list[Optional[int]]
    seeds: list[int]
    rows: list[Row]
    runs: list[RunRecord]
    verdict: str
    verdict_detail: str
    per_size: list[dict[str, Any]] = field(default_factory=list)
    compute_saved: list[dict[str, Any]] = field(default_factory=list)
    scratch_strategy: str = DEFAULT_SCRATCH_STRATEGY
    energy_method: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        return data


# ---------------------------------------------------------------------------- planning

def check_strategies(strategies: list[str], scratch_strategy: str) -> None:
    """Every name is installed (or ``scratch``); an unknown one is an error naming the closest."""
    from adaptkit import get_strategy, list_strategies
    from adaptkit.recipe import closest

    if not strategies:
        raise AdaptkitError("compare needs at least one strategy")
    installed = list(list_strategies())
    for name in strategies:
        if name == SCRATCH:
            continue
        if name not in installed:
            match = closest(name, installed + [SCRATCH])
            hint = f"; did you mean {match!r}?" if match else ""
            raise AdaptkitError(f"unknown strategy {name!r}{hint} (installed: {', '.join(sorted(installed))}, "
                                f"plus {SCRATCH!r}: the same model from random weights)")
    if SCRATCH in strategies:
        get_strategy(scratch_strategy)
    if len(set(strategies)) != len(strategies):
        raise AdaptkitError(f"a strategy is named twice in {','.join(strategies)}")


def variant(recipe: Recipe, name: str, size: Optional[int], seed: int, output_dir: Path, scratch_strategy: str,
            learning_rates: dict[str, float]) -> Recipe:
    """The recipe for one run: strategy (with the recipe's options if it is the recipe's own), size, seed."""
    data = recipe.resolved_dict()
    own = name == recipe.strategy.name
    strategy_name = scratch_strategy if name == SCRATCH else name
    data["strategy"] = data["strategy"] if (own and name != SCRATCH) else {"name": strategy_name}
    if name == SCRATCH:
        data["model"]["init"] = "random"
    if name in learning_rates:
        data["training"]["learning_rate"] = learning_rates[name]
    elif name == SCRATCH:
        data["training"]["learning_rate"] = SCRATCH_LEARNING_RATE
    elif not own:
        data["training"]["learning_rate"] = None  # the strategy's default, not another strategy's rate
    data["training"]["seed"] = seed
    if size is not None:
        data["data"]["max_train_samples"] = size
    data["output"]["dir"] = str(output_dir)
    return Recipe.from_dict(data, source=recipe.source)


# ---------------------------------------------------------------------------- measuring

class PeakMemory:
    """Peak memory of one run inside a longer process: the CUDA allocator peak, else sampled RSS.

    The runner's CPU figure is the process's lifetime peak (``ru_maxrss``), which only grows
    from run to run in a comparison; sampling ``/proc/self/statm`` every 20 ms while the run
    lasts gives that run's own peak (the process's baseline, libraries and data, included).
    ``bytes`` stays None where neither is available, and the runner's figure is used.
    """

    def __init__(self, device: str):
        self.device = device
        self.bytes: Optional[int] = None

    def _rss(self) -> int:
        import os

        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        import gc
        import threading

        gc.collect()
        self._stop = threading.Event()
        self._thread = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            self.bytes = self._rss()
        except (OSError, ValueError, IndexError):
            return self

        def sample() -> None:
            while not self._stop.wait(0.02):
                self.bytes = max(self.bytes or 0, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.bytes = int(torch.cuda.max_memory_allocated())
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes or 0, self._rss())


# ---------------------------------------------------------------------------- evaluation

def eval_outputs(run_dir: Path, session: Any) -> dict[str, Any]:
    """The task's per-example eval outputs (``batch_outputs``) of a finished run, in a fixed order."""
    from adaptkit.predict import load_run
    from adaptkit.train import eval_loader, gather_outputs

    predictor = load_run(run_dir)
    task = predictor.task
    loader = eval_loader(session.eval_data, session.recipe.training.eval_batch_size, task.collate(predictor.tokenizer))
    outputs, _, _ = gather_outputs(predictor.model, loader, None, task.batch_outputs)
    return outputs


def _metric(task: Any, outputs: dict[str, Any], index: Any, name: str) -> float:
    return float(task.compute_metrics(**{k: v[index] for k, v in outputs.items()})[name])


def bootstrap(task: Any, metric: str, outputs_by_run: dict[tuple, dict[str, Any]], seeds: list[int],
              eval_sizes: dict[int, int], rounds: int, seed: int = 0) -> dict[tuple, list[float]]:
    """Bootstrap replicates of every run's metric, with the SAME resampled eval rows for all runs of a seed.

    Returns, per (strategy, size), ``rounds`` values of the metric averaged over seeds: sharing
    the resamples across strategies is what makes the difference between two of them paired.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    indices = {s: [torch.randint(0, eval_sizes[s], (eval_sizes[s],), generator=generator) for _ in range(rounds)]
               for s in seeds}
    by_cell: dict[tuple, list[list[float]]] = {}
    for (name, size, run_seed), outputs in outputs_by_run.items():
        values = [_metric(task, outputs, idx, metric) for idx in indices[run_seed]]
        by_cell.setdefault((name, size), []).append(values)
    return {cell: [sum(v) / len(v) for v in zip(*per_seed)] for cell, per_seed in by_cell.items()}


def _interval(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    low = ordered[int(0.025 * (len(ordered) - 1))]
    high = ordered[int(math.ceil(0.975 * (len(ordered) - 1)))]
    return low, high


def judge(rows: list[Row], replicates: dict[tuple, list[float]], greater: bool, metric: str
          ) -> tuple[str, str, list[dict[str, Any]]]:
    """Per size: best transfer strategy minus scratch, paired-bootstrap 95% CI; verdict at the largest size."""
    per_size = []
    sizes = sorted({r.size for r in rows}, key=lambda s: (s is None, s or 0))
    for size in sizes:
        cells = {r.strategy: r for r in rows if r.size == size}
        transfer = [r for name, r in cells.items() if name != SCRATCH]
        if SCRATCH not in cells or not transfer:
            continue
        best = max(transfer, key=lambda r: r.metric if greater else -r.metric)
        sign = 1.0 if greater else -1.0
        diffs = [sign * (a - b) for a, b in zip(replicates[(best.strategy, size)], replicates[(SCRATCH, size)])]
        low, high = _interval(diffs)
        point = sign * (best.metric - cells[SCRATCH].metric)
        verdict = VERDICTS[0] if low > 0 else VERDICTS[2] if high < 0 else VERDICTS[1]
        per_size.append({"size": size, "train_examples": best.train_examples, "best_transfer": best.strategy,
                         "best_metric": best.metric, "scratch_metric": cells[SCRATCH].metric,
                         "difference": round(point, 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
                         "verdict": verdict})
    if not per_size:
        return "not judged", "compare needs 'scratch' and at least one transfer strategy for a verdict", per_size
    last = per_size[-1]
    better = "higher" if greater else "lower"
    detail = (f"At {last['train_examples']} training examples the best transfer strategy, {last['best_transfer']}, "
              f"scores {metric} {last['best_metric']:.4f} against {last['scratch_metric']:.4f} from scratch: "
              f"a difference of {last['difference']:+.4f} ({better} is better), paired-bootstrap 95% CI "
              f"[{last['ci_low']:+.4f}, {last['ci_high']:+.4f}]. ")
    detail += {"positive transfer": "The whole interval is above zero: the pretrained weights help.",
               "negative transfer": "The whole interval is below zero: the pretrained weights hurt; training "
                                    "from scratch is better on this data.",
               "no clear difference": "The interval contains zero: on this evidence the pretrained weights neither "
                                      "clearly help nor clearly hurt."}[last["verdict"]]
    return last["verdict"], detail, per_size


def compute_saved(rows: list[Row], greater: bool) -> list[dict[str, Any]]:
    """Energy saved against training from scratch to the same score, where the learning curve shows it.

    For each transfer strategy: the smallest size at which it matches scratch's best score, and
    the energy of that run against scratch's run that reached its best. When scratch's best is
    beaten already at the smallest size tried, the saving is a lower bound (scratch never got
    as far as the transfer strategy did).
    """
    scratch = [r for r in rows if r.strategy == SCRATCH]
    if not scratch:
        return []
    best_scratch = max(scratch, key=lambda r: r.metric if greater else -r.metric)
    out = []
    for name in sorted({r.strategy for r in rows} - {SCRATCH}):
        curve = sorted((r for r in rows if r.strategy == name), key=lambda r: r.train_examples)
        reaching = [r for r in curve if (r.metric >= best_scratch.metric if greater else r.metric <= best_scratch.metric)]
        if not reaching:
            out.append({"strategy": name, "matches_scratch": False,
                        "note": f"never reached scratch's best {best_scratch.metric:.4f} at the sizes tried"})
            continue
        first = reaching[0]
        out.append({"strategy": name, "matches_scratch": True, "scratch_best_metric": best_scratch.metric,
                    "scratch_examples": best_scratch.train_examples, "scratch_energy_wh": best_scratch.energy_wh,
                    "examples_needed": first.train_examples, "energy_wh": first.energy_wh,
                    "energy_saved_wh": round(best_scratch.energy_wh - first.energy_wh, 5),
                    "energy_ratio": round(first.energy_wh / best_scratch.energy_wh, 4) if best_scratch.energy_wh else None,
                    "examples_saved": best_scratch.train_examples - first.train_examples,
                    "lower_bound": first.train_examples == curve[0].train_examples})
    return out


# ---------------------------------------------------------------------------- entry point

COMPARE_FILES = ("compare.json", "table.md", "compare.png", "report.html")  # runs/ carry their own manifests


def compare(recipe: Union[Recipe, str, Path, dict], strategies: list[str], seeds: Optional[list[int]] = None,
            sizes: Optional[list[int]] = None, output_dir: Optional[Union[str, Path]] = None,
            overwrite: bool = False, scratch_strategy: str = DEFAULT_SCRATCH_STRATEGY,
            learning_rates: Optional[dict[str, float]] = None, power_watts: Optional[float] = None,
            grid_g_per_kwh: Optional[float] = None, bootstrap_rounds: int = BOOTSTRAP,
            log: Callable[[str], None] = print) -> CompareReport:
    """Train every strategy at every size and seed, then write the table, plot, HTML and verdict.

    ``output_dir`` defaults to ``<output.dir>-compare``; an existing non-empty folder is refused
    unless ``overwrite``. ``sizes`` are training-set sizes (``data.max_train_samples``); none
    means the recipe's data as it is.
    """
    import torch

    from adaptkit.energy import EnergyMeter, describe_power
    from adaptkit.outputs import check_output_dir, safe_join, write_json, write_manifest
    from adaptkit.runner import Session, _as_recipe
    from adaptkit.runner import run as run_recipe

    recipe = _as_recipe(recipe)
    strategies = list(strategies)
    check_strategies(strategies, scratch_strategy)
    seeds = list(seeds) if seeds else [recipe.training.seed]
    size_list: list[Optional[int]] = sorted(set(sizes)) if sizes else [None]
    learning_rates = dict(learning_rates or {})
    folder = Path(output_dir) if output_dir else Path(str(recipe.output.dir) + "-compare")
    check_output_dir(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, "compare", COMPARE_FILES)  # --overwrite replaces only what adaptkit wrote
    device = "cuda" if torch.cuda.is_available() and recipe.training.device != "cpu" else "cpu"

    runs: list[RunRecord] = []
    outputs_by_run: dict[tuple, dict[str, Any]] = {}
    eval_sizes: dict[int, int] = {}
    task = None
    total = len(strategies) * len(size_list) * len(seeds)
    done = 0
    for seed in seeds:
        session = None
        for size in size_list:
            for name in strategies:
                done += 1
                tag = f"{name}-n{size if size is not None else 'all'}-s{seed}"
                run_dir = safe_join(folder / "runs", tag)  # tag: strategy names from input and plugins
                spec = variant(recipe, name, size, seed, run_dir, scratch_strategy, learning_rates)
                log(f"compare [{done}/{total}]: {tag}")
                with PeakMemory(device) as memory, EnergyMeter(power_watts=power_watts, device=device,
                                                               grid_g_per_kwh=grid_g_per_kwh) as meter:
                    result = run_recipe(spec, overwrite=overwrite, progress=False, log=lambda _: None)
                if session is None:  # the eval split depends on the seed only, never on size or strategy
                    session = Session(spec, log=lambda _: None)
                    task = session.task
                    eval_sizes[seed] = len(session.eval_data)
                outputs = eval_outputs(run_dir, session)
                outputs_by_run[(name, size, seed)] = outputs
                metrics = result.metrics
                energy = meter.result
                primary = task.primary_metric
                runs.append(RunRecord(
                    strategy=name, size=size, seed=seed, train_examples=metrics["train_examples"],
                    metric=_metric(task, outputs, slice(None), primary),
                    trainable=metrics["parameters"]["trainable"], wall_seconds=metrics["wall_seconds"],
                    train_seconds=metrics["train_seconds"], peak_memory_bytes=memory.bytes or metrics["peak_memory_bytes"],
                    energy_wh=round(energy.wh, 5), g_co2e=round(energy.g_co2e, 4), energy_method=energy.method,
                    learning_rate=metrics["learning_rate"], run_dir=str(run_dir)))
                log(f"compare: {tag}: {primary} {runs[-1].metric:.4f} in {metrics['wall_seconds']:.0f} s")

    metric, greater = task.primary_metric, task.greater_is_better
    replicates = bootstrap(task, metric, outputs_by_run, seeds, eval_sizes, bootstrap_rounds)
    rows = []
    for size in size_list:
        for name in strategies:
            cell = [r for r in runs if r.strategy == name and r.size == size]
            low, high = _interval(replicates[(name, size)])
            rows.append(Row(strategy=name, size=size, train_examples=cell[0].train_examples,
                            metric=round(sum(r.metric for r in cell) / len(cell), 5), ci_low=round(low, 5),
                            ci_high=round(high, 5), trainable=cell[0].trainable,
                            wall_seconds=round(sum(r.wall_seconds for r in cell) / len(cell), 2),
                            peak_memory_bytes=max(r.peak_memory_bytes for r in cell),
                            energy_wh=round(sum(r.energy_wh for r in cell) / len(cell), 5),
                            g_co2e=round(sum(r.g_co2e for r in cell) / len(cell), 4), seeds=len(cell)))
    verdict, detail, per_size = judge(rows, replicates, greater, metric)
    report = CompareReport(
        output_dir=folder, metric=metric, greater_is_better=greater, strategies=strategies, sizes=size_list,
        seeds=seeds, rows=rows, runs=runs, verdict=verdict, verdict_detail=detail, per_size=per_size,
        compute_saved=compute_saved(rows, greater), scratch_strategy=scratch_strategy,
        energy_method=describe_power(power_watts, device),
        notes=[f"{SCRATCH}: the same architecture from random weights (model.init: random), trained with strategy "
               f"{scratch_strategy!r} at learning rate {learning_rates.get(SCRATCH, SCRATCH_LEARNING_RATE):g}",
               f"metric: the task's {metric} on the eval set, recomputed from each run's saved export; 95% CI from "
               f"{bootstrap_rounds} bootstrap resamples of the eval rows (averaged over seeds)",
               "verdict: paired bootstrap of (best transfer strategy - scratch) on the same resampled rows, at the "
               "largest training-set size",
               *(["one seed: the intervals cover which eval rows were drawn, not training randomness; "
                  "pass several seeds (--seeds 1,2,3) to average it out"] if len(seeds) == 1 else []),
               "energy: whole run (loading, training, evaluation, export checks) wall time x power; "
               "gCO2e at the grid intensity in adaptkit.energy",
               "peak memory: the CUDA allocator peak of each run on a GPU; on a CPU the process's resident memory "
               "sampled every 20 ms during the run (its baseline included)"])
    write_json(folder / "compare.json", report.to_dict())
    (folder / "table.md").write_text(markdown_table(report))
    plot(report, folder / "compare.png")
    (folder / "report.html").write_text(html_report(report, folder / "compare.png"))
    write_manifest(folder, "compare", COMPARE_FILES)
    return report


# ---------------------------------------------------------------------------- outputs

def markdown_table(report: CompareReport) -> str:
    """The results table as Markdown, ready to paste into a README."""
    lines = [f"| strategy | train examples | {report.metric} (95% CI) | trainable params | wall s | peak MiB | "
             f"energy Wh | gCO2e |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.rows:
        lines.append(f"| {r.strategy} | {r.train_examples:,} | {r.metric:.4f} [{r.ci_low:.3f}, {r.ci_high:.3f}] | "
                     f"{r.trainable:,} | {r.wall_seconds:.1f} | {r.peak_memory_bytes / 2**20:,.0f} | "
                     f"{r.energy_wh:.3f} | {r.g_co2e:.2f} |")
    lines += ["", f"**Verdict: {report.verdict}.** {report.verdict_detail}", ""]
    return "\n".join(lines)


def plot(report: CompareReport, path: Path) -> None:
    """Metric with its 95% CI against training-set size (or trainable parameters when one size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_size = len(report.sizes) == 1
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in report.strategies:
        cells = sorted((r for r in report.rows if r.strategy == name), key=lambda r: r.train_examples)
        xs = [r.trainable if one_size else r.train_examples for r in cells]
        ys = [r.metric for r in cells]
        errors = [[y - r.ci_low for y, r in zip(ys, cells)], [r.ci_high - y for y, r in zip(ys, cells)]]
        axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name,
                      linestyle="--" if name == SCRATCH else "-")
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters" if one_size else "training examples")
    axes.set_ylabel(f"eval {report.metric} (95% CI)")
    axes.set_title(f"{report.verdict}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def html_report(report: CompareReport, png: Path) -> str:
    """One self-contained page: verdict, table, plot (base64), compute saved, method notes."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    e = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("strategy", "train examples", f"{report.metric}", "95% CI",
                                             "trainable params", "wall s", "peak MiB", "energy Wh", "gCO2e"))
    body = "".join(
        f"<tr><td>{e(r.strategy)}</td><td>{r.train_examples:,}</td><td>{r.metric:.4f}</td>"
        f"<td>[{r.ci_low:.3f}, {r.ci_high:.3f}]</td><td>{r.trainable:,}</td><td>{r.wall_seconds:.1f}</td>"
        f"<td>{r.peak_memory_bytes / 2**20:,.0f}</td><td>{r.energy_wh:.3f}</td><td>{r.g_co2e:.2f}</td></tr>"
        for r in report.rows)
    sizes = "".join(f"<li>{p['train_examples']} examples: {e(p['best_transfer'])} - scratch = {p['difference']:+.4f} "
                    f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]: <b>{e(p['verdict'])}</b></li>" for p in report.per_size)
    saved = "".join(
        f"<li>{e(c['strategy'])}: " + (
            f"matches scratch's best ({c['scratch_best_metric']:.4f} with {c['scratch_examples']} examples, "
            f"{c['scratch_energy_wh']:.3f} Wh) with {c['examples_needed']} examples and {c['energy_wh']:.3f} Wh: "
            f"{'at least ' if c['lower_bound'] else ''}{c['energy_saved_wh']:.3f} Wh saved"
            if c["matches_scratch"] else e(c["note"])) + "</li>" for c in report.compute_saved)
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes + [f"power: {report.energy_method}"])
    colour = {"positive transfer": "#1a7f37", "negative transfer": "#cf222e"}.get(report.verdict, "#9a6700")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>adaptkit compare: {e(report.verdict)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}}
td:first-child{{text-align:left}}h1{{color:{colour}}}</style></head><body>
<h1>Verdict: {e(report.verdict)}</h1><p>{e(report.verdict_detail)}</p>
<table><tr>{head}</tr>{body}</table>
<img alt="metric against {'trainable parameters' if len(report.sizes) == 1 else 'training examples'}" src="data:image/png;base64,{image}">
<h2>By training-set size</h2><ul>{sizes}</ul>
<h2>Compute saved against training from scratch</h2><ul>{saved or '<li>no scratch baseline</li>'}</ul>
<h2>Method</h2><ul>{notes}</ul>
<p>Seeds: {', '.join(map(str, report.seeds))}. Raw figures: compare.json.</p>
</body></html>
"""


def parse_list(text: Optional[str], kind: type = str) -> Optional[list]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` for the CLI; empty or None -> None."""
    if not text:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdaptkitError(f"expected a comma-separated list of {kind.__name__} values, got {text!r}") from None


def load_report(folder: Union[str, Path]) -> dict[str, Any]:
    """compare.json of a finished comparison, as a dict."""
    return json.loads((Path(folder) / "compare.json").read_text())
