"""``adaptkit plan``: sizes and memory from the meta device, without weights or training."""
from __future__ import annotations

import pytest

from adaptkit.cli import main
from adaptkit.planning import plan
from adaptkit.recipe import Recipe
from conftest import REPO, write_recipe


def test_plan_counts_match_a_real_wrap(tiny_recipe):
    recipe = Recipe.from_dict(tiny_recipe("lora"))
    result = plan(recipe, ["full", "lora"])
    by_name = {entry.strategy: entry for entry in result.strategies}
    assert by_name["full"].error is None and by_name["lora"].error is None
    assert by_name["full"].trainable == by_name["full"].total
    # what a real run reports (see test_cli): the same model built with weights
    import adaptkit

    real = adaptkit.run(tiny_recipe("lora", training={"epochs": 1}), progress=False)
    assert by_name["lora"].trainable == real.metrics["parameters"]["trainable"]
    assert by_name["lora"].total == real.metrics["parameters"]["total"]
    assert any("query.lora_A" in t for t in by_name["lora"].touched)
    memory = by_name["lora"].memory
    assert memory["optimizer"] == 8 * by_name["lora"].trainable
    assert by_name["full"].memory["total"] > memory["total"]


@pytest.mark.slow
def test_plan_of_the_quickstart_needs_no_weights(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", str(REPO / "recipes" / "quickstart.yaml"), "--all"]) == 0
    out = capsys.readouterr().out
    assert "338,690" in out and "22,713,986" in out


def test_plan_unknown_strategy_is_a_clear_error(tiny_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora"))
    assert main(["plan", str(path), "--strategies", "lorra"]) == 2
    assert "did you mean 'lora'" in capsys.readouterr().err
