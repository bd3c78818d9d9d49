"""Recipe options shared by the tasks that read conversations and generate answers.

``instruct``, ``preference`` and ``reward`` read messages the same way (``role_key``, ``content_key``,
``role_map``, ``system_prompt``, ``chat_template``), and ``instruct`` and ``preference`` generate
the same way at ``predict`` (``max_new_tokens``, ``temperature``, ``top_p``). Each task spelt these
fields and their checks out itself, and the copies drifted: reward accepted any ``role_map`` value
(found only when a row was read) and preference any temperature, though a temperature of 1e-300
overflows the logits and crashed sampling mid-predict. One definition here, with its checks.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field, PositiveInt, field_validator

from adaptkit import TaskOptions

# Below it, logits / temperature overflow float32 (a logit of 40 over 1e-37 is inf): sampling fails.
MIN_TEMPERATURE = 1e-3


class ConversationOptions(TaskOptions):
    """How a conversation's turns are read and rendered."""

    role_key: str = Field("role", description="messages: the key naming a turn's speaker (sharegpt: from).")
    content_key: str = Field("content", description="messages: the key holding a turn's text (sharegpt: value).")
    role_map: dict[str, str] = Field(
        default_factory=dict, description="Extra speaker names -> system/user/assistant (human and gpt are known).")
    system_prompt: Optional[str] = Field(None, description="A system turn put first where a conversation has none.")
    chat_template: Optional[str] = Field(
        None, description="A named template (chatml, zephyr, plain) or Jinja text; overrides the tokenizer's own.")

    @field_validator("chat_template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        from adaptkit_tasks.chat_templates import compiling_template

        return compiling_template(value)

    @field_validator("role_map")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        from adaptkit_tasks.instruct_formats import ROLES

        wrong = {k: v for k, v in value.items() if v not in ROLES}
        if wrong:
            raise ValueError(f"role_map values must be one of {', '.join(ROLES)}; got {wrong}")
        return value


class GenerationOptions(TaskOptions):
    """How ``predict`` generates an answer."""

    max_new_tokens: PositiveInt = Field(64, description="predict: tokens generated per row at most.")
    temperature: float = Field(0.0, ge=0, description="predict: 0 decodes greedily; above 0 samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="predict: nucleus sampling share (with temperature > 0).")

    @field_validator("temperature")
    @classmethod
    def _usable_temperature(cls, value: float) -> float:
        """0 (greedy) or at least MIN_TEMPERATURE: logits divided by 1e-300 are inf, their softmax NaN,
        and sampling then crashed in torch.multinomial mid-predict."""
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"{value!r} is too small to sample with: use 0 for greedy decoding or at least "
                             f"{MIN_TEMPERATURE:g}")
        return value
