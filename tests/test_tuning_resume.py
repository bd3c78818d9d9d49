"""``adaptkit.judge.tuning``: scratch's own search range, and a search that survives its process (issue 28, 5-6).

A trial killed with SIGKILL is simulated by a RUNNING trial whose recorded owner is a process
that has exited; an interrupted one by a trial failed without a record (what optuna stores when
KeyboardInterrupt or SIGTERM stops the objective).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from adaptkit.recipe.schema import Recipe
from conftest import tiny_recipe_dict


def _arm(name: str, random_init: bool = False, rate=None):
    from adaptkit import get_strategy
    from adaptkit.judge.tuning import Arm

    strategy = "full" if random_init else name
    return Arm(name=name, strategy=strategy, random_init=random_init, options=get_strategy(strategy).Options(),
               learning_rate=rate)


class _Bench:
    """One tiny arm ready to tune: session, split, workbench and its grid."""

    def __init__(self, tmp_path, trials: int, name: str = "frozen_head", random_init: bool = False):
        from adaptkit.engine.data import split_validation
        from adaptkit.engine.session import Session
        from adaptkit.judge.tuning import ArmModel, search_range

        recipe = Recipe.from_dict(tiny_recipe_dict(tmp_path, "full", training={"epochs": 1, "num_threads": 1}))
        self.session = Session(recipe, log=lambda _: None)
        self.arm = _arm(name, random_init)
        self.train, self.validation = split_validation(self.session.train_data, 0.2, 0, "labels")
        self.workbench = ArmModel(self.session, self.arm, 0)
        self.trials = trials
        self.range = search_range(self.arm, self.workbench.suggestion, trials, recipe.training)
        self.grid = self.range.grid

    def tune(self, storage, trial_dir, study_name="s", lines=None, timeout=300.0, extend=0):
        """tune_arm in a thread: a search that would wait forever fails the test instead of hanging it.
        ``extend`` 0 by default: these tests are about the grid (a 2-rate grid's best is always an end)."""
        from adaptkit.judge.tuning import tune_arm

        out: dict = {}

        def target():
            try:
                out["result"] = tune_arm(self.session, self.arm, self.workbench, None, 0, self.train, self.validation,
                                         self.trials, study_name, storage, trial_dir,
                                         log=(lines.append if lines is not None else lambda _: None),
                                         extend=extend)
            except BaseException as exc:  # noqa: BLE001 - reported below
                out["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(timeout)
        assert not thread.is_alive(), "the search is still waiting (for a trial nobody trains)"
        if "error" in out:
            raise out["error"]
        return out["result"]


def _dead_owner() -> dict:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return {"host": socket.gethostname(), "pid": process.pid, "started": 0.0}


def _ghost(storage: str, name: str, rate: float, owner=None, fail: bool = False):
    """A trial as a killed (RUNNING, dead owner) or interrupted (FAIL, no record) process leaves it."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize")
    study.enqueue_trial({"learning_rate": rate})
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(rate / 10, rate * 10, log=True)})
    if owner is not None:
        trial.set_user_attr("owner", owner)
    if fail:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return trial.number


def test_random_weights_get_their_own_wider_range_with_warmup_and_the_step_floor(tmp_path):
    from adaptkit.judge.tuning import (GRID_SPAN, RANDOM_INIT_LEARNING_RATE, RANDOM_INIT_SPAN, RANDOM_INIT_WARMUP,
                                       search_range)

    training = Recipe.from_dict(tiny_recipe_dict(tmp_path, "full")).training  # min_steps 0, warm-up 0.06
    pretrained = search_range(_arm("full"), 3e-5, 3, training)
    assert pretrained.grid == pytest.approx([1e-5, 3e-5, 9e-5], rel=1e-2)
    assert pretrained.warmup_ratio == training.warmup_ratio and pretrained.min_steps == 0
    # the rule is random_init, not the name "scratch"
    scratch = search_range(_arm("from-random", random_init=True), RANDOM_INIT_LEARNING_RATE, 3, training)
    assert scratch.grid == pytest.approx([RANDOM_INIT_LEARNING_RATE / RANDOM_INIT_SPAN, RANDOM_INIT_LEARNING_RATE,
                                          RANDOM_INIT_LEARNING_RATE * RANDOM_INIT_SPAN], rel=1e-2)
    assert RANDOM_INIT_SPAN > GRID_SPAN and max(scratch.grid) >= 1e-3 and min(scratch.grid) <= 1e-4
    assert scratch.warmup_ratio == RANDOM_INIT_WARMUP and scratch.min_steps == 100
    assert scratch.training(training).min_steps == 100 and scratch.training(training).warmup_ratio == 0.1
    assert search_range(_arm("x", True), RANDOM_INIT_LEARNING_RATE, 3, training) == scratch  # deterministic
    record = scratch.to_dict()
    assert record["grid"] == scratch.grid and "warm-up 10%" in record["described"]


def test_the_range_tried_is_recorded_and_scratch_trains_at_least_the_floor(tmp_path):
    bench = _Bench(tmp_path, trials=1, name="scratch", random_init=True)
    result = bench.tune(None, tmp_path / "trials")
    assert result.search["grid"] == bench.grid and result.search["random_init"]
    assert result.trials[0].steps >= 100  # the tiny recipe's own floor is 0


def test_a_killed_trial_left_running_is_failed_and_its_rate_trained_again(tmp_path):
    import optuna

    bench = _Bench(tmp_path, trials=2)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    middle = bench.grid[1]  # middle_out puts it first
    ghost = _ghost(storage, "s", middle, owner=_dead_owner())
    lines: list[str] = []
    result = bench.tune(storage, tmp_path / "trials", lines=lines)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert trials[ghost].state == optuna.trial.TrialState.FAIL
    assert sorted(t.learning_rate for t in result.trials) == sorted(bench.grid)  # the whole grid, once each
    assert any(t.learning_rate == middle and t.state in ("complete", "pruned") for t in result.trials)
    assert any("process that died" in line for line in lines)


def test_a_running_trial_of_a_live_process_is_waited_for_not_failed(tmp_path):
    import os

    import psutil
    from adaptkit.judge.tuning import fail_dead_trials, owner_gone

    import optuna

    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}
    assert not owner_gone(me) and owner_gone(_dead_owner())
    assert not owner_gone(me | {"host": "another-machine"})  # another host's: its heartbeat tells
    _ghost(storage, "live", 1e-3, owner=me)
    study = optuna.load_study(study_name="live", storage=storage)
    assert fail_dead_trials(study) == []
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING


@pytest.mark.parametrize("trials", [1, 2])
def test_an_interrupted_trial_is_retried_at_its_rate_and_the_arm_judged_on_the_whole_grid(tmp_path, trials):
    """Before: the failed trial counted toward ``trials``; with --trials 1 the arm could never finish."""
    bench = _Bench(tmp_path, trials=trials)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    rate = bench.grid[len(bench.grid) // 2]
    _ghost(storage, "s", rate, fail=True)
    result = bench.tune(storage, tmp_path / "trials")
    assert sorted(t.learning_rate for t in result.trials) == sorted(bench.grid)
    assert all(t.state in ("complete", "pruned") for t in result.trials)
    # a rerun trains nothing: every grid rate is settled
    again = bench.tune(storage, tmp_path / "trials")
    assert [t.number for t in again.trials] == [t.number for t in result.trials]


def test_chosen_predictions_missing_from_this_folder_are_recomputed_not_a_crash(tmp_path):
    import torch

    bench = _Bench(tmp_path, trials=2)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    first = bench.tune(storage, tmp_path / "old" / "trials")
    lines: list[str] = []
    second = bench.tune(storage, tmp_path / "new" / "trials", lines=lines)  # a rerun with a new --output
    assert second.retrained and not first.retrained and second.chosen_trial == first.chosen_trial
    assert (tmp_path / "new" / "trials" / f"trial-{first.chosen_trial}.pt").is_file()
    assert any("training lr" in line for line in lines)
    assert torch.equal(second.eval_outputs["labels"], first.eval_outputs["labels"])
    assert torch.allclose(second.eval_outputs["logits"], first.eval_outputs["logits"], atol=1e-5)  # same training
