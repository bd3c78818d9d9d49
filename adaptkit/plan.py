"""``adaptkit plan``: what a run will train and roughly what it will cost, before any training.

The model is built on the meta device (no weights read or downloaded, no memory used), each
strategy wraps it there, and the plan reports trainable and total parameters, the modules
the strategy touches, and an estimate of peak training memory for the recipe's batch and
sequence length.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from adaptkit.recipe import Recipe

BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2, "torch.uint8": 1, "torch.int8": 1}


@dataclass
class StrategyPlan:
    """One strategy on the recipe's model: sizes, touched modules, memory estimate."""

    strategy: str
    trainable: int = 0
    total: int = 0
    touched: list[str] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None


@dataclass
class Plan:
    model: str
    model_type: str
    batch_size: int
    sequence_length: int
    strategies: list[StrategyPlan]


def touched_modules(model) -> list[str]:
    """Trainable module paths with block numbers folded (``layer.*.query.lora_A``) and counted."""
    patterns: Counter[str] = Counter()
    for name, param in model.named_parameters():
        if param.requires_grad:
            module = name.rsplit(".", 1)[0]
            module = re.sub(r"^(base_model\.model\.)", "", module)
            patterns[re.sub(r"\.\d+\.", ".*.", module)] += 1
    return [f"{pattern} (x{count})" if count > 1 else pattern for pattern, count in sorted(patterns.items())]


def estimate_memory(model, config, batch_size: int, sequence_length: int, precision: str) -> dict[str, int]:
    """Peak training memory, by part, in bytes.

    weights: every parameter at its dtype; gradients: trainable parameters (fp32); optimizer:
    AdamW's two fp32 moments per trainable parameter; activations: the per-layer estimate of
    Korthikanti et al. 2022 (s*b*h*(34 + 5*a*s/h) bytes at 16-bit), doubled for fp32, an upper
    bound when early layers are frozen.
    """
    weights = sum(p.numel() * BYTES.get(str(p.dtype), 4) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0) or 0
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1) or 1
    s, b = sequence_length, batch_size
    per_layer = s * b * hidden * (34 + 5 * heads * s / max(hidden, 1))
    activations = int(per_layer * layers * (1 if precision in ("fp16", "bf16") else 2))
    parts = {"weights": weights, "gradients": trainable * 4, "optimizer": trainable * 8, "activations": activations}
    parts["total"] = sum(parts.values())
    return parts


def plan(recipe: Recipe, strategies: Optional[list[str]] = None) -> Plan:
    """Plan the recipe's strategy (or each of ``strategies``) on the meta device."""
    from accelerate import init_empty_weights

    from adaptkit.data import load_splits
    from adaptkit.models import load_config, quiet_hf_logging, resolve_model_source
    from adaptkit.plugins import get_registry
    from adaptkit.strategy import WrapContext

    quiet_hf_logging()
    registry = get_registry()
    task = registry.tasks[recipe.task.type](recipe.task_options)
    label_column = getattr(recipe.task_options, "label_column", None)
    splits = load_splits(recipe, task.required_columns(), stratify_column=label_column)
    task.setup(splits.train)
    section = recipe.model
    source = resolve_model_source(section.name, section.revision, section.allow_pickle) if section.name else None
    names = strategies or [recipe.strategy.name]
    length = getattr(recipe.task_options, "max_length", 512)
    results: list[StrategyPlan] = []
    model_type = "unknown"
    for name in names:
        entry = StrategyPlan(name)
        results.append(entry)
        try:
            config = load_config(recipe, source)
            model_type = getattr(config, "model_type", "unknown")
            options = recipe.strategy_options if name == recipe.strategy.name else None
            strategy = registry.strategies[name](options)
            with init_empty_weights():
                base = task.build_model("", config, True, trust_remote_code=section.trust_remote_code)
                context = WrapContext(model_type=model_type, task=task.name, head_modules=task.head_modules(base),
                                      peft_task_type=task.peft_task_type)
                model = strategy.wrap(base, context)
            entry.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            entry.total = sum(p.numel() for p in model.parameters())
            entry.touched = touched_modules(model)
            entry.memory = estimate_memory(model, config, recipe.training.batch_size, length,
                                           recipe.training.mixed_precision)
        except Exception as exc:  # one strategy that cannot be planned must not hide the others
            entry.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return Plan(model=section.name or f"config:{model_type}", model_type=model_type,
                batch_size=recipe.training.batch_size, sequence_length=length, strategies=results)


def render(result: Plan) -> Any:
    """A rich table of the plan."""
    from rich.table import Table

    table = Table("strategy", "trainable", "total", "% trainable", "est. peak memory", "modules trained",
                  title=f"{result.model} ({result.model_type}), batch {result.batch_size} x "
                        f"{result.sequence_length} tokens")
    for entry in result.strategies:
        if entry.error:
            table.add_row(entry.strategy, "-", "-", "-", "-", f"[red]cannot plan: {entry.error}[/red]")
            continue
        leaves = sorted({".".join(t.split(" ")[0].replace(".default", "").split(".")[-2:]) for t in entry.touched})
        shown = ", ".join(leaves[:8]) + (f", ... ({len(leaves)} kinds)" if len(leaves) > 8 else "")
        table.add_row(entry.strategy, f"{entry.trainable:,}", f"{entry.total:,}",
                      f"{100 * entry.trainable / max(entry.total, 1):.2f}",
                      f"{entry.memory['total'] / 2**20:,.0f} MiB", shown)
    return table
