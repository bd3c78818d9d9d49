"""The data layouts of the ``instruct`` task, each turned into one list of chat messages.

- ``prompt_completion``: a prompt and the completion to learn (either may also be a list of
  messages, the "conversational" variant);
- ``alpaca``: instruction, optional input, output;
- ``messages``: a conversation as ``[{role, content}, ...]`` ("messages" / "sharegpt"), with
  configurable role and content keys and a role map (sharegpt's ``human``/``gpt`` by default).

Plain ``text`` needs no messages and is encoded directly by the task. Every other layout goes
through the same chat template, so one masking rule covers them all.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from adaptkit import DataError

ROLES = ("system", "user", "assistant", "tool")
DEFAULT_ROLE_MAP = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                    "chatgpt": "assistant", "System": "system", "User": "user", "Assistant": "assistant"}


def cell_text(value: Any, what: str) -> str:
    if value is None:
        raise DataError(f"{what} is empty")
    if isinstance(value, (dict, list)):
        raise DataError(f"{what} must be text, not {type(value).__name__}")
    return str(value)


def as_messages(value: Any, options: Any, what: str) -> list[dict[str, str]]:
    """A list of ``{role, content}`` dicts from a cell (a list, or JSON text of one in CSV files)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{what} is text that is not a JSON list of messages ({exc.msg})") from None
    if not isinstance(value, list):
        raise DataError(f"{what} must be a list of messages, not {type(value).__name__}")
    roles = {**DEFAULT_ROLE_MAP, **options.role_map}
    messages = []
    for number, item in enumerate(value, start=1):
        where = f"{what}, message {number}"
        if not isinstance(item, dict):
            raise DataError(f"{where} must be an object with {options.role_key!r} and {options.content_key!r}, "
                            f"not {type(item).__name__}")
        missing = [key for key in (options.role_key, options.content_key) if item.get(key) is None]
        if missing:
            present = ", ".join(sorted(k for k, v in item.items() if v is not None)) or "none"
            raise DataError(f"{where} lacks {', '.join(map(repr, missing))} (keys present: {present}); set "
                            f"task.role_key / task.content_key to the names your data uses")
        role = str(item[options.role_key])
        role = roles.get(role, role)
        if role not in ROLES:
            raise DataError(f"{where}: role {item[options.role_key]!r} is not one of {', '.join(ROLES)}; map it "
                            f"with task.role_map (e.g. {{{item[options.role_key]!r}: assistant}})")
        messages.append({"role": role, "content": cell_text(item[options.content_key], f"{where} content")})
    if not messages:
        raise DataError(f"{what} holds no messages")
    return messages


def with_system(messages: list[dict[str, str]], system: Optional[str]) -> list[dict[str, str]]:
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}] + messages
    return messages


def row_messages(row: dict[str, Any], options: Any, where: str) -> tuple[list[dict[str, str]], bool]:
    """The conversation of one row and whether it holds an answer to learn (else: a prompt to answer).

    A row whose answer column is absent (a ``predict`` input) yields the prompt alone.
    """
    layout = options.format
    if layout == "prompt_completion":
        prompt = row.get(options.prompt_column)
        if isinstance(prompt, list):
            messages = as_messages(prompt, options, f"{where}: {options.prompt_column}")
        else:
            messages = [{"role": "user", "content": cell_text(prompt, f"{where}: {options.prompt_column}")}]
        completion = row.get(options.completion_column)
        if completion is not None:
            if isinstance(completion, list):
                messages += as_messages(completion, options, f"{where}: {options.completion_column}")
            else:
                messages.append({"role": "assistant", "content": cell_text(completion, f"{where}: "
                                                                                    f"{options.completion_column}")})
    elif layout == "alpaca":
        instruction = cell_text(row.get(options.instruction_column), f"{where}: {options.instruction_column}")
        extra = row.get(options.input_column)
        content = f"{instruction}\n\n{extra}" if extra not in (None, "") else instruction
        messages = [{"role": "user", "content": content}]
        output = row.get(options.output_column)
        if output is not None:
            messages.append({"role": "assistant", "content": cell_text(output, f"{where}: {options.output_column}")})
    elif layout == "messages":
        messages = as_messages(row.get(options.messages_column), options, f"{where}: {options.messages_column}")
    else:  # pragma: no cover - the options model allows no other value
        raise ValueError(layout)
    messages = with_system(messages, options.system_prompt)
    return messages, messages[-1]["role"] == "assistant"
