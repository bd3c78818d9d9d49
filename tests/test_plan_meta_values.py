"""``plan`` on the meta device and a strategy whose wrap reads the weights' values.

peft's AdaMSS initialises its adapter from an SVD of each target weight; on the meta device (no
values) the wrap raises "Cannot copy out of meta tensor", and plan used to report that as the
method refusing BERT: the strategies benchmark listed AdaMSS as "refused at plan" though it runs.
"""
from __future__ import annotations

import pytest

import adaptkit
from adaptkit.engine.planning import needs_weight_values, render_text
from conftest import tiny_recipe_dict


def test_a_meta_device_failure_is_told_from_a_refusal_by_its_cause_chain():
    assert needs_weight_values(RuntimeError("Cannot copy out of meta tensor; no data!"))
    try:
        try:
            raise NotImplementedError("Cannot copy out of meta tensor; no data!")
        except NotImplementedError as inner:
            raise adaptkit.PreflightError("strategy 'x' cannot adapt this bert model: peft says: boom") from inner
    except adaptkit.PreflightError as outer:
        assert needs_weight_values(outer)
    assert needs_weight_values(NotImplementedError("The register_meta function for torch.nonzero() raises "
                                                   "unimplemented by default"))  # peft's SHiRA
    assert not needs_weight_values(adaptkit.PreflightError("peft says: Unsupported model type 'bert'"))
    assert not needs_weight_values(ValueError("metadata missing"))  # "meta" alone is not the meta device


def test_plan_does_not_refuse_a_strategy_that_needs_weight_values_and_a_run_trains_it(tmp_path):
    recipe = tiny_recipe_dict(tmp_path, "adamss", training={"epochs": 1, "num_threads": 1})
    result = adaptkit.plan(recipe)  # strict: the recipe's own strategy raised here before
    entry = result.strategies[0]
    assert entry.meta_limited and "not planned on the meta device" in entry.error and entry.failure is None
    text = render_text(result)
    assert "adamss: not planned on the meta device" in text and "cannot plan" not in text
    run = adaptkit.run(recipe, progress=False)  # the real wrap: peft's SVD init on real weights
    assert run.metrics["parameters"]["trainable"] > 0 and run.metrics["contract"]


def test_a_real_refusal_still_stops_plan(tmp_path):
    recipe = tiny_recipe_dict(tmp_path, "adaption_prompt")
    recipe["strategy"].update(adapter_len=4, adapter_layers=1)
    with pytest.raises(adaptkit.PreflightError, match="Unsupported model type for adaption prompt"):
        adaptkit.plan(recipe)
