"""The conversation and generation options instruct, preference and reward share (one definition,
one set of checks): the copies had drifted, reward taking any role_map value and preference any
temperature (1e-300 overflows the logits and crashed sampling mid-predict)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from adaptkit.plugin.registry import get_registry


def _options(task):
    return get_registry().tasks[task].Options


@pytest.mark.parametrize("task", ["instruct", "preference", "reward"])
def test_every_conversation_task_refuses_an_unknown_role_and_a_broken_template(task):
    options = _options(task)
    assert options(role_map={"human": "user"}).role_map == {"human": "user"}
    with pytest.raises(ValidationError, match="role_map values must be one of"):
        options(role_map={"bot": "robot"})
    with pytest.raises(ValidationError):
        options(chat_template="{% for m in messages %}{{ m.content }")  # does not compile


@pytest.mark.parametrize("task", ["instruct", "preference"])
def test_every_generating_task_refuses_a_temperature_too_small_to_sample_with(task):
    options = _options(task)
    assert options(temperature=0).temperature == 0 and options(temperature=0.7).temperature == 0.7
    with pytest.raises(ValidationError, match="too small to sample with"):
        options(temperature=1e-300)


def test_the_shared_fields_keep_their_names_and_defaults():
    for task in ("instruct", "preference", "reward"):
        fields = _options(task).model_fields
        assert {"role_key", "content_key", "role_map", "system_prompt", "chat_template"} <= set(fields)
        assert fields["role_key"].default == "role" and fields["content_key"].default == "content"
    assert _options("instruct")().max_new_tokens == 64
