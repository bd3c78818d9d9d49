"""The wrapped model of ``frozen_head``: a frozen backbone whose head inputs are cached.

How the head input is found without knowing the family: a forward pre-hook on the head
module records what the model hands it. Three shapes occur:

- ``vector``: the head gets one vector per example (BERT's pooled output, ViT's [CLS]);
  that vector is cached.
- ``pool_after``: the head runs on every token and the model then picks one position
  (GPT-2, Llama: the rightmost non-pad token); only the hidden state at that position is
  cached, and the head is applied to it (a per-token head applied to one token is the same).
- ``sequence``: the head gets token states and pools inside itself (RoBERTa's head reads
  position 0); the unpadded token states are cached and right-padded with zeros again.

Anything else (per-token outputs such as token classification) runs the plain model with the
backbone in eval mode: still a correct linear probe, only not cached.

Which tasks can be cached is observed, not looked up by task name: the first labelled batch
runs the whole model once, and caching goes on only if the model returns one row of logits
per example and its own loss equals the one the wrapper rebuilds from those logits
(``sequence_classification_loss``, transformers' rule for sequence and image classification).
So any task whose model ends in such a head is cached, whatever the task is called.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

import torch
from torch import nn

# Inputs that identify an example; any other tensor argument makes a batch uncacheable.
_KEY_INPUTS = ("input_ids", "token_type_ids", "pixel_values")
# Arguments that do not change what the backbone computes for an example.
_NEUTRAL = {"attention_mask", "labels", "return_dict", "use_cache"}


class _Captured(Exception):
    """Raised from the head's pre-hook to stop the base forward once the head input is known."""

    def __init__(self, value: torch.Tensor):
        super().__init__("head input captured")
        self.value = value


def _pool_positions(input_ids: Optional[torch.Tensor], pad_token_id: Optional[int], rows: int,
                    length: int, device: torch.device) -> torch.Tensor:
    """The position transformers' decoder classifiers read: the rightmost non-pad token."""
    if input_ids is None or pad_token_id is None:
        return torch.full((rows,), length - 1, device=device, dtype=torch.long)
    non_pad = (input_ids != pad_token_id).to(device, torch.long)
    positions = torch.arange(input_ids.shape[-1], device=device, dtype=torch.long)
    return (positions * non_pad).argmax(-1)


def sequence_classification_loss(config: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss transformers' ``*ForSequenceClassification`` models compute, rule for rule."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return nn.functional.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class CachedHeadModel(nn.Module):
    """A frozen backbone plus its trainable head; head inputs cached per example.

    The backbone stays in eval mode whatever ``train()`` is told (its features must be
    deterministic to be cacheable, and a frozen backbone has nothing to learn from dropout);
    the head follows the wrapper's mode, so its own dropout still regularises training.
    """

    def __init__(self, base: nn.Module, head_modules: list[str], cache: bool = True,
                 max_cached: Optional[int] = None):
        super().__init__()
        self.base = base
        self.head_names = list(head_modules)
        self.cache_enabled = cache and len(self.head_names) == 1
        self.max_cached = max_cached
        self.mode: Optional[str] = None  # learnt on the first cacheable batch
        self.loss_checked = False  # whether a labelled batch showed the model's loss is the rebuilt one
        self._cache: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.train(base.training)

    # ----------------------------------------------------------------- plumbing
    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def head(self) -> nn.Module:
        return self.base.get_submodule(self.head_names[0])

    def train(self, mode: bool = True) -> "CachedHeadModel":
        super().train(mode)
        self.base.eval()
        for name in self.head_names:
            self.base.get_submodule(name).train(mode)
        return self

    def release(self) -> nn.Module:
        """Drop the cache and hand back the plain base model (its own train/eval mode restored)."""
        self._cache.clear()
        self.base.train(self.training)
        return self.base

    def __len__(self) -> int:
        return len(self._cache)

    # ----------------------------------------------------------------- keys
    def _keys(self, inputs: dict[str, torch.Tensor], attention_mask: Optional[torch.Tensor]) -> list[bytes]:
        """One digest per row of every identifying input, padding removed by the attention mask."""
        rows = next(iter(inputs.values())).shape[0]
        mask = attention_mask.bool().cpu() if attention_mask is not None else None
        parts = {name: value.detach().cpu() for name, value in sorted(inputs.items())}
        keys = []
        for row in range(rows):
            digest = hashlib.blake2b(digest_size=16)
            for name, value in parts.items():
                item = value[row]
                if mask is not None and item.ndim == 1 and item.shape[0] == mask.shape[1]:
                    item = item[mask[row]]
                digest.update(name.encode())
                digest.update(str(tuple(item.shape)).encode())
                digest.update(item.contiguous().numpy().tobytes())
            keys.append(digest.digest())
        return keys

    def _cacheable(self, kwargs: dict[str, Any]) -> bool:
        if not self.cache_enabled or self.mode == "uncacheable":
            return False
        if not any(kwargs.get(name) is not None for name in _KEY_INPUTS):
            return False
        return all(name in _KEY_INPUTS or name in _NEUTRAL or value is None for name, value in kwargs.items())

    # ----------------------------------------------------------------- features
    @torch.no_grad()
    def _learn_mode(self, inputs: dict[str, Any], labels: Optional[torch.Tensor] = None) -> None:
        """Run the whole model once to see what the head receives and what the model returns.

        With ``labels``, also compare the model's own loss with the one ``forward`` would rebuild
        from its logits: a model whose loss follows another rule is not cached."""
        seen: dict[str, Any] = {}
        pre = self.head.register_forward_pre_hook(lambda m, args: seen.setdefault("input", args[0]))
        post = self.head.register_forward_hook(lambda m, args, out: seen.setdefault("output", out))
        try:
            outputs = self.base(**inputs, **({"labels": labels} if labels is not None else {}))
            logits = outputs.logits
        finally:
            pre.remove()
            post.remove()
        if labels is not None:
            self.loss_checked = True
            own = getattr(outputs, "loss", None)
            if logits.ndim != 2 or own is None or not torch.allclose(
                    sequence_classification_loss(self.config, logits, labels).float(), own.float(),
                    rtol=1e-4, atol=1e-6):
                self.mode = "uncacheable"
                return
        head_in, head_out = seen.get("input"), seen.get("output")
        if not isinstance(head_in, torch.Tensor) or not isinstance(head_out, torch.Tensor) or logits.ndim != 2:
            self.mode = "uncacheable"
        elif head_in.ndim == 2:
            self.mode = "vector"
        elif head_in.ndim == 3 and head_out.ndim == 3:
            self.mode = "pool_after"
        elif head_in.ndim == 3 and head_out.ndim == 2:
            self.mode = "sequence"
        else:
            self.mode = "uncacheable"

    @torch.no_grad()
    def _features(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The head's input for every row of the batch, from one backbone pass that stops at the head."""
        def stop(module, args):
            raise _Captured(args[0])

        hook = self.head.register_forward_pre_hook(stop)
        try:
            self.base(**inputs)
        except _Captured as captured:
            return captured.value.detach()
        finally:
            hook.remove()
        raise RuntimeError("frozen_head: the model never called its head module "
                           f"{self.head_names[0]!r}; cannot cache its input")

    def _row_features(self, features: torch.Tensor, inputs: dict[str, Any],
                      attention_mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
        rows = features.shape[0]
        if self.mode == "vector":
            return list(features)
        if self.mode == "pool_after":
            positions = _pool_positions(inputs.get("input_ids"), getattr(self.config, "pad_token_id", None),
                                        rows, features.shape[1], features.device)
            return list(features[torch.arange(rows, device=features.device), positions])
        # "sequence": keep the real tokens only; padding is restored on the way out.
        if attention_mask is None:
            return list(features)
        mask = attention_mask.bool().to(features.device)
        return [features[row][mask[row]] for row in range(rows)]

    def _stack(self, rows: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        if self.mode == "sequence":
            width = max(row.shape[0] for row in rows)
            rows = [nn.functional.pad(row, (0, 0, 0, width - row.shape[0])) for row in rows]
        return torch.stack([row.to(device, non_blocking=True) for row in rows])

    def _head_inputs(self, inputs: dict[str, Any]) -> list[torch.Tensor]:
        """Every row's head input: from the cache, or from one backbone pass for the rows it lacks."""
        attention_mask = inputs.get("attention_mask")
        keys = self._keys({k: v for k, v in inputs.items() if k in _KEY_INPUTS}, attention_mask)
        found = [self._cache.get(key) for key in keys]
        missing = [row for row, value in enumerate(found) if value is None]
        if missing:
            self.misses += len(missing)
            fresh = self._row_features(self._features(inputs), inputs, attention_mask)
            for row in missing:
                found[row] = fresh[row]
                if self.max_cached is None or len(self._cache) < self.max_cached:
                    self._cache[keys[row]] = fresh[row]
        self.hits += len(keys) - len(missing)
        return found

    @torch.no_grad()
    def warm(self, batches: Any) -> int:
        """Fill the cache from ``batches`` (the training rows, sorted by length) before training.

        Sorted, larger batches carry almost no padding, so this one pass costs less than the
        first epoch's length-grouped training batches would; the epochs then hit the cache
        from their first step. Returns the rows cached; stops at once for uncacheable input.
        """
        before = len(self._cache)
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels" and v is not None}
            if not self._cacheable(inputs):
                break
            labels = batch.get("labels")
            if self.mode is None or (labels is not None and not self.loss_checked):
                self._learn_mode(inputs, labels)
                if self.mode == "uncacheable":
                    break
            self._head_inputs(inputs)
            if self.max_cached is not None and len(self._cache) >= self.max_cached:
                break
        return len(self._cache) - before

    # ----------------------------------------------------------------- forward
    def forward(self, labels: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        if not self._cacheable(kwargs):
            return self.base(labels=labels, **kwargs)
        inputs = {k: v for k, v in kwargs.items() if v is not None}
        if self.mode is None or (labels is not None and not self.loss_checked):
            self._learn_mode(inputs, labels)
            if self.mode == "uncacheable":
                return self.base(labels=labels, **inputs)
        found = self._head_inputs(inputs)
        head = self.head
        device = next(head.parameters()).device
        logits = head(self._stack(found, device))
        loss = sequence_classification_loss(self.config, logits, labels) if labels is not None else None
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(loss=loss, logits=logits)
