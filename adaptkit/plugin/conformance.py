"""The conformance kit: prove a strategy keeps the architecture-preserving contract, and a task
gives the engine what it relies on.

``check_strategy(MyStrategy)`` runs, on tiny randomly initialised models of each registered text
family (a BERT-like encoder and a GPT-2-like decoder, built from configs, no download), the same
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

``check_task(MyTask, rows=[...])`` is its twin for task plugins (scikit-learn's ``check_estimator``
is the model): on a tiny config-built model of each family the task runs on, ``preprocess`` and
``collate`` must give a batch the model accepts, ``batch_outputs`` + ``compute_metrics`` must report
the declared ``metric_names``, ``predict_batch`` one prediction per row, ``state()``/``load_state()``
must round-trip through JSON (a restored task predicts the same), and ``head_modules`` must name
modules the model has. It raises ``TaskContractViolation`` naming the rule and the family.

Families are registered with ``register_family(name, build, head_modules=[...], peft_task_type=...,
config={...})``: a family declares its own head and peft task type, so this module names no task
plugin. ``wrap_context``, ``sample_batch``, ``train_steps`` and ``perturb_trainable`` are the
building blocks the checks use, public for a plugin's own tests. This module imports torch:
import it (or ``adaptkit.testing``) in tests, not in a plugin's module.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from adaptkit.errors import AdaptkitError, TaskContractViolation
from adaptkit.plugin.contract import (FrozenWeights, architecture_signature, check_close, check_signature, check_wrapped,
                                      head_shapes, model_outputs, reload_export, violation)
from adaptkit.plugin.strategy import Strategy, WrapContext
from adaptkit.plugin.task import Task

VOCAB = 97
NUM_LABELS = 3

# ---------------------------------------------------------------------------- families

TINY_BERT_CONFIG: dict[str, Any] = {
    "model_type": "bert", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 48, "max_position_embeddings": 64, "pad_token_id": 0}
TINY_GPT2_CONFIG: dict[str, Any] = {
    "model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 4}
TINY_VIT_CONFIG: dict[str, Any] = {
    "model_type": "vit", "image_size": 16, "patch_size": 8, "num_channels": 3, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48}


def tiny_bert() -> torch.nn.Module:
    """A 2-layer, 32-wide BERT sequence classifier (3 labels), random weights, no download."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, num_labels=NUM_LABELS)
    return BertForSequenceClassification(config)


def tiny_gpt2() -> torch.nn.Module:
    """A 2-layer, 32-wide GPT-2 sequence classifier (3 labels; pad id 0), random weights, no download."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        num_labels=NUM_LABELS, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return GPT2ForSequenceClassification(config)


@dataclass(frozen=True)
class ModelFamily:
    """A kind of model the conformance kit runs on, and what a strategy or task needs to know of it.

    ``build`` makes the tiny classifier ``check_strategy`` wraps (None: the family serves only
    ``check_task``); ``head_modules`` and ``peft_task_type`` describe that model's head, so the kit
    never asks a task plugin; ``task`` is the label ``WrapContext.task`` carries. ``config`` is a
    tiny transformers config (``model_type`` plus settings, like a recipe's ``model.config``) from
    which ``check_task`` lets the task build its own model; ``modality`` is ``"text"`` (the kit
    makes a word tokenizer for it) or ``"image"``.
    """

    name: str
    build: Optional[Callable[[], torch.nn.Module]] = None
    head_modules: tuple[str, ...] = ()
    peft_task_type: Optional[str] = None
    task: str = "classification"
    config: Optional[Mapping[str, Any]] = None
    modality: str = "text"


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(name: str, build: Optional[Callable[[], torch.nn.Module]] = None, *,
                    head_modules: Sequence[str] = (), peft_task_type: Optional[str] = None,
                    task: str = "classification", config: Optional[Mapping[str, Any]] = None,
                    modality: str = "text", replace: bool = False) -> ModelFamily:
    """Make ``name`` a family ``check_strategy`` and ``check_task`` can run on; returns it.

    A name already registered is an error unless ``replace=True``; a test that adds a family
    removes it again with ``unregister_family``. A text family with a ``build`` joins the families
    ``check_strategy`` runs on by default while it is registered.
    """
    if modality not in ("text", "image"):
        raise AdaptkitError(f"register_family({name!r}): modality must be 'text' or 'image', not {modality!r}")
    if build is None and config is None:
        raise AdaptkitError(f"register_family({name!r}): give build (for check_strategy), config (for check_task), "
                            f"or both")
    if config is not None and "model_type" not in config:
        raise AdaptkitError(f"register_family({name!r}): config needs a 'model_type' key, as a recipe's model.config")
    if name in _FAMILIES and not replace:
        raise AdaptkitError(f"model family {name!r} is already registered; pass replace=True to redefine it")
    family = ModelFamily(name, build, tuple(head_modules), peft_task_type, task,
                         MappingProxyType(dict(config)) if config is not None else None, modality)
    _FAMILIES[name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family ``register_family`` added (an unknown name is an error)."""
    if name not in _FAMILIES:
        raise AdaptkitError(f"model family {name!r} is not registered (registered: {', '.join(sorted(_FAMILIES))})")
    del _FAMILIES[name]


def families() -> dict[str, ModelFamily]:
    """Every registered family, by name (a copy: change them through ``register_family``)."""
    return dict(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The registered family ``name``; the error lists the registered ones."""
    if name not in _FAMILIES:
        raise AdaptkitError(f"unknown model family {name!r}: register it with adaptkit.testing.register_family "
                            f"(registered: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


class _Builders(Mapping[str, Callable[[], torch.nn.Module]]):
    """``FAMILIES``: a read-only view, family name -> the function building its tiny model."""

    def __getitem__(self, name: str) -> Callable[[], torch.nn.Module]:
        family = _FAMILIES.get(name)
        if family is None or family.build is None:
            raise KeyError(name)
        return family.build

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, family in _FAMILIES.items() if family.build is not None])

    def __len__(self) -> int:
        return sum(1 for family in _FAMILIES.values() if family.build is not None)

    def __repr__(self) -> str:
        return f"FAMILIES({', '.join(self)})"


FAMILIES: Mapping[str, Callable[[], torch.nn.Module]] = _Builders()

register_family("bert", tiny_bert, head_modules=["classifier"], peft_task_type="SEQ_CLS", config=TINY_BERT_CONFIG)
register_family("gpt2", tiny_gpt2, head_modules=["score"], peft_task_type="SEQ_CLS", config=TINY_GPT2_CONFIG)
register_family("vit", config=TINY_VIT_CONFIG, head_modules=["classifier"], modality="image")


def _strategy_families() -> list[str]:
    return [name for name, family in _FAMILIES.items() if family.build is not None and family.modality == "text"]


# ---------------------------------------------------------------------------- building blocks

_TYPE_BY_SUFFIX = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
                   "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM", "ForQuestionAnswering": "QUESTION_ANS"}


def _inferred_head(model: torch.nn.Module) -> tuple[list[str], Optional[str]]:
    """For a model of no registered family: transformers' own layout says where the head is (the
    top-level children with weights beside ``base_model_prefix``), its class name the peft type."""
    name = type(model).__name__
    peft_type = next((kind for suffix, kind in _TYPE_BY_SUFFIX.items() if name.endswith(suffix)), None)
    if peft_type == "CAUSAL_LM":
        return [], peft_type  # lm_head follows the vocabulary and is often tied to the embeddings
    prefix = getattr(model, "base_model_prefix", "")
    heads = [child for child, module in model.named_children()
             if child != prefix and any(True for _ in module.parameters())]
    return heads, peft_type


def wrap_context(model: torch.nn.Module, family: str, *, head_modules: Optional[Sequence[str]] = None,
                 peft_task_type: Optional[str] = None, task: Optional[str] = None) -> WrapContext:
    """The ``WrapContext`` a strategy gets for ``model`` of ``family``, as the kit builds it.

    A registered family gives its declared head and peft task type; for any other name they are
    read from the model (transformers' ``base_model_prefix`` and class name). Arguments override both.
    """
    declared = _FAMILIES.get(family)
    if declared is not None:
        heads, peft_type, label = list(declared.head_modules), declared.peft_task_type, declared.task
    else:
        (heads, peft_type), label = _inferred_head(model), "classification"
    return WrapContext(model_type=family, task=task or label,
                       head_modules=list(head_modules) if head_modules is not None else heads,
                       peft_task_type=peft_task_type or peft_type)


def sample_batch(seed: int, rows: int = 6, length: int = 12) -> dict[str, torch.Tensor]:
    """A seeded batch for the tiny text classifiers: token ids below ``VOCAB``, some padding, labels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[rows // 2:, length - 3:] = 0  # some padding, so masks matter
    labels = torch.randint(0, NUM_LABELS, (rows,), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_family(family: str, seed: int = 0) -> torch.nn.Module:
    """The family's tiny model, built with ``seed``, in eval mode."""
    found = get_family(family)
    if found.build is None:
        raise AdaptkitError(f"model family {family!r} has no build function (it serves check_task only)")
    torch.manual_seed(seed)
    return found.build().eval()


def train_steps(strategy: Strategy, model: torch.nn.Module, steps: int = 3) -> None:
    """A few real optimizer steps with a large learning rate, so every trainable weight moves."""
    groups = [g for g in strategy.parameter_groups(model, 1e-2, 0.0) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    model.train()
    for step in range(steps):
        loss = model(**sample_batch(100 + step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def perturb_trainable(model: torch.nn.Module, head: Sequence[str], scale: float = 0.1) -> None:
    """Add noise to every trainable weight outside ``head``: a removal must still restore the base."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and not any(f".{h}." in f".{name}" or name.startswith(h) for h in head):
                param.add_(torch.randn_like(param) * scale)


@dataclass
class ConformanceReport:
    """What passed, one line per check and family. ``strategy`` names the checked class (a
    strategy, or with ``kind="task"`` a task)."""

    strategy: str
    passed: list[str] = field(default_factory=list)
    kind: str = "strategy"

    def __str__(self) -> str:
        return "\n".join([f"{self.kind} {self.strategy!r} keeps the contract:", *[f"  ok  {p}" for p in self.passed]])


def check_strategy(strategy_cls: type[Strategy], options: Any = None,
                   families: Optional[list[str]] = None) -> ConformanceReport:
    """Run every contract rule on tiny models of each family; raise ``ContractViolation`` on failure.

    ``families`` defaults to every registered text family with a ``build`` (bert and gpt2, plus
    any family a plugin's tests registered).
    """
    from adaptkit.plugin.sources import quiet_hf_logging

    quiet_hf_logging()
    report = ConformanceReport(strategy_cls.name or strategy_cls.__name__)
    for family in families or _strategy_families():
        if get_family(family).modality != "text":
            raise AdaptkitError(f"check_strategy runs on text families; {family!r} is an "
                                f"{get_family(family).modality} family")
        probe = sample_batch(7)
        base = build_family(family, seed=0)
        context = wrap_context(base, family)
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
        train_steps(strategy, model)
        frozen.verify(strategy_cls, model)
        report.passed.append(f"{family}: frozen - {len(frozen)} frozen tensors bit-identical after 3 steps")
        wrapped_out = model_outputs(model, probe)
        if torch.equal(wrapped_out, base_out):
            raise violation(strategy_cls, "trainable", f"training changed nothing the {family} model computes")
        with tempfile.TemporaryDirectory() as tmp:
            export = strategy.save(model, Path(tmp) / "export") or Path(tmp) / "export"
            reloaded, how = reload_export(strategy, Path(export), lambda: build_family(family, seed=0), type(base))
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
            fresh = build_family(family, seed=0)
            again = strategy_cls(options)
            wrapped = again.wrap(fresh, wrap_context(fresh, family))
            check_wrapped(strategy_cls, wrapped, heads)
            perturb_trainable(wrapped, context.head_modules)
            removed = again.unwrap(wrapped)
            check_signature(strategy_cls, base_sig, architecture_signature(removed), context.head_modules)
            check_close(strategy_cls, "removal", base_out, model_outputs(removed, probe), 0.0,
                        f"{family}: base outputs after removing the strategy")
            report.passed.append(f"{family}: removal - base outputs restored exactly")
    return report


# ---------------------------------------------------------------------------- tasks

_SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[SEP]", "[EOS]"]  # ids 0-4: TINY_GPT2_CONFIG's pad, bos and eos


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def word_tokenizer(rows: Sequence[Mapping[str, Any]], folder: Path, vocab_size: int = VOCAB) -> Path:
    """Save to ``folder`` a word-level fast tokenizer over the words of ``rows`` (up to ``vocab_size``
    ids, the rest unknown), so a text task runs on a tiny model with no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: dict[str, None] = {}
    for row in rows:
        for text in _strings(row):
            words.update(dict.fromkeys(re.findall(r"\w+|[^\w\s]+", text)))
    vocab = {token: i for i, token in enumerate(_SPECIALS + [w for w in words if w not in _SPECIALS])}
    vocab = {token: i for token, i in vocab.items() if i < vocab_size}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        bos_token="[BOS]", sep_token="[SEP]", eos_token="[EOS]")
    tokenizer.save_pretrained(str(folder))
    return folder


def _fail(task: str, rule: str, detail: str, family: str) -> TaskContractViolation:
    return TaskContractViolation(task, rule, detail, family=family)


def _rows_of(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise AdaptkitError("collate returned no tensor")


def _task_families(task_cls: type[Task], families: Optional[Sequence[str]]) -> list[str]:
    if families:
        return list(families)
    declared = getattr(task_cls, "families", None)  # a task may name the families it supports
    if isinstance(declared, (list, tuple)) and declared:
        return list(declared)
    modality = "text" if task_cls.needs_tokenizer else "image"
    return [name for name, family in _FAMILIES.items() if family.config is not None and family.modality == modality]


def check_task(task_cls: type[Task], options: Any = None, rows: Optional[Sequence[Mapping[str, Any]]] = None,
               families: Optional[Sequence[str]] = None) -> ConformanceReport:
    """Check a task plugin against what the engine relies on; raise ``TaskContractViolation`` on failure.

    ``rows`` are a few raw rows with the task's columns (labelled, so metrics can be computed);
    ``families`` defaults to the task's ``families`` attribute if it declares one, else every
    registered family with a config whose modality matches (text when ``needs_tokenizer``).
    Per family the task loads its processor (a word tokenizer made from the rows, or for images
    one sized from the config), learns from the rows (``setup``), builds its model from the
    family's tiny config, and then must:

    - head:    name in ``head_modules`` only modules the model has;
    - batch:   ``preprocess`` + ``collate`` give a batch the model runs on (with a finite loss when labelled);
    - metrics: ``batch_outputs`` keep one entry per row, and ``compute_metrics`` reports exactly the
               declared ``metric_names`` (``loss`` may be left to the loop) as numbers;
    - predict: ``predict_batch`` returns one prediction per row of the batch;
    - state:   ``state()`` survives JSON, and a new task given it by ``load_state`` reports the same
               state and predicts the same.
    """
    import datasets

    from adaptkit.plugin.sources import quiet_hf_logging
    from transformers import AutoConfig

    quiet_hf_logging()
    name = task_cls.name or task_cls.__name__
    if not rows:
        raise AdaptkitError(f"check_task({name}): give rows=[...], a few labelled raw rows with the task's columns")
    report = ConformanceReport(name, kind="task")
    for family_name in _task_families(task_cls, families):
        family = get_family(family_name)
        if family.config is None:
            raise AdaptkitError(f"check_task: model family {family_name!r} has no config to build a task's model from")
        with tempfile.TemporaryDirectory() as tmp:
            settings = dict(family.config)
            tokenizer_dir = (word_tokenizer(rows, Path(tmp) / "tokenizer", int(settings.get("vocab_size", VOCAB)))
                             if family.modality == "text" else None)
            recipe = SimpleNamespace(
                model=SimpleNamespace(name=None, tokenizer=str(tokenizer_dir) if tokenizer_dir else None,
                                      config=dict(settings), revision=None, trust_remote_code=False,
                                      allow_pickle=False, dtype="fp32"),
                task=SimpleNamespace(type=name))
            task = task_cls(options)
            processor = task.load_processor(recipe, None)
            dataset = datasets.Dataset.from_list([dict(row) for row in rows])
            task.setup(dataset)
            model_type = settings.pop("model_type")
            torch.manual_seed(0)
            model = task.build_model("", AutoConfig.for_model(model_type, **settings), True).eval()

            heads = task.head_modules(model)
            modules = dict(model.named_modules())
            missing = [h for h in heads if h not in modules]
            if missing:
                raise _fail(name, "head", f"head_modules names {missing} that the {type(model).__name__} built by "
                                          f"build_model does not have", family_name)
            report.passed.append(f"{family_name}: head - {heads or 'no head'} found in {type(model).__name__}")

            encoded = task.preprocess(dataset, processor)
            batch = task.collate(processor)([encoded[i] for i in range(len(encoded))])
            count = _rows_of(batch)
            try:
                with torch.no_grad():
                    outputs = model(**batch)
            except Exception as exc:  # what the model says about the batch is the finding
                raise _fail(name, "batch", f"the model refused the collated batch (keys {sorted(batch)}): "
                                           f"{type(exc).__name__}: {exc}", family_name) from exc
            loss = getattr(outputs, "loss", None)
            if "labels" in batch and (loss is None or not torch.isfinite(loss).all()):
                raise _fail(name, "batch", f"a labelled batch gave the loss {loss!r}, not a finite number", family_name)
            report.passed.append(f"{family_name}: batch - {count} rows, keys {sorted(batch)}, the model runs on it")

            kept = task.batch_outputs(outputs, batch)
            for key, value in kept.items():
                if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != count:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise _fail(name, "metrics", f"batch_outputs[{key!r}] is {shape}, not one entry per row of "
                                                 f"the {count}-row batch", family_name)
            metrics = task.compute_metrics(**kept)
            declared = set(task.metric_names)
            reported = set(metrics)
            if declared and (declared - {"loss"} - reported or reported - declared):
                raise _fail(name, "metrics", f"compute_metrics reported {sorted(reported)}; metric_names declares "
                                             f"{sorted(declared)}", family_name)
            bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad:
                raise _fail(name, "metrics", f"compute_metrics gave non-numbers for {bad}", family_name)
            shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items()) if not math.isnan(v))
            report.passed.append(f"{family_name}: metrics - {shown}"
                                 + ("" if declared else " (metric_names not declared)"))

            with torch.no_grad():
                predictions = task.predict_batch(model, batch)
            if not isinstance(predictions, list) or len(predictions) != count:
                got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
                raise _fail(name, "predict", f"predict_batch returned {got} predictions for a batch of {count} rows "
                                             f"(it must return a list with one prediction per row)", family_name)
            report.passed.append(f"{family_name}: predict - one prediction per row ({count})")

            state = task.state()
            try:
                saved = json.loads(json.dumps(state))
            except (TypeError, ValueError) as exc:
                raise _fail(name, "state", f"state() is not JSON ({exc}); the run saves it as JSON", family_name) from None
            restored = task_cls(options)
            restored.load_processor(recipe, None)
            restored.load_state(saved)
            if restored.state() != saved:
                raise _fail(name, "state", f"after load_state(state), state() is {restored.state()!r}, not {saved!r}",
                            family_name)
            with torch.no_grad():
                again = restored.predict_batch(model, batch)
            if again != predictions:
                raise _fail(name, "state", "a task restored with load_state predicts differently from the one "
                                           "that learnt the state (setup)", family_name)
            report.passed.append(f"{family_name}: state - round-trips through JSON, same predictions after load_state")
    return report
