"""Token ids and labels of one example: the loss covers answers only, unless asked otherwise.

Each rendered piece is tokenized on its own and the ids joined, so every token belongs to
exactly one piece and the answer/prompt boundary is exact (tokenizing the joined text could
merge a token across it). ``predict`` tokenizes a prompt the same way, so the model sees at
inference the very ids it was trained on.
"""
from __future__ import annotations

from typing import Any

from adaptkit_tasks.padding import IGNORE


def encode_pieces(tokenizer: Any, pieces: list[tuple[str, bool]], max_length: int,
                  train_on_inputs: bool = False) -> dict[str, Any]:
    """``input_ids``, ``labels`` (-100 outside answers unless ``train_on_inputs``), ``length``,
    and ``prompt_length``: the tokens before the last answer (what ``predict`` continues from).

    Examples longer than ``max_length`` lose their end, wherever it falls (inside a turn too):
    the labels are cut with the ids, so a cut answer trains on the part that is kept.
    """
    ids: list[int] = []
    labels: list[int] = []
    prompt_length = None
    for text, answer in pieces:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if answer:
            prompt_length = len(ids)
        ids += tokens
        labels += tokens if answer or train_on_inputs else [IGNORE] * len(tokens)
    if prompt_length is None:
        prompt_length = len(ids)
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels, "length": len(ids), "prompt_length": min(prompt_length, len(ids))}


def encode_prompt(tokenizer: Any, pieces: list[tuple[str, bool]], max_length: int) -> dict[str, Any]:
    """A generation input: every token unlabelled, the head dropped when too long (the end of a
    prompt, next to where the answer starts, matters most)."""
    ids: list[int] = []
    for text, _ in pieces:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[-max_length:]
    return {"input_ids": ids, "labels": [IGNORE] * len(ids), "length": len(ids), "prompt_length": len(ids)}


def encode_text(tokenizer: Any, text: str, max_length: int, start: list[int], end: list[int]) -> dict[str, Any]:
    """Plain text: every token is learnt; ``predict`` continues the text (without its end token)."""
    body = (start + tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]
    ids = (body + end)[:max_length]
    return {"input_ids": ids, "labels": list(ids), "length": len(ids), "prompt_length": len(body)}
