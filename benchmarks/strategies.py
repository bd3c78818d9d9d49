"""Every installed strategy side by side on the same data, model and budget.

Each strategy in ``adaptkit.list_strategies()`` (none skipped: a strategy that fails gets a
row saying why) trains through ``adaptkit.run`` on all-MiniLM-L6-v2, the same seeded rows of
data/sst2/train_2k.tsv, evaluated on data/sst2/dev.tsv, with the same epochs, batch size and
max length. Each runs in its own fresh subprocess so its peak memory is its own. The learning
rate is the strategy's ``default_learning_rate`` unless ``LEARNING_RATES`` or ``--lr`` says
otherwise: one shared rate would favour whichever method it happens to suit.

Prints a markdown table (strategy, dev accuracy, trainable parameters, train time, examples/s,
peak memory) and writes benchmarks/results/strategies.md and strategies.json.

Usage: python benchmarks/strategies.py [--strategies a,b] [--max-train-samples 500] [--epochs 5] [--batch-size 16]
       [--lr lora=1e-3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN = ROOT / "data" / "sst2" / "train_2k.tsv"
DEV = ROOT / "data" / "sst2" / "dev.tsv"
RESULTS = ROOT / "benchmarks" / "results"
BATCH, MAX_LEN, SEED = 32, 128, 42
# Per-strategy learning rates where the strategy's own default is not the right one for this
# budget (a few hundred steps on a small encoder). Empty: every default is used as is.
LEARNING_RATES: dict[str, float] = {}


def recipe_for(strategy: str, rows: int, epochs: int, learning_rate: float, output: Path) -> dict[str, Any]:
    return {
        "model": {"name": MODEL},
        "task": {"type": "sequence_classification", "text_column": "sentence", "label_column": "label",
                 "max_length": MAX_LEN},
        "data": {"train": str(TRAIN), "eval": str(DEV), "max_train_samples": rows},
        "strategy": {"name": strategy},
        "training": {"epochs": epochs, "batch_size": BATCH, "learning_rate": learning_rate, "seed": SEED},
        "output": {"dir": str(output)},
    }


def run_one(strategy: str, rows: int, epochs: int, learning_rate: float, result_path: Path) -> None:
    """Child process: train one strategy and write the figures the table needs."""
    import adaptkit

    with tempfile.TemporaryDirectory() as tmp:
        result = adaptkit.run(recipe_for(strategy, rows, epochs, learning_rate, Path(tmp) / "run"), progress=False)
    metrics = result.metrics
    result_path.write_text(json.dumps({
        "strategy": strategy,
        "accuracy": metrics["eval"].get("accuracy"),
        "trainable_parameters": metrics["parameters"]["trainable"],
        "total_parameters": metrics["parameters"]["total"],
        "learning_rate": metrics["learning_rate"],
        "train_seconds": metrics["train_seconds"],
        "examples_per_second": metrics["train_examples_per_second"],
        "peak_memory_mib": round(metrics["peak_memory_bytes"] / 2**20, 1),
        "contract": metrics["contract"],
    }))


def run_isolated(strategy: str, rows: int, epochs: int, learning_rate: Optional[float]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", strategy, "--max-train-samples", str(rows),
                               "--epochs", str(epochs), "--batch-size", str(BATCH), "--child-out", str(out),
                               *(["--child-lr", repr(learning_rate)] if learning_rate is not None else [])],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            return {"strategy": strategy, "learning_rate": learning_rate,
                    "error": lines[-1] if lines else f"exit status {proc.returncode}",
                    "wall_seconds": round(time.perf_counter() - started, 1)}
        return {**json.loads(out.read_text()), "wall_seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict[str, Any]], samples: int, epochs: int) -> str:
    lines = [f"# Strategies on {MODEL}: SST-2, {samples} train rows, {epochs} epoch(s), batch {BATCH}, "
             f"max_length {MAX_LEN}", "",
             "| strategy | lr | dev accuracy | trainable params | train time (s) | examples/s | peak memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            rate = "default" if row["learning_rate"] is None else f"{row['learning_rate']:g}"
            lines.append(f"| {row['strategy']} | {rate} | failed: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['strategy']} | {row['learning_rate']:g} | {row['accuracy']:.4f} | "
                     f"{row['trainable_parameters']:,} | {row['train_seconds']:.1f} | "
                     f"{row['examples_per_second']:.1f} | {row['peak_memory_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", help="comma-separated subset (default: every installed strategy)")
    parser.add_argument("--max-train-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", action="append", default=[], metavar="NAME=RATE", help="learning-rate override")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global BATCH
    BATCH = args.batch_size
    if args.child:
        run_one(args.child, args.max_train_samples, args.epochs, args.child_lr, args.child_out)
        return

    import adaptkit

    installed = adaptkit.list_strategies()
    names = sorted(installed)
    if args.strategies:
        names = [n.strip() for n in args.strategies.split(",") if n.strip()]
        unknown = [n for n in names if n not in installed]
        if unknown:
            parser.error(f"not installed: {', '.join(unknown)} (installed: {', '.join(sorted(installed))})")
    rates = dict(LEARNING_RATES)
    for item in args.lr:
        key, _, value = item.partition("=")
        rates[key] = float(value)
    rows = []
    for name in names:
        rate = rates.get(name)  # None: the strategy's own default for this model (frozen_head's depends on it)
        print(f"{name}: training at lr {'default' if rate is None else f'{rate:g}'} ...", flush=True)
        row = run_isolated(name, args.max_train_samples, args.epochs, rate)
        print("  " + json.dumps({k: v for k, v in row.items() if k != "contract"}), flush=True)
        rows.append(row)
    previous = RESULTS / "strategies.json"
    if args.strategies and previous.exists():  # a subset re-run keeps the other rows of the same setting
        old = json.loads(previous.read_text())
        if (old.get("train_rows"), old.get("epochs"), old.get("batch_size")) == (args.max_train_samples, args.epochs,
                                                                              BATCH):
            rows = sorted([r for r in old["results"] if r["strategy"] not in names] + rows,
                          key=lambda r: r["strategy"])
    text = table(rows, args.max_train_samples, args.epochs)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "strategies.md").write_text(text)
    (RESULTS / "strategies.json").write_text(json.dumps({
        "model": MODEL, "train_rows": args.max_train_samples, "epochs": args.epochs, "batch_size": BATCH,
        "max_length": MAX_LEN, "seed": SEED, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
