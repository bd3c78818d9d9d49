"""Library swaps (issue 17): each keeps the results of the hand-written code it replaced.

psutil for peak memory, filelock for the output lock (behaviour in test_faults.py and
test_disk_full.py), seqeval for entity scores, jinja2 for compare's HTML page."""
from __future__ import annotations

import base64
import html
import random
from pathlib import Path

import pytest
import torch

import importlib

compare = importlib.import_module("adaptkit.judge.compare")  # adaptkit.judge.compare is also the function of that name
SCRATCH, CompareReport, Row = compare.SCRATCH, compare.CompareReport, compare.Row


def test_peak_memory_follows_an_allocation_and_each_platform_reading(monkeypatch):
    import psutil

    from adaptkit.engine import train
    cpu = torch.device("cpu")
    before = train.peak_memory_bytes(cpu)
    assert before >= psutil.Process().memory_info().rss * 0.5
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert train.peak_memory_bytes(cpu) >= max(before, psutil.Process().memory_info().rss) - 2**20
    del block

    class Windows:  # psutil's Windows reading carries the peak itself
        rss, peak_wset = 100, 12345

    monkeypatch.setattr(psutil.Process, "memory_info", lambda self: Windows())
    assert train.peak_memory_bytes(cpu) == 12345
    monkeypatch.undo()
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    monkeypatch.setattr(train.sys, "platform", "darwin")  # macOS reports bytes, Linux KiB
    assert train.peak_memory_bytes(cpu) in range(kib, kib + 2**20)


def _tags(rng: random.Random, count: int) -> list[list[str]]:
    kinds = ["O"] * 6 + ["B-PER", "I-PER", "B-LOC", "I-LOC", "S-MISC", "E-LOC", "i-per", "NN", "X-Y"]
    return [[rng.choice(kinds) for _ in range(rng.randint(1, 30))] for _ in range(count)]


def _by_hand(actual, predicted):
    """The hand-written scorer seqeval replaced (on entity_spans, which stays)."""
    from adaptkit_tasks.token_classification import entity_spans

    true = pred = hits = 0
    for gold, guess in zip(actual, predicted):
        g, p = entity_spans(gold), entity_spans(guess)
        true, pred, hits = true + len(g), pred + len(p), hits + len(g & p)
    precision, recall = (hits / pred if pred else 0.0), (hits / true if true else 0.0)
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def test_seqeval_entity_scores_equal_the_hand_written_ones():
    from adaptkit_tasks.token_classification import span_scores

    rng = random.Random(0)
    for trial in range(20):
        gold = _tags(rng, 50)
        guess = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "NN"]) for t in row] for row in gold]
        assert span_scores(gold, guess) == pytest.approx(_by_hand(gold, guess), abs=1e-12), trial
    assert span_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]]) == \
        pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert span_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def _report(tmp_path: Path, verdict: str, with_scratch: bool) -> CompareReport:
    rows = [Row(strategy="lora", size=100, train_examples=1200, metric=0.81234, ci_low=0.7, ci_high=0.9,
                trainable=147456, wall_seconds=12.34, peak_memory_bytes=734003200, energy_wh=0.01234, g_co2e=1.0,
                seeds=3, learning_rates=[3e-4, 1e-3], flags=["did not learn <yet> & \"quoted\" 'x'"]),
            Row(strategy=SCRATCH, size=100, train_examples=1200, metric=0.61, ci_low=0.55, ci_high=0.66,
                trainable=22_000_000, wall_seconds=40.0, peak_memory_bytes=2**30, energy_wh=0.5, g_co2e=2.0, seeds=3)]
    saved = ([{"strategy": "lora", "matches_scratch": True, "scratch_best_metric": 0.61, "scratch_examples": 1200,
               "scratch_energy_wh": 0.5, "examples_needed": 100, "energy_wh": 0.01, "energy_saved_wh": 0.49},
              {"strategy": "ia3", "matches_scratch": True, "scratch_best_metric": 0.61, "scratch_examples": 1200,
               "scratch_energy_wh": 0.5, "examples_needed": 1200, "energy_wh": 0.6, "energy_saved_wh": 0.0},
              {"strategy": "full<b>", "matches_scratch": False, "note": "never reaches scratch's 0.61 & more"}]
             if with_scratch else [])
    return CompareReport(output_dir=tmp_path, metric="accuracy", greater_is_better=True, strategies=["lora"],
                         sizes=[100] if with_scratch else [100, 300], seeds=[1, 2, 3], rows=rows, runs=[],
                         verdict=verdict, verdict_detail="lora - scratch = +0.2000 [+0.1, +0.3] <detail>",
                         per_size=[{"train_examples": 1200, "best_transfer": "lora", "best_metric": 0.81,
                                    "versus_scratch": {"reference_metric": 0.61, "difference": 0.2, "ci_low": 0.1,
                                                       "ci_high": 0.3, "verdict": verdict, "reference_flags": []}}]
                         if with_scratch else [],
                         compute_saved=saved, energy_method="process CPU time x 15 W/core",
                         transfer_range="transfer helps up to 1,200 rows", notes=["bootstrap: 1000 paired resamples"])


@pytest.mark.parametrize("verdict, with_scratch", [("positive transfer", True), ("no clear difference", False),
                                                   ("negative transfer", True)])
def test_jinja2_html_report_escapes_text_and_states_both_verdicts(tmp_path, verdict, with_scratch):
    from adaptkit.judge.compare_report import html_report

    png = tmp_path / "compare.png"
    png.write_bytes(b"\x89PNG not really")
    report = _report(tmp_path, verdict, with_scratch)
    report.practical_verdict, report.headline = "no clear gain", "No clear gain for lora over <a bag> & co"
    page = html_report(report, png)
    assert "<h1>No clear gain for lora over &lt;a bag&gt; &amp; co</h1>" in page
    assert f"random weights: <b>{verdict}</b>" in page and "pretraining: <b>no clear gain</b>" in page
    assert "did not learn &lt;yet&gt; &amp; &quot;quoted&quot; &#x27;x&#x27;" in page  # every text escaped
    assert ("full&lt;b&gt;" in page) == with_scratch and base64.b64encode(png.read_bytes()).decode() in page
    assert page.count("<tr>") == 3  # the header and two arms
