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
        worst = (expected - actual).abs().max().item()
        raise ContractViolation(strategy, rule, f"{what}: largest output difference {worst:.3g} "
                                               f"exceeds the tolerance {atol:g}")
