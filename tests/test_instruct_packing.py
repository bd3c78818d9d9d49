"""Packing: examples share rows without seeing each other; batched generation equals one-by-one."""
from __future__ import annotations

import pytest
import torch

from test_instruct_kit import bpe_tokenizer, corpus, fruit_rows, tiny_config

FAMILIES = ["llama", "gpt2"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from adaptkit_tasks.chat_templates import NAMED_TEMPLATES

    return bpe_tokenizer(tmp_path_factory.mktemp("bpe"), corpus(), template=NAMED_TEMPLATES["chatml"])


def _instruct(**options):
    from adaptkit_tasks.instruct import Instruct

    return Instruct({"max_length": 96, **options})


def _model(task, family: str, vocab: int):
    """The task's own model factory (it turns the KV cache off when packing)."""
    from transformers import AutoConfig

    settings = {**tiny_config(family, vocab), "initializer_range": 0.5}  # sharp attention: leaks would show
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    return task.build_model("", config, True).eval()


def _row_losses(model, batch, examples=None) -> list[float]:
    """Summed next-token loss of every example: per row unpacked, per position-id block packed
    (the first ``examples[row]`` blocks of a row; the rest is padding)."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                               ignore_index=-100, reduction="none")
    if "position_ids" not in batch:
        return losses.sum(dim=1).tolist()
    sums = []
    for row, positions, count in zip(losses, batch["position_ids"][:, 1:], examples):
        starts = [0] + [i for i in range(1, len(positions)) if positions[i] == 0] + [len(positions)]
        sums += [float(row[a:b].sum()) for a, b in list(zip(starts, starts[1:]))[:count]]
    return sums


def test_plan_packs_places_every_example_once_within_capacity():
    from adaptkit_tasks.packing import plan_packs

    lengths = [6, 5, 4, 3, 2, 10, 1, 9]
    packs = plan_packs(lengths, 10)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 10 for pack in packs)
    assert len(packs) == 4  # 40 tokens: best-fit decreasing fills every pack exactly
    assert all(pack == sorted(pack) for pack in packs)


@pytest.mark.parametrize("family,layout", [("llama", "messages"), ("gpt2", "messages"), ("gpt2", "text")])
def test_packed_rows_give_each_example_exactly_its_unpacked_loss(tokenizer, family, layout):
    """The loss of every example is the same alone and packed with others: nothing attends across.

    (text learns every token: there, an example's first token must not be a target in the pack.)
    """
    import datasets

    from adaptkit_tasks.packing import plan_packs

    rows = fruit_rows(layout, 24, 3)
    if layout == "messages":
        rows = [{"messages": row["messages"][:3 + 2 * (i % 2)]} for i, row in enumerate(rows)]  # 1 or 2 answers
    else:
        rows = [{"text": " ".join(row["text"].split()[:4 + 4 * (i % 2)])} for i, row in enumerate(rows)]
    table = datasets.Dataset.from_list(rows)
    packing = _instruct(packing=True, max_length=200, format=layout)
    packing.setup(table)
    packed = packing.preprocess(table, tokenizer)
    plain = _instruct(format=layout).preprocess(table, tokenizer)
    assert len(packed) < len(plain) / 2 and sum(packed["examples"]) == len(plain)
    model = _model(packing, family, len(tokenizer))
    collate = packing.collate(tokenizer)
    batch = collate([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    # the packed order: each pack's examples in index order
    order = [i for pack in plan_packs(list(plain["length"]), 200) for i in pack]
    alone = _row_losses(model, collate([plain[i] for i in order]))
    together = _row_losses(model, batch, packed["examples"])
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-4)
    leaky = dict(batch, attention_mask=torch.ones_like(batch["input_ids"]))  # a mask that forbids nothing
    leaked = _row_losses(model, leaky, packed["examples"])
    assert max(abs(a - b) for a, b in zip(leaked, alone)) > 0.1


def test_packing_applies_to_the_training_split_only(tokenizer):
    """Eval rows stay one per example (their loss is per answer), predict rows one per input."""
    import datasets

    train = datasets.Dataset.from_list(fruit_rows("messages", 8, 1))
    held_out = datasets.Dataset.from_list(fruit_rows("messages", 8, 2))
    task = _instruct(packing=True, max_length=200)
    task.setup(train)
    assert len(task.preprocess(train, tokenizer)) < 8
    assert len(task.preprocess(held_out, tokenizer)) == 8


def test_isolation_is_known_from_the_model_code_and_the_strategy():
    from types import SimpleNamespace

    from adaptkit_tasks.packing import isolation_problem

    for family in FAMILIES:
        assert isolation_problem(SimpleNamespace(model_type=family), "lora") is None
    assert "peft drops position_ids" in isolation_problem(SimpleNamespace(model_type="llama"), "prompt_tuning")
    assert "would attend" in isolation_problem(SimpleNamespace(model_type="my-remote-model"), "lora")


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_generation_equals_one_row_at_a_time(tokenizer, family):
    from adaptkit_tasks.chat_templates import stop_ids
    from adaptkit_tasks.generation import generate

    model = _model(_instruct(), family, len(tokenizer))
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in ("what colour is a lime", "a", "and a plum is what colour then")]
    batched = generate(model, tokenizer, prompts, 6, stop_ids(tokenizer))
    alone = [generate(model, tokenizer, [prompt], 6, stop_ids(tokenizer))[0] for prompt in prompts]
    assert batched == alone and any(batched)
    torch.manual_seed(1)
    sampled = generate(model, tokenizer, prompts, 6, stop_ids(tokenizer), temperature=1.5, top_p=0.9)
    assert len(sampled) == 3 and sampled != batched  # sampling is on: a random model rarely agrees


def test_predict_batch_continues_each_prompt_where_training_put_the_answer(tokenizer):
    """A predict row holding its answer is answered from the tokens before it, as one that lacks it."""
    import datasets

    task = _instruct(max_new_tokens=5)
    task._tokenizer = tokenizer
    model = _model(task, "llama", len(tokenizer))
    rows = fruit_rows("messages", 3, 5)
    asked = [{"messages": row["messages"][:-1]} for row in rows]
    collate = task.collate(tokenizer)
    with_answers = task.predict_batch(model, collate(list(task.preprocess(datasets.Dataset.from_list(rows),
                                                                          tokenizer))))
    without = task.predict_batch(model, collate(list(task.preprocess(datasets.Dataset.from_list(asked), tokenizer))))
    assert with_answers == without and len(without) == 3
