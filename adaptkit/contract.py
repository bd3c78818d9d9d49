"""The architecture-preserving contract, enforced by the core on every strategy.

1. signature:   ``unwrap(wrap(base))`` has the base's ordered parameter names, shapes,
                dtypes and module class tree: nothing added, nothing removed.
2. frozen:      parameters a strategy leaves frozen are bit-identical after training.
3. equivalence: a merged model computes what the wrapped one computed (within tolerance).
4. removal:     removing a non-mergeable addition gives back the base outputs exactly.
5. export:      what was saved loads back with peft / transformers and computes the same.

Each check raises ``ContractViolation`` naming the rule and the first offending parameter.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from adaptkit.errors import ContractViolation


@dataclass(frozen=True)
class Signature:
    """What "the same architecture" means: parameters in order, and the module class tree."""

    parameters: tuple[tuple[str, tuple[int, ...], str], ...]
    modules: tuple[tuple[str, str], ...]


def architecture_signature(model: torch.nn.Module) -> Signature:
    """The ordered (name, shape, dtype) of every parameter and the class of every module."""
    params = tuple(
        (name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters(remove_duplicate=False)
    )
    modules = tuple((name, type(m).__name__) for name, m in model.named_modules())
    return Signature(params, modules)


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


def check_signature(strategy: str, base: Signature, result: Signature,
                    head_modules: Iterable[str] = ()) -> None:
    """Rule 1: raise unless ``result`` is exactly ``base`` (the task head is named if involved)."""
    heads = tuple(head_modules)
    diff = _first_difference(base.parameters, result.parameters)
    if diff is not None:
        expected, found = diff
        name = (expected or found)[0]
        if expected is None:
            detail = f"parameter {name!r} was added ({found[1]}, {found[2]})"
        elif found is None:
            detail = f"parameter {name!r} was removed"
        else:
            detail = f"expected {expected}, found {found}"
        if any(name == h or name.startswith(h + ".") for h in heads):
            detail += " (this is the task head, whose shape must still match the task)"
        raise ContractViolation(strategy, "signature", detail, parameter=name)
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
        raise ContractViolation(strategy, "signature", detail, parameter=name)


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

    def verify(self, strategy: str, model: torch.nn.Module) -> None:
        current = dict(model.named_parameters())
        for name, digest in self.digests.items():
            param = current.get(name)
            if param is None:
                raise ContractViolation(strategy, "frozen", "a frozen parameter disappeared during training",
                                        parameter=name)
            if _digest(param) != digest:
                raise ContractViolation(strategy, "frozen",
                                        "declared frozen (requires_grad=False) but its bits changed",
                                        parameter=name)

    def __len__(self) -> int:
        return len(self.digests)


def _as_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if value is None and isinstance(output, Mapping):
            value = output.get(key)
        if value is not None:
            return value
    raise TypeError(f"cannot compare model outputs of type {type(output).__name__}")


@torch.no_grad()
def model_outputs(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model`` on ``batch`` in eval mode (training mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        return _as_tensor(model(**inputs)).detach().float().cpu()
    finally:
        model.train(was_training)


def check_close(strategy: str, rule: str, expected: torch.Tensor, actual: torch.Tensor,
                atol: float, what: str) -> None:
    """Rules 3-5: raise unless two output tensors agree within ``atol`` (0 means bit-exact)."""
    if expected.shape != actual.shape:
        raise ContractViolation(strategy, rule, f"{what}: output shape {tuple(actual.shape)} "
                                               f"differs from {tuple(expected.shape)}")
    if atol == 0:
        ok = torch.equal(expected, actual)
    else:
        ok = torch.allclose(expected, actual, atol=atol, rtol=atol)
    if not ok:
        difference = (expected - actual).abs()
        worst = difference.max().item()
        where = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
        raise ContractViolation(strategy, rule, f"{what}: largest output difference {worst:.3g} "
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


def check_equivalence(strategy: str, expected: list[torch.Tensor], merged: torch.Tensor | torch.nn.Module,
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
                    detail = str(exc).split(": ", 1)[1]
                    raise ContractViolation(strategy, "equivalence",
                                            f"{detail}; the merged task head {name} differs from the trained one "
                                            f"by up to {gap:.3g}: the trained head was not merged back",
                                            parameter=name) from None
            raise
