"""The architecture-preserving contract, enforced by the core on every strategy.

1. signature:   ``unwrap(wrap(base))`` has the base's ordered parameter names, shapes,
                dtypes, buffers, module class tree and module settings (``extra_repr`` and
                plain scalar attributes such as a LayerNorm's eps or a Dropout's p): nothing
                added, nothing removed, nothing retuned. Right after ``wrap`` the core checks
                that a model came back and that the task head still has the task's shape.
2. frozen:      parameters a strategy leaves frozen are bit-identical after training.
3. equivalence: a merged model computes what the wrapped one computed (within tolerance).
4. removal:     removing a non-mergeable addition gives back the base outputs exactly (in a
                run, whose task head was trained: the base's features below the head).
5. export:      what was saved loads back with plain peft / transformers (not the strategy's
                own ``load``) and computes the same.

Each check raises ``ContractViolation`` naming the rule, the first offending parameter, and the
plugin (and distribution) the strategy came from, so a user knows whom to report it to.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Union

import torch

from adaptkit.errors import ContractViolation
from adaptkit.plugin import registry as plugins  # plugins.get_registry() at call time (tests replace it)

# A strategy as the checks accept it: its registered name, its class, or an instance.
StrategyRef = Union[str, type, Any]

# Scalar module attributes that are run state, not architecture: toggled by training features
# (gradient checkpointing), or bookkeeping transformers sets on load.
_STATE_ATTRIBUTES = frozenset({"training", "gradient_checkpointing", "name_or_path", "kernel_config"})


# ---------------------------------------------------------------------------- naming the plugin

def _strategy_name(strategy: StrategyRef) -> str:
    if isinstance(strategy, str):
        return strategy
    cls = strategy if isinstance(strategy, type) else type(strategy)
    return getattr(strategy, "name", None) or getattr(cls, "name", None) or cls.__name__


def strategy_origin(strategy: StrategyRef) -> str:
    """Where a strategy comes from, for a violation message: its plugin and distribution.

    A name is looked up in the plugin registry (``plugin_for``); a class or instance is named
    by its registered plugin only when the registry holds that very class, otherwise by its
    import path (a strategy under test, not installed). Empty when nothing is known.
    """
    name = _strategy_name(strategy)
    cls = None if isinstance(strategy, str) else (strategy if isinstance(strategy, type) else type(strategy))
    try:
        registry = plugins.get_registry()
        owner = registry.plugin_for("strategy", name)
        registered = registry.strategies.get(name)
    except Exception:  # naming the plugin must never hide the violation itself
        owner = registered = None
    if owner is not None and (cls is None or registered is cls):
        return f"strategy {name!r} from {owner.describe()}"
    if cls is not None:
        return f"strategy class {cls.__module__}.{cls.__qualname__}, registered by no installed plugin"
    return ""


def violation(strategy: StrategyRef, rule: str, detail: str, parameter: str | None = None) -> ContractViolation:
    """A ``ContractViolation`` whose message ends with the plugin and distribution of ``strategy``."""
    exc = ContractViolation(_strategy_name(strategy), rule, detail, parameter=parameter)
    exc.detail = detail  # type: ignore[attr-defined]  # the message's own part, for callers that extend it
    return plugins.name_plugin(exc, strategy_origin(strategy))


# ---------------------------------------------------------------------------- 1. signature

@dataclass(frozen=True)
class Signature:
    """What "the same architecture" means: parameters and buffers in order, the module class
    tree, and each module's settings (what changes the computation without being a weight)."""

    parameters: tuple[tuple[str, tuple[int, ...], str], ...]
    modules: tuple[tuple[str, str], ...]
    buffers: tuple[tuple[str, tuple[int, ...], str], ...] = ()
    settings: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()
    # Parameter names that are one tensor (tied weights: GPT-2's lm_head and wte). Two tensors of the
    # same shapes are another architecture: saved, they load untied, larger, and train apart.
    shared: tuple[tuple[str, ...], ...] = ()


def module_settings(module: torch.nn.Module) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A module's hyper-parameters: its ``extra_repr()`` and its public scalar attributes.

    ``extra_repr`` is how torch and transformers print a module's settings (LayerNorm eps,
    Dropout p, an activation's approximation); scalar attributes catch what it leaves out
    (attention ``scaling``, ``is_causal``). Run state such as ``gradient_checkpointing`` is not
    architecture and is left out.
    """
    try:
        text = module.extra_repr()
    except Exception:  # a module whose extra_repr needs state it lacks (meta, half-built)
        text = "<extra_repr failed>"
    scalars = tuple(sorted(
        (key, repr(value)) for key, value in vars(module).items()
        if not key.startswith("_") and key not in _STATE_ATTRIBUTES
        and (value is None or isinstance(value, (bool, int, float, str)))
    ))
    return text, scalars


def architecture_signature(model: torch.nn.Module) -> Signature:
    """The ordered (name, shape, dtype) of every parameter and buffer, the class of every module,
    and every module's settings (``module_settings``)."""
    params = tuple(
        (name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters(remove_duplicate=False)
    )
    buffers = tuple(
        (name, tuple(b.shape), str(b.dtype)) for name, b in model.named_buffers(remove_duplicate=False)
    )
    named = list(model.named_modules())
    modules = tuple((name, type(m).__name__) for name, m in named)
    settings = tuple((name, *module_settings(m)) for name, m in named)
    return Signature(params, modules, buffers, settings, shared_parameters(model))


def shared_parameters(model: torch.nn.Module) -> tuple[tuple[str, ...], ...]:
    """The groups of parameter names that are one tensor (tied weights), in order."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return tuple(tuple(names) for names in groups.values() if len(names) > 1)


def _first_difference(base: Iterable, other: Iterable) -> tuple[object, object] | None:
    base, other = list(base), list(other)
    for a, b in zip(base, other):
        if a != b:
            return a, b
    if len(base) != len(other):
        longer = base if len(base) > len(other) else other
        extra = longer[min(len(base), len(other))]
        return (extra, None) if longer is base else (None, extra)
    return None


def check_signature(strategy: StrategyRef, base: Signature, result: Signature,
                    head_modules: Iterable[str] = ()) -> None:
    """Rule 1: raise unless ``result`` is exactly ``base`` (the task head is named if involved)."""
    heads = tuple(head_modules)
    for kind, base_items, result_items in (("parameter", base.parameters, result.parameters),
                                           ("buffer", base.buffers, result.buffers)):
        diff = _first_difference(base_items, result_items)
        if diff is None:
            continue
        expected, found = diff
        name = (expected or found)[0]
        if expected is None:
            detail = f"{kind} {name!r} was added ({found[1]}, {found[2]})"
        elif found is None:
            detail = f"{kind} {name!r} was removed"
        else:
            detail = f"expected {kind} {expected}, found {found}"
        if any(name == h or name.startswith(h + ".") for h in heads):
            detail += " (this is the task head, whose shape must still match the task)"
        raise violation(strategy, "signature", detail, parameter=name)
    diff = _first_difference(base.modules, result.modules)
    if diff is not None:
        expected, found = diff
        name = (expected or found)[0] or "<root>"
        if expected is None:
            detail = f"module {name!r} of class {found[1]} was added"
        elif found is None:
            detail = f"module {name!r} was removed"
        else:
            detail = f"module {expected[0]!r} was {expected[1]}, is now {found[0]!r} {found[1]}"
        raise violation(strategy, "signature", detail, parameter=name)
    if base.shared != result.shared:
        untied = [group for group in base.shared if group not in result.shared]
        tied = [group for group in result.shared if group not in base.shared]
        group = (untied or tied)[0]
        detail = (f"parameters {' and '.join(map(repr, group))} are one tensor (tied weights) in the base model and "
                  f"separate tensors after it: saved so, the model loads untied, larger, and trains them apart"
                  if untied else f"parameters {' and '.join(map(repr, group))} became one tensor; in the base model "
                                 f"they are separate")
        raise violation(strategy, "signature", detail, parameter=group[0])
    classes = dict(base.modules)
    for (name, text, scalars), (_, new_text, new_scalars) in zip(base.settings, result.settings):
        if text == new_text and scalars == new_scalars:
            continue
        before, after = dict(scalars), dict(new_scalars)
        changed = [f"{key}={before.get(key, '<absent>')} is now {after.get(key, '<absent>')}"
                   for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
        if text != new_text:
            changed.insert(0, f"({text}) is now ({new_text})")
        label = name or "<root>"
        raise violation(strategy, "signature", f"module {label!r} ({classes.get(name, '?')}) changed its settings: "
                                               f"{'; '.join(changed)}", parameter=label)


def head_shapes(model: torch.nn.Module, head_modules: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The shape of every task-head parameter of ``model``, by name (taken before ``wrap``)."""
    heads = tuple(head_modules)
    return {name: tuple(p.shape) for name, p in model.named_parameters()
            if any(name == h or name.startswith(h + ".") for h in heads)}


def _plain_name(name: str) -> str:
    """A wrapped parameter's name without the infixes peft inserts around a base module."""
    name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
    return name.replace(".original_module.", ".").replace(".base_layer.", ".")


def check_wrapped(strategy: StrategyRef, wrapped: Any, heads: Mapping[str, tuple[int, ...]]) -> None:
    """Right after ``wrap``: a model came back, and the task head still has the task's shape.

    ``heads`` is ``head_shapes`` of the base before ``wrap``. Wrappers rename parameters
    (peft's ``base_model.model.`` prefix, ``modules_to_save`` copies), so each head parameter
    is found by its name as a suffix. Caught here, neither fault reaches training, where it
    would end in a shape error or an ``AttributeError`` on ``None`` that names no plugin.
    """
    if not isinstance(wrapped, torch.nn.Module):
        raise violation(strategy, "signature", f"wrap returned {type(wrapped).__name__} {wrapped!r:.60}, not a "
                                               "torch.nn.Module: it must return the model to train (a wrap that "
                                               "changes the model in place still ends with `return model`)")
    found: dict[str, list[tuple[str, tuple[int, ...]]]] = {name: [] for name in heads}
    for name, param in wrapped.named_parameters(remove_duplicate=False):
        plain = _plain_name(name)
        for head in heads:
            if plain == head or plain.endswith("." + head):
                found[head].append((name, tuple(param.shape)))
    for head, shape in heads.items():
        if not found[head]:
            raise violation(strategy, "signature", f"the task head parameter {head!r} {shape} is gone after wrap "
                                                   "(the task head's shape follows the task and must stay)",
                            parameter=head)
        for name, now in found[head]:
            if now != shape:
                raise violation(strategy, "signature",
                                f"wrap changed the task head parameter {name!r} from shape {shape} to {now}: the "
                                "head's shape follows the task (its number of labels) and must stay",
                                parameter=head)


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    raw = data.contiguous().view(torch.uint8) if data.dtype != torch.uint8 else data.contiguous()
    return hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()


class FrozenWeights:
    """Rule 2: digests of the frozen parameters, taken after ``wrap`` and verified later.

    Digests (not copies) keep memory flat: a 7B model's frozen weights are not duplicated.
    """

    def __init__(self, digests: Mapping[str, str]):
        self.digests = dict(digests)

    @classmethod
    def snapshot(cls, model: torch.nn.Module) -> "FrozenWeights":
        return cls({name: _digest(p) for name, p in model.named_parameters() if not p.requires_grad})

    def verify(self, strategy: StrategyRef, model: torch.nn.Module) -> None:
        current = dict(model.named_parameters())
        for name, digest in self.digests.items():
            param = current.get(name)
            if param is None:
                raise violation(strategy, "frozen", "a frozen parameter disappeared during training",
                                        parameter=name)
            if _digest(param) != digest:
                raise violation(strategy, "frozen",
                                        "declared frozen (requires_grad=False) but its bits changed",
                                        parameter=name)

    def __len__(self) -> int:
        return len(self.digests)


def _as_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    start, end = getattr(output, "start_logits", None), getattr(output, "end_logits", None)
    if isinstance(start, torch.Tensor) and isinstance(end, torch.Tensor):  # a span head: both ends compared
        return torch.stack([start, end], dim=-1)
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if value is None and isinstance(output, Mapping):
            value = output.get(key)
        if value is not None:
            return value
    raise TypeError(f"cannot compare model outputs of type {type(output).__name__}")


@torch.no_grad()
def model_outputs(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model`` on ``batch`` in eval mode (training mode is restored after).

    Labels are left out, except for an encoder-decoder (T5, BART): its decoder reads the labels
    shifted right, and without them (or ``decoder_input_ids``) it computes nothing."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        decoder_reads_labels = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels" or decoder_reads_labels}
        return _as_tensor(model(**inputs)).detach().float().cpu()
    finally:
        model.train(was_training)


def check_close(strategy: StrategyRef, rule: str, expected: torch.Tensor, actual: torch.Tensor,
                atol: float, what: str) -> None:
    """Rules 3-5: raise unless two output tensors agree within ``atol`` (0 means bit-exact)."""
    if expected.shape != actual.shape:
        raise violation(strategy, rule, f"{what}: output shape {tuple(actual.shape)} "
                                               f"differs from {tuple(expected.shape)}")
    if atol == 0:
        ok = torch.equal(expected, actual)
    else:
        ok = torch.allclose(expected, actual, atol=atol, rtol=atol)
    if not ok:
        difference = (expected - actual).abs()
        worst = difference.max().item()
        where = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
        raise violation(strategy, rule, f"{what}: largest output difference {worst:.3g} "
                                               f"exceeds the tolerance {atol:g} (logits{list(where)})")


def _base_name(name: str) -> str | None:
    """A wrapped model's parameter name as the base model names it (None: peft's frozen original copy)."""
    if ".original_module." in name:
        return None
    name = re.sub(r"^(base_model\.model\.)+", "", name)
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def trained_head_state(model: torch.nn.Module, head_modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copies of the task head's weights as the trained model uses them, under the base model's names.

    Taken before ``unwrap``: peft trains the head as a ``modules_to_save`` copy, and a merge that
    drops that copy (peft #2502, LLaMA-Factory #5186) leaves the untrained head in the merged
    model. The head is small (a classifier), so the copy is cheap.
    """
    heads = tuple(head_modules)
    state: dict[str, torch.Tensor] = {}
    if not heads:
        return state
    for name, param in model.named_parameters():
        base = _base_name(name)
        if base is not None and any(base == h or base.startswith(h + ".") for h in heads):
            state[base] = param.detach().float().cpu().clone()
    return state


def check_equivalence(strategy: StrategyRef, expected: list[torch.Tensor], merged: torch.Tensor | torch.nn.Module,
                      batches: list[Mapping[str, torch.Tensor]], atol: float,
                      trained_head: Mapping[str, torch.Tensor] | None = None,
                      what: str = "merged model against the trained wrapped model") -> None:
    """Rule 3 on real evaluation batches: the merged model's logits match the trained model's on each.

    ``expected`` holds the trained (wrapped) model's outputs on ``batches``. On a mismatch, a task
    head whose merged weights differ from ``trained_head`` is named as the offending parameter.
    """
    for index, (batch, want) in enumerate(zip(batches, expected)):
        rows = len(next(iter(batch.values())))
        try:
            check_close(strategy, "equivalence", want, model_outputs(merged, batch), atol,
                        f"{what} on eval batch {index + 1} of {len(batches)} ({rows} rows)")
        except ContractViolation as exc:
            current = dict(merged.named_parameters())
            for name, trained in (trained_head or {}).items():
                now = current.get(name)
                if now is None or now.shape != trained.shape:
                    continue
                gap = (now.detach().float().cpu() - trained).abs().max().item()
                if gap > atol:
                    detail = getattr(exc, "detail", None) or str(exc).split(": ", 1)[1]
                    raise violation(strategy, "equivalence",
                                    f"{detail}; the merged task head {name} differs from the trained one "
                                    f"by up to {gap:.3g}: the trained head was not merged back",
                                    parameter=name) from None
            raise


# ---------------------------------------------------------------------------- 4. removal in a run

@torch.no_grad()
def base_features(model: torch.nn.Module, batch: Mapping[str, torch.Tensor],
                  head_modules: Iterable[str] = ()) -> list[tuple[str, torch.Tensor]]:
    """What ``model`` computes on ``batch`` below its task head: each head module's input.

    A run trains the task head, so "removal gives back the base outputs" can only hold below
    it: these are the tensors the head receives (captured by a forward pre-hook). A task
    without a head (a language model) is compared on its logits.
    """
    captured: list[tuple[str, torch.Tensor]] = []
    handles = []

    def capture(name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if first is not None:
                captured.append((f"input of task head {name!r}", first.detach().float().cpu().clone()))
        return hook

    for name in head_modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        handles.append(module.register_forward_pre_hook(capture(name), with_kwargs=True))
    try:
        logits = model_outputs(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured or [("logits", logits)]


def removal_reference(model: torch.nn.Module, batches: list[Mapping[str, torch.Tensor]],
                      head_modules: Iterable[str], max_values: int) -> list[list[tuple[str, torch.Tensor]]]:
    """``base_features`` of the base before ``wrap`` on the first probe batches, at most ``max_values`` held."""
    heads = list(head_modules)
    kept: list[list[tuple[str, torch.Tensor]]] = []
    held = 0
    for batch in batches:
        kept.append(base_features(model, batch, heads))
        held += sum(t.numel() for _, t in kept[-1])
        if held >= max_values:
            break
    return kept


def check_removal(strategy: StrategyRef, reference: list[list[tuple[str, torch.Tensor]]], removed: torch.nn.Module,
                  batches: list[Mapping[str, torch.Tensor]], head_modules: Iterable[str]) -> None:
    """Rule 4 in a run: with a non-mergeable strategy removed, the model computes bit-exactly what
    the base computed before ``wrap`` (``removal_reference``) on the same eval batches."""
    heads = list(head_modules)
    for index, (batch, want) in enumerate(zip(batches, reference)):
        got = base_features(removed, batch, heads)
        rows = len(next(iter(batch.values())))
        where = f"eval batch {index + 1} of {len(reference)} ({rows} rows)"
        if [w for w, _ in want] != [g for g, _ in got]:
            raise violation(strategy, "removal", f"with the strategy removed the model computes "
                                                 f"{[g for g, _ in got]} where the base computed "
                                                 f"{[w for w, _ in want]}, on {where}")
        for (what, expected), (_, actual) in zip(want, got):
            check_close(strategy, "removal", expected, actual, 0.0,
                        f"{what} with the strategy removed, against the base before wrap, on {where}")


# ---------------------------------------------------------------------------- 5. export, reloaded plainly

AUTO_CLASSES = ("AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoModelForCausalLM",
                "AutoModelForImageClassification", "AutoModelForQuestionAnswering", "AutoModelForMaskedLM",
                "AutoModelForSeq2SeqLM", "AutoModel")


def _auto_class(model_class: type) -> Any:
    """The transformers ``AutoModelFor...`` that resolves to ``model_class``; the class itself if none does."""
    import transformers

    config_class = getattr(model_class, "config_class", None)
    for name in AUTO_CLASSES:
        auto = getattr(transformers, name, None)
        try:
            if auto is not None and config_class is not None and auto._model_mapping[config_class] is model_class:
                return auto
        except Exception:  # not in this mapping (or a remote-code class): try the next
            continue
    return model_class


def export_loader(strategy: Any) -> str:
    """How the export check reloads ``strategy``'s export: ``transformers``, ``peft`` or ``own``.

    It follows what the strategy declares (``export_kind`` and ``export_loader``), never its
    ``load``: a model folder loads with transformers, an adapter folder with peft onto a freshly
    built base. Only an export no standard tool reads (a custom ``export_loader``) or one made on a
    quantized base (a ``quantization`` attribute: the base must be re-quantized first) falls back
    to the strategy's own ``load``, and the contract line says so.
    """
    declared = str(getattr(strategy, "export_loader", "") or "").strip().lower()
    if getattr(strategy, "quantization", None):
        return "own"
    if strategy.export_kind == "model" and declared == "transformers":
        return "transformers"
    if strategy.export_kind == "adapter" and declared == "peft":
        return "peft"
    return "own"


def reload_export(strategy: Any, directory: Path, fresh_base: Callable[[], torch.nn.Module], model_class: type,
                  trust_remote_code: bool = False, task: Any = None) -> tuple[torch.nn.Module, str]:
    """Load what ``strategy.save`` wrote in ``directory`` as a user would; returns the model and how.

    ``fresh_base`` builds the base model anew (called only for a peft adapter or the strategy's
    own loader); ``model_class`` is the base's transformers class. A folder without safetensors,
    or one the standard tool cannot load, is a violation of the export rule. ``task``'s
    ``prepare_loaded`` then re-applies what ``save_pretrained`` does not keep (a sequence head's
    pooling), and ``how`` names that step (``task.reload_step()``), as the model card does.
    """
    directory = Path(directory)
    files = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if not any(f.endswith(".safetensors") for f in files):
        raise violation(strategy, "export", f"no safetensors file saved in {directory.name}/ (files: {files})")
    kind = export_loader(strategy)
    if kind == "transformers":
        loader = _auto_class(model_class)
        how = f"transformers {loader.__name__}.from_pretrained"
    elif kind == "peft":
        how = "peft PeftModel.from_pretrained on a freshly built base"
    else:
        reason = (f"its base is quantized ({strategy.quantization})" if getattr(strategy, "quantization", None)
                  else "no standard tool reads this format")
        how = f"{strategy.export_loader} (the strategy's own load(): {reason})"
    base = fresh_base() if kind != "transformers" else None  # a failure here is the model's, not the export's
    try:
        if kind == "transformers":
            extra = {"trust_remote_code": True} if trust_remote_code else {}
            model = loader.from_pretrained(directory, use_safetensors=True, **extra)
        elif kind == "peft":
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, directory)
        else:
            model = strategy.load(base, directory)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise violation(strategy, "export", f"{directory.name}/ does not load with {how}: "
                                            f"{type(exc).__name__}: {message}") from exc
    if not isinstance(model, torch.nn.Module):
        raise violation(strategy, "export", f"{how} returned {type(model).__name__}, not a model")
    if task is not None:
        model = task.prepare_loaded(model)
        step = task.reload_step()
        if step:
            how += f", then {step}"
    return model.eval(), how
