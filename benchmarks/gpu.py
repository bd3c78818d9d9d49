"""GPU benchmark: tokens/s, model-FLOP utilisation and peak memory of full, LoRA and QLoRA
fine-tuning of a ~1B-parameter Llama-shaped model, beside transformers' Trainer.

Why this script exists: the design promises that large models train well on GPUs; without a
GPU at hand in CI, the measurement must be ready (one command, under 8 minutes on one GPU) for
the first machine that has one, and its CPU ``--smoke`` mode runs in the test suite so it
cannot rot (tests/test_gpu_benchmark.py).

What runs: every adaptkit row is ``adaptkit.run`` on a recipe dict, the same code path as
``adaptkit run`` (task ``instruct``, ``model.config`` of TinyLlama-1.1B's shape with random
weights in bf16, ``model.dtype: bf16``, sdpa attention). The data: synthetic conversations
whose turns draw their lengths from a long-tailed (log-normal) distribution, so padding wastes
tokens and packing (``task.packing``) has something to win. Each row trains one epoch over the
same examples (``epochs: 1, min_steps: 0``), so the tokens it processed are the training
set's real tokens (padding excluded), and tokens/s = those tokens / ``metrics.train_seconds``
(the training loop's own clock: evaluation and checkpoint writes are outside it).

Trainer rows: transformers' ``Trainer`` on the same model (built and wrapped by the same
adaptkit session: same config, seed, dtype, LoRA/QLoRA layers), the same tokenized (and packed)
rows, the same collate function, batch size, optimizer (AdamW torch), schedule, grad clipping
and length grouping; its time is ``train_runtime``, which, like adaptkit's, starts at the first
batch.

MFU: model FLOPs per token = 6N (full: forward, input and weight gradients) or 4N (LoRA/QLoRA:
the frozen weights get no weight gradient; the adapters' own FLOPs are < 1 % and left out),
N = parameters of every matmul (embeddings excluded, output layer included), plus
12 * layers * hidden * sequence for attention (PaLM, appendix B; causal masking not halved);
the recomputation of gradient checkpointing is not counted (model, not hardware, FLOPs).
MFU = FLOPs/token * tokens/s / peak dense bf16 FLOP/s of the device (PEAKS; an unknown device
gets no MFU, with the reason). Peak memory: ``torch.cuda.max_memory_allocated`` over the
training loop (adaptkit: ``metrics.peak_memory_bytes``; reset before each row); on the CPU
smoke run it is the process's peak RSS and means nothing per row.

Warm-up: a short LoRA run before the table starts CUDA, cuBLAS and the allocator, so no row
pays them. Rows run in order of importance and a row that would pass ``--budget`` seconds
is skipped (named in the table), so the script stays under 8 minutes on a slow GPU.

Usage: python benchmarks/gpu.py                 (a CUDA GPU; writes benchmarks/results/gpu.md/.json)
       python benchmarks/gpu.py --smoke         (CPU, tiny model, seconds; writes into --out, default a temp dir)
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "data" / "instruct" / "tokenizer"
RESULTS = ROOT / "benchmarks" / "results"

# Dense bf16 peak FLOP/s (no sparsity), by a pattern of torch.cuda.get_device_name(); first match wins.
PEAKS: list[tuple[tuple[str, ...], str, float]] = [
    (("H200",), "H200", 989e12),
    (("H100", "HBM3"), "H100 SXM", 989e12),
    (("H100", "SXM"), "H100 SXM", 989e12),
    (("A100",), "A100", 312e12),
    (("A10G",), "A10G", 125e12),
    (("L4",), "L4", 121e12),
]

# TinyLlama-1.1B's shape: 1.10e9 parameters with a 32000-token vocabulary.
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
            "vocab_size": 32000, "rope_theta": 10000.0, "tie_word_embeddings": False}
LLAMA_TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
              "vocab_size": 412, "tie_word_embeddings": False}

SETTINGS = {
    # rows: examples in the training set; batch: rows per optimizer step; median_words: of a user turn
    "gpu": {"config": LLAMA_1B, "max_length": 1024, "batch": 8, "rows": 1600, "median_words": 60, "budget": 450},
    "smoke": {"config": LLAMA_TINY, "max_length": 64, "batch": 4, "rows": 16, "median_words": 4, "budget": 120},
}

# (engine, strategy, packing, gradient checkpointing), most important first: the three targets
# need rows 1-4; the rest show what checkpointing and packing change.
ROWS: list[tuple[str, str, bool, bool]] = [
    ("adaptkit", "lora", True, False),
    ("trainer", "lora", True, False),
    ("adaptkit", "qlora", True, False),
    ("adaptkit", "full", True, False),
    ("adaptkit", "lora", False, False),
    ("trainer", "lora", False, False),
    ("adaptkit", "lora", True, True),
    ("adaptkit", "qlora", True, True),
    ("adaptkit", "full", True, True),
    ("trainer", "full", True, False),
    ("adaptkit", "qlora", False, False),
    ("adaptkit", "full", False, False),
    ("trainer", "qlora", True, False),
]

WORDS = ("apple banana grape lime plum cherry lemon kiwi red yellow purple green what colour is a and the "
         "name of fruit answer with one word tell me about").split()


def row_name(engine: str, strategy: str, packing: bool, checkpointing: bool) -> str:
    return f"{engine} {strategy} {'packed' if packing else 'padded'}{' +ckpt' if checkpointing else ''}"


def write_data(folder: Path, rows: int, median_words: int, seed: int = 0) -> tuple[Path, Path]:
    """Long-tailed synthetic conversations (system, user, assistant) as instruct JSONL."""
    rng = random.Random(seed)

    def words(median: float) -> str:
        count = max(1, min(40 * median, int(rng.lognormvariate(math.log(median), 0.9))))
        return " ".join(rng.choice(WORDS) for _ in range(int(count)))

    def conversation(median: float) -> dict[str, Any]:
        return {"messages": [{"role": "system", "content": "answer briefly"},
                             {"role": "user", "content": words(median)},
                             {"role": "assistant", "content": words(median)}]}

    folder.mkdir(parents=True, exist_ok=True)
    train, evaluation = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(conversation(median_words)) + "\n" for _ in range(rows)))
    # short: the contract compares outputs on these rows on the CPU after training
    evaluation.write_text("".join(json.dumps(conversation(2)) + "\n" for _ in range(4)))
    return train, evaluation


def recipe(settings: dict, strategy: str, packing: bool, checkpointing: bool, data: tuple[Path, Path],
           output: Path, smoke: bool) -> dict[str, Any]:
    """The recipe dict a user would write for this row."""
    options: dict[str, Any] = {"name": strategy}
    if strategy in ("lora", "qlora"):
        options.update(r=16, alpha=32)
    if strategy == "qlora":
        options.update(compute_dtype="bfloat16")
    return {
        "model": {"config": dict(settings["config"]), "tokenizer": str(TOKENIZER), "dtype": "bf16",
                  "attn_implementation": "sdpa"},
        "task": {"type": "instruct", "format": "messages", "chat_template": "chatml", "train_on_inputs": False,
                 "max_length": settings["max_length"], "packing": packing},
        "data": {"train": str(data[0]), "eval": str(data[1])},
        "strategy": options,
        "training": {"epochs": 1, "min_steps": 0, "batch_size": settings["batch"], "eval_batch_size": 4,
                     "learning_rate": 2e-5 if strategy == "full" else 2e-4, "warmup_ratio": 0.0, "seed": 0,
                     "gradient_checkpointing": checkpointing, "checkpoint_every_steps": 0,
                     "optimizer": "adamw_torch", "device": "cpu" if smoke else "auto"},
        "output": {"dir": str(output), "verify_export": False},
    }


def flops_per_token(config: dict, strategy: str, sequence: int) -> float:
    """Model FLOPs of one trained token (see the module docstring)."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    kv = h * config["num_key_value_heads"] // config["num_attention_heads"]
    matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * config["vocab_size"]
    return (6 if strategy == "full" else 4) * matmul + 12 * layers * h * sequence


def device_peak(name: Optional[str]) -> tuple[Optional[float], str]:
    """Peak dense bf16 FLOP/s of a device name, or None and why."""
    if not name:
        return None, "no CUDA device (CPU smoke run): MFU omitted"
    for patterns, label, peak in PEAKS:
        if all(p in name for p in patterns):
            return peak, f"{label}: {peak / 1e12:.0f} TFLOP/s dense bf16"
    return None, f"peak bf16 rate of {name!r} unknown (add it to PEAKS): MFU omitted"


def _reset_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_tokens(session) -> int:
    """Real (unpadded) tokens of the session's training rows: packed rows are unpadded concatenations."""
    return sum(len(ids) for ids in session.train_data["input_ids"])


def run_adaptkit(spec: dict, output: Path) -> dict[str, Any]:
    """One row through ``adaptkit.run``; tokens from the same session the run builds."""
    import adaptkit
    from adaptkit.recipe.schema import Recipe
    from adaptkit.engine.session import Session

    tokens = train_tokens(Session(Recipe.from_dict(spec), log=lambda _: None))
    _reset_cuda()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's plan table and log lines, once per row
        result = adaptkit.run(spec, overwrite=True, progress=False)
    metrics = result.metrics
    return {"tokens": tokens, "steps": metrics["steps"], "seconds": metrics["train_seconds"],
            "peak_bytes": metrics["peak_memory_bytes"], "loss": metrics["history"][-1]["train_loss"]}


def _length_grouping(arguments) -> dict[str, Any]:
    """Trainer's length-grouped batches (what adaptkit's group_by_length uses) in either spelling:
    ``train_sampling_strategy`` (transformers 5) or ``group_by_length`` (4.x)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def run_trainer(spec: dict, output: Path, smoke: bool) -> dict[str, Any]:
    """transformers' Trainer on the model, rows, collate and batch adaptkit's session gives."""
    import torch
    from transformers import Trainer, TrainingArguments

    from adaptkit.engine.session import wrap_checked
    from adaptkit.recipe.schema import Recipe
    from adaptkit.engine.session import Session
    from adaptkit.plugin.strategy import WrapContext

    session = Session(Recipe.from_dict(spec), log=lambda _: None)
    training = session.recipe.training
    _reset_cuda()
    base = session.build_base()
    context = WrapContext(model_type=base.config.model_type, task=session.task.name,
                          head_modules=session.task.head_modules(base), peft_task_type=session.task.peft_task_type)
    strategy = session.strategy_cls(session.recipe.strategy_options)
    model = wrap_checked(strategy, base, context)
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=training.batch_size, num_train_epochs=1,
        learning_rate=training.learning_rate, weight_decay=training.weight_decay, lr_scheduler_type="linear",
        warmup_steps=0, max_grad_norm=training.max_grad_norm, optim="adamw_torch", seed=training.seed,
        length_column_name="length", remove_unused_columns=False, **_length_grouping(TrainingArguments),
        gradient_checkpointing=training.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, save_strategy="no", report_to=[],
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, use_cpu=smoke, bf16=False)
    trainer = Trainer(model=model, args=args, train_dataset=session.train_data,
                      data_collator=session.task.collate(session.tokenizer))
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its metrics dict
        out = trainer.train()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and not smoke else None
    if peak is None:
        from adaptkit.engine.train import peak_memory_bytes

        peak = peak_memory_bytes(torch.device("cpu"))
    tokens = train_tokens(session)
    del trainer, model, base
    return {"tokens": tokens, "steps": out.global_step, "seconds": out.metrics["train_runtime"],
            "peak_bytes": int(peak), "loss": out.training_loss}


def measure(rows: list[tuple[str, str, bool, bool]], settings: dict, smoke: bool, work: Path,
            log=print) -> dict[str, Any]:
    """Run the warm-up, then every row within the time budget; return the result table."""
    import torch

    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not smoke else None
    peak, peak_note = device_peak(device_name)
    data = write_data(work / "data", settings["rows"], settings["median_words"])
    started = time.perf_counter()
    warm = recipe({**settings}, "lora", True, False, write_data(work / "warm", 2 * settings["batch"], 2),
                  work / "warm-run", smoke)
    run_adaptkit(warm, work / "warm-run")
    results = []
    durations: list[float] = []
    for engine, strategy, packing, checkpointing in rows:
        name = row_name(engine, strategy, packing, checkpointing)
        entry: dict[str, Any] = {"row": name, "engine": engine, "strategy": strategy, "packing": packing,
                                 "gradient_checkpointing": checkpointing}
        elapsed = time.perf_counter() - started
        expected = max(durations) if durations else 0.0
        if elapsed + expected > settings["budget"]:
            entry["skipped"] = f"time budget: {elapsed:.0f} s spent, this row would pass {settings['budget']} s"
            results.append(entry)
            log(f"{name}: skipped ({entry['skipped']})")
            continue
        spec = recipe(settings, strategy, packing, checkpointing, data, work / name.replace(" ", "-"), smoke)
        row_started = time.perf_counter()
        try:
            measured = (run_adaptkit(spec, work / "run") if engine == "adaptkit"
                        else run_trainer(spec, work / "trainer", smoke))
        except Exception as exc:  # an out-of-memory row is a result, not the end of the table
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            results.append(entry)
            log(f"{name}: failed ({entry['error']})")
            _reset_cuda()
            continue
        durations.append(time.perf_counter() - row_started)
        entry.update(measured)
        entry["tokens_per_second"] = measured["tokens"] / measured["seconds"] if measured["seconds"] else None
        entry["flops_per_token"] = flops_per_token(settings["config"], strategy, settings["max_length"])
        entry["mfu"] = (entry["flops_per_token"] * entry["tokens_per_second"] / peak
                        if peak and entry["tokens_per_second"] else None)
        entry["wall_seconds"] = round(durations[-1], 1)
        results.append(entry)
        log(f"{name}: {entry['tokens_per_second']:,.0f} tokens/s, peak {measured['peak_bytes'] / 2**30:.2f} GiB, "
            f"{durations[-1]:.0f} s")
        _reset_cuda()
    parameters = flops_per_token(settings["config"], "full", 0) / 6
    return {"device": device_name or "cpu", "peak_flops": peak, "peak_note": peak_note, "smoke": smoke,
            "model": {**settings["config"], "matmul_parameters": int(parameters)},
            "max_length": settings["max_length"], "batch_size": settings["batch"], "train_rows": settings["rows"],
            "total_seconds": round(time.perf_counter() - started, 1), "rows": results,
            "targets": targets(results), "torch": torch.__version__}


def targets(rows: list[dict]) -> list[dict[str, Any]]:
    """The three targets of issue 15, each with its figures and whether it is met (None: not measured)."""
    by = {r["row"]: r for r in rows if "tokens_per_second" in r}

    def get(name: str, key: str) -> Optional[float]:
        return by.get(name, {}).get(key)

    out = []
    ours, theirs = get("adaptkit lora packed", "tokens_per_second"), get("trainer lora packed", "tokens_per_second")
    ratio = ours / theirs if ours and theirs else None
    out.append({"target": "LoRA tokens/s >= 1.1x Trainer's (packed rows)", "value": ratio,
                "shown": f"{ratio:.2f}x" if ratio else "not measured", "met": None if ratio is None else ratio >= 1.1})
    mfu = get("adaptkit lora packed", "mfu")
    out.append({"target": "MFU >= 40 % with packing (LoRA)", "value": mfu,
                "shown": f"{100 * mfu:.1f} %" if mfu is not None else "not measured (no known peak)",
                "met": None if mfu is None else mfu >= 0.40})
    q, lora = get("adaptkit qlora packed", "peak_bytes"), get("adaptkit lora packed", "peak_bytes")
    share = q / lora if q and lora else None
    out.append({"target": "QLoRA peak memory <= 0.4x LoRA's", "value": share,
                "shown": f"{share:.2f}x" if share else "not measured", "met": None if share is None else share <= 0.4})
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    model = result["model"]
    lines = [
        "# GPU benchmark: full, LoRA and QLoRA beside transformers' Trainer",
        "",
        f"`{command}` on **{result['device']}** ({result['peak_note']}), torch {result['torch']}, "
        f"{result['total_seconds']:.0f} s in all." + (" SMOKE RUN on CPU: figures mean nothing." if result["smoke"] else ""),
        "",
        f"Model: Llama-shaped, {model['num_hidden_layers']} layers x {model['hidden_size']} hidden, "
        f"{model['matmul_parameters'] / 1e9:.2f}e9 matmul parameters, random weights in bf16, sdpa. Data: "
        f"{result['train_rows']} synthetic long-tailed conversations, max_length {result['max_length']}, "
        f"batch {result['batch_size']} rows, one epoch. tokens/s counts real tokens (no padding); "
        f"MFU uses model FLOPs (6N full, 4N adapters, + attention; recomputation not counted).",
        "",
        "| row | steps | tokens/s | MFU | peak memory | final loss | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "tokens_per_second" not in r:
            lines.append(f"| {r['row']} | - | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "-"
        lines.append(f"| {r['row']} | {r['steps']} | {r['tokens_per_second']:,.0f} | {mfu} | "
                     f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['loss']:.3f} | {r['wall_seconds']} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['shown']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds (the test suite runs it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu.md/gpu.json (default: benchmarks/results; --smoke: a temp dir, "
                             "so a smoke run never overwrites a GPU result)")
    parser.add_argument("--budget", type=float, default=None, help="seconds after which remaining rows are skipped")
    parser.add_argument("--rows", default=None, help="comma-separated row numbers (1-based) to run; default all")
    args = parser.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    settings = dict(SETTINGS["smoke" if args.smoke else "gpu"])
    if args.budget is not None:
        settings["budget"] = args.budget
    rows = ROWS if not args.rows else [ROWS[int(i) - 1] for i in args.rows.split(",")]
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-smoke-")) if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS.resolve():
        print("--smoke does not write into benchmarks/results (it would replace the GPU table)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        result = measure(rows, settings, args.smoke, Path(work))
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu.py" + (" --smoke" if args.smoke else "")
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(result, command))
    print(markdown(result, command))
    print(f"written: {out / 'gpu.md'}, {out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
