"""Check compare's learning-curve extrapolation against what was measured (issue 28 item 8).

compare fits a power law (error = a * n^-b) per arm and turns it into sentences: "scratch would
need about N rows", "doubling the data is expected to gain ...". This script gives those
sentences a track record: on a finished compare with three or more sizes, it fits each arm's
curve on the smaller sizes only, predicts the largest measured size, and reports the error and
whether the 95% interval (the curve refitted on every paired bootstrap replicate of the eval
rows, as compare does) covers the measured score.

    python benchmarks/extrapolation.py benchmarks/results/compare-sst2/recipe.yaml \
        benchmarks/results/compare-sst2/out [--markdown benchmarks/results/extrapolation.md]

Target (issue 28): within 0.03 absolute, with the interval covering the measured score.
It trains nothing: it reads compare.json and the eval outputs compare kept in trials/.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

TARGET = 0.03


def chosen_outputs(folder: Path, run: dict) -> Path:
    """Where compare kept a run's eval outputs: the chosen trial's file, or a baseline's."""
    tag = f"{run['strategy']}-n{run['size'] if run['size'] is not None else 'all'}-s{run['seed']}"
    if run.get("kind") == "baseline":
        return folder / "trials" / tag / "baseline.pt"
    if run.get("trial_dir"):  # since issue 28 item 6: the cell's folder and chosen trial are recorded
        return folder / "trials" / run["trial_dir"] / f"trial-{run['chosen_trial']}.pt"
    number = next(t["number"] for t in run["trials"]
                  if t["state"] == "complete" and t["learning_rate"] == run["learning_rate"])
    return folder / "trials" / tag / f"trial-{number}.pt"


def check(recipe_path: Path, folder: Path, rounds: int = 1000) -> list[dict]:
    import torch

    from adaptkit.engine.session import Session
    from adaptkit.judge.compare import bootstrap
    from adaptkit.judge.curves import fit_power_law, from_error, percentile_interval, to_error

    report = json.loads((folder / "compare.json").read_text())
    metric, greater = report["metric"], report["greater_is_better"]
    task = Session(recipe_path, log=lambda _: None).task
    outputs, eval_sizes = {}, {}
    for run in report["runs"]:
        loaded = torch.load(chosen_outputs(folder, run), weights_only=True)
        outputs[(run["strategy"], run["size"], run["seed"])] = loaded
        eval_sizes[run["seed"]] = len(loaded["labels"])
    replicates = bootstrap(task, metric, outputs, report["seeds"], eval_sizes, rounds)
    sizes = sorted(s for s in report["sizes"] if s is not None)
    rows = []
    for name in report["strategies"]:
        cells = {r["size"]: r for r in report["rows"] if r["strategy"] == name}
        if len(sizes) < 3 or any(s not in cells for s in sizes):
            continue
        if any("did not learn" in cells[s]["flags"] for s in sizes[:-1]):
            continue  # compare fits no curve through an untrained arm's points (it predicts nothing)
        fit_sizes, target = sizes[:-1], sizes[-1]
        x = [cells[s]["train_examples"] for s in fit_sizes]
        curve = fit_power_law(x, [to_error(cells[s]["metric"], greater) for s in fit_sizes])
        at = cells[target]["train_examples"]
        predicted = from_error(curve.error(at), greater) if curve else math.nan
        samples = []
        for k in range(rounds):
            refit = fit_power_law(x, [to_error(replicates[(name, s)][k], greater) for s in fit_sizes])
            if refit:
                samples.append(from_error(refit.error(at), greater))
        low, high = percentile_interval(samples)
        measured = cells[target]["metric"]
        rows.append({"arm": name, "fit_on_rows": x, "predict_rows": at, "predicted": round(predicted, 4),
                     "interval": [round(low, 4), round(high, 4)], "measured": round(measured, 4),
                     "error": round(predicted - measured, 4), "covered": low <= measured <= high,
                     "within_target": abs(predicted - measured) <= TARGET})
    return rows


def markdown(rows: list[dict], metric: str) -> str:
    lines = [f"| arm | fitted on (train rows) | predicted {metric} at | predicted (95% CI) | measured | error | "
             f"within {TARGET} | interval covers |",
             "|---|---|---:|---:|---:|---:|:-:|:-:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {', '.join(f'{n:,}' for n in r['fit_on_rows'])} | {r['predict_rows']:,} | "
                     f"{r['predicted']:.4f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}] | {r['measured']:.4f} | "
                     f"{r['error']:+.4f} | {'yes' if r['within_target'] else 'no'} | {'yes' if r['covered'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("compare_folder", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    rows = check(args.recipe, args.compare_folder)
    metric = json.loads((args.compare_folder / "compare.json").read_text())["metric"]
    table = markdown(rows, metric)
    print(table)
    print(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(f"# Learning-curve extrapolation against what was measured\n\n"
                                 f"`python benchmarks/extrapolation.py {args.recipe} {args.compare_folder}`\n\n"
                                 f"Each arm's power law fitted on the smaller sizes only, predicting the largest.\n\n"
                                 + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
