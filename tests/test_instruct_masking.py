"""The instruct task's rendering and loss mask, checked token by token against hand-written ids.

A word-level tokenizer (one token per word, the ChatML markers whole) makes the expected
sequence writable by hand: every position is listed with whether its loss counts.
"""
from __future__ import annotations

import pytest

from test_instruct_kit import word_tokenizer

WORDS = "system user assistant be brief hi there hello how are you fine thanks bye".split()
CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you"},
                {"role": "assistant", "content": "fine thanks"}]
# (token, learnt): ChatML renders "<|im_start|>role\ncontent<|im_end|>\n" per turn; the answer of a
# turn is its content and its end marker, everything from "<|im_start|>assistant" back is prompt.
EXPECTED = [("<|im_start|>", 0), ("system", 0), ("be", 0), ("brief", 0), ("<|im_end|>", 0),
            ("<|im_start|>", 0), ("user", 0), ("hi", 0), ("there", 0), ("<|im_end|>", 0),
            ("<|im_start|>", 0), ("assistant", 0), ("hello", 1), ("<|im_end|>", 1),
            ("<|im_start|>", 0), ("user", 0), ("how", 0), ("are", 0), ("you", 0), ("<|im_end|>", 0),
            ("<|im_start|>", 0), ("assistant", 0), ("fine", 1), ("thanks", 1), ("<|im_end|>", 1)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from adaptkit_tasks.chat_templates import NAMED_TEMPLATES

    return word_tokenizer(tmp_path_factory.mktemp("words"), WORDS, NAMED_TEMPLATES["chatml"])


def _task(train_table=None, **options):
    from adaptkit_tasks.instruct import Instruct

    task = Instruct(options)
    if train_table is not None:
        task.setup(train_table)
    return task


def _encode(tokenizer, rows, training=True, **options):
    """Rows encoded as the training split (``training``) or as eval/predict rows."""
    import datasets

    table = datasets.Dataset.from_list(rows)
    task = _task(table if training else None, **options)
    return [dict(row) for row in task.preprocess(table, tokenizer)]


def _check(tokenizer, row, expected):
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert tokens == [token for token, _ in expected]
    wanted = [token_id if learnt else -100 for token_id, (_, learnt) in zip(row["input_ids"], expected)]
    assert row["labels"] == wanted


def test_multi_turn_conversation_learns_only_assistant_turns(tokenizer):
    row = _encode(tokenizer, [{"messages": CONVERSATION}])[0]
    _check(tokenizer, row, EXPECTED)
    assert row["length"] == len(EXPECTED) and row["prompt_length"] == 22  # up to the last "assistant"


@pytest.mark.parametrize("cut", [23, 13, 17])
def test_truncation_inside_a_turn_keeps_the_mask_aligned(tokenizer, cut):
    """23 and 13 end inside an answer, 17 inside a user turn."""
    row = _encode(tokenizer, [{"messages": CONVERSATION}], training=False, max_length=cut)[0]
    _check(tokenizer, row, EXPECTED[:cut])
    assert row["prompt_length"] == min(22, cut)


def test_held_out_rows_whose_every_answer_is_cut_off_are_refused(tokenizer):
    """A cut at 2 (inside the system turn) leaves the only answer nothing to score: an eval loss
    over no tokens was NaN (issue 22, item 10), so the held-out table is refused."""
    from adaptkit.errors import DataError

    with pytest.raises(DataError, match=r"task.max_length \(2\) cuts off the answer of all 1 eval rows"):
        _encode(tokenizer, [{"messages": CONVERSATION}], training=False, max_length=2)


def test_train_on_inputs_learns_every_token_of_training_rows_only(tokenizer):
    """With train_on_inputs the training split learns prompts too; eval rows still score answers only."""
    train = _encode(tokenizer, [{"messages": CONVERSATION}], train_on_inputs=True)[0]
    assert train["labels"] == train["input_ids"]
    held_out = _encode(tokenizer, [{"messages": CONVERSATION}], training=False, train_on_inputs=True)[0]
    _check(tokenizer, held_out, EXPECTED)


def test_system_prompt_is_added_where_a_conversation_has_none(tokenizer):
    row = _encode(tokenizer, [{"messages": CONVERSATION[1:]}], system_prompt="be brief")[0]
    _check(tokenizer, row, EXPECTED)
    kept = _encode(tokenizer, [{"messages": CONVERSATION}], system_prompt="bye")[0]  # has one: kept as is
    _check(tokenizer, kept, EXPECTED)


@pytest.mark.parametrize("row,options", [
    ({"prompt": "hi there", "completion": "hello"}, {"format": "prompt_completion"}),
    ({"prompt": [{"role": "user", "content": "hi there"}], "completion": [{"role": "assistant", "content": "hello"}]},
     {"format": "prompt_completion"}),
    ({"instruction": "hi", "input": "there", "output": "hello"}, {"format": "alpaca"}),
    ({"q": "hi there", "a": "hello"}, {"format": "prompt_completion", "prompt_column": "q", "completion_column": "a"}),
    ({"conversations": [{"from": "human", "value": "hi there"}, {"from": "gpt", "value": "hello"}]},
     {"messages_column": "conversations", "role_key": "from", "content_key": "value"}),
    ({"messages": [{"role": "visitor", "content": "hi there"}, {"role": "helper", "content": "hello"}]},
     {"role_map": {"visitor": "user", "helper": "assistant"}}),
], ids=["prompt_completion", "conversational_pc", "alpaca", "renamed_columns", "sharegpt", "role_map"])
def test_every_layout_renders_through_the_same_template(tokenizer, row, options):
    encoded = _encode(tokenizer, [row], system_prompt="be brief", **options)[0]
    _check(tokenizer, encoded, EXPECTED[:14])


def test_text_layout_learns_every_token_and_needs_no_template(tmp_path):
    bare = word_tokenizer(tmp_path, WORDS)  # no chat template: plain text does not need one
    row = _encode(bare, [{"text": "hi there"}], format="text")[0]
    assert bare.convert_ids_to_tokens(row["input_ids"]) == ["<s>", "hi", "there", "</s>"]
    assert row["labels"] == row["input_ids"] and row["prompt_length"] == 3  # predict continues before </s>


def test_a_prompt_renders_as_in_training_up_to_the_generation_prompt(tokenizer):
    """predict rows (no final answer) end with the generation prompt, tokenized as training saw it."""
    trained = _encode(tokenizer, [{"messages": CONVERSATION}])[0]
    prompt = _encode(tokenizer, [{"messages": CONVERSATION[:4]}], training=False)[0]
    assert prompt["input_ids"] == trained["input_ids"][:trained["prompt_length"]]
    assert set(prompt["labels"]) == {-100}
    alpaca = _encode(tokenizer, [{"instruction": "hi", "input": "there"}], training=False, format="alpaca",
                     system_prompt="be brief")[0]
    assert tokenizer.convert_ids_to_tokens(alpaca["input_ids"]) == [t for t, _ in EXPECTED[:12]]


@pytest.mark.parametrize("messages,match", [
    ([{"role": "robot", "content": "hi"}], r"row 1: messages, message 1: role 'robot' is not one of .*role_map"),
    ([{"role": "user"}], r"row 1: messages, message 1 lacks 'content'.*task.content_key"),
    ("not json", r"row 1: messages is text that is not a JSON list"),
    ([], r"row 1: messages holds no messages"),
    (["hi"], r"message 1 must be an object"),
])
def test_malformed_conversations_name_the_row_and_the_fix(tokenizer, messages, match):
    from adaptkit.errors import DataError

    with pytest.raises(DataError, match=match):
        _encode(tokenizer, [{"messages": messages}])


def test_conversation_as_json_text_in_a_csv_cell_is_read(tokenizer):
    import json

    row = _encode(tokenizer, [{"messages": json.dumps(CONVERSATION)}])[0]
    _check(tokenizer, row, EXPECTED)


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    from adaptkit.errors import DataError

    last_only = "{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% endif %}{% endfor %}"
    rewriting = word_tokenizer(tmp_path, WORDS, last_only)
    with pytest.raises(DataError, match="row 1: the chat template renders the conversation before turn 3"):
        _encode(rewriting, [{"messages": CONVERSATION}])


def test_training_split_without_any_answer_is_refused(tokenizer):
    from adaptkit.errors import DataError

    with pytest.raises(DataError, match="no training row has an answer"):
        _encode(tokenizer, [{"messages": CONVERSATION}], max_length=5)


def test_chat_template_option_is_checked_when_the_recipe_is_read():
    from pydantic import ValidationError

    from adaptkit_tasks.instruct import InstructOptions

    assert InstructOptions(chat_template="chatml").chat_template == "chatml"
    with pytest.raises(ValidationError, match="unknown chat template name 'chatlm'.*chatml"):
        InstructOptions(chat_template="chatlm")
    with pytest.raises(ValidationError, match="not valid Jinja.*template line 1"):
        InstructOptions(chat_template="{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(ValidationError, match="never reads `messages`"):
        InstructOptions(chat_template="{{ bos_token }}")
    with pytest.raises(ValidationError, match="role_map values"):
        InstructOptions(role_map={"bot": "assistent"})
    with pytest.raises(ValidationError, match="top_p"):
        InstructOptions(top_p=1.5)
