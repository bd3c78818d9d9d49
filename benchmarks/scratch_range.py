"""Does scratch learn with a search range of its own? (issue 28, item 5)

Scratch (MiniLM's architecture from random weights, trained by ``full``) on 300 rows of the
shipped SST-2 subset: 240 training rows after the 20 % validation split, three learning rates,
the quick start's recipe otherwise. Run it on the code before and after the change (e.g. a
``git archive`` of the older commit on PYTHONPATH) and compare the printed summaries:

    python benchmarks/scratch_range.py LABEL OUTPUT_FOLDER

Accuracy does not depend on machine load, so this may share the machine; its seconds do.
Results: benchmarks/results/scratch_range.md (by hand from the printed summaries).
"""
from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

import adaptkit
from adaptkit.judge.compare import compare
from adaptkit.recipe.loading import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    label, out = sys.argv[1], Path(sys.argv[2])
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    recipe.output.dir = out / "run"
    kwargs = {"baselines": []} if "baselines" in inspect.signature(compare).parameters else {}
    started = time.perf_counter()
    report = compare(recipe, ["scratch"], sizes=[300], trials=3, bootstrap_rounds=200, output_dir=out / "cmp",
                     log=lambda line: print(line, flush=True), **kwargs)
    run, row = report.runs[0], report.rows[0]
    summary = {"code": label, "adaptkit": str(Path(adaptkit.__file__).parent), "dev_accuracy": run.metric,
               "ci": [row.ci_low, row.ci_high], "flags": row.flags, "chosen_lr": run.learning_rate,
               "predicted_classes": run.predicted_classes, "trials": run.trials,
               "search": getattr(run, "search", None), "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
