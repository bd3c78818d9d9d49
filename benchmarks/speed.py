"""Speed side by side: adaptkit's runner against a hand-written loop and transformers' Trainer.

Each contender runs in its own fresh subprocess (so peak memory is its own) on the same
model (all-MiniLM-L6-v2, LoRA r=8 on query/key/value/dense, head trained), the same rows of
the shipped SST-2 subset, seed, batch size, learning rate and number of optimizer steps:

  adaptkit        adaptkit.run on a recipe (length-grouped batches, dynamic padding)
  plain-same      a plain torch + peft loop over exactly the batches adaptkit uses
  plain-random    the same loop over random batches (what most hand-written loops do)
  trainer         transformers.Trainer with group_by_length sampling at its defaults (fp32)
  trainer-bf16    the same Trainer with bf16=True: like for like where adaptkit trains in bf16
  adaptkit-memory adaptkit.run LoRA again, one epoch, for memory only (see MEMORY_ENV)
  adaptkit-full   adaptkit.run with full fine-tuning on the same rows, one epoch: the memory
                  reference for "LoRA's peak memory at most 0.8x full fine-tuning's"

It prints examples/s, the ratios the targets are stated in, peak memory, dev accuracy and
model-FLOP utilisation: real-token training FLOPs per second over a matrix-multiply rate
measured in the same subprocess, then every target of the speed issue with its value and
whether it is met, and the start-up times of `adaptkit --help`, `validate`, `plugins`, `plan`.
Peak memory on a CPU is the process's peak resident set; "training memory" is that peak
minus the resident set after the imports (libraries are the same for every contender).
LoRA's memory target is judged on the memory pair (see MEMORY_ENV).
Results also go to benchmarks/results/speed.md and speed.json.

Noise: one run of each contender cannot tell a change of a few percent from the machine's mood
(five runs on one day spread adaptkit / plain-same over 0.92-1.11). So every contender runs
``--repeats`` times (default 3), each time in a fresh process, the order alternating between
repeats (forward, then reversed, ...) so that neither side always runs first on a warm or a cold
machine. A ratio is formed within each repeat (the two sides ran minutes apart) and the report
gives the median ratio with its min-max; a target is judged on the median. ``--quick`` (300 rows,
one epoch) is for development; the committed results come from the full setting.

Precision: adaptkit runs the quick start's ``training.mixed_precision: auto`` (``--precision``): bf16
where the device computes it natively (this repository's CPU has AMX), fp32 elsewhere. The plain
loops compute in the same precision as adaptkit (``torch.autocast``), so adaptkit / plain-same stays
a measure of the loop's own cost. The Trainer runs twice: at its default (fp32), what its users get
unless they choose, and with ``bf16=True``, the like-for-like figure. Both ratios are reported.

Usage: python benchmarks/speed.py [--rows 2000] [--epochs 2] [--repeats 3] [--quick] [--only adaptkit,trainer]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN = ROOT / "data" / "sst2" / "train_2k.tsv"
DEV = ROOT / "data" / "sst2" / "dev.tsv"
LR, BATCH, MAX_LEN, SEED = 1e-3, 32, 128, 42
DROPOUT = float(os.environ.get("SPEED_LORA_DROPOUT", "0.0"))
PRECISION = os.environ.get("SPEED_PRECISION", "auto")  # adaptkit's training.mixed_precision (--precision)


def bf16_like_adaptkit() -> bool:
    """Whether adaptkit's run computes in bf16 here: the plain loops then autocast the same way."""
    from types import SimpleNamespace

    from adaptkit.engine.device import mixed_precision

    return mixed_precision(SimpleNamespace(mixed_precision=PRECISION, device="cpu")) == "bf16"


def autocast(enabled: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)
TARGETS = ["query", "key", "value", "dense"]


def resident_mib() -> float:
    """This process's resident set now (Linux), MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def matmul_rate(seconds: float = 1.0) -> float:
    """Sustained fp32 matrix-multiply FLOP/s on this machine, now."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - started)


def training_flops(model, real_tokens: int) -> float:
    """Forward 2N + backward 2N (activation gradients) + 2N_trainable (weight gradients) per token.

    N excludes the embedding tables, whose lookups cost no multiply-adds.
    """
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (4 * dense + 2 * trainable) * real_tokens


def _data(rows: int):
    from adaptkit.engine.data import load_table

    train = load_table(TRAIN).shuffle(seed=SEED).select(range(rows))
    return train, load_table(DEV)


def _tokenized(tokenizer, table):
    def encode(batch):
        out = tokenizer(batch["sentence"], truncation=True, max_length=MAX_LEN)
        out["labels"] = batch["label"]
        return out
    return table.map(encode, batched=True, remove_columns=table.column_names)


def _model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from adaptkit.engine.models import resolve_model_source

    torch.manual_seed(SEED)
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_source(MODEL).location, num_labels=2)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=DROPOUT, target_modules=TARGETS, task_type="SEQ_CLS",
                        modules_to_save=["classifier"], exclude_modules=["classifier"])
    return get_peft_model(base, config)


def _accuracy(model, tokenizer, dev, bf16: bool = False) -> float:
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    data = _tokenized(tokenizer, dev)
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(bf16):
        for start in range(0, len(data), 64):
            batch = collate([data[i] for i in range(start, min(start + 64, len(data)))])
            correct += (model(**batch).logits.argmax(-1) == batch["labels"]).sum().item()
    return correct / len(data)


def run_plain(rows: int, epochs: int, same_batches: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import AutoTokenizer, DataCollatorWithPadding, get_scheduler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from adaptkit.engine.models import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MODEL).location)
    train, dev = _data(rows)
    data = _tokenized(tokenizer, train)
    generator = torch.Generator().manual_seed(SEED)
    if same_batches:  # exactly adaptkit's batches: the same sampler, seed and lengths
        sampler = LengthGroupedSampler(BATCH, lengths=[len(x) for x in data["input_ids"]], generator=generator)
    else:
        sampler = RandomSampler(data, generator=generator)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer))
    model = _model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.01)
    steps = len(loader) * epochs
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.06 * steps), num_training_steps=steps)
    model.train()
    bf16 = bf16_like_adaptkit()
    real = padded = examples = 0
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            with autocast(bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
            examples += batch["input_ids"].shape[0]
    seconds = time.perf_counter() - started
    return {"examples": examples, "seconds": seconds, "real_tokens": real, "padded_tokens": padded,
            "flops": training_flops(model, real), "accuracy": _accuracy(model, tokenizer, dev, bf16), "bf16": bf16}


def run_trainer(rows: int, epochs: int, bf16: bool = False) -> dict:
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from adaptkit.engine.models import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MODEL).location)
    train, dev = _data(rows)
    data = _tokenized(tokenizer, train)
    model = _model()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, learning_rate=LR,
                                 num_train_epochs=epochs, warmup_steps=0.06, weight_decay=0.01, seed=SEED,
                                 train_sampling_strategy="group_by_length", logging_steps=10, save_strategy="no", report_to=[],
                                 disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, bf16=bf16)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    real = sum(len(x) for x in data["input_ids"]) * epochs
    return {"examples": len(data) * epochs, "seconds": seconds, "real_tokens": real, "bf16": bf16,
            "flops": training_flops(model, real), "accuracy": _accuracy(model, tokenizer, dev, bf16)}


def run_adaptkit(rows: int, epochs: int, strategy: str = "lora") -> dict:
    import adaptkit
    from adaptkit.engine.models import load_tokenizer  # noqa: F401  (import cost outside the timed part)

    with tempfile.TemporaryDirectory() as tmp:
        recipe = {
            "model": {"name": MODEL},
            # pooling: pooler, the head the plain loop and the Trainer train (BERT's [CLS] pooler): the same
            # arithmetic on every side. adaptkit's default for MiniLM is the mean its checkpoint declares.
            "task": {"type": "sequence_classification", "text_column": "sentence", "label_column": "label",
                     "max_length": MAX_LEN, "pooling": "pooler"},
            "data": {"train": str(TRAIN), "eval": str(DEV), "max_train_samples": rows},
            "strategy": ({"name": "lora", "r": 8, "alpha": 16, "dropout": DROPOUT, "target_modules": TARGETS}
                         if strategy == "lora" else {"name": strategy}),
            # min_steps 0: the small-data floor would give --quick's 300 rows 100 steps, the others 10
            "training": {"epochs": epochs, "batch_size": BATCH, "seed": SEED, "mixed_precision": PRECISION,
                         "min_steps": 0,
                         "learning_rate": LR if strategy == "lora" else None},
            "output": {"dir": str(Path(tmp) / "run"), "verify_export": False},
        }
        result = adaptkit.run(recipe, progress=False)
    metrics = result.metrics
    # the same rows adaptkit trained on (max_train_samples: seeded shuffle, then the first N)
    from transformers import AutoTokenizer

    from adaptkit.engine.models import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MODEL).location)
    train, _ = _data(rows)
    real = sum(len(x) for x in _tokenized(tokenizer, train)["input_ids"]) * epochs
    return {"examples": rows * epochs, "seconds": metrics["train_seconds"], "real_tokens": real,
            "bf16": metrics["mixed_precision"] == "bf16",
            "flops": training_flops(_model(), real), "accuracy": metrics["eval"]["accuracy"]}


CONTENDERS = {
    "adaptkit": lambda a: run_adaptkit(a.rows, a.epochs),
    "plain-same": lambda a: run_plain(a.rows, a.epochs, same_batches=True),
    "plain-random": lambda a: run_plain(a.rows, a.epochs, same_batches=False),
    "trainer": lambda a: run_trainer(a.rows, a.epochs),
    "trainer-bf16": lambda a: run_trainer(a.rows, a.epochs, bf16=True),
    "adaptkit-memory": lambda a: run_adaptkit(a.rows, 1),
    "adaptkit-full": lambda a: run_adaptkit(a.rows, 1, strategy="full"),
}
# The memory pair runs with glibc returning large freed blocks to the system at once, so that
# the peak resident set follows the peak of live tensors rather than the allocator's
# fragmentation (with the default arenas LoRA's many short-lived activation copies left RSS
# looking larger than full fine-tuning's real peak). The speed contenders keep the defaults.
# The pair trains in fp32, the precision the memory target was stated and first measured in: under
# CPU bf16 autocast (training.mixed_precision: auto on an AMX CPU) LoRA's training memory grew from
# 538 to 750 MiB (autocast's bf16 copies of the frozen weights, and bf16 casts of inputs saved for
# backward beside their fp32 originals) and the pair's ratio from 0.77 to 0.96 (results/speed.md).
MEMORY_PAIR = ("adaptkit-memory", "adaptkit-full")
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "SPEED_PRECISION": "no"}


def child(args) -> None:
    from adaptkit.engine.models import quiet_hf_logging

    quiet_hf_logging()
    import adaptkit.engine.runner  # noqa: F401  (the libraries every contender imports, before the baseline)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    rate = matmul_rate()
    baseline = resident_mib()
    profile = None
    if os.environ.get("SPEED_PROFILE") == "1":  # --profile: phase marks per step (benchmarks/step_profile.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import step_profile

        profile = step_profile.install()
    result = CONTENDERS[args.child](args)
    if profile is not None:
        result["profile"] = profile.summary()
    result["baseline_rss_mib"] = baseline
    result["matmul_flops_per_s"] = rate
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def startup_seconds(command: list[str], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--child", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated contenders")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per contender (median reported)")
    parser.add_argument("--precision", choices=["auto", "no", "bf16"], default=None,
                        help="adaptkit's training.mixed_precision (default auto, the quick start's); the plain loops follow it")
    parser.add_argument("--quick", action="store_true", help="300 rows x 1 epoch: for development, not for results")
    parser.add_argument("--profile", action="store_true",
                        help="once per contender, with per-step phase hooks: where a step's time goes "
                             "(results/step_profile.md); hooks slow every module call, so no speed figures")
    args = parser.parse_args()
    if args.precision:
        os.environ["SPEED_PRECISION"] = args.precision  # the children inherit it
        global PRECISION
        PRECISION = args.precision
    if args.child:
        child(args)
        return
    if args.quick:
        args.rows, args.epochs = 300, 1
    if args.profile:
        profile_contenders(args)
        return
    names = args.only.split(",") if args.only else list(CONTENDERS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in (names if repeat % 2 == 0 else list(reversed(names))):  # alternate who runs first
            r = run_child(name, args.rows, args.epochs)
            if r is not None:
                runs[name].append({**r, "repeat": repeat})
                print(f"  repeat {repeat + 1}/{args.repeats} {name}: {r['examples_per_s']:.1f} examples/s", flush=True)
    results = {name: median_run(found) for name, found in runs.items() if found}
    lines = [f"{args.rows} SST-2 rows x {args.epochs} epoch(s), batch {BATCH}, all-MiniLM-L6-v2 (LoRA r=8 unless "
             f"noted), {os.cpu_count()} cores; each contender {args.repeats} times in fresh processes, order "
             f"alternating; medians, [min-max]; adaptkit's training.mixed_precision: {PRECISION} (MFU is against "
             f"the fp32 matmul rate)", "",
             "| contender | precision | examples/s (median [min-max]) | train s | peak RSS MiB | training memory MiB | "
             "dev accuracy | MFU |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        spread = [x["examples_per_s"] for x in runs[name]]
        lines.append(f"| {name} | {'bf16' if r.get('bf16') else 'fp32'} | {r['examples_per_s']:.1f} [{min(spread):.1f}-{max(spread):.1f}] | {r['seconds']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['training_mib']:.0f} | {r['accuracy']:.4f} | {mfu} |")
    checks = targets(results, runs)
    lines += ["", "| measure | median | min-max over repeats | target | met (median) |", "|---|---:|---:|---|---|"]
    for label, value, met, text, spread in checks:
        span = f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else "-"
        lines.append(f"| {label} | {value:.3f} | {span} | {text} | {'yes' if met else 'NO'} |")
    missed = [label for label, _, met, _, _ in checks if not met]
    lines += ["", "every target met" if not missed else f"targets missed: {', '.join(missed)}"]
    print("\n" + "\n".join(lines))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text("# `python benchmarks/speed.py`\n\n" + "\n".join(lines) + "\n")
    (out / "speed.json").write_text(json.dumps({"rows": args.rows, "epochs": args.epochs, "repeats": args.repeats,
                                                "results": results, "runs": runs, "checks": checks}, indent=1))


def profile_contenders(args) -> None:
    """Each speed contender once with the step-phase hooks; prints and writes the table (issue 27, item 2)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import step_profile

    names = args.only.split(",") if args.only else ["adaptkit", "plain-same", "trainer"]
    found = {}
    for name in names:
        r = run_child(name, args.rows, args.epochs, {"SPEED_PROFILE": "1"})
        if r is not None:
            found[name] = r["profile"]
    lines = [f"{args.rows} SST-2 rows x {args.epochs} epoch(s), batch {BATCH}, all-MiniLM-L6-v2 LoRA r=8, "
             f"{os.cpu_count()} cores; one run each with benchmarks/step_profile.py's hooks; median ms per "
             f"training step (the first 3 steps left out), 'other' = everything but forward, backward and "
             f"optimizer.step", "", *step_profile.table(found)]
    print("\n" + "\n".join(lines))
    out = ROOT / "benchmarks" / "results"
    (out / "step_profile.md").write_text("# `python benchmarks/speed.py --profile`\n\n" + "\n".join(lines) + "\n")
    (out / "step_profile.json").write_text(json.dumps({"rows": args.rows, "epochs": args.epochs, "profiles": found},
                                                      indent=1))


def run_child(name: str, rows: int, epochs: int, extra_env: dict | None = None) -> dict | None:
    """One contender in a fresh process: its RESULT line with the derived rates, or None (printed why)."""
    done = subprocess.run([sys.executable, __file__, "--child", name, "--rows", str(rows), "--epochs", str(epochs)],
                          capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(MEMORY_ENV if name in MEMORY_PAIR else {}),
                               **(extra_env or {})})
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return None
    r = json.loads(line[len("RESULT "):])
    r["examples_per_s"] = r["examples"] / r["seconds"]
    r["training_mib"] = r["peak_rss_mib"] - r["baseline_rss_mib"]
    r["mfu"] = r["flops"] / r["seconds"] / r["matmul_flops_per_s"] if r.get("flops") else None
    return r


def median_run(found: list[dict]) -> dict:
    """The run with the median examples/s (an actual run, so its figures belong together)."""
    ordered = sorted(found, key=lambda r: r["examples_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def ratios(ours: list[dict], theirs: list[dict], key: str = "examples_per_s") -> list[float]:
    """``ours / theirs`` within each repeat (both sides ran in the same pass over the contenders)."""
    by_repeat = {r["repeat"]: r[key] for r in theirs}
    return [r[key] / by_repeat[r["repeat"]] for r in ours if r["repeat"] in by_repeat]


def targets(results: dict, runs: dict | None = None) -> list[tuple[str, float, bool, str, list | None]]:
    """(measure, median value, met, target, [min, max] over repeats) for every target of the speed issues."""
    checks = []
    runs = runs or {name: [{**r, "repeat": 0}] for name, r in results.items()}
    ours = results.get("adaptkit")
    if ours:
        for other, target, text in (("plain-random", 2.0, ">= 2x the random-batch plain loop"),
                                    ("trainer", 1.1, ">= 1.1x transformers Trainer at its defaults (group_by_length, fp32)"),
                                    ("trainer-bf16", 0.99, ">= 0.99x the Trainer with bf16=True (like for like)"),
                                    ("plain-same", 0.99, ">= 0.99x the plain loop over the same batches")):
            if other in results:
                values = ratios(runs["adaptkit"], runs[other])
                value = statistics.median(values)
                checks.append((f"adaptkit / {other} examples/s", value, value >= target, text,
                               [min(values), max(values)]))
        if "plain-same" in results:
            gap = 100 * abs(ours["accuracy"] - results["plain-same"]["accuracy"])
            checks.append(("dev accuracy gap to the plain loop (points)", gap, gap <= 1.0, "<= 1 point", None))
        if "trainer" in results:  # reduced precision must not cost accuracy against the fp32 Trainer
            gap = 100 * (results["trainer"]["accuracy"] - ours["accuracy"])
            checks.append(("dev accuracy below the fp32 Trainer's (points)", gap, gap <= 1.0, "<= 1 point", None))
    if all(name in results for name in MEMORY_PAIR):
        values = ratios(runs[MEMORY_PAIR[0]], runs[MEMORY_PAIR[1]], "training_mib")
        value = statistics.median(values)
        checks.append(("LoRA / full training memory (peak RSS above the imports)", value, value <= 0.8, "<= 0.8",
                       [min(values), max(values)]))
    adaptkit_bin = [sys.executable, "-m", "adaptkit"]
    recipe = str(ROOT / "recipes" / "quickstart.yaml")
    for command, limit in ((["--help"], 0.3), (["validate", recipe], 1.0), (["plugins"], 1.0), (["plan", recipe], 5.0)):
        value = startup_seconds(adaptkit_bin + command)
        checks.append((f"adaptkit {command[0]} (s, best of 5)", value, value < limit, f"< {limit:g} s", None))
    return checks


if __name__ == "__main__":
    main()
