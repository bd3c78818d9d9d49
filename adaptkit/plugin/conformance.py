"""The conformance kit: prove a strategy keeps the architecture-preserving contract.

``check_strategy(MyStrategy)`` runs, on tiny randomly initialised models of two families
(a BERT-like encoder and a GPT-2-like decoder, built from configs, no download), the same
checks the core runs on every ``adaptkit run``:

- signature:   ``unwrap(wrap(base))`` has exactly the base parameters and module tree;
- frozen:      parameters left frozen are bit-identical after real optimizer steps;
- wrap:        ``wrap`` returns a model whose task head keeps the task's shape;
- export:      ``save`` writes safetensors that plain peft / transformers (not the strategy's
               own ``load``) reload to the same outputs;
- equivalence: a mergeable strategy's merged model computes what the wrapped model did;
- removal:     a non-mergeable strategy's removal restores the base outputs exactly.

It raises ``ContractViolation`` (rule, parameter and the strategy's plugin or class named) on
the first failure and returns a report of what passed otherwise. Use it in a plugin's tests in one line.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from adaptkit.plugin.contract import (FrozenWeights, architecture_signature, check_close, check_signature, check_wrapped,
                               head_shapes, model_outputs, reload_export, violation)
from adaptkit.plugin.strategy import Strategy, WrapContext

VOCAB = 97
NUM_LABELS = 3


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, num_labels=NUM_LABELS)
    return BertForSequenceClassification(config)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        num_labels=NUM_LABELS, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return GPT2ForSequenceClassification(config)


FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {"bert": tiny_bert, "gpt2": tiny_gpt2}


def _batch(seed: int, rows: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[rows // 2:, length - 3:] = 0  # some padding, so masks matter
    labels = torch.randint(0, NUM_LABELS, (rows,), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _build(family: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


def _train_steps(strategy: Strategy, model: torch.nn.Module, steps: int = 3) -> None:
    """A few real optimizer steps with a large learning rate, so every trainable weight moves."""
    groups = [g for g in strategy.parameter_groups(model, 1e-2, 0.0) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    model.train()
    for step in range(steps):
        loss = model(**_batch(100 + step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _perturb_trainable(model: torch.nn.Module, head: list[str]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and not any(f".{h}." in f".{name}" or name.startswith(h) for h in head):
                param.add_(torch.randn_like(param) * 0.1)


@dataclass
class ConformanceReport:
    strategy: str
    passed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([f"strategy {self.strategy!r} keeps the contract:", *[f"  ok  {p}" for p in self.passed]])


def _context(model: torch.nn.Module, family: str) -> WrapContext:
    from adaptkit_tasks.sequence_classification import SequenceClassification

    return WrapContext(model_type=family, task="sequence_classification",
                       head_modules=SequenceClassification().head_modules(model), peft_task_type="SEQ_CLS")


def check_strategy(strategy_cls: type[Strategy], options: Any = None,
                   families: Optional[list[str]] = None) -> ConformanceReport:
    """Run every contract rule on tiny models of each family; raise ``ContractViolation`` on failure."""
    from adaptkit.engine.models import quiet_hf_logging

    quiet_hf_logging()
    report = ConformanceReport(strategy_cls.name or strategy_cls.__name__)
    for family in families or list(FAMILIES):
        probe = _batch(7)
        base = _build(family, seed=0)
        context = _context(base, family)
        base_sig = architecture_signature(base)
        base_out = model_outputs(base, probe)
        strategy = strategy_cls(options)
        heads = head_shapes(base, context.head_modules)
        model = strategy.wrap(base, context)
        check_wrapped(strategy_cls, model, heads)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise violation(strategy_cls, "trainable", f"wrap left nothing trainable on the {family} model")
        frozen = FrozenWeights.snapshot(model)
        _train_steps(strategy, model)
        frozen.verify(strategy_cls, model)
        report.passed.append(f"{family}: frozen - {len(frozen)} frozen tensors bit-identical after 3 steps")
        wrapped_out = model_outputs(model, probe)
        if torch.equal(wrapped_out, base_out):
            raise violation(strategy_cls, "trainable", f"training changed nothing the {family} model computes")
        with tempfile.TemporaryDirectory() as tmp:
            export = strategy.save(model, Path(tmp) / "export") or Path(tmp) / "export"
            reloaded, how = reload_export(strategy, Path(export), lambda: _build(family, seed=0), type(base))
            check_close(strategy_cls, "export", wrapped_out, model_outputs(reloaded, probe),
                        strategy.merge_tolerance, f"{family}: export reloaded with {how}")
        report.passed.append(f"{family}: export - reloads from safetensors with {how}, same outputs")
        unwrapped = strategy.unwrap(model)
        check_signature(strategy_cls, base_sig, architecture_signature(unwrapped), context.head_modules)
        report.passed.append(f"{family}: signature - unwrap(wrap(base)) has the base architecture")
        if strategy.mergeable:
            check_close(strategy_cls, "equivalence", wrapped_out, model_outputs(unwrapped, probe),
                        strategy.merge_tolerance, f"{family}: merged against wrapped")
            report.passed.append(f"{family}: equivalence - merged outputs match within {strategy.merge_tolerance:g}")
        else:
            fresh = _build(family, seed=0)
            again = strategy_cls(options)
            wrapped = again.wrap(fresh, _context(fresh, family))
            check_wrapped(strategy_cls, wrapped, heads)
            _perturb_trainable(wrapped, context.head_modules)
            removed = again.unwrap(wrapped)
            check_signature(strategy_cls, base_sig, architecture_signature(removed), context.head_modules)
            check_close(strategy_cls, "removal", base_out, model_outputs(removed, probe), 0.0,
                        f"{family}: base outputs after removing the strategy")
            report.passed.append(f"{family}: removal - base outputs restored exactly")
    return report
