"""Packing against length-grouped padding: training tokens/s, and per-example losses packed vs unpacked.

The data: a synthetic instruction set of conversations (system, user, assistant) whose user
and assistant turns draw their lengths from a long-tailed (log-normal) distribution, rendered
with ChatML by the instruct task and its shipped tokenizer (data/instruct/tokenizer), so a few
examples are long and most are short, as in real instruction sets. The model: a tiny
Llama-shaped decoder built from a config, LoRA (adaptkit's strategy) on every linear layer,
AdamW. Both runs use the same examples, model initialisation, seed and batch shape
(``--batch`` rows of at most ``--max-length`` tokens per optimizer step):

- padding: one example per row, batches from transformers' ``LengthGroupedSampler`` (what
  ``training.group_by_length`` uses), right-padded to the longest row of the batch;
- packing: the instruct task's packed rows (best-fit decreasing into ``--max-length``), with
  per-example position ids and a block-diagonal causal mask.

tokens/s counts real tokens (not padding) over one epoch, after one warm-up step each. The
check: before training, every example's summed answer loss is computed alone (unpacked) and
inside its pack; they must agree within float tolerance (nothing leaks across boundaries).

``--attention segments`` runs the packed rows' attention per example (``segment_sdpa`` below:
examples gathered into one right-padded, causal sdpa call per power-of-two length bucket)
instead of sdpa over the whole row with the block-diagonal mask: the CPU candidate for skipping
the masked attention (flex_attention has no CPU backward in torch 2.13, varlen_attn no CPU
kernel, nested-tensor sdpa no causal mode). Measured no faster on the CPU, so the task keeps
sdpa; see benchmarks/results/packing.md.

Usage: OMP_NUM_THREADS=1 python benchmarks/packing.py [--rows 600] [--batch 8] [--max-length 256]
       [--hidden 64 --layers 2 --heads 4] [--user-words 12 --answer-words 10 --max-words 90]
       [--attention sdpa|segments]
The realistic setting of the results file: --hidden 256 --layers 4 --user-words 26
--answer-words 20 --max-words 400 (median ~75 tokens, long tail cut at max_length).
"""
from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "data" / "instruct" / "tokenizer"
WORDS = ("apple banana grape lime plum cherry lemon kiwi red yellow purple green what colour is a and the "
         "name of fruit answer with one word").split()


def conversations(rows: int, seed: int, user: float = 12, answer: float = 10, cap: int = 90,
                  sigma: float = 0.9) -> list[dict[str, Any]]:
    """Mixed lengths: log-normal word counts (median ``user`` / ``answer`` words, long tail, at most
    ``cap`` words a turn; the task cuts rows longer than max_length)."""
    rng = random.Random(seed)

    def words(median: float) -> str:
        count = max(1, min(cap, int(rng.lognormvariate(math.log(median), sigma))))
        return " ".join(rng.choice(WORDS) for _ in range(count))

    return [{"messages": [{"role": "system", "content": "answer with one word"},
                          {"role": "user", "content": words(user)},
                          {"role": "assistant", "content": words(answer)}]} for _ in range(rows)]


_PLAN: list = [None, None]  # (position_ids, plan) of the last forward: every layer reuses it


def _segment_plan(position_ids):
    """Gather/scatter indices that lay a packed batch's examples out as a padded batch per
    power-of-two length bucket (right-padded, so a causal mask alone keeps real tokens exact)."""
    import torch

    if _PLAN[0] is position_ids:
        return _PLAN[1]
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten().tolist() + [flat.numel()]
    spans = [(a, b - a) for a, b in itertools.pairwise(starts)]
    # a row's segment cannot cross into the next row: rows start at position 0 (collate pads the same way)
    buckets: dict[int, list] = {}
    for a, n in spans:
        buckets.setdefault(1 << max(5, (n - 1).bit_length()), []).append((a, n))
    plans, order = [], []
    for _, items in sorted(buckets.items()):
        longest = max(n for _, n in items)
        ar = torch.arange(longest)
        first = torch.tensor([a for a, _ in items])
        count = torch.tensor([n for _, n in items])
        valid = ar[None, :] < count[:, None]
        plans.append((torch.where(valid, first[:, None] + ar[None, :], first[:, None]), valid))
        order.append((first[:, None] + ar[None, :])[valid])
    inverse = torch.empty(flat.numel(), dtype=torch.long)
    inverse[torch.cat(order)] = torch.arange(flat.numel())
    _PLAN[:] = [position_ids, (plans, inverse)]  # kept until the next batch's position ids arrive
    return _PLAN[1]


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                 position_ids=None, **kwargs):
    """Packed rows' attention per example (sdpa, causal) instead of one masked row-wide product:
    the attention work of a packed row becomes that of its examples alone. Exact (the same
    per-example losses), but on the CPU no faster than the masked row: at 256 tokens torch's CPU
    sdpa kernel costs about the same masked or not, and the gathers and extra calls eat the
    smaller products (benchmarks/results/packing.md)."""
    import torch

    if position_ids is None or (_PLAN[0] is not position_ids and not bool((position_ids[..., 1:] == 0).any())):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, width, dim = query.shape
    if position_ids.shape[0] != batch:
        position_ids = position_ids.expand(batch, -1)
    plans, inverse = _segment_plan(position_ids)
    q = query.transpose(1, 2).reshape(batch * width, heads, dim)
    k = key.transpose(1, 2).reshape(batch * width, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * width, key.shape[1], dim)
    outs = []
    for index, valid in plans:
        o = torch.nn.functional.scaled_dot_product_attention(
            q[index].transpose(1, 2), k[index].transpose(1, 2), v[index].transpose(1, 2), is_causal=True,
            scale=scaling, enable_gqa=True)
        outs.append(o.transpose(1, 2)[valid])
    return torch.cat(outs)[inverse].reshape(batch, width, heads, dim), None


def build(vocab: int, seed: int, hidden: int, layers: int = 2, heads: int = 4, attention: str = "sdpa"):
    """The decoder, LoRA-wrapped the way a run wraps it (the instruct task builds it); ``attention``
    "segments" registers ``segment_sdpa`` (packed rows per example, unpacked rows plain sdpa)."""
    import torch
    from transformers import AutoConfig

    from adaptkit.plugin.strategy import WrapContext
    from adaptkit_lora import Lora
    from adaptkit_tasks.instruct import Instruct

    config = AutoConfig.for_model("llama", hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=heads,
                                  num_key_value_heads=max(1, heads // 2), max_position_embeddings=512, vocab_size=vocab, initializer_range=0.3, bos_token_id=2, eos_token_id=3,
                                  pad_token_id=0)
    if attention == "segments":
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register("segment_sdpa", segment_sdpa)
        AttentionMaskInterface.register("segment_sdpa", sdpa_mask)  # unpacked rows keep their padding mask
    config._attn_implementation = "sdpa" if attention == "sdpa" else "segment_sdpa"
    torch.manual_seed(seed)
    base = Instruct({"packing": True}).build_model("", config, True)
    strategy = Lora(None)
    model = strategy.wrap(base, WrapContext(model_type="llama", task="instruct", head_modules=[],
                                            peft_task_type="CAUSAL_LM", extra={}))
    return model, strategy


def per_example_losses(model, batch, examples=None) -> list[float]:
    """Summed answer loss of every example: one per row unpacked, one per position block packed."""
    import torch

    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                               ignore_index=-100, reduction="none")
    if examples is None:
        return losses.sum(dim=1).tolist()
    sums = []
    for row, positions, count in zip(losses, batch["position_ids"][:, 1:].tolist(), examples):
        starts = [0] + [i for i in range(1, len(positions)) if positions[i] == 0] + [len(positions)]
        sums += [float(row[a:b].sum()) for a, b in list(zip(starts, starts[1:]))[:count]]
    return sums


def train_epoch(model, strategy, rows, collate, order: list[list[int]], lr: float) -> dict[str, float]:
    """One epoch over ``order`` (lists of row indices), after one warm-up step; real tokens/s."""
    import torch

    groups = [g for g in strategy.parameter_groups(model, lr, 0.0) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    model.train()

    def step(indices: list[int]) -> tuple[float, int, int]:
        batch = collate([rows[i] for i in indices])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real = sum(len(rows[i]["input_ids"]) for i in indices)
        return float(loss.detach()), real, batch["input_ids"].numel()

    step(order[0])  # warm-up: allocations, first-call paths
    started = time.perf_counter()
    real = padded = 0
    for indices in order:
        _, tokens, cells = step(indices)
        real += tokens
        padded += cells
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": real, "cells": padded, "steps": len(order), "tokens_per_s": real / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--user-words", type=float, default=12, help="median words of a user turn")
    parser.add_argument("--answer-words", type=float, default=10, help="median words of an answer")
    parser.add_argument("--max-words", type=int, default=90, help="longest turn, in words")
    parser.add_argument("--attention", choices=("sdpa", "segments"), default="sdpa",
                        help="packed rows: sdpa with the block-diagonal mask, or sdpa per example")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = {"layers": args.layers, "heads": args.heads}

    import datasets
    import torch
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from adaptkit.engine.models import quiet_hf_logging
    from adaptkit_tasks.chat_templates import NAMED_TEMPLATES
    from adaptkit_tasks.instruct import Instruct

    quiet_hf_logging()
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    tokenizer.chat_template = NAMED_TEMPLATES["chatml"]
    table = datasets.Dataset.from_list(conversations(args.rows, args.seed, args.user_words, args.answer_words,
                                                     args.max_words))
    plain_task = Instruct({"max_length": args.max_length})
    packing_task = Instruct({"max_length": args.max_length, "packing": True})
    packing_task.setup(table)
    plain = plain_task.preprocess(table, tokenizer)
    packed = packing_task.preprocess(table, tokenizer)
    plain_rows = [dict(r) for r in plain]
    packed_rows = [dict(r) for r in packed]
    lengths = [r["length"] for r in plain_rows]
    collate = plain_task.collate(tokenizer)
    print(f"{len(plain_rows)} conversations, {sum(lengths):,} tokens, length min/median/max "
          f"{min(lengths)}/{sorted(lengths)[len(lengths) // 2]}/{max(lengths)}; packed into {len(packed_rows)} rows "
          f"of <= {args.max_length} tokens ({sum(lengths) / (len(packed_rows) * args.max_length):.0%} full)")

    # -- the check: per-example losses alone and packed (untrained LoRA model, eval mode)
    model, _ = build(len(tokenizer), args.seed, args.hidden, **shape, attention=args.attention)
    model.eval()
    from adaptkit_tasks.packing import plan_packs

    order = [i for pack in plan_packs(lengths, args.max_length) for i in pack]
    alone: list[float] = []
    for start in range(0, len(order), 32):
        alone += per_example_losses(model, collate([plain_rows[i] for i in order[start:start + 32]]))
    together: list[float] = []
    for start in range(0, len(packed_rows), 8):
        chunk = packed_rows[start:start + 8]
        together += per_example_losses(model, collate(chunk), [r["examples"] for r in chunk])
    worst = max(abs(a - b) for a, b in zip(alone, together))
    relative = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(alone, together))
    ok = len(alone) == len(together) == len(plain_rows) and relative < 1e-4
    print(f"per-example answer losses, {len(alone)} examples: max |packed - unpacked| = {worst:.2e} "
          f"(relative {relative:.2e}) -> {'equal within float tolerance' if ok else 'DIFFERENT'}")

    # -- throughput: the same model init and seed, one epoch each
    results = {}
    generator = torch.Generator().manual_seed(args.seed)
    grouped = list(LengthGroupedSampler(args.batch, lengths=lengths, generator=generator))
    padding_order = [grouped[i:i + args.batch] for i in range(0, len(grouped), args.batch)]
    shuffled = list(range(len(packed_rows)))
    random.Random(args.seed).shuffle(shuffled)
    packing_order = [shuffled[i:i + args.batch] for i in range(0, len(shuffled), args.batch)]
    # for reference: padding with as many examples per step as a packed batch holds (a larger
    # padded tensor, longer than max_length x batch when long examples meet)
    wide = max(args.batch, round(args.batch * len(plain_rows) / len(packed_rows)))
    wide_order = [grouped[i:i + wide] for i in range(0, len(grouped), wide)]
    for name, rows, order in (("padding (length-grouped)", plain_rows, padding_order),
                              ("packing", packed_rows, packing_order),
                              (f"padding (length-grouped), {wide} examples per step", plain_rows, wide_order)):
        model, strategy = build(len(tokenizer), args.seed, args.hidden, **shape,
                                attention=args.attention if name == "packing" else "sdpa")
        torch.manual_seed(args.seed)
        results[name] = train_epoch(model, strategy, rows, collate, order, lr=2e-2)
    print(f"\n| run | optimizer steps | real tokens | padding share | tokens/s |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['steps']} | {r['tokens']:,} | {1 - r['tokens'] / r['cells']:.1%} | "
              f"{r['tokens_per_s']:,.0f} |")
    ratio = results["packing"]["tokens_per_s"] / results["padding (length-grouped)"]["tokens_per_s"]
    wide_ratio = results["packing"]["tokens_per_s"] / results[f"padding (length-grouped), {wide} examples per step"][
        "tokens_per_s"]
    print(f"\npacking / length-grouped padding: {ratio:.2f}x tokens/s (target >= 1.5x: "
          f"{'met' if ratio >= 1.5 else 'NOT met'}); batch {args.batch} rows x <= {args.max_length} tokens, "
          f"torch threads {torch.get_num_threads()}; decoder hidden {args.hidden} x {args.layers} layers, "
          f"{args.heads} heads; packed attention {args.attention}; against padding at {wide} examples per step: {wide_ratio:.2f}x")


if __name__ == "__main__":
    main()
