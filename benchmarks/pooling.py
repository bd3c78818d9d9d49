"""task.pooling on the shipped SST-2 with all-MiniLM-L6-v2: what the head reads, before and after.

- frozen_head on 1,000 rows of data/sst2/train_2k.tsv, 20 % held out for validation (800 train
  rows, as `adaptkit compare --sizes 1000` uses them), scored on the 872-row dev split: with the
  architecture's head (``pooling: pooler``, what every run did before) at the old default rate,
  and with ``pooling: auto`` (mean, from the checkpoint's 1_Pooling/config.json) at a few rates,
  the rate chosen on the validation rows;
- advise's probe on those same 800 rows (5-fold cross-validated accuracy, as ``advise`` reports
  it) and the same probe fitted on all 800 and scored on dev;
- lora and full on the same rows, before and after; the quick start as shipped (after).

Runs one after the other in this process; each ``adaptkit.run`` writes under a temporary folder.
Writes benchmarks/results/pooling.json and prints a markdown summary.

Usage: python benchmarks/pooling.py [--skip-quickstart] [--skip-finetune]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN, DEV = ROOT / "data" / "sst2" / "train_2k.tsv", ROOT / "data" / "sst2" / "dev.tsv"
RESULTS = ROOT / "benchmarks" / "results"
FROZEN_RATES = (2e-3, 5e-3, 1e-2)


def recipe(strategy: str, pooling: str, rate: float, output: Path, **strategy_options: Any) -> dict[str, Any]:
    return {
        "model": {"name": MODEL},
        "task": {"type": "sequence_classification", "text_column": "sentence", "label_column": "label",
                 "max_length": 128, "pooling": pooling},
        "data": {"train": str(TRAIN), "eval": str(DEV), "max_train_samples": 1000, "validation_fraction": 0.2},
        "strategy": {"name": strategy, **strategy_options},
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": rate, "seed": 42},
        "output": {"dir": str(output)},
    }


def train(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    import adaptkit

    started = time.perf_counter()
    result = adaptkit.run(spec, overwrite=True, progress=False)
    summary = json.loads((Path(result.output_dir) / "metrics.json").read_text())
    row = {"name": name, "strategy": spec["strategy"]["name"], "pooling": summary["task_state"].get("pooling"),
           "learning_rate": spec["training"]["learning_rate"],
           "validation_accuracy": (summary.get("validation") or {}).get("accuracy"),
           "dev_accuracy": summary["eval"]["accuracy"], "train_rows": summary["train_examples"],
           "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(row), flush=True)
    return row


def probe(pooling: str) -> dict[str, Any]:
    """advise's probe on the 800 training rows the runs above train on (the same session split)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from adaptkit.engine.session import Session
    from adaptkit.judge.transferability import extract_features, probe_accuracy

    with tempfile.TemporaryDirectory() as tmp:
        session = Session(recipe("frozen_head", pooling, 1e-2, Path(tmp) / "probe"), log=lambda _: None)
        model = session.build_base()
        collate = session.task.collate(session.tokenizer)
        x, y = extract_features(model, session.train_data, collate, 64, session.task)
        dev_x, dev_y = extract_features(model, session.eval_data, collate, 64, session.task)
    folds = probe_accuracy(x, y, 5, 42)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    row = {"name": f"advise probe ({pooling})", "pooling": session.task.pooling, "rows": len(y),
           "features": session.task.describe_features(),
           "probe_cv_accuracy": round(float(np.mean(folds)), 4), "probe_dev_accuracy": round(float(fitted.score(dev_x, dev_y)), 4)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows.append(train("frozen_head before (pooler, 2e-2)", recipe("frozen_head", "pooler", 2e-2, out / "fh")))
        for rate in FROZEN_RATES:
            rows.append(train(f"frozen_head after (auto, {rate:g})", recipe("frozen_head", "auto", rate, out / "fh")))
        rows.append(probe("pooler"))
        rows.append(probe("auto"))
        if not args.skip_finetune:
            for pooling in ("pooler", "auto"):
                rows.append(train(f"lora ({pooling})", recipe("lora", pooling, 1e-3, out / "lora", r=8, alpha=16)))
                rows.append(train(f"full ({pooling})", recipe("full", pooling, 9e-5, out / "full")))
        if not args.skip_quickstart:
            import adaptkit
            from adaptkit.recipe import load_recipe

            spec = load_recipe(ROOT / "recipes" / "quickstart.yaml")
            spec.output.dir = str(out / "quickstart")
            started = time.perf_counter()
            result = adaptkit.run(spec, overwrite=True, progress=False)
            summary = json.loads((Path(result.output_dir) / "metrics.json").read_text())
            row = {"name": "quickstart (as shipped: auto)", "pooling": summary["task_state"].get("pooling"),
                   "dev_accuracy": summary["eval"]["accuracy"], "train_rows": summary["train_examples"],
                   "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pooling.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
