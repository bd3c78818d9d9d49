"""sequence_classification through the generic evaluation and prediction hooks, and reloading."""
from __future__ import annotations

import pytest

from conftest import sentiment_rows


def test_run_evaluates_and_reloads_for_prediction(tiny_recipe):
    """The default batch_outputs/predict_batch path; the run's tokenizer/ folder reloads as is."""
    import adaptkit

    result = adaptkit.run(tiny_recipe("full", training={"epochs": 8, "learning_rate": 3e-3}), progress=False)
    assert {"accuracy", "macro_f1", "loss"} <= set(result.eval)
    assert result.eval["accuracy"] > 0.9
    predictor = adaptkit.load(result.output_dir)
    rows = sentiment_rows(16, seed=5)
    labelled = predictor.predict(rows)  # rows that carry labels predict the same as rows without
    unlabelled = predictor.predict([{"text": row["text"]} for row in rows])
    assert labelled == unlabelled and len(labelled) == 16
    assert all(p["label"] in {"0", "1"} and 0.5 <= p["score"] <= 1.0 for p in labelled)
    hits = sum(p["label"] == str(row["label"]) for p, row in zip(labelled, rows))
    assert hits >= 14


def test_default_batch_outputs_keep_logits_and_labels():
    import torch
    from types import SimpleNamespace

    from adaptkit_tasks.sequence_classification import SequenceClassification

    task = SequenceClassification({"labels": ["a", "b"]})
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    kept = task.batch_outputs(SimpleNamespace(logits=logits), {"labels": torch.tensor([0, 0])})
    assert set(kept) == {"logits", "labels"}
    assert task.compute_metrics(**kept)["accuracy"] == pytest.approx(0.5)
    assert set(task.batch_outputs(SimpleNamespace(logits=logits), {})) == {"logits"}
