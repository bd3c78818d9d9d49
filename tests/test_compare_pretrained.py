"""``compare`` judges pretraining, so a recipe that names no pretrained weights is refused before any
work (issue 24): a model built from ``model.config``, or loaded with ``model.init: random``, made
compare report "negative transfer" between two random initialisations."""
from __future__ import annotations

import pytest

from adaptkit.errors import RecipeError
from conftest import as_checkpoint, tiny_recipe_dict, write_recipe


def test_a_model_from_a_config_is_refused_naming_the_file_line_and_key(tmp_path):
    from adaptkit.judge.compare import compare

    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tmp_path, "full"))
    out = tmp_path / "cmp"
    with pytest.raises(RecipeError) as caught:
        compare(path, ["full", "scratch"], output_dir=out, log=lambda _: None)
    message = str(caught.value)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip() == "config:")
    assert message.startswith(f"{path}:{line}: model.config: compare judges pretraining")
    assert "built from model.config (random weights)" in message and "model.name" in message
    assert not out.exists()  # refused before the folder, the data or any model


def test_init_random_is_refused_and_the_cli_exits_2_before_any_work(tmp_path, capsys):
    from adaptkit.cli import main

    recipe = as_checkpoint(tiny_recipe_dict(tmp_path, "full"), tmp_path / "pretrained")
    recipe["model"]["init"] = "random"
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--strategies", "frozen_head,scratch", "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert "model.init: compare judges pretraining" in error and "model.init is random" in error
    assert "Traceback" not in error and not out.exists()


def test_a_saved_checkpoint_passes_the_check():
    from adaptkit.judge.compare_checks import check_pretrained
    from adaptkit.recipe.schema import Recipe

    for model in ({"name": "sentence-transformers/all-MiniLM-L6-v2"},
                  {"name": "sentence-transformers/all-MiniLM-L6-v2", "init": "pretrained"}):
        recipe = Recipe.from_dict({"model": model, "data": {"train": "t.csv"}, "strategy": {"name": "full"},
                                   "output": {"dir": "o"}}, check_files=False)
        check_pretrained(recipe)  # no error: pretrained weights are named


def test_advise_does_not_judge_transferability_of_random_weights(tmp_path):
    from types import SimpleNamespace

    from adaptkit.judge.transferability import transfer_verdict, transferability
    from adaptkit.recipe.schema import Recipe

    recipe = Recipe.from_dict(tiny_recipe_dict(tmp_path, "full") | {
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "init": "random"}})
    found = transferability(SimpleNamespace(recipe=recipe, train_data=None), 100, 3, lambda _: None)
    assert found == {"skipped": "model.init is random: there are no pretrained weights to judge"}
    assert transfer_verdict(found)[0] == "not assessed"
