"""task.pooling: the vector a sequence head reads (auto | cls | mean | last | pooler), on tiny models.

auto reads a checkpoint's declared pooling (sentence-transformers' 1_Pooling/config.json), else
the architecture's head; mean ignores padding; the head, frozen_head's cache and advise's probe
read the same features; predict equals the export loaded the documented way.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import MINILM, TINY_BERT, TINY_GPT2

ROBERTA = {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 64, "max_position_embeddings": 130, "vocab_size": 120, "pad_token_id": 1}


def _task(pooling: str = "auto"):
    from adaptkit_tasks.sequence_classification import SequenceClassification

    return SequenceClassification({"labels": ["neg", "pos"], "pooling": pooling})


def _config(settings: dict):
    from transformers import AutoConfig

    settings = dict(settings)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def _model(settings=TINY_BERT, pooling="auto", seed=0):
    torch.manual_seed(seed)
    task = _task(pooling)
    return task, task.build_model("", _config(settings), True).eval()


def _checkpoint(tmp_path, pooling_config: dict | None, modules: bool = True):
    """A tiny BERT folder, with sentence-transformers' modules.json and 1_Pooling/config.json if asked."""
    _, model = _model(TINY_BERT, "pooler")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    if pooling_config is not None:
        if modules:
            (folder / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
             "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, **pooling_config}))
    return folder


def _load(task, folder):
    from transformers import AutoConfig

    return task.build_model(str(folder), AutoConfig.from_pretrained(folder), False,
                            local_files_only=True).eval()


def _masked_mean(hidden, mask):
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


# ---------------------------------------------------------------------------------------- auto


@pytest.mark.parametrize("declared, expected", [
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_cls_token": True}, "cls"),
    ({"pooling_mode_lasttoken": True}, "last"),
    ({"pooling_mode_max_tokens": True}, "pooler"),  # max pooling has no head-input counterpart
    (None, "pooler"),  # nothing declared: the architecture's own head
])
def test_auto_reads_the_checkpoints_declared_pooling(tmp_path, declared, expected):
    from adaptkit import model_pooling

    task = _task("auto")
    model = _load(task, _checkpoint(tmp_path, declared))
    assert task.pooling == expected and model_pooling(model) == expected
    assert task.state()["pooling"] == expected and "auto" in task.state()["pooling_reason"]


def test_a_pooling_folder_without_modules_json_declares_nothing(tmp_path):
    task = _task("auto")
    _load(task, _checkpoint(tmp_path, {"pooling_mode_mean_tokens": True}, modules=False))
    assert task.pooling == "pooler"


def test_the_recipes_choice_wins_over_the_declaration(tmp_path):
    task = _task("cls")
    _load(task, _checkpoint(tmp_path, {"pooling_mode_mean_tokens": True}))
    assert task.pooling == "cls" and task.state()["pooling_reason"] == "task.pooling in the recipe"


def test_the_shipped_minilm_declares_mean_pooling():
    from adaptkit import declared_pooling, resolve_model_source

    mode, reason = declared_pooling(resolve_model_source(MINILM).location)
    assert mode == "mean" and "1_Pooling/config.json" in reason


def test_a_weightless_build_does_not_fix_auto_before_the_checkpoint_is_read(tmp_path):
    """qlora's meta copy is built from the config alone first; the checkpoint's declaration still counts."""
    task = _task("auto")
    task.build_model("", _config(TINY_BERT), True)
    assert task.pooling is None
    _load(task, _checkpoint(tmp_path, {"pooling_mode_mean_tokens": True}))
    assert task.pooling == "mean"


# ---------------------------------------------------------------------------------------- the head


def test_mean_pooling_feeds_the_classifier_the_masked_mean():
    task, model = _model(TINY_BERT, "mean")
    ids = torch.tensor([[101, 7, 8, 9, 102, 0, 0], [101, 5, 6, 30, 40, 50, 102]])
    mask = (ids != 0).long()
    logits = model(input_ids=ids, attention_mask=mask).logits
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(logits, model.classifier(_masked_mean(hidden, mask)))
    _, native = _model(TINY_BERT, "pooler")
    assert not torch.allclose(logits, native(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("settings", [TINY_BERT, ROBERTA, TINY_GPT2], ids=["bert", "roberta", "gpt2"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_ignores_padding(settings, pooling):
    """The same logits for a row alone and padded inside a batch with a longer row (right padding)."""
    task, model = _model(settings, pooling)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad
    short = torch.tensor([[3, 7, 8, 9, 4]])
    longer = torch.tensor([[3, 5, 6, 30, 40, 50, 11, 12, 4]])
    padded = torch.cat([torch.cat([short, torch.full((1, 4), pad)], 1), longer])
    mask = torch.cat([torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1), torch.ones(1, 9)]).long()
    alone = model(input_ids=short, attention_mask=torch.ones_like(short)).logits
    batched = model(input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(batched[0:1], alone, atol=1e-5, rtol=1e-5)


def test_pooling_applies_to_training_too_and_the_unused_pooler_keeps_a_zero_gradient():
    task, model = _model(TINY_BERT, "mean")
    model.train()
    batch = {"input_ids": torch.tensor([[101, 7, 8, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([1])}
    model(**batch).loss.backward()
    assert model.bert.pooler.dense.weight.grad is not None  # in the graph: DDP finds no unused parameter
    assert torch.count_nonzero(model.bert.pooler.dense.weight.grad) == 0
    assert torch.count_nonzero(model.bert.encoder.layer[-1].output.dense.weight.grad) > 0


def test_apply_pooling_is_idempotent_and_pooler_undoes_it():
    from adaptkit import apply_pooling, model_pooling

    _, model = _model(TINY_BERT, "pooler")
    _, native = _model(TINY_BERT, "pooler")
    ids = torch.tensor([[101, 7, 8, 102]])
    apply_pooling(model, "mean")
    once = model(input_ids=ids).logits
    apply_pooling(model, "mean")
    torch.testing.assert_close(model(input_ids=ids).logits, once)
    assert model_pooling(model) == "mean"
    apply_pooling(model, "pooler")
    torch.testing.assert_close(model(input_ids=ids).logits, native(input_ids=ids).logits)
    with pytest.raises(ValueError, match="resolved pooling"):
        apply_pooling(model, "auto")


def test_a_deep_copy_pools_and_changes_its_pooling_on_its_own():
    import copy

    from adaptkit import apply_pooling

    _, model = _model(TINY_BERT, "mean")
    _, native = _model(TINY_BERT, "pooler")
    ids = torch.tensor([[101, 7, 8, 102]])
    pooled = model(input_ids=ids).logits
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(input_ids=ids).logits, pooled)
    apply_pooling(twin, "pooler")
    torch.testing.assert_close(twin(input_ids=ids).logits, native(input_ids=ids).logits)
    torch.testing.assert_close(model(input_ids=ids).logits, pooled)  # the original keeps its pooling


def test_pooling_leaves_the_architecture_signature_alone():
    from adaptkit.plugin.contract import architecture_signature

    _, pooled = _model(TINY_BERT, "mean")
    _, native = _model(TINY_BERT, "pooler")
    assert architecture_signature(pooled) == architecture_signature(native)


# ---------------------------------------------------------------------------------------- the same features


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_advise_probe_features_are_what_the_head_reads(pooling):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, AutoTokenizer

    from adaptkit.judge.transferability import extract_features

    task, model = _model(TINY_BERT, pooling)
    tokenizer = AutoTokenizer.from_pretrained(__import__("adaptkit").resolve_model_source(MINILM).location)
    texts = ["a fine film", "dull", "a long and winding but lovely story", "bad"]
    data = task.preprocess(Dataset.from_dict({"text": texts, "label": ["pos", "neg", "pos", "neg"]}), tokenizer)
    features, labels = extract_features(model, data, task.collate(tokenizer), 2, task)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.bert(**encoded)
        expected = {"mean": _masked_mean(out.last_hidden_state, encoded["attention_mask"]),
                    "cls": out.last_hidden_state[:, 0]}.get(pooling)
        if expected is None:  # the architecture's head: BERT's pooler output (what its classifier reads)
            expected = model.bert.pooler(out.last_hidden_state)
    torch.testing.assert_close(torch.from_numpy(features), expected, atol=1e-5, rtol=1e-5)
    assert labels.tolist() == [1, 0, 1, 0]
    assert pooling in task.describe_features()


def test_frozen_head_caches_the_pooled_features():
    from adaptkit.testing import wrap_context
    from adaptkit_frozen_head import FrozenHead

    task, model = _model(TINY_BERT, "mean")
    wrapped = FrozenHead().wrap(model, wrap_context(model, "bert"))
    ids = torch.tensor([[101, 7, 8, 9, 102, 0], [101, 5, 6, 30, 40, 102]])
    mask = (ids != 0).long()
    out = wrapped(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert wrapped.mode == "vector" and len(wrapped) == 2
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = _masked_mean(hidden, mask)
    cached = torch.stack([wrapped._cache[key] for key in wrapped._keys({"input_ids": ids}, mask)])
    torch.testing.assert_close(cached, pooled)
    torch.testing.assert_close(out.logits, model.classifier(pooled))
    again = wrapped(input_ids=ids, attention_mask=mask)  # from the cache: the same logits
    torch.testing.assert_close(again.logits, out.logits)


# ---------------------------------------------------------------------------------------- export and predict


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_predict_equals_the_export_loaded_the_documented_way(tiny_recipe, strategy):
    """The run records the pooling; adaptkit.load applies it; the card's recipe (from_pretrained, then
    apply_pooling, or the transformers-only lines) gives predict's logits; a bare from_pretrained does not."""
    import adaptkit
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe = tiny_recipe(strategy, task={"pooling": "mean"}, training={"epochs": 2, "learning_rate": 3e-3})
    result = adaptkit.run(recipe, progress=False)
    summary = json.loads((result.output_dir / "metrics.json").read_text())
    assert summary["task_state"]["pooling"] == "mean"
    assert any("adaptkit.apply_pooling(model, 'mean')" in line for line in summary["contract"])
    card = (result.output_dir / "README.md").read_text()
    assert "## How the head pools" in card and "adaptkit.apply_pooling(model, 'mean')" in card

    predictor = adaptkit.load(result.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir / "tokenizer")
    inputs = tokenizer(["a good film", "a bad and boring film", "fine"], padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = predictor.model.eval()(**inputs).logits
    if strategy == "full":
        plain = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "model").eval()
    else:
        from peft import PeftModel

        plain = PeftModel.from_pretrained(_fresh_base(recipe), result.output_dir / "adapter").eval()
    with torch.no_grad():
        bare = plain(**inputs).logits
        adaptkit.apply_pooling(plain, "mean")
        documented = plain(**inputs).logits
    torch.testing.assert_close(documented, predicted, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(bare, predicted, atol=1e-4)
    if strategy == "full":  # the card's transformers-only lines
        model = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "model").eval()
        with torch.no_grad():
            hidden = model.base_model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            logits = model.classifier(pooled)
        torch.testing.assert_close(logits, predicted, atol=1e-5, rtol=1e-5)
        assert "pooled = (hidden * mask).sum(1) / mask.sum(1)" in card


@pytest.mark.parametrize("strategy", ["adapters", "frozen_head"])
def test_strategies_with_their_own_wrapper_reload_a_mean_pooled_head(tiny_recipe, strategy):
    """Bottleneck adapters and the frozen-head cache wrap the model themselves (not peft): the run's
    export check and adaptkit.load re-apply the head's pooling through that wrapper."""
    import adaptkit

    recipe = tiny_recipe(strategy, task={"pooling": "mean"}, training={"epochs": 1, "min_steps": 0})
    result = adaptkit.run(recipe, progress=False)
    assert result.metrics["task_state"]["pooling"] == "mean"
    assert any(line.startswith("export") for line in result.metrics["contract"]), result.metrics["contract"]
    rows = [{"text": "a good film"}, {"text": "a bad and boring film"}]
    assert len(adaptkit.load(result.output_dir).predict(rows)) == 2


def _fresh_base(recipe):
    """The recipe's base model as adaptkit builds it (seeded: the same random head), without pooling."""
    from adaptkit import apply_pooling
    from adaptkit.engine.session import Session

    session = Session(adaptkit_recipe(recipe))
    return apply_pooling(session.build_base(), "pooler")


def adaptkit_recipe(recipe):
    from adaptkit.recipe.schema import Recipe

    return Recipe.from_dict(recipe, check_files=False)


def test_a_run_saved_before_pooling_existed_still_reads_the_architectures_head():
    task = _task("auto")
    task.load_state({"labels": ["neg", "pos"]})
    assert task.pooling == "pooler" and task.reload_step() is None
    assert "from_pretrained` reproduces it" in task.card_notes()[0]
