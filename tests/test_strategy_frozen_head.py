"""The ``frozen_head`` strategy: a linear probe whose backbone features are cached per example."""
from __future__ import annotations

import pytest
import torch

from adaptkit.testing import (FAMILIES, sample_batch as _batch, wrap_context as _context,
                              train_steps as _train_steps, check_strategy)
from adaptkit_frozen_head import FrozenHead, FrozenHeadOptions
from adaptkit_frozen_head.cached import CachedHeadModel


def tiny_llama():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         num_labels=3, pad_token_id=0)
    return LlamaForSequenceClassification(config)


def _wrapped(family: str, **options):
    torch.manual_seed(0)
    base = FAMILIES[family]() if family in FAMILIES else tiny_llama()
    strategy = FrozenHead(options)
    return strategy, strategy.wrap(base, _context(base, family))


def _count_block_calls(model: torch.nn.Module) -> list[int]:
    from adaptkit.plugin.blocks import find_block_list

    path, _ = find_block_list(model)
    calls = [0]
    model.get_submodule(path)[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_check_strategy_passes():
    report = check_strategy(FrozenHead)
    assert sum("equivalence" in line for line in report.passed) == 2


def test_check_strategy_passes_uncached():
    report = check_strategy(FrozenHead, {"cache": False})
    assert len(report.passed) == 8


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_only_the_head_trains(family):
    _, model = _wrapped(family)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    head = "classifier" if family == "bert" else "score"
    assert trainable and all(n.startswith(f"base.{head}.") for n in trainable), trainable


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_cached_outputs_and_loss_match_the_plain_model(family):
    _, model = _wrapped(family)
    batch = _batch(3)
    model.eval()
    with torch.no_grad():
        expected = model.base(**batch)
        first = model(**batch)    # fills the cache
        second = model(**batch)   # served from it
    assert model.misses == 6 and model.hits == 6 and len(model) == 6
    torch.testing.assert_close(first.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second.loss, expected.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_cached_batches_never_run_the_backbone(family):
    _, model = _wrapped(family)
    calls = _count_block_calls(model.base)
    batch = _batch(4)
    model.train()
    model(**batch).loss.backward()
    after_first = calls[0]
    for _ in range(3):
        model(**batch).loss.backward()
    assert after_first >= 1
    assert calls[0] == after_first


def test_rows_are_keyed_by_unpadded_tokens():
    _, model = _wrapped("bert")
    batch = _batch(5)
    model.eval()
    model(**{k: v[:3] for k, v in batch.items()})
    # The same first row padded to a longer batch is the same example: a hit, not a miss.
    ids = torch.nn.functional.pad(batch["input_ids"][:1], (0, 4))
    mask = torch.nn.functional.pad(batch["attention_mask"][:1], (0, 4))
    model(input_ids=ids, attention_mask=mask)
    assert model.hits == 1 and model.misses == 3
    # A different example misses.
    model(input_ids=batch["input_ids"][4:5], attention_mask=batch["attention_mask"][4:5])
    assert model.misses == 4


def test_backbone_dropout_is_off_in_training_so_features_are_deterministic():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    strategy = FrozenHead({"cache": False})
    model = strategy.wrap(base, _context(base, "bert"))
    model.train()
    assert model.training and not model.base.bert.training and model.base.classifier.training
    batch = _batch(6)
    with torch.no_grad():
        one, two = model(**batch).logits, model(**batch).logits
    torch.testing.assert_close(one, two)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, one)


def test_training_moves_only_the_head_and_unwrap_gives_the_plain_model():
    strategy, model = _wrapped("bert")
    encoder_before = model.base.bert.encoder.layer[0].output.dense.weight.clone()
    head_before = model.base.classifier.weight.clone()
    _train_steps(strategy, model)
    base = strategy.unwrap(model)
    assert type(base).__name__ == "BertForSequenceClassification"
    assert len(model) == 0  # the cache is released with the wrapper
    assert torch.equal(base.bert.encoder.layer[0].output.dense.weight, encoder_before)
    assert not torch.equal(base.classifier.weight, head_before)


def test_max_cached_examples_bounds_the_cache():
    _, model = _wrapped("bert", max_cached_examples=2)
    model.eval()
    model(**_batch(1))
    model(**_batch(1))
    assert len(model) == 2 and model.hits == 2 and model.misses == 10


def test_per_family_learning_rate_and_explicit_override():
    from adaptkit import WrapContext

    def suggested(model_type: str, **options) -> float:
        return FrozenHead(options).suggest_learning_rate(WrapContext(model_type=model_type, task="any"))

    assert suggested("gpt2") == pytest.approx(1e-3)
    assert suggested("bert") == pytest.approx(1e-2)  # tuned on mean-pooled MiniLM features (task.pooling)
    assert suggested("bert", learning_rate=3e-3) == pytest.approx(3e-3)
    assert suggested("somethingnew") == pytest.approx(1e-2)  # DEFAULT_LEARNING_RATE


def test_wrap_leaves_the_learning_rate_alone():
    """The runner asks ``suggest_learning_rate`` before ``wrap``: wrap must not change the answer."""
    strategy, _ = _wrapped("gpt2")
    assert strategy.default_learning_rate == pytest.approx(1e-2)
    assert "default_learning_rate" not in vars(strategy)


def test_no_head_is_a_clear_error():
    from adaptkit.plugin.strategy import WrapContext

    base = FAMILIES["bert"]()
    with pytest.raises(ValueError, match="needs a task head"):
        FrozenHead().wrap(base, WrapContext(model_type="bert", task="sequence_classification"))


def test_options_reject_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        FrozenHeadOptions(cache=True, cahce=False)


def test_per_token_heads_run_uncached_and_exact():
    """A token-classification model (one row of logits per token) is seen to be uncacheable on its
    first batch, whatever the task is called, and then runs the plain model."""
    from transformers import BertConfig, BertForTokenClassification

    from adaptkit import WrapContext

    torch.manual_seed(0)
    base = BertForTokenClassification(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=48,
                                                 max_position_embeddings=64, num_labels=3))
    model = FrozenHead().wrap(base, WrapContext(model_type="bert", task="anything", head_modules=["classifier"]))
    batch = _batch(2)
    batch["labels"] = torch.randint(0, 3, batch["input_ids"].shape)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        expected = model.base(**batch)
    assert model.mode == "uncacheable" and len(model) == 0
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)


def test_a_model_whose_loss_is_not_the_rebuilt_one_runs_uncached():
    """The cache rebuilds the loss from cached head inputs; a model computing another loss (here:
    label smoothing) must not be cached, or training would optimise the wrong objective."""
    from adaptkit import WrapContext

    torch.manual_seed(0)
    base = FAMILIES["bert"]()
    plain_forward = base.forward

    def smoothed(*args, labels=None, **kwargs):
        out = plain_forward(*args, **kwargs)
        if labels is not None:
            out.loss = torch.nn.functional.cross_entropy(out.logits, labels, label_smoothing=0.2)
        return out

    base.forward = smoothed
    model = FrozenHead().wrap(base, WrapContext(model_type="bert", task="x", head_modules=["classifier"]))
    batch = _batch(3)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        expected = base(**batch)
    assert model.mode == "uncacheable" and len(model) == 0
    torch.testing.assert_close(out.loss, expected.loss)


def test_a_classification_head_is_cached_whatever_the_task_is_called():
    from adaptkit import WrapContext

    base = FAMILIES["bert"]()
    model = FrozenHead().wrap(base, WrapContext(model_type="bert", task="my_own_task", head_modules=["classifier"]))
    model.eval()
    with torch.no_grad():
        model(**_batch(3))
    assert model.mode == "vector" and model.loss_checked and len(model) == 6


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_warm_fills_the_cache_so_training_never_runs_the_backbone(family):
    """Rows cached from other batches (other order, other padding) serve the training batches."""
    _, model = _wrapped(family)
    batch = _batch(5)
    order = [5, 2, 0, 4, 1, 3]
    pad = torch.zeros((6, 4), dtype=torch.long)
    # labelled, as the runner's before_training batches are: warm checks the model's loss on them
    regrouped = {"input_ids": torch.cat([batch["input_ids"], pad + 1], 1)[order],
                 "attention_mask": torch.cat([batch["attention_mask"], pad], 1)[order],
                 "labels": batch["labels"][order]}
    # move each row's real tokens to the front so padding sits at the end, as collators do
    for row in range(6):
        real = regrouped["attention_mask"][row].bool()
        ids = regrouped["input_ids"][row]
        regrouped["input_ids"][row] = torch.cat([ids[real], ids[~real]])
        regrouped["attention_mask"][row] = torch.cat([torch.ones(int(real.sum())), torch.zeros(int((~real).sum()))])
    halves = [{k: v[:3] for k, v in regrouped.items()}, {k: v[3:] for k, v in regrouped.items()}]
    assert model.warm(iter(halves)) == 6
    calls = _count_block_calls(model.base)
    model.train()
    model(**batch).loss.backward()
    assert calls[0] == 0 and model.hits == 6 and model.misses == 6


def test_a_run_hands_every_training_row_to_before_training_sorted_by_length(tiny_recipe, monkeypatch):
    import adaptkit

    seen: list[int] = []

    def record(self, model, batches):
        for batch in batches:
            seen.extend(batch["attention_mask"].sum(dim=1).tolist())
        return None

    monkeypatch.setattr(FrozenHead, "before_training", record)
    recipe = tiny_recipe("frozen_head", training={"epochs": 1})
    result = adaptkit.run(recipe, progress=False)
    assert len(seen) == result.metrics["train_examples"]
    assert seen == sorted(seen) or seen == sorted(seen, reverse=True)
