"""A strategy learns the run's optimizer steps before it builds its config (``WrapContext.total_steps``):
AdaLoRA's ``total_step`` (the steps its rank budget is scheduled over) is the run's real count unless the
recipe sets it, on a tiny BERT. A real run's count: tests/test_peft_methods.py
(test_a_run_gives_adalora_its_rank_allocation_after_each_step)."""
from __future__ import annotations

import dataclasses
import math

import pytest

import adaptkit
from adaptkit import PreflightError
from adaptkit.testing import build_family, wrap_context
from adaptkit_peft_methods import strategies

ADALORA = strategies()["adalora"]


@pytest.fixture(scope="module")
def bert_context():
    model = build_family("bert")
    return model, wrap_context(model, "bert")


def test_a_wrap_takes_the_step_count_from_the_context_and_the_recipe_value_wins(bert_context):
    model, context = bert_context
    wrapped = ADALORA().wrap(build_family("bert"), dataclasses.replace(context, total_steps=40))
    assert wrapped.peft_config["default"].total_step == 40
    wrapped = ADALORA({"total_step": 7}).wrap(build_family("bert"), dataclasses.replace(context, total_steps=40))
    assert wrapped.peft_config["default"].total_step == 7


def test_a_wrap_told_no_step_count_is_refused_naming_the_option(bert_context):
    model, context = bert_context
    assert context.total_steps is None  # the conformance kit's context knows no run
    with pytest.raises(PreflightError, match=r"'adalora' needs total_step.*set strategy.total_step in the recipe"):
        ADALORA().wrap(model, context)


def test_plan_compare_and_advise_tell_adalora_the_step_count(tmp_path):
    """``adaptkit plan`` of an AdaLoRA recipe without total_step plans (it counts the raw training rows);
    compare's arm model for one training-set size is built with that size's steps; advise sizes it."""
    from conftest import tiny_recipe_dict

    from adaptkit.engine.session import Session
    from adaptkit.judge.tuning import Arm, ArmModel

    recipe = tiny_recipe_dict(tmp_path, strategy="adalora")
    entry = adaptkit.plan(recipe).strategies[0]  # strict: an error would raise
    assert entry.error is None and entry.trainable > 0
    session = Session(recipe, log=lambda _: None)
    assert session.planned_steps() == math.ceil(96 / 16) * 2  # epochs 2, no floor in the tiny recipe
    arm = Arm(name="adalora", strategy="adalora", random_init=False, options=session.recipe.strategy_options,
              learning_rate=None)
    assert ArmModel(session, arm, seed=0, total_steps=11).model.peft_config["default"].total_step == 11
    with pytest.raises(PreflightError, match="needs total_step"):
        ArmModel(session, arm, seed=0)
    from adaptkit.judge.advise import strategy_advice

    sized = strategy_advice(session, ["adalora"], probe_steps=0, power_watts=None, grid_g_per_kwh=None,
                            log=lambda _: None)[0]
    assert sized.skipped is None and sized.trainable > 0  # advise sizes it as a run would wrap it
