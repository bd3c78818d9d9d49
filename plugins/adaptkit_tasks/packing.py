"""Packing: several short examples in one ``max_length`` row, each attending only to itself.

A packed row carries ``position_ids`` that restart at 0 for every example and no attention
mask. transformers' mask builder (``masking_utils.create_causal_mask``, used by Llama, GPT-2
and most decoders it ships) reads such position ids as a packed batch and builds a
block-diagonal causal mask, so no token attends across an example boundary; flash attention
uses the same position ids (variable-length kernels). The first label of every example is
-100: unpacked, nothing predicts an example's first token, so packed, the previous example's
last token must not either. A packed row's summed loss is then exactly the sum of its
examples' losses, which the tests and ``benchmarks/packing.py`` check.
"""
from __future__ import annotations

import bisect
import importlib
from typing import Any, Optional

from adaptkit_tasks.padding import IGNORE


class Batch(dict):
    """A collated batch; ``prompt_lengths`` (where each row's prompt ends) travels beside the
    model inputs, not among them, for ``predict_batch``."""

    prompt_lengths: list[int]


def plan_packs(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of the examples in each pack: best-fit decreasing, O(n log n).

    Longest first, each into the fullest pack that still has room, so packs come out nearly
    full. Examples keep their own order inside a pack.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    room: list[tuple[int, int]] = []  # (free tokens, pack index), sorted
    packs: list[list[int]] = []
    for index in order:
        need = lengths[index]
        at = bisect.bisect_left(room, (need, -1))
        if at < len(room):
            free, pack = room.pop(at)
        else:
            free, pack = capacity, len(packs)
            packs.append([])
        packs[pack].append(index)
        if free - need > 0:
            bisect.insort(room, (free - need, pack))
    return [sorted(pack) for pack in packs]


def pack_table(table: Any, capacity: int) -> Any:
    """The encoded examples of ``table`` joined into packs of at most ``capacity`` tokens."""
    import datasets

    lengths = list(table["length"])
    ids, labels = table["input_ids"], table["labels"]
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": [], "examples": []}
    for pack in plan_packs(lengths, capacity):
        packed_ids: list[int] = []
        packed_labels: list[int] = []
        positions: list[int] = []
        for index in pack:
            packed_ids += ids[index]
            packed_labels += [IGNORE] + list(labels[index][1:])
            positions += list(range(len(ids[index])))
        rows["input_ids"].append(packed_ids)
        rows["labels"].append(packed_labels)
        rows["position_ids"].append(positions)
        rows["length"].append(len(packed_ids))
        rows["examples"].append(len(pack))
    return datasets.Dataset.from_dict(rows)


def collate_fn(pad_id: int):
    """Right-padded batches with an attention mask; packed rows (with ``position_ids``) get
    position ids instead of a mask, the padding being one more "example" at each row's end."""
    import torch

    def collate(rows: list[dict[str, Any]]) -> Batch:
        width = max(len(row["input_ids"]) for row in rows)
        packed = "position_ids" in rows[0]
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        extra = (torch.arange(width).repeat(len(rows), 1) if packed
                 else torch.zeros((len(rows), width), dtype=torch.long))
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            if packed:
                extra[i, :n] = torch.tensor(row["position_ids"])
                extra[i, n:] = torch.arange(width - n)
            else:
                extra[i, :n] = 1
        batch = Batch(input_ids=ids, labels=labels, **({"position_ids": extra} if packed else {"attention_mask": extra}))
        batch.prompt_lengths = [int(row.get("prompt_length", len(row["input_ids"]))) for row in rows]
        return batch

    return collate


def isolation_problem(config: Any, strategy: Optional[str] = None) -> Optional[str]:
    """Why packed examples of this model would attend to each other; None when they cannot.

    Decided from the model's code (does its module build masks with transformers'
    ``create_causal_mask``, which reads packed position ids?) and the strategy (peft drops
    ``position_ids`` for prompt-learning methods), without building the model.
    """
    if strategy in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        return (f"strategy {strategy!r} is a prompt-learning method, for which peft drops position_ids: packed "
                f"examples would attend to each other and get shifted positions")
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", ""))
        module = importlib.import_module(f"transformers.models.{config.model_type.replace('-', '_')}."
                                         f"modeling_{config.model_type.replace('-', '_')}") if name else None
    except ImportError:
        module = None
    if module is None or not hasattr(module, "create_causal_mask"):
        return (f"the {getattr(config, 'model_type', 'unknown')} model does not build its attention mask from "
                f"packed position ids, so packed examples would attend to the examples before them in the row")
    return None
