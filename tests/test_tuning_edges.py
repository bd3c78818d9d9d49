"""A search whose best rate is an end of its grid steps past that end (``tuning.beyond_edge``).

Every peft method on MiniLM/SST-2 chose the top of its 3-rate grid: the grid gave a bound on the
rate, not the rate. The training here is replaced by a score that peaks at a known rate, so which
rates the search tries is what is tested, not whether a tiny model trains.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from test_tuning_resume import _Bench


def test_beyond_edge_steps_past_the_end_where_the_best_lies():
    from adaptkit.judge.tuning import beyond_edge

    grid = [1.67e-4, 5e-4, 1.5e-3]
    assert beyond_edge(grid, 1.5e-3, 3.0) == pytest.approx(4.5e-3)
    assert beyond_edge(grid, 1.67e-4, 3.0) == pytest.approx(5.57e-5)
    assert beyond_edge(grid, 5e-4, 3.0) is None  # bracketed: a worse rate on both sides
    assert beyond_edge(grid + [4.5e-3], 1.5e-3, 3.0) is None  # the step past it lost (or diverged)
    assert beyond_edge([5e-4], 5e-4, 3.0) is None  # one rate: no search, no edge


def _peaked_fit(peak: float, tried: list[float]):
    """A stand-in for ``engine.train.fit``: the validation score is highest at ``peak`` (log scale)."""

    def fit(model, strategy, task, train, validation, tokenizer, training, accelerator, rate, **_):
        tried.append(rate)
        score = 1.0 - abs(math.log(rate / peak)) / 10
        return SimpleNamespace(best={"value": score, "metrics": {"loss": 1 - score}, "epoch": 1}, steps=1)

    return fit


@pytest.mark.parametrize("where, expected_extended, at_edge", [
    ("top x3", 2, False),     # one step past the top wins; the next step past loses: bracketed
    ("top x100", 2, True),    # still rising after both steps: flagged, the limit reached
    ("bottom /3", 2, False),  # the same downwards
    ("middle", 0, False),     # the grid brackets it: nothing added
])
def test_the_search_follows_a_best_rate_past_the_grid_end(tmp_path, monkeypatch, where, expected_extended, at_edge):
    import adaptkit.engine.train as train

    bench = _Bench(tmp_path, trials=3)
    low, middle, high = bench.grid
    peak = {"top x3": high * 3, "top x100": high * 100, "bottom /3": low / 3, "middle": middle}[where]
    tried: list[float] = []
    monkeypatch.setattr(train, "fit", _peaked_fit(peak, tried))
    lines: list[str] = []
    result = bench.tune(None, tmp_path / "trials", lines=lines, extend=2)
    extended = result.search["extended"]
    assert len(extended) == expected_extended and sorted(tried) == sorted(bench.grid + extended)
    assert result.search["at_edge"] is at_edge and result.search["extension_limit"] == 2
    if where.startswith("top"):
        assert extended == pytest.approx([high * 3, high * 9], rel=1e-2)
    if where == "bottom /3":
        assert extended == pytest.approx([low / 3, low / 9], rel=1e-2)
        assert result.learning_rate == pytest.approx(low / 3, rel=1e-2)
    if where == "top x3":
        assert result.learning_rate == pytest.approx(high * 3, rel=1e-2)
    assert ("it may train better beyond" in result.search["described"]) is at_edge
    assert sum("trying lr" in line for line in lines) == expected_extended


def test_a_shared_study_reaches_the_same_extension_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    import adaptkit.engine.train as train

    bench = _Bench(tmp_path, trials=3)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    tried: list[float] = []
    monkeypatch.setattr(train, "fit", _peaked_fit(bench.grid[-1] * 3, tried))
    first = bench.tune(storage, tmp_path / "trials", extend=2)
    count = len(tried)
    again = bench.tune(storage, tmp_path / "trials", extend=2)
    assert len(tried) == count  # every rate, extensions included, was settled in the study
    assert again.search["extended"] == first.search["extended"] and again.learning_rate == first.learning_rate


def test_no_extension_when_the_grid_was_trimmed_to_a_time_budget(tmp_path, monkeypatch):
    import adaptkit.engine.train as train
    from adaptkit.judge.tuning import tune_arm

    bench = _Bench(tmp_path, trials=3)
    tried: list[float] = []
    monkeypatch.setattr(train, "fit", _peaked_fit(bench.grid[-1] * 100, tried))
    result = tune_arm(bench.session, bench.arm, bench.workbench, None, 0, bench.train, bench.validation, 3, "s",
                      None, tmp_path / "trials", limit=2, extend=2)
    assert result.search["extended"] == [] and result.search["extension_limit"] == 0
    assert len(tried) == 2 and result.search["at_edge"]  # still said: its best is an end of what it tried


def test_compare_flags_an_arm_still_best_at_an_end_and_says_how_it_searched(tmp_path, monkeypatch):
    import adaptkit.engine.train as train
    from adaptkit.judge.compare import compare
    from adaptkit.judge.tuning import EDGE_FLAG
    from adaptkit.recipe.schema import Recipe
    from conftest import as_checkpoint, tiny_recipe_dict

    recipe = as_checkpoint(tiny_recipe_dict(tmp_path, "frozen_head", training={"epochs": 1, "num_threads": 1}),
                           tmp_path / "pretrained")
    tried: list[float] = []
    monkeypatch.setattr(train, "fit", _peaked_fit(10.0, tried))  # far above any grid: rising past both steps
    lines: list[str] = []
    report = compare(Recipe.from_dict(recipe), ["frozen_head"], trials=3, bootstrap_rounds=50, log=lines.append,
                     baselines=[])
    row = report.rows[0]
    assert EDGE_FLAG in row.flags and len(tried) == 5
    assert f"{EDGE_FLAG})" in (report.output_dir / "table.md").read_text()  # in the arm's flags
    saved = json.loads((report.output_dir / "compare.json").read_text())
    assert saved["search"]["extension_limit"] == 2 and len(saved["runs"][0]["search"]["extended"]) == 2
    assert any("is followed past it (up to 2 more rate(s))" in note for note in saved["notes"])
    assert any("tries up to 2 more past it" in line for line in lines)  # the plan says so before training

    # with --max-minutes the estimate counts the grid only: no extension, and the flag still says what it found
    tried.clear()
    trimmed = compare(Recipe.from_dict(recipe), ["frozen_head"], trials=3, bootstrap_rounds=50, log=lambda _: None,
                      baselines=[], max_minutes=1000, output_dir=tmp_path / "budgeted")
    assert len(tried) == 3 and EDGE_FLAG in trimmed.rows[0].flags
