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

Every check runs, so a plugin author sees every problem at once: it raises ``ContractViolation``
(rule, parameter and the strategy's plugin or class named) listing every failed check, and returns
a report of what passed otherwise. Use it in a plugin's tests in one line, or, in the shape of
scikit-learn's ``sklearn.utils.estimator_checks``, parametrize over ``strategy_checks(MyStrategy)``:
each rule on each family is a named check (``"bert/frozen"``), and ``expected_failures={name or
rule: reason}`` declares the ones known to fail.

``check_task(MyTask, rows=[...])`` is its twin for task plugins (scikit-learn's ``check_estimator``
is the model): on a tiny config-built model of each family the task runs on, ``preprocess`` and
``collate`` must give a batch the model accepts, ``batch_outputs`` + ``compute_metrics`` must report
the declared ``metric_names`` (and an overridden ``training_metrics`` 0-dim floating tensors by name),
``predict_batch`` one prediction per row, ``state()``/``load_state()`` must round-trip through JSON
(a restored task predicts the same), ``training_state()`` through safetensors and
``load_training_state()``, and ``head_modules`` must name modules the model has. It raises ``TaskContractViolation`` naming every failed rule and family;
``task_checks`` yields its checks one by one.

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
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from adaptkit.errors import AdaptkitError, ContractViolation, PreflightError, TaskContractViolation
from adaptkit.plugin.contract import (FrozenWeights, architecture_signature, check_close, check_signature, check_wrapped,
                                      head_shapes, model_outputs, reload_export, violation)
from adaptkit.plugin import registry as plugins  # plugins.get_registry() at call time (tests replace it)
from adaptkit.plugin.sources import quiet_hf_logging
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
    makes a word tokenizer for it), ``"image"``, ``"image-text"`` (images in, text out: a
    captioner, which gets a word tokenizer too), or ``"text-text"`` (an encoder-decoder writing
    text from text, T5's kind: a word tokenizer, and no part in the text tasks' default families).
    """

    name: str
    build: Optional[Callable[[], torch.nn.Module]] = None
    head_modules: tuple[str, ...] = ()
    peft_task_type: Optional[str] = None
    task: str = "classification"
    config: Optional[Mapping[str, Any]] = None
    modality: str = "text"


_FAMILIES: dict[str, ModelFamily] = {}
MODALITIES = ("text", "image", "image-text", "text-text")


def register_family(name: str, build: Optional[Callable[[], torch.nn.Module]] = None, *,
                    head_modules: Sequence[str] = (), peft_task_type: Optional[str] = None,
                    task: str = "classification", config: Optional[Mapping[str, Any]] = None,
                    modality: str = "text", replace: bool = False) -> ModelFamily:
    """Make ``name`` a family ``check_strategy`` and ``check_task`` can run on; returns it.

    A name already registered is an error unless ``replace=True``; a test that adds a family
    removes it again with ``unregister_family``. A text family with a ``build`` joins the families
    ``check_strategy`` runs on by default while it is registered.
    """
    if modality not in MODALITIES:
        raise AdaptkitError(f"register_family({name!r}): modality must be one of {', '.join(MODALITIES)}, "
                            f"not {modality!r}")
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
# A captioner: the tiny ViT encoding, a tiny GPT-2 decoding with cross-attention (check_task only).
register_family("vision-encoder-decoder", modality="image-text", config={
    "model_type": "vision-encoder-decoder", "encoder": TINY_VIT_CONFIG,
    "decoder": {**TINY_GPT2_CONFIG, "add_cross_attention": True}})
# BLIP's captioner: a tiny vision tower and a tiny BERT-style text decoder (check_task only); its
# token ids are the word tokenizer's, which the captioning task writes into the text config.
register_family("blip", modality="image-text", config={
    "model_type": "blip",
    "vision_config": {"image_size": 16, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "intermediate_size": 48},
    "text_config": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "intermediate_size": 48, "max_position_embeddings": 64}})
# A text-to-text encoder-decoder (seq2seq): a tiny T5 whose pad (0, also its decoder start) and eos
# (4) are the word tokenizer's [PAD] and [EOS] (check_task only).
TINY_T5_CONFIG: dict[str, Any] = {
    "model_type": "t5", "vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
    "num_decoder_layers": 2, "num_heads": 2, "pad_token_id": 0, "eos_token_id": 4, "decoder_start_token_id": 0}
register_family("t5", modality="text-text", config=TINY_T5_CONFIG, peft_task_type="SEQ_2_SEQ_LM")


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
    strategy, or with ``kind="task"`` a task). ``expected_failures`` lists the checks the caller
    declared as known failures that did fail (name and reason), ``unexpected_passes`` those that
    were declared but passed (the declaration can go)."""

    strategy: str
    passed: list[str] = field(default_factory=list)
    kind: str = "strategy"
    expected_failures: list[str] = field(default_factory=list)
    unexpected_passes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.strategy!r} keeps the contract:", *[f"  ok  {p}" for p in self.passed]]
        lines += [f"  xfail  {x}" for x in self.expected_failures]
        lines += [f"  xpass  {x} (declared as an expected failure, but it passed)" for x in self.unexpected_passes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ConformanceCheck:
    """One named check of the kit, on one family: call it to run it.

    ``name`` is ``"<family>/<rule>"`` (``"bert/frozen"``). Called, it returns the line the report
    keeps (None for a check that adds no line) or raises ``ContractViolation`` (a task's check:
    ``TaskContractViolation``). A check declared an expected failure (``expected`` is the reason)
    swallows its violation, so a plugin's parametrized test of it passes either way; ``check_strategy``
    and ``check_task`` still report it.
    """

    name: str
    family: str
    rule: str
    run: Callable[[], Optional[str]] = field(repr=False, compare=False)
    expected: Optional[str] = None

    def __call__(self) -> Optional[str]:
        if self.expected is None:
            return self.run()
        try:
            return self.run()
        except (ContractViolation, TaskContractViolation):
            return None


class _Stage:
    """A step several checks share (build, wrap, train), computed once on first use; a failure is
    kept and raised again, the same exception object, to every check that needs the step."""

    def __init__(self, compute: Callable[[], Any]):
        self._compute = compute
        self._done = False
        self._value: Any = None
        self._error: Optional[BaseException] = None

    def __call__(self) -> Any:
        if not self._done:
            try:
                self._value = self._compute()
            except Exception as exc:  # kept for every check that needs this step
                self._error = exc
            self._done = True
        if self._error is not None:
            raise self._error
        return self._value

    def reset(self) -> None:
        self._done, self._value, self._error = False, None, None


class _StrategyTrial:
    """The shared steps of ``strategy_checks`` on one family: the base and its outputs, the wrapped
    model, the trained one, and the unwrapped one (which consumes the trained model, so a check
    run after it that needs the trained model gets a freshly trained one)."""

    def __init__(self, strategy_cls: type[Strategy], options: Any, family: str):
        self.cls, self.options, self.family = strategy_cls, options, family
        self.base = _Stage(self._base)
        self.wrapped = _Stage(self._wrapped)
        self.trained = _Stage(self._trained)
        self.unwrapped = _Stage(self._unwrapped)

    def _base(self) -> SimpleNamespace:
        probe = sample_batch(7)
        base = build_family(self.family, seed=0)
        context = wrap_context(base, self.family)
        return SimpleNamespace(probe=probe, model_class=type(base), context=context,
                               signature=architecture_signature(base), outputs=model_outputs(base, probe),
                               heads=head_shapes(base, context.head_modules))

    def _wrapped(self) -> SimpleNamespace:
        base = self.base()
        model = build_family(self.family, seed=0)
        strategy = self.cls(self.options)
        return SimpleNamespace(strategy=strategy, model=strategy.wrap(model, wrap_context(model, self.family)))

    def _trained(self) -> SimpleNamespace:
        wrapped = self.wrapped()
        self.wrapped.reset()  # training changes the model: a later wrap check gets a fresh one
        strategy, model = wrapped.strategy, wrapped.model
        frozen = FrozenWeights.snapshot(model)
        train_steps(strategy, model)
        return SimpleNamespace(strategy=strategy, model=model, frozen=frozen,
                               outputs=model_outputs(model, self.base().probe))

    def _unwrapped(self) -> SimpleNamespace:
        trained = self.trained()
        self.trained.reset()  # unwrap merges or removes in place: a later check trains anew
        return SimpleNamespace(strategy=trained.strategy, outputs=trained.outputs,
                               model=trained.strategy.unwrap(trained.model))

    # ------------------------------------------------------------------ the checks, in run order

    def check_wrap(self) -> None:
        model = self.wrapped().model
        check_wrapped(self.cls, model, self.base().heads)
        if not [n for n, p in model.named_parameters() if p.requires_grad]:
            raise violation(self.cls, "trainable", f"wrap left nothing trainable on the {self.family} model")

    def check_frozen(self) -> str:
        trained = self.trained()
        trained.frozen.verify(self.cls, trained.model)
        return f"{self.family}: frozen - {len(trained.frozen)} frozen tensors bit-identical after 3 steps"

    def check_trainable(self) -> None:
        if torch.equal(self.trained().outputs, self.base().outputs):
            raise violation(self.cls, "trainable", f"training changed nothing the {self.family} model computes")

    def check_export(self) -> str:
        trained, base = self.trained(), self.base()
        with tempfile.TemporaryDirectory() as tmp:
            export = trained.strategy.save(trained.model, Path(tmp) / "export") or Path(tmp) / "export"
            reloaded, how = reload_export(trained.strategy, Path(export), lambda: build_family(self.family, seed=0),
                                          base.model_class)
            check_close(self.cls, "export", trained.outputs, model_outputs(reloaded, base.probe),
                        trained.strategy.merge_tolerance, f"{self.family}: export reloaded with {how}")
        return f"{self.family}: export - reloads from safetensors with {how}, same outputs"

    def check_signature(self) -> str:
        base = self.base()
        check_signature(self.cls, base.signature, architecture_signature(self.unwrapped().model),
                        base.context.head_modules)
        return f"{self.family}: signature - unwrap(wrap(base)) has the base architecture"

    def check_equivalence(self) -> str:
        unwrapped = self.unwrapped()
        check_close(self.cls, "equivalence", unwrapped.outputs, model_outputs(unwrapped.model, self.base().probe),
                    unwrapped.strategy.merge_tolerance, f"{self.family}: merged against wrapped")
        return f"{self.family}: equivalence - merged outputs match within {unwrapped.strategy.merge_tolerance:g}"

    def check_removal(self) -> str:
        base = self.base()
        fresh = build_family(self.family, seed=0)
        again = self.cls(self.options)
        wrapped = again.wrap(fresh, wrap_context(fresh, self.family))
        check_wrapped(self.cls, wrapped, base.heads)
        perturb_trainable(wrapped, base.context.head_modules)
        removed = again.unwrap(wrapped)
        check_signature(self.cls, base.signature, architecture_signature(removed), base.context.head_modules)
        check_close(self.cls, "removal", base.outputs, model_outputs(removed, base.probe), 0.0,
                    f"{self.family}: base outputs after removing the strategy")
        return f"{self.family}: removal - base outputs restored exactly"


STRATEGY_RULES = ("wrap", "frozen", "trainable", "export", "signature", "equivalence", "removal")


def _expected(expected_failures: Optional[Mapping[str, str]], names: list[tuple[str, str]], what: str) -> dict[str, str]:
    """``expected_failures`` checked against the checks there are: a key is a check's name
    (``"bert/export"``) or a rule (``"export"``, every family); an unknown key is an error."""
    declared = dict(expected_failures or {})
    known = {n for n, _ in names} | {r for _, r in names}
    unknown = sorted(set(declared) - known)
    if unknown:
        raise AdaptkitError(f"{what}: expected_failures names no check: {', '.join(map(repr, unknown))} "
                            f"(checks: {', '.join(n for n, _ in names)})")
    return declared


def strategy_checks(strategy_cls: type[Strategy], options: Any = None, families: Optional[list[str]] = None,
                    expected_failures: Optional[Mapping[str, str]] = None) -> list[tuple[str, ConformanceCheck]]:
    """Every contract check of ``strategy_cls``, one per rule and family, as a list of ``(name, check)``.

    The shape of scikit-learn's ``sklearn.utils.estimator_checks``: a plugin's tests parametrize
    over it, so each rule is its own test and every failure shows::

        CHECKS = strategy_checks(MyStrategy)

        @pytest.mark.parametrize("name, check", CHECKS, ids=[name for name, _ in CHECKS])
        def test_contract(name, check):
            check()

    Per family the checks are ``wrap`` (a model came back, head kept, something trainable),
    ``frozen``, ``trainable`` (training changed the outputs), ``export``, ``signature``, then
    ``equivalence`` for a mergeable strategy or ``removal`` for one that is not. Checks of one
    family share the built, wrapped and trained models (each built once, on first use; a check run
    out of order rebuilds what it needs). ``expected_failures`` maps a check's name
    (``"bert/export"``) or a rule (``"export"``: on every family) to the reason it is known to fail;
    such a check swallows its violation. ``families`` defaults to every registered text family
    with a ``build``. Nothing is built until a check runs (a list, not a generator: pytest's
    parametrize takes it as is; a misspelt ``expected_failures`` key fails at once).
    """
    chosen = list(families or _strategy_families())
    if options is None:  # the strategy's own choice for tiny models, else its defaults
        options = getattr(strategy_cls, "conformance_options", None)
    for family in chosen:
        if get_family(family).modality != "text":
            raise AdaptkitError(f"check_strategy runs on text families; {family!r} is an "
                                f"{get_family(family).modality} family")
    last = "equivalence" if strategy_cls.mergeable else "removal"
    rules = [r for r in STRATEGY_RULES if r not in ("equivalence", "removal")] + [last]
    names = [(f"{family}/{rule}", rule) for family in chosen for rule in rules]
    declared = _expected(expected_failures, names, f"strategy_checks({strategy_cls.__name__})")
    checks = []
    for family in chosen:
        trial = _StrategyTrial(strategy_cls, options, family)
        for rule in rules:
            name = f"{family}/{rule}"
            checks.append((name, ConformanceCheck(name, family, rule, getattr(trial, f"check_{rule}"),
                                                  declared.get(name, declared.get(rule)))))
    return checks


def _run_checks(checks: Sequence[tuple[str, ConformanceCheck]], report: ConformanceReport,
                violation_types: tuple[type[BaseException], ...]) -> list[tuple[ConformanceCheck, BaseException]]:
    """Run every check; fill ``report``; return the failures not declared as expected."""
    failures: list[tuple[ConformanceCheck, BaseException]] = []
    for name, check in checks:
        try:
            line = check.run()
        except violation_types as exc:
            if check.expected is not None:
                report.expected_failures.append(f"{name}: {check.expected}")
            else:
                failures.append((check, exc))
            continue
        if check.expected is not None:
            report.unexpected_passes.append(name)
        if line:
            report.passed.append(line)
    return failures


def _as_violations(failures: list[tuple[ConformanceCheck, BaseException]], crashed: Callable[[ConformanceCheck, BaseException], Any],
                   kind: type[BaseException]) -> list[tuple[ConformanceCheck, Any]]:
    """Each failure as a violation of ``kind``: a crash (any other exception) becomes one naming the
    check that met it (``crashed``), chained to it, once per distinct exception."""
    converted: dict[int, Any] = {}
    pairs = []
    for check, exc in failures:
        if id(exc) not in converted:
            found = exc if isinstance(exc, kind) else crashed(check, exc)
            if found is not exc:
                found.__cause__ = exc
            converted[id(exc)] = found
        pairs.append((check, converted[id(exc)]))
    return pairs


def _all_failures(failures: list[tuple[ConformanceCheck, BaseException]], what: str) -> str:
    """The first failure's own message first (what a single failure said, so its first line still
    reads "... broke the contract rule '<rule>' ..."), then every failed check: one line per distinct
    failure with every check it failed (a failed shared step, such as a crashing ``wrap``, fails
    every check that needs it: it is listed once)."""
    grouped: dict[int, tuple[list[str], BaseException]] = {}
    for check, exc in failures:
        grouped.setdefault(id(exc), ([], exc))[0].append(check.name)
    (first_names, first), *rest = grouped.values()
    plural = "s" if len(failures) != 1 else ""
    text = f"{first}\n{what} failed {len(failures)} conformance check{plural}: {', '.join(first_names)} as above"
    if rest:
        text += ", and:\n" + "\n".join(f"  - {', '.join(names)}: {exc}" for names, exc in rest)
    return text


def check_strategy(strategy_cls: type[Strategy], options: Any = None, families: Optional[list[str]] = None,
                   expected_failures: Optional[Mapping[str, str]] = None) -> ConformanceReport:
    """Run every check of ``strategy_checks`` and raise ``ContractViolation`` if any failed.

    Every check runs, so the error lists every failed check at once (with the rule and parameter
    of the first on the exception, and all of them in ``failures``); a check that crashes (not a
    violation) is reported as a failure of its rule too. ``expected_failures`` (check name or rule
    -> reason) are reported, not raised. ``families`` defaults to every registered text family
    with a ``build`` (bert and gpt2, plus any family a plugin's tests registered).
    """
    quiet_hf_logging()
    report = ConformanceReport(strategy_cls.name or strategy_cls.__name__)
    failures = _run_checks(strategy_checks(strategy_cls, options, families, expected_failures), report,
                           (Exception,))
    if not failures:
        return report
    pairs = _as_violations(failures, lambda check, exc: violation(
        strategy_cls, check.rule, f"check {check.name} raised {type(exc).__name__}: {exc}"), ContractViolation)
    distinct = list({id(found): found for _, found in pairs}.values())
    first = distinct[0]
    if len(pairs) > 1:
        first = ContractViolation(first.strategy, first.rule, getattr(first, "detail", str(first)),
                                  parameter=first.parameter)
        first.args = (_all_failures(pairs, f"strategy {report.strategy!r}"),)
        first.__cause__ = distinct[0]
    first.failures = distinct
    raise first


# ---------------------------------------------------------------------------- installed strategies

@dataclass
class StrategyCheck:
    """One strategy's result in ``adaptkit plugins --check``."""

    strategy: str
    plugin: str
    distribution: str
    passed: bool
    detail: str


def check_installed(names: Optional[list[str]] = None, families: Optional[list[str]] = None) -> list[StrategyCheck]:
    """Run ``check_strategy`` on installed strategies (``adaptkit plugins --check``).

    ``names`` limits it to some strategies (an unknown name is an error). A failure of one
    strategy, contract or crash, is recorded and the others are still checked.
    """
    registry = plugins.get_registry()
    chosen = sorted(registry.strategies) if not names else list(names)
    unknown = [n for n in chosen if n not in registry.strategies]
    if unknown:
        raise AdaptkitError(f"--check: unknown strateg{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(map(repr, unknown))} (installed: {', '.join(sorted(registry.strategies))})")
    results = []
    for name in chosen:
        owner = registry.plugin_for("strategy", name)
        plugin, dist = (owner.name, f"{owner.distribution} {owner.version}") if owner else ("?", "?")
        passed, refused, failure = 0, [], None
        for family in families or _strategy_families():
            try:
                passed += len(check_strategy(registry.strategies[name], None, [family]).passed)
            except Exception as exc:  # a contract violation or a crash: this strategy fails, the rest go on
                reason = _refusal(exc)
                if reason is None:
                    failure = failure or f"{type(exc).__name__}: {exc}"
                else:
                    refused.append(f"{family} ({reason})")
        detail = failure or (f"{passed} checks passed" + (f"; refuses {', '.join(refused)}" if refused else ""))
        results.append(StrategyCheck(name, plugin, dist, failure is None, detail))
    return results


def _refusal(exc: BaseException) -> Optional[str]:
    """The ``PreflightError`` behind a failed check, if that is what it was: the strategy refused the
    family's model at ``wrap`` (a method that serves only some architectures), which ``plugins --check``
    reports as a refusal, not a broken contract. None for any other failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PreflightError):
            return str(exc).splitlines()[0]
        exc = exc.__cause__ or exc.__context__
    return None


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


class _TaskTrial:
    """The shared steps of ``task_checks`` on one family: the task set up with its processor and
    model (in a temporary folder kept while the trial lives), the collated batch, the model's
    outputs on it, and the predictions."""

    def __init__(self, task_cls: type[Task], options: Any, rows: Sequence[Mapping[str, Any]], family: str):
        self.cls, self.options, self.rows, self.family = task_cls, options, rows, family
        self.name = task_cls.name or task_cls.__name__
        self.prepared = _Stage(self._prepared)
        self.collated = _Stage(self._collated)
        self.ran = _Stage(self._ran)
        self.predicted = _Stage(self._predicted)

    def _prepared(self) -> SimpleNamespace:
        import datasets  # datasets is imported by check_task only, not by check_strategy
        from transformers import AutoConfig

        family = get_family(self.family)
        tmp = tempfile.mkdtemp(prefix="adaptkit-check-task-")
        weakref.finalize(self, shutil.rmtree, tmp, True)
        settings = dict(family.config or {})
        tokenizer_dir = (word_tokenizer(self.rows, Path(tmp) / "tokenizer", int(settings.get("vocab_size", VOCAB)))
                         if family.modality in ("text", "image-text", "text-text") else None)
        recipe = SimpleNamespace(
            model=SimpleNamespace(name=None, tokenizer=str(tokenizer_dir) if tokenizer_dir else None,
                                  config=dict(settings), revision=None, trust_remote_code=False,
                                  allow_pickle=False, dtype="fp32"),
            task=SimpleNamespace(type=self.name))
        task = self.cls(self.options)
        processor = task.load_processor(recipe, None)
        dataset = datasets.Dataset.from_list([dict(row) for row in self.rows])
        task.setup(dataset)
        model_type = settings.pop("model_type")
        torch.manual_seed(0)
        model = task.build_model("", AutoConfig.for_model(model_type, **settings), True).eval()
        return SimpleNamespace(task=task, processor=processor, dataset=dataset, model=model, recipe=recipe)

    def _collated(self) -> SimpleNamespace:
        prepared = self.prepared()
        encoded = prepared.task.preprocess(prepared.dataset, prepared.processor)
        batch = prepared.task.collate(prepared.processor)([encoded[i] for i in range(len(encoded))])
        return SimpleNamespace(batch=batch, count=_rows_of(batch))

    def _ran(self) -> Any:
        batch = self.collated().batch
        try:
            with torch.no_grad():  # as evaluation runs a batch: the task's compute_loss (a forward pass by default)
                return self.prepared().task.compute_loss(self.prepared().model, batch)[1]
        except Exception as exc:  # what the model says about the batch is the finding
            raise _fail(self.name, "batch", f"the model refused the collated batch (keys {sorted(batch)}): "
                                            f"{type(exc).__name__}: {exc}", self.family) from exc

    def _predicted(self) -> list[Any]:
        with torch.no_grad():
            return self.prepared().task.predict_batch(self.prepared().model, self.collated().batch)

    # ------------------------------------------------------------------ the checks, in run order

    def check_head(self) -> str:
        model = self.prepared().model
        heads = self.prepared().task.head_modules(model)
        modules = dict(model.named_modules())
        missing = [h for h in heads if h not in modules]
        if missing:
            raise _fail(self.name, "head", f"head_modules names {missing} that the {type(model).__name__} built by "
                                           f"build_model does not have", self.family)
        return f"{self.family}: head - {heads or 'no head'} found in {type(model).__name__}"

    def check_batch(self) -> str:
        collated, outputs = self.collated(), self.ran()
        loss = getattr(outputs, "loss", None)
        if "labels" in collated.batch and (loss is None or not torch.isfinite(loss).all()):
            raise _fail(self.name, "batch", f"a labelled batch gave the loss {loss!r}, not a finite number", self.family)
        return f"{self.family}: batch - {collated.count} rows, keys {sorted(collated.batch)}, the model runs on it"

    def check_metrics(self) -> str:
        task, collated = self.prepared().task, self.collated()
        count = collated.count
        kept = task.batch_outputs(self.ran(), collated.batch)
        for key, value in kept.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != count:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise _fail(self.name, "metrics", f"batch_outputs[{key!r}] is {shape}, not one entry per row of "
                                                  f"the {count}-row batch", self.family)
        metrics = task.compute_metrics(**kept)
        declared = set(task.metric_names)
        reported = set(metrics)
        if declared and (declared - {"loss"} - reported or reported - declared):
            raise _fail(self.name, "metrics", f"compute_metrics reported {sorted(reported)}; metric_names declares "
                                              f"{sorted(declared)}", self.family)
        bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise _fail(self.name, "metrics", f"compute_metrics gave non-numbers for {bad}", self.family)
        shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items()) if not math.isnan(v))
        return (f"{self.family}: metrics - {shown}" + ("" if declared else " (metric_names not declared)")
                + self._training_metrics())

    def _training_metrics(self) -> str:
        """An overridden ``Task.training_metrics`` gives 0-dim floating tensors by name: the loop adds
        them up on the device (a Python number would have been read back from it every step)."""
        task = self.prepared().task
        if type(task).training_metrics is Task.training_metrics:
            return ""
        figures = task.training_metrics(self.ran(), self.collated().batch)
        wrong = ([f"{k!r}: {type(v).__name__}" + (f" {tuple(v.shape)}" if isinstance(v, torch.Tensor) else "")
                  for k, v in figures.items()
                  if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.dim() or not v.is_floating_point()]
                 if isinstance(figures, dict) else [type(figures).__name__])
        if wrong:
            raise _fail(self.name, "metrics", f"training_metrics must return a dict of 0-dim floating tensors left "
                                              f"on the device; got {', '.join(wrong)}", self.family)
        return f"; training_metrics {', '.join(sorted(figures))}"

    def check_predict(self) -> str:
        predictions, count = self.predicted(), self.collated().count
        if not isinstance(predictions, list) or len(predictions) != count:
            got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
            raise _fail(self.name, "predict", f"predict_batch returned {got} predictions for a batch of {count} rows "
                                              f"(it must return a list with one prediction per row)", self.family)
        return f"{self.family}: predict - one prediction per row ({count})"

    def check_state(self) -> str:
        prepared = self.prepared()
        state = prepared.task.state()
        try:
            saved = json.loads(json.dumps(state))
        except (TypeError, ValueError) as exc:
            raise _fail(self.name, "state", f"state() is not JSON ({exc}); the run saves it as JSON",
                        self.family) from None
        restored = self.cls(self.options)
        restored.load_processor(prepared.recipe, None)
        restored.load_state(saved)
        if restored.state() != saved:
            raise _fail(self.name, "state", f"after load_state(state), state() is {restored.state()!r}, not {saved!r}",
                        self.family)
        with torch.no_grad():
            again = restored.predict_batch(prepared.model, self.collated().batch)
        if again != self.predicted():
            raise _fail(self.name, "state", "a task restored with load_state predicts differently from the one "
                                            "that learnt the state (setup)", self.family)
        return f"{self.family}: state - round-trips through JSON, same predictions after load_state" + \
            self._training_state(restored)

    def _training_state(self, restored: Task) -> str:
        """``training_state()`` (what checkpoints keep) is saved as safetensors and, loaded into a fresh
        task with ``load_training_state``, comes back equal. Empty (the default, or nothing computed
        yet): nothing to check."""
        tensors = self.prepared().task.training_state()
        if not tensors:
            return ""
        from safetensors.torch import load, save

        try:
            loaded = load(save(dict(tensors)))
        except Exception as exc:
            raise _fail(self.name, "state", f"training_state() cannot be saved as safetensors, as checkpoints "
                                            f"keep it ({type(exc).__name__}: {exc})", self.family) from None
        restored.load_training_state(loaded)
        again = restored.training_state()
        if set(again) != set(tensors) or any(not torch.equal(again[k], tensors[k]) for k in tensors):
            raise _fail(self.name, "state", f"after load_training_state(training_state()), training_state() holds "
                                            f"other tensors ({sorted(again)}, was {sorted(tensors)})", self.family)
        return f"; training_state round-trips ({len(tensors)} tensors)"


TASK_RULES = ("head", "batch", "metrics", "predict", "state")


def task_checks(task_cls: type[Task], options: Any = None, rows: Optional[Sequence[Mapping[str, Any]]] = None,
                families: Optional[Sequence[str]] = None,
                expected_failures: Optional[Mapping[str, str]] = None) -> list[tuple[str, ConformanceCheck]]:
    """Every check of ``check_task``, one per rule and family, as a list of ``(name, check)`` (``"bert/predict"``).

    ``strategy_checks``' twin: parametrize a task plugin's tests over it; the checks of one family
    share the set-up task, its model, batch and predictions (built on first use).
    ``expected_failures`` maps a check's name or a rule to the reason it is known to fail.
    """
    name = task_cls.name or task_cls.__name__
    if not rows:
        raise AdaptkitError(f"check_task({name}): give rows=[...], a few labelled raw rows with the task's columns")
    chosen = _task_families(task_cls, families)
    for family_name in chosen:
        if get_family(family_name).config is None:
            raise AdaptkitError(f"check_task: model family {family_name!r} has no config to build a task's model from")
    names = [(f"{family}/{rule}", rule) for family in chosen for rule in TASK_RULES]
    declared = _expected(expected_failures, names, f"task_checks({task_cls.__name__})")
    checks = []
    for family_name in chosen:
        trial = _TaskTrial(task_cls, options, list(rows), family_name)
        for rule in TASK_RULES:
            check = f"{family_name}/{rule}"
            checks.append((check, ConformanceCheck(check, family_name, rule, getattr(trial, f"check_{rule}"),
                                                   declared.get(check, declared.get(rule)))))
    return checks


def check_task(task_cls: type[Task], options: Any = None, rows: Optional[Sequence[Mapping[str, Any]]] = None,
               families: Optional[Sequence[str]] = None,
               expected_failures: Optional[Mapping[str, str]] = None) -> ConformanceReport:
    """Check a task plugin against what the engine relies on; raise ``TaskContractViolation`` if
    any check failed, listing every failed check (the first's rule and family on the exception,
    all of them in ``failures``).

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

    ``expected_failures`` (check name or rule -> reason) are reported, not raised.
    """
    quiet_hf_logging()
    report = ConformanceReport(task_cls.name or task_cls.__name__, kind="task")
    failures = _run_checks(task_checks(task_cls, options, rows, families, expected_failures), report, (Exception,))
    if not failures:
        return report
    pairs = _as_violations(failures, lambda check, exc: _fail(
        report.strategy, check.rule, f"check {check.name} raised {type(exc).__name__}: {exc}", check.family),
        TaskContractViolation)
    distinct = list({id(found): found for _, found in pairs}.values())
    first = distinct[0]
    if len(pairs) > 1:
        first = TaskContractViolation(first.task, first.rule, str(first), family=first.family)
        first.args = (_all_failures(pairs, f"task {report.strategy!r}"),)
        first.__cause__ = distinct[0]
    first.failures = distinct
    raise first
