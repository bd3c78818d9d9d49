"""The conformance kit reports every failure (issue 23 item 6): each rule is a named check a plugin's
tests can parametrize over (``strategy_checks``/``task_checks``), ``check_strategy``/``check_task``
run them all and list every failed one, and the caller declares the failures it expects."""
from __future__ import annotations

import pytest
import torch

from adaptkit import Strategy
from adaptkit.errors import AdaptkitError, ContractViolation, TaskContractViolation
from adaptkit.testing import ConformanceCheck, check_strategy, check_task, strategy_checks, task_checks


class TwoDefects(Strategy):
    """Changes a frozen weight during training (frozen) and leaves an extra layer behind (signature)."""

    name = "two_defects"
    mergeable = True

    def wrap(self, model, context):
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(h) for h in context.head_modules))
        model.extra_projection = torch.nn.Linear(2, 2)  # never removed by unwrap

        def nudge(module, args):
            if module.training:
                with torch.no_grad():
                    module.weight.mul_(1.001)  # a frozen weight drifts while training

        model.get_input_embeddings().register_forward_pre_hook(nudge)
        return model

    def unwrap(self, model):
        return model


def test_a_strategy_with_two_defects_gets_both_reported():
    with pytest.raises(ContractViolation) as caught:
        check_strategy(TwoDefects, families=["bert"])
    message = str(caught.value)
    # the first failure's message first, as when the kit stopped there, then every failed check
    assert message.startswith("strategy 'two_defects' broke the contract rule 'frozen'")
    assert "strategy 'two_defects' failed 2 conformance checks: bert/frozen as above, and:" in message
    assert "  - bert/signature: " in message and "rule 'signature'" in message and "extra_projection" in message
    # the first failure, in run order, is the exception's own rule, as when the kit stopped there
    assert caught.value.rule == "frozen"
    assert [f.rule for f in caught.value.failures] == ["frozen", "signature"]


def test_expected_failures_are_honoured_and_reported():
    report = check_strategy(TwoDefects, families=["bert"],
                            expected_failures={"bert/frozen": "moves its embeddings on purpose",
                                               "signature": "keeps a projection"})
    assert report.expected_failures == ["bert/frozen: moves its embeddings on purpose",
                                        "bert/signature: keeps a projection"]
    assert "xfail  bert/frozen" in str(report)
    assert any(line.startswith("bert: export") for line in report.passed)
    # one declared, the other still raised, alone
    with pytest.raises(ContractViolation) as caught:
        check_strategy(TwoDefects, families=["bert"], expected_failures={"frozen": "on purpose"})
    assert caught.value.rule == "signature" and len(caught.value.failures) == 1
    assert "conformance checks" not in str(caught.value)


def test_a_declared_failure_that_passes_is_reported_and_a_misspelt_one_refused():
    report = check_strategy(TwoDefects, families=["bert"],
                            expected_failures={"frozen": "x", "signature": "y", "bert/export": "z"})
    assert report.unexpected_passes == ["bert/export"]
    with pytest.raises(AdaptkitError, match="expected_failures names no check: 'bert/frozne'"):
        check_strategy(TwoDefects, families=["bert"], expected_failures={"bert/frozne": "typo"})


def test_strategy_checks_are_named_lazy_and_parametrizable():
    checks = list(strategy_checks(TwoDefects, families=["bert", "gpt2"], expected_failures={"frozen": "known"}))
    assert [name for name, _ in checks] == [f"{f}/{r}" for f in ("bert", "gpt2")
                                            for r in ("wrap", "frozen", "trainable", "export", "signature",
                                                      "equivalence")]
    by_name = dict(checks)
    assert isinstance(by_name["bert/frozen"], ConformanceCheck) and by_name["bert/frozen"].expected == "known"
    # out of order: signature (which unwraps) first, then export (which needs the trained model again)
    with pytest.raises(ContractViolation, match="rule 'signature'"):
        by_name["gpt2/signature"]()
    assert by_name["gpt2/export"]().startswith("gpt2: export")
    assert by_name["gpt2/frozen"]() is None  # declared: swallowed


class CrashesOnWrap(TwoDefects):
    name = "crashes_on_wrap"

    def wrap(self, model, context):
        raise TypeError("boom")


def test_a_crash_in_a_shared_step_is_listed_once_with_every_check_it_failed():
    with pytest.raises(ContractViolation) as caught:
        check_strategy(CrashesOnWrap, families=["bert"])
    message = str(caught.value)
    assert message.startswith("strategy 'crashes_on_wrap' broke the contract rule 'wrap': check bert/wrap raised")
    assert message.endswith("failed 6 conformance checks: bert/wrap, bert/frozen, bert/trainable, bert/export, "
                            "bert/signature, bert/equivalence as above")
    assert message.count("TypeError: boom") == 1
    assert isinstance(caught.value.failures[0].__cause__, TypeError)


def _sequence_classification():
    from adaptkit.plugin.registry import get_registry

    return get_registry().tasks["sequence_classification"]


ROWS = [{"text": t, "label": l} for t, l in [("good film", "pos"), ("bad film", "neg"), ("great", "pos"),
                                              ("awful", "neg"), ("fine", "pos"), ("dull", "neg")]]


def test_check_task_reports_every_failed_rule_and_honours_expected_failures():
    class TwoDefectsTask(_sequence_classification()):  # type: ignore[misc, valid-type]
        def head_modules(self, model):
            return ["not_there"]

        def predict_batch(self, model, batch):
            return super().predict_batch(model, batch)[:-1]

    options = None
    with pytest.raises(TaskContractViolation) as caught:
        check_task(TwoDefectsTask, options, rows=ROWS, families=["bert"])
    assert caught.value.rule == "head" and caught.value.family == "bert"
    assert [f.rule for f in caught.value.failures] == ["head", "predict"]
    assert str(caught.value).startswith("task 'sequence_classification' broke the rule 'head' on the tiny bert model")
    assert "failed 2 conformance checks: bert/head as above, and:\n  - bert/predict: " in str(caught.value)
    report = check_task(TwoDefectsTask, options, rows=ROWS, families=["bert"],
                        expected_failures={"head": "a", "predict": "b"})
    assert [x.split(":")[0] for x in report.expected_failures] == ["bert/head", "bert/predict"]
    assert [name for name, _ in task_checks(TwoDefectsTask, options, rows=ROWS, families=["bert"])] == [
        "bert/head", "bert/batch", "bert/metrics", "bert/predict", "bert/state"]
