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


def html_report_by_hand(report: CompareReport, png: Path) -> str:
    """One self-contained page: verdict, table, plot (base64), curves, compute saved, method notes."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    e = html.escape
    _flags, curve_sentences = compare._flags, compare.curve_sentences
    head = "".join(f"<th>{h}</th>" for h in ("arm", "train rows", f"{report.metric}", "95% CI", "chosen lr",
                                             "trainable params", "train s", "peak MiB", "energy Wh"))
    body = "".join(
        f"<tr><td>{e(r.strategy + _flags(r))}</td><td>{r.train_examples:,}</td><td>{r.metric:.4f}</td>"
        f"<td>[{r.ci_low:.3f}, {r.ci_high:.3f}]</td><td>{', '.join(f'{x:.2g}' for x in r.learning_rates)}</td>"
        f"<td>{r.trainable:,}</td><td>{r.wall_seconds:.1f}</td>"
        f"<td>{r.peak_memory_bytes / 2**20:,.0f}</td><td>{r.energy_wh:.4f}</td></tr>" for r in report.rows)
    sizes = "".join(f"<li>{p['train_examples']} examples: {e(p['best_transfer'])} - scratch = {p['difference']:+.4f} "
                    f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]: <b>{e(p['verdict'])}</b></li>" for p in report.per_size)
    saved = "".join(
        f"<li>{e(c['strategy'])}: " + (
            f"matches scratch's best ({c['scratch_best_metric']:.4f} with {c['scratch_examples']} examples, "
            f"{c['scratch_energy_wh']:.4f} Wh) with {c['examples_needed']} examples and {c['energy_wh']:.4f} Wh"
            + (f": {c['energy_saved_wh']:.4f} Wh saved" if c["energy_saved_wh"] else ": no energy saved")
            if c["matches_scratch"] else e(c["note"])) + "</li>" for c in report.compute_saved)
    curves = "".join(f"<li>{e(line)}</li>" for line in curve_sentences(report))
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes + [f"energy: {report.energy_method}"])
    colour = {"positive transfer": "#1a7f37", "negative transfer": "#cf222e"}.get(report.verdict, "#9a6700")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>adaptkit compare: {e(report.verdict)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}}
td:first-child{{text-align:left}}h1{{color:{colour}}}</style></head><body>
<h1>Verdict: {e(report.verdict)}</h1><p>{e(report.verdict_detail)}</p><p>{e(report.transfer_range)}</p>
<table><tr>{head}</tr>{body}</table>
<img alt="metric against {'trainable parameters' if len(report.sizes) == 1 else 'training examples'}" src="data:image/png;base64,{image}">
<h2>By training-set size</h2><ul>{sizes}</ul>
<h2>Learning curves</h2><ul>{curves or '<li>one size: no curve</li>'}</ul>
<h2>Compute saved against training from scratch</h2><ul>{saved or '<li>no scratch baseline</li>'}</ul>
<h2>Method</h2><ul>{notes}</ul>
<p>Seeds: {', '.join(map(str, report.seeds))}. Raw figures: compare.json.</p>
</body></html>
"""




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
                         per_size=[{"train_examples": 1200, "best_transfer": "lora", "difference": 0.2,
                                    "ci_low": 0.1, "ci_high": 0.3, "verdict": verdict}] if with_scratch else [],
                         compute_saved=saved, energy_method="process CPU time x 15 W/core",
                         transfer_range="transfer helps up to 1,200 rows", notes=["bootstrap: 1000 paired resamples"])


@pytest.mark.parametrize("verdict, with_scratch", [("positive transfer", True), ("no clear difference", False),
                                                   ("negative transfer", True)])
def test_jinja2_html_report_is_byte_identical_to_the_f_string_one(tmp_path, verdict, with_scratch):
    png = tmp_path / "compare.png"
    png.write_bytes(b"\x89PNG not really")
    report = _report(tmp_path, verdict, with_scratch)
    assert compare.html_report(report, png) == html_report_by_hand(report, png)
