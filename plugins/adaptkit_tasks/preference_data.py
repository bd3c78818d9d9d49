"""Preference rows read and encoded: a prompt once, then each answer after it, answer tokens labelled.

Layouts of a paired row (``prompt``/``chosen``/``rejected`` by default; ``task.*_column`` renames):

- strings: a prompt and two answers (``{"prompt": "...", "chosen": "...", "rejected": "..."}``);
- messages: the prompt a list of turns (a conversation so far, system prompt included) and each
  answer a string or a list of assistant turns;
- shared conversation: no prompt column; ``chosen`` and ``rejected`` are whole conversations that
  share their opening turns and differ in the final assistant turn (Anthropic HH); the shared
  turns are the prompt;
- UltraFeedback-style: a prompt string and ``chosen``/``rejected`` conversations that repeat it
  as their first user turn; the repetition is dropped.

An unpaired row (KTO) has a prompt, one ``completion`` and a ``label`` saying whether it is
desirable (true/false, 1/0, desirable/undesirable).

Every answer is rendered after its prompt with the chat template exactly as ``instruct`` renders
a conversation (``render_pieces``), so the prompt's tokens are the same for both answers and the
same that ``predict`` continues from; only the final answer's tokens are labelled, earlier
assistant turns of the prompt are not.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from adaptkit import DataError
from adaptkit_tasks.instruct_formats import as_messages, cell_text, with_system
from adaptkit_tasks.padding import IGNORE

TRUE_WORDS = {"true", "1", "yes", "desirable", "good", "chosen"}
FALSE_WORDS = {"false", "0", "no", "undesirable", "bad", "rejected"}


def _message_list(value: Any) -> Optional[list]:
    """``value`` as a list of turns when it is one, or JSON text of one (a CSV cell); else None (plain text)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        if isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed):
            return parsed
    return None


def answer_messages(value: Any, options: Any, what: str) -> list[dict[str, str]]:
    turns = _message_list(value)
    if turns is not None:
        return as_messages(turns, options, what)
    return [{"role": "assistant", "content": cell_text(value, what)}]


def _prompt(value: Any, options: Any, what: str) -> list[dict[str, str]]:
    turns = _message_list(value)
    if turns is not None:
        return as_messages(turns, options, what)
    return [{"role": "user", "content": cell_text(value, what)}]


def _check_answer(messages: list[dict[str, str]], what: str) -> None:
    if not messages:
        raise DataError(f"{what}: no answer is left after the prompt (it repeats the whole prompt)")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{what} must end with an assistant turn, not a {messages[-1]['role']!r} turn")


def pair_messages(row: dict[str, Any], options: Any, where: str
                  ) -> tuple[list[dict[str, str]], list[dict[str, str]], Optional[list[dict[str, str]]]]:
    """The prompt's turns and each answer's turns of one paired row. Without a chosen column the row
    is a ``predict`` input: (prompt, [], None)."""
    prompt_value = row.get(options.prompt_column)
    chosen_value = row.get(options.chosen_column)
    if chosen_value is None and options.rejected_column not in row:
        return with_system(_prompt(prompt_value, options, f"{where}: {options.prompt_column}"),
                            options.system_prompt), [], None
    chosen = answer_messages(chosen_value, options, f"{where}: {options.chosen_column}")
    rejected = answer_messages(row.get(options.rejected_column), options, f"{where}: {options.rejected_column}")
    if prompt_value is None:  # shared conversation: the turns both sides open with are the prompt
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if not shared:
            raise DataError(f"{where}: no {options.prompt_column!r} column, and {options.chosen_column!r} and "
                            f"{options.rejected_column!r} share no opening turn to serve as the prompt")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        prompt = _prompt(prompt_value, options, f"{where}: {options.prompt_column}")
        # UltraFeedback: each side repeats the prompt's turns before its answer
        chosen = chosen[len(prompt):] if chosen[:len(prompt)] == prompt else chosen
        rejected = rejected[len(prompt):] if rejected[:len(prompt)] == prompt else rejected
    _check_answer(chosen, f"{where}: {options.chosen_column}")
    _check_answer(rejected, f"{where}: {options.rejected_column}")
    return with_system(prompt, options.system_prompt), chosen, rejected


def desirable_label(value: Any, what: str) -> bool:
    """A KTO label as a bool: true/false, 1/0, yes/no, desirable/undesirable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower() if value is not None else ""
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise DataError(f"{what} is {value!r}: a desirability label must be true/false, 1/0 or desirable/undesirable")


def unpaired_messages(row: dict[str, Any], options: Any, where: str
                      ) -> tuple[list[dict[str, str]], list[dict[str, str]], Optional[bool]]:
    """The prompt's turns, the completion's turns and whether it is desirable (KTO rows); a row
    without completion is a ``predict`` input."""
    prompt = with_system(_prompt(row.get(options.prompt_column), options, f"{where}: {options.prompt_column}"),
                          options.system_prompt)
    value = row.get(options.completion_column)
    if value is None:
        return prompt, [], None
    completion = answer_messages(value, options, f"{where}: {options.completion_column}")
    completion = completion[len(prompt):] if completion[:len(prompt)] == prompt else completion
    _check_answer(completion, f"{where}: {options.completion_column}")
    return prompt, completion, desirable_label(row.get(options.label_column), f"{where}: {options.label_column}")


def encode_answer(tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]],
                  max_length: int) -> dict[str, Any]:
    """``input_ids``/``labels`` of the prompt followed by one answer: the answer's assistant turns
    labelled (content and end-of-turn marker, as ``instruct`` learns them), everything else -100."""
    from adaptkit_tasks.chat_templates import render_pieces
    from adaptkit_tasks.masking import encode_pieces

    pieces = render_pieces(tokenizer, prompt + answer)
    earlier = sum(1 for message in prompt if message["role"] == "assistant")
    kept, seen = [], 0
    for text, is_answer in pieces:  # the prompt's own assistant turns are context, not the answer
        if is_answer:
            seen += 1
        kept.append((text, is_answer and seen > earlier))
    return encode_pieces(tokenizer, kept, max_length)


def encode_prompt_only(tokenizer: Any, prompt: list[dict[str, str]], max_length: int) -> dict[str, Any]:
    """A ``predict`` input: the prompt with the generation prompt, as training rendered it."""
    from adaptkit_tasks.chat_templates import render_pieces
    from adaptkit_tasks.masking import encode_prompt

    return encode_prompt(tokenizer, render_pieces(tokenizer, prompt), max_length)


def has_answer(labels: list[int]) -> bool:
    return any(label != IGNORE for label in labels[1:])


def pad_rows(sequences: list[list[int]], fill: int, width: int) -> "Any":
    """A [rows, width] long tensor of ``sequences``, each right-padded with ``fill``."""
    import torch

    out = torch.full((len(sequences), width), fill, dtype=torch.long)
    for i, row in enumerate(sequences):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def side_by_side(chosen: list[list[int]], rejected: list[list[int]], fill: int) -> "Any":
    """One row per pair: the chosen sequence right-padded to the batch's widest answer, then the
    rejected one likewise ([pairs, 2 * width]). A batch split across processes by rows (accelerate's
    ``split_batches``) keeps each pair whole, and a plain forward pass still runs on it."""
    import torch

    width = max(len(row) for row in chosen + rejected)
    return torch.cat([pad_rows(chosen, fill, width), pad_rows(rejected, fill, width)], dim=1)


def split_pairs(tensor: "Any") -> "Any":
    """The [pairs, 2 * width] layout of ``side_by_side`` as [2 * pairs, width]: chosen rows, then rejected."""
    import torch

    width = tensor.shape[1] // 2
    return torch.cat([tensor[:, :width], tensor[:, width:]], dim=0)
