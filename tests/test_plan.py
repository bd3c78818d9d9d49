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


# ---------------------------------------------------------------------------- max_length vs the model (issue 14, item 6)

def _line_of(path, key: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(key))


def test_plan_refuses_a_max_length_past_the_position_table(tiny_recipe, tmp_path, capsys):
    # tiny BERT: 128 positions; 200 tokens used to fail as a tensor-size RuntimeError mid-run
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora", task={"max_length": 200}))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    line = _line_of(path, "max_length:")
    assert f"{path.resolve()}:{line}: task.max_length: 200 tokens are more than this bert model's 128 positions; " \
           f"set task.max_length to at most 128" in err, err
    assert "Traceback" not in err


def test_prompt_tuning_virtual_tokens_count_against_the_positions(tiny_recipe, tmp_path):
    from adaptkit.errors import RecipeError
    from adaptkit.recipe import load_recipe

    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("prompt_tuning", task={"max_length": 120}))
    with pytest.raises(RecipeError, match="120 plus strategy.num_virtual_tokens 20 tokens are more than this bert "
                                          "model's 128 positions; set task.max_length to at most 108"):
        plan(load_recipe(path))
    fits = write_recipe(tmp_path / "fits.yaml", tiny_recipe("prompt_tuning", task={"max_length": 108}))
    assert plan(load_recipe(fits)).strategies[0].error is None


def test_a_run_stops_at_start_on_a_max_length_past_the_positions(tiny_recipe, tmp_path):
    import adaptkit
    from adaptkit.errors import RecipeError

    recipe = tiny_recipe("full", task={"max_length": 129})
    with pytest.raises(RecipeError, match=r"task\.max_length: 129 tokens are more than this bert model's 128"):
        adaptkit.run(recipe, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "gpt2", "n_positions": 1024, "n_ctx": 1024}, 1024),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),  # positions start at 2
    ({"model_type": "llama", "max_position_embeddings": 2048, "rope_theta": 10000.0}, None),  # rotary: no table
    ({"model_type": "vit", "image_size": 224}, None),
])
def test_position_limit_from_a_config(config, limit):
    from transformers import AutoConfig

    from adaptkit.task import position_limit

    assert position_limit(config) == limit
    settings = dict(config)
    assert position_limit(AutoConfig.for_model(settings.pop("model_type"), **settings)) == limit
