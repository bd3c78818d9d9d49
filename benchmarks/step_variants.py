"""Training-step variants on this machine: fp32 eager, bf16 autocast, and torch.compile.

What decided issue 27's item 3 (a lead over the Trainer from doing the arithmetic better): MiniLM +
LoRA r=8 (query/key/value/dense, as speed.py), one process, batches of 32 rows at three lengths in
turn (as length-grouped batches vary), AdamW. Each variant runs in a fresh subprocess: a warm-up over
the three lengths (for compile: its compilation), then timed steps; it prints examples/s and the
warm-up seconds, and writes results/step_variants.md.

Usage: python benchmarks/step_variants.py [--threads N] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "bf16", "compile", "compile+bf16")
LENGTHS = (24, 32, 40, 28)


def child(variant: str, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from adaptkit.engine.models import quiet_hf_logging, resolve_model_source

    quiet_hf_logging()
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source("sentence-transformers/all-MiniLM-L6-v2").location, num_labels=2)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"],
                                            task_type="SEQ_CLS"))
    model.train()
    forward = torch.compile(model, dynamic=True) if variant.startswith("compile") else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    bf16 = variant.endswith("bf16")

    def step(length: int) -> None:
        batch = {"input_ids": torch.randint(1000, 5000, (32, length)),
                 "attention_mask": torch.ones(32, length, dtype=torch.long), "labels": torch.randint(0, 2, (32,))}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    started = time.perf_counter()
    for length in LENGTHS[:3]:
        step(length)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(steps):
        step(LENGTHS[index % len(LENGTHS)])
    return {"variant": variant, "warmup_s": warm, "examples_per_s": 32 * steps / (time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    rows = []
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps)],
                              capture_output=True, text=True, env=env)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{variant} failed:\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"{variant}: {rows[-1]['examples_per_s']:.1f} examples/s after {rows[-1]['warmup_s']:.1f} s warm-up",
              flush=True)
    eager = next((r["examples_per_s"] for r in rows if r["variant"] == "fp32"), None)
    lines = [f"MiniLM + LoRA r=8 training steps, batch 32 at lengths {LENGTHS}, {args.threads} thread(s), "
             f"{args.steps} timed steps after a warm-up over three lengths", "",
             "| variant | warm-up s | examples/s | vs fp32 eager |", "|---|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['examples_per_s'] / eager:.2f}x" if eager else "-"
        lines.append(f"| {r['variant']} | {r['warmup_s']:.1f} | {r['examples_per_s']:.1f} | {ratio} |")
    print("\n" + "\n".join(lines))
    (ROOT / "benchmarks" / "results" / "step_variants.md").write_text(
        "# `python benchmarks/step_variants.py`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
