"""The reward task: its Bradley-Terry loss against TRL's RewardTrainer on the same batch, a tiny Llama
reward model that learns a preference, an export plain transformers loads and scores as
``adaptkit predict`` does, and bad rows named.

Oracle: ``trl.RewardTrainer.compute_loss`` (trl 1.16, test-only) run unbound on a stand-in trainer
with the same model and batch, margins included.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from test_instruct_kit import tiny_config, write_jsonl
from test_task_preference import FRUITS, colour_rows, tokenizer, tokenizer_dir  # noqa: F401 - shared fixtures


def make_task(tok, **options):
    from adaptkit_tasks.reward import Reward

    task = Reward({"chat_template": "chatml", **options})
    task._tokenizer = tok
    return task


def tiny_scorer(vocab: int):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    settings = tiny_config("llama", vocab)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings, num_labels=1)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def test_bradley_terry_matches_trl(tokenizer):  # noqa: F811
    import datasets
    from trl import RewardTrainer

    task = make_task(tokenizer, margin_column="margin")
    rows = [{**row, "margin": float(i) / 2} for i, row in enumerate(colour_rows(4, 9))]
    encoded = task.preprocess(datasets.Dataset.from_list(rows), tokenizer)
    batch = task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].tolist() == [0.0, 0.5, 1.0, 1.5]  # a pair a row
    model = tiny_scorer(len(tokenizer))
    assert model(**batch).logits.shape == (4, 1)  # a plain forward pass runs on the batch as it is
    loss, outputs = task.compute_loss(model, batch)

    stand_in = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=None),
                               accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
                               _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    from adaptkit_tasks.preference_data import split_pairs

    inputs = {"input_ids": split_pairs(batch["input_ids"]), "attention_mask": split_pairs(batch["attention_mask"]),
              "margin": torch.tensor([0.0, 0.5, 1.0, 1.5])}  # TRL's layout: chosen rows, then rejected rows
    expected = RewardTrainer.compute_loss(stand_in, model, inputs)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    metrics = task.compute_metrics(**task.batch_outputs(outputs, batch))
    assert metrics["accuracy"] == pytest.approx(stand_in._metrics["eval"]["accuracy"][0])
    assert metrics["margin"] == pytest.approx(stand_in._metrics["eval"]["margin"][0], rel=1e-5, abs=1e-6)


def test_bad_rows_are_named(tokenizer):  # noqa: F811
    task = make_task(tokenizer, margin_column="margin")
    assert "not a number" in task.row_problem({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "high"})
    assert "neither" in make_task(tokenizer).row_problem({"prompt": "p"})


@pytest.mark.slow
def test_reward_model_learns_exports_and_scores_like_predict(tmp_path, tokenizer_dir, tokenizer):  # noqa: F811
    """Trained (full fine-tuning) on pairs that prefer a colour, the reward model ranks held-out pairs
    (other fruits) right; the export is a one-label classifier that plain transformers loads and that
    scores the saved tokenizer's rendering of a conversation as ``adaptkit predict`` does."""
    import adaptkit
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    spec = {"model": {"config": tiny_config("llama", vocab), "tokenizer": str(tokenizer_dir)},
            "task": {"type": "reward", "chat_template": "chatml", "max_length": 64},
            "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", colour_rows(64, 1, FRUITS[:8]))),
                     "eval": str(write_jsonl(tmp_path / "eval.jsonl", colour_rows(32, 2, FRUITS[8:])))},
            "strategy": {"name": "full"},
            "training": {"epochs": 1, "max_steps": 30, "batch_size": 16, "learning_rate": 3e-3, "seed": 0,
                         "warmup_ratio": 0.0},
            "output": {"dir": str(tmp_path / "run")}}
    result = adaptkit.run(spec, progress=False)
    assert result.metrics["eval"]["accuracy"] >= 0.9 and result.metrics["export"]["kind"] == "model"

    model = AutoModelForSequenceClassification.from_pretrained(str(result.output_dir / "model")).eval()
    assert model.config.num_labels == 1 and model.config.id2label == {0: "reward"}
    saved = AutoTokenizer.from_pretrained(str(result.output_dir / "tokenizer"))
    rows = [{"prompt": "describe the kiwi", "completion": answer} for answer in ("it is green", "it is soft")]
    texts = [saved.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                        {"role": "assistant", "content": row["completion"]}], tokenize=False)
             for row in rows]
    with torch.no_grad():
        plain = [float(model(**saved(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0])
                 for text in texts]
    scores = adaptkit.load(result.output_dir).predict(rows)
    assert scores == pytest.approx(plain, abs=1e-4)
    assert scores[0] > scores[1]  # the colour wins
