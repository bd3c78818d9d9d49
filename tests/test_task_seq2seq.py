"""seq2seq end to end: a tiny T5 from a config learns to spell digits as words ("3 1 4" -> "three one
four"), evaluation scores generated text, every strategy trains it, and the export generates with
plain transformers / peft exactly what ``adaptkit predict`` writes."""
from __future__ import annotations

import json
import random

import pytest

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The conformance kit's word tokenizer: [PAD] 0, [UNK] 1, [BOS] 2, [SEP] 3, [EOS] 4, then the words.
TINY_T5 = {"model_type": "t5", "vocab_size": 32, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
           "num_decoder_layers": 2, "num_heads": 4, "pad_token_id": 0, "eos_token_id": 4, "decoder_start_token_id": 0}
# BART learns the alignment of digits to words in ~300 steps (24/24 eval rows exact); the same-size
# T5 got 0-6 of 24 by then: its cross-attention carries no position, BART's learned positions do.
TINY_BART = {"model_type": "bart", "vocab_size": 32, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
             "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 4,
             "decoder_start_token_id": 4, "forced_eos_token_id": 4, "dropout": 0.0}


def spelled_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Copy with substitution: 2-4 digits, each written as its word, in order."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        digits = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
        rows.append({"source": " ".join(map(str, digits)), "target": " ".join(WORDS[d] for d in digits)})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A word-level tokenizer over the digits and their words (the conformance kit's builder)."""
    from adaptkit.testing import word_tokenizer

    rows = [{"source": "spell : " + " ".join(map(str, range(10))), "target": " ".join(WORDS)}]
    return word_tokenizer(rows, tmp_path_factory.mktemp("tokenizer") / "tokenizer", vocab_size=32)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def s2s_recipe(folder, tokenizer_dir, strategy: str = "full", config=None, task=None, train_rows: int = 128,
               eval_rows: int = 24, **training):
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "model": {"config": dict(config or TINY_T5), "tokenizer": str(tokenizer_dir)},
        "task": {"type": "seq2seq", "max_source_length": 16, "max_target_length": 12, **(task or {})},
        "data": {"train": str(write_jsonl(folder / "train.jsonl", spelled_rows(train_rows, 1))),
                 "eval": str(write_jsonl(folder / "eval.jsonl", spelled_rows(eval_rows, 2)))},
        "strategy": {"name": strategy},
        # one thread: a 32-wide model gains nothing from more, and loses much to a busy machine
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-2, "seed": 0, "min_steps": 0,
                     "max_steps": 3, "warmup_ratio": 0.0, "num_threads": 1, **training},
        "output": {"dir": str(folder / "run")},
    }


def _task(**options):
    from adaptkit_tasks.seq2seq import Seq2Seq

    return Seq2Seq(options)


def _tiny_t5():
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    settings = dict(TINY_T5)
    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).eval()


# ---------------------------------------------------------------------------- data and metrics

def test_sources_are_prefixed_and_targets_end_and_pad_with_the_ignore_index(tokenizer):
    import datasets

    task = _task(prefix="spell :", max_target_length=4)
    table = datasets.Dataset.from_list([{"source": "3 1", "target": "three one"},
                                        {"source": "9 8 7 6 5", "target": "nine eight seven six five"}])
    encoded = task.preprocess(table, tokenizer)
    batch = task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert tokenizer.convert_ids_to_tokens(encoded[0]["input_ids"]) == ["spell", ":", "3", "1"]
    # targets end with eos; the long one is cut to max_target_length with its eos kept
    assert tokenizer.convert_ids_to_tokens(encoded[0]["labels"]) == ["three", "one", "[EOS]"]
    assert tokenizer.convert_ids_to_tokens(encoded[1]["labels"]) == ["nine", "eight", "seven", "[EOS]"]
    assert batch["labels"].tolist()[0] == encoded[0]["labels"] + [-100]  # padding is never learnt
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 7)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][0, 4:].tolist() == [pad] * 3 and eos not in batch["input_ids"][0].tolist()


def test_rows_to_predict_have_no_labels(tokenizer):
    import datasets

    task = _task()
    encoded = task.preprocess(datasets.Dataset.from_list([{"source": "1 2"}]), tokenizer)
    batch = task.collate(tokenizer)([encoded[0]])
    assert set(batch) == {"input_ids", "attention_mask"}


def test_evaluation_token_loss_is_the_models_loss_and_generated_text_is_scored(tokenizer):
    """compute_loss at eval generates; batch_outputs keeps per-row sums whose mean is the model's loss,
    and compute_metrics scores the decoded generations against the decoded targets."""
    import datasets
    import torch

    from adaptkit_tasks.generation_metrics import text_scores

    task = _task(metrics=["rougeL", "chrf", "bleu", "cider"], max_new_tokens=5)
    task._tokenizer = tokenizer
    encoded = task.preprocess(datasets.Dataset.from_list(spelled_rows(6, 3)), tokenizer)
    batch = task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])
    model = _tiny_t5()
    with torch.no_grad():
        loss, outputs = task.compute_loss(model, batch)
    kept = task.batch_outputs(outputs, batch)
    assert kept["generated"].shape[0] == 6 and kept["generated"].shape[1] <= 1 + 5
    metrics = task.compute_metrics(**kept)
    assert set(metrics) == set(task.metric_names) == {"token_loss", "rougeL", "chrf", "bleu", "cider"}
    assert metrics["token_loss"] == pytest.approx(float(loss), rel=1e-5)
    texts = task.predict_batch(model, batch)
    references = [[row["target"]] for row in spelled_rows(6, 3)]
    assert {k: metrics[k] for k in ("rougeL", "chrf", "bleu")} == pytest.approx(
        text_scores(texts, references, ["rougeL", "chrf", "bleu"]))
    model.train()
    _, training_outputs = task.compute_loss(model, batch)  # training: one forward pass, nothing generated
    assert not hasattr(training_outputs, "generated")
    loss_only = _task(metrics=[], metric="token_loss")  # no text metric: evaluation generates nothing
    loss_only._tokenizer = tokenizer
    model.eval()
    with torch.no_grad():
        kept = loss_only.batch_outputs(loss_only.compute_loss(model, batch)[1], batch)
    assert set(kept) == {"loss_sum", "tokens"}
    assert loss_only.compute_metrics(**kept) == {"token_loss": pytest.approx(float(loss), rel=1e-5)}


def test_options_are_checked():
    from pydantic import ValidationError

    from adaptkit_tasks.seq2seq import Seq2SeqOptions

    with pytest.raises(ValidationError, match="'bleu' is not computed"):
        Seq2SeqOptions(metrics=["rougeL"], metric="bleu")
    with pytest.raises(ValidationError, match="both 'text'"):
        Seq2SeqOptions(source_column="text", target_column="text")
    with pytest.raises(ValidationError, match="meteor"):
        Seq2SeqOptions(metrics=["meteor"])
    with pytest.raises(ValidationError, match="temperature"):
        Seq2SeqOptions(do_sample=True, temperature=1e-9)
    task = _task(metric="token_loss")
    assert (task.primary_metric, task.greater_is_better) == ("token_loss", False)
    assert (_task().primary_metric, _task().greater_is_better) == ("rougeL", True)


def test_a_config_whose_eos_is_not_the_tokenizers_is_refused(tmp_path, tokenizer_dir):
    import adaptkit

    recipe = s2s_recipe(tmp_path, tokenizer_dir, config={**TINY_T5, "eos_token_id": 1})
    with pytest.raises(adaptkit.RecipeError, match=r"eos_token_id is 1 .*'\[EOS\]' \(id 4\).*eos_token_id: 4"):
        adaptkit.run(recipe, progress=False)


def test_frozen_head_is_refused_because_a_seq2seq_model_has_no_head(tmp_path, tokenizer_dir):
    import adaptkit

    recipe = s2s_recipe(tmp_path, tokenizer_dir, strategy="frozen_head")
    with pytest.raises(adaptkit.AdaptkitError, match="frozen_head.*task head.*none"):
        adaptkit.plan(recipe)
    with pytest.raises(adaptkit.AdaptkitError, match="frozen_head.*task head.*none"):
        adaptkit.run(recipe, progress=False)


# ---------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def learned(tmp_path_factory, tokenizer_dir):
    """A tiny BART fully fine-tuned from random weights until it spells digits (256 steps)."""
    import adaptkit

    folder = tmp_path_factory.mktemp("learned")
    # Random batches: these sources are 2-4 tokens long, so batches grouped by length hold one length
    # each, and training on them reached rougeL 0.96 after 4 epochs, 0.48 after 5 (1.0 at both here).
    recipe = s2s_recipe(folder, tokenizer_dir, config=TINY_BART, train_rows=1024, epochs=4, max_steps=None,
                        learning_rate=5e-3, group_by_length=False)
    return adaptkit.run(recipe, progress=False)


@pytest.mark.slow
def test_a_tiny_bart_learns_to_spell_digits(learned):
    history = learned.metrics["history"]
    assert history[0]["eval_rougeL"] < 0.5 < learned.eval["rougeL"], [h["eval_rougeL"] for h in history]
    assert learned.eval["rougeL"] > 0.9 and learned.eval["chrf"] > 0.9, learned.eval
    assert learned.metrics["best"]["metric"] == "rougeL" and learned.metrics["best"]["greater_is_better"] is True


@pytest.mark.slow
def test_the_export_generates_what_adaptkit_predict_writes(learned):
    """Plain transformers with no generation arguments (they are in generation_config.json)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import adaptkit

    rows = [{"source": row["source"]} for row in spelled_rows(10, 9)]
    predicted = adaptkit.load(learned.output_dir).predict(rows)
    assert sum(p == row["target"] for p, row in zip(predicted, spelled_rows(10, 9))) >= 8, predicted
    model = AutoModelForSeq2SeqLM.from_pretrained(learned.output_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(learned.output_dir / "tokenizer")
    inputs = tokenizer([row["source"] for row in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**inputs)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == predicted


def _judged_recipe(folder, tokenizer_dir, learned):
    """LoRA on the BART that learned to spell, at 64 rows: the judge's "pretrained" model."""
    recipe = s2s_recipe(folder, tokenizer_dir, "lora", train_rows=64, epochs=3, max_steps=None, learning_rate=5e-3)
    recipe["model"] = {"name": str(learned.output_dir / "model"), "tokenizer": str(tokenizer_dir)}
    return recipe


@pytest.mark.slow
def test_advise_times_the_strategies_and_says_transferability_is_not_assessed(tmp_path, tokenizer_dir, learned):
    import adaptkit

    report = adaptkit.advise(_judged_recipe(tmp_path, tokenizer_dir, learned), strategies=["lora", "full"],
                             log=lambda _: None)
    assert report.task == "seq2seq" and report.transfer_verdict == "not assessed"
    assert [s.strategy for s in report.strategies] == ["lora", "full"]
    assert all(s.seconds_per_step and s.seconds_per_step > 0 and s.flops_per_epoch > 0 for s in report.strategies)
    assert report.strategies[0].trainable < report.strategies[1].trainable


@pytest.mark.slow
def test_compare_judges_transfer_by_rouge_l_against_scratch(tmp_path, tokenizer_dir, learned):
    """scratch = the same BART config from random weights: it cannot spell from 51 rows, the
    pretrained one can; the verdict is stated in the task's metric."""
    import adaptkit

    report = adaptkit.compare(_judged_recipe(tmp_path, tokenizer_dir, learned), ["lora", "scratch"], seeds=[0],
                              sizes=[64], trials=1, bootstrap_rounds=200, output_dir=str(tmp_path / "compare"),
                              log=lambda _: None)
    assert report.metric == "rougeL" and report.greater_is_better is True
    rows = {row.strategy: row for row in report.rows}
    assert rows["lora"].metric > 0.8 > 0.3 > rows["scratch"].metric, rows
    table = (tmp_path / "compare" / "table.md").read_text()
    assert "rougeL" in table and "positive transfer" in table


# full (the BART that learns) and lora (the T5 exported with beams) have their own runs below.
STRATEGIES = ["ia3", "adapters", "partial_freeze", "prompt_tuning", "qlora"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_a_tiny_t5(tmp_path, tokenizer_dir, strategy):
    import adaptkit

    if strategy == "qlora":
        pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes")
    recipe = s2s_recipe(tmp_path, tokenizer_dir, strategy, task={"max_new_tokens": 4}, train_rows=48, eval_rows=8)
    result = adaptkit.run(recipe, progress=False)
    assert result.metrics["strategy"] == strategy and result.metrics["task"] == "seq2seq"
    assert set(result.eval) >= {"token_loss", "rougeL", "chrf", "bleu"}
    assert 0 <= result.eval["rougeL"] <= 1 and result.eval["token_loss"] > 0
    assert 0 < result.metrics["parameters"]["trainable"] < result.metrics["parameters"]["total"]
    assert any(line.startswith("export") for line in result.metrics["contract"]), result.metrics["contract"]


def test_sampling_is_seeded_and_leaves_the_training_rng_alone(tokenizer):
    import datasets
    import torch

    task = _task(do_sample=True, temperature=2.0, max_new_tokens=6, seed=3)
    task._tokenizer = tokenizer
    encoded = task.preprocess(datasets.Dataset.from_list(spelled_rows(8, 4)), tokenizer)
    batch = task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])
    model = _tiny_t5()
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    first = task.predict_batch(model, batch)
    assert torch.equal(torch.rand(3), expected_next)  # generation forked the RNG: training's draws are unchanged
    assert task.predict_batch(model, batch) == first
    greedy = _task(max_new_tokens=6)
    greedy._tokenizer = tokenizer
    assert greedy.predict_batch(model, batch) != first  # a random T5 at temperature 2 samples other words


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tokenizer_dir):
    """LoRA on a tiny T5 with beam search (3 beams), merged copy exported too."""
    import adaptkit

    recipe = s2s_recipe(tmp_path_factory.mktemp("lora"), tokenizer_dir, "lora", task={"num_beams": 3},
                        max_steps=20)
    recipe["output"]["merge"] = True
    return recipe, adaptkit.run(recipe, progress=False)


def test_the_lora_export_generates_with_peft_and_transformers_what_predict_writes(lora_run):
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, set_seed

    import adaptkit

    recipe, result = lora_run
    rows = [{"source": row["source"]} for row in spelled_rows(8, 9)]
    predicted = adaptkit.load(result.output_dir).predict(rows)
    assert any(predicted), predicted  # words, not only empty strings
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir / "tokenizer")
    inputs = tokenizer([row["source"] for row in rows], return_tensors="pt", padding=True)
    settings = dict(recipe["model"]["config"])
    set_seed(recipe["training"]["seed"])  # the random base adaptkit built from the config, again
    base = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, result.output_dir / "adapter").eval()
        by_peft = adapted.generate(**inputs, num_beams=3, max_new_tokens=12, do_sample=False)
        merged = AutoModelForSeq2SeqLM.from_pretrained(result.output_dir / "model").eval()
        assert merged.generation_config.num_beams == 3
        by_merged = merged.generate(**inputs)  # the settings come from generation_config.json
    assert tokenizer.batch_decode(by_peft, skip_special_tokens=True) == predicted
    assert tokenizer.batch_decode(by_merged, skip_special_tokens=True) == predicted


def test_the_shipped_recipe_plans_with_its_tokenizer_and_config(monkeypatch):
    """recipes/seq2seq.yaml: its tokenizer folder (relative to the repository root), data and BART
    config agree (the eos check passes), and full fine-tuning trains every weight."""
    from pathlib import Path

    import adaptkit

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)
    plan = adaptkit.plan("recipes/seq2seq.yaml")
    (only,) = plan.strategies
    assert only.strategy == "full" and only.trainable == only.total > 0

