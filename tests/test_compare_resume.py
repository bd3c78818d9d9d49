"""``adaptkit compare`` survives and resumes, and says its cost first (issue 28, item 6).

Each case broke before: a rerun that waited forever for a killed trial, a study reused across
validation fractions, a new --output crashing on the old folder's trial files, an empty folder
or half-written final files blocking the rerun, a second process refusing the shared folder,
and no word on the cost before training.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from adaptkit.recipe.schema import Recipe
from conftest import REPO, as_checkpoint, tiny_recipe_dict


def _recipe(tmp_path, **training):
    return Recipe.from_dict(as_checkpoint(tiny_recipe_dict(tmp_path, "frozen_head", training={
        "epochs": 1, "num_threads": 1, **training}), tmp_path / "pretrained"))


def _compare(recipe, out, lines=None, **kwargs):
    from adaptkit.judge.compare import compare

    # edge_rates 0: these tests count the grid's trials (a 2-rate grid's best is always an end)
    kwargs = {"strategies": ["frozen_head"], "trials": 2, "bootstrap_rounds": 50, "baselines": [], "edge_rates": 0,
              "log": lines.append if lines is not None else lambda _: None} | kwargs
    return compare(recipe, kwargs.pop("strategies"), output_dir=out, **kwargs)


def _trained(lines):
    """The progress lines of trials trained by this process."""
    return [line for line in lines if ", trial " in line]


def test_the_plan_and_its_estimated_time_come_before_the_first_trial(tmp_path, monkeypatch):
    from adaptkit.judge import compare_state

    # a step costs its padded tokens x the timed seconds per token: here 1 token a row, 1/32 s a token
    monkeypatch.setattr(compare_state, "padded_tokens", lambda lengths, batch, grouped: len(lengths))
    monkeypatch.setattr(compare_state, "time_steps", lambda session, base, names, log: {n: 1 / 32 for n in names})
    lines: list[str] = []
    report = _compare(_recipe(tmp_path), tmp_path / "cmp", lines, strategies=["frozen_head", "scratch"])
    first_trial = next(i for i, line in enumerate(lines) if ", trial " in line)
    plan = next(i for i, line in enumerate(lines) if line.startswith("compare plan:"))
    assert plan < first_trial
    assert "2 arm(s) x 1 size(s) x 1 seed(s) x 2 learning rate(s) = 4 trials" in lines[plan]
    # 77 training rows in 5 steps an epoch: 15.4 tokens a step, 0.48 s
    assert any("scratch: optimizer steps a trial: 100 at all rows; one step ~0.48 s (one timed, scaled to the "
               "padded tokens)" in line for line in lines)
    assert any("estimated ~" in line for line in lines)
    assert report.search["plan"]["seconds_per_step"] == {"frozen_head": pytest.approx(0.481, abs=1e-3),
                                                         "full": pytest.approx(0.481, abs=1e-3)}
    # the range each arm tried is in compare.json and the table; scratch's is its own
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    scratch = next(r for r in saved["runs"] if r["strategy"] == "scratch")
    assert scratch["search"]["random_init"] and scratch["search"]["warmup_ratio"] == 0.1
    assert len(scratch["search"]["grid"]) == 2 and scratch["trials"][0]["steps"] >= 100
    assert f"scratch: {scratch['search']['described']}" in (tmp_path / "cmp" / "table.md").read_text()


def test_cli_max_minutes_that_cannot_fit_exits_2_before_training(tmp_path, capsys):
    from adaptkit.cli import main
    from conftest import write_recipe

    path = write_recipe(tmp_path / "recipe.yaml", as_checkpoint(tiny_recipe_dict(
        tmp_path, "frozen_head", training={"epochs": 1, "num_threads": 1}), tmp_path / "pretrained"))
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--strategies", "frozen_head", "--output", str(out), "--trials", "2",
                 "--baselines", "none", "--max-minutes", "0.00001"]) == 2
    err = capsys.readouterr().err
    assert "compare plan:" in err and "even one learning rate per arm" in err
    assert not list(out.glob("trials/*/trial-*.pt"))
    assert main(["compare", str(path), "--strategies", "frozen_head", "--output", str(out),
                 "--max-minutes", "-1"]) == 2
    assert "--max-minutes must be a positive number" in capsys.readouterr().err


def test_the_real_estimate_times_one_step_per_strategy_as_advise_does(tmp_path):
    lines: list[str] = []
    report = _compare(_recipe(tmp_path), tmp_path / "cmp", lines, trials=1)
    step = report.search["plan"]["seconds_per_step"]["frozen_head"]
    assert step is not None and 0 < step < 60
    assert report.search["plan"]["estimated_minutes"] is not None


def test_max_minutes_trims_the_grids_extremes_first_and_says_so(tmp_path, monkeypatch):
    from adaptkit.errors import AdaptkitError
    from adaptkit.judge import compare_state

    monkeypatch.setattr(compare_state, "padded_tokens", lambda lengths, batch, grouped: len(lengths))
    monkeypatch.setattr(compare_state, "time_steps", lambda session, base, names, log: {n: 1 / 16 for n in names})
    # one trial: 30 steps of 15.4 tokens at 1/16 s a token (29 s) and 146 tokens of forward passes (3 s)
    recipe = _recipe(tmp_path, min_steps=30)
    with pytest.raises(AdaptkitError, match="even one learning rate per arm"):
        _compare(recipe, tmp_path / "tiny", trials=3, max_minutes=0.1)
    assert not list((tmp_path / "tiny").glob("trials/*/trial-*.pt"))  # nothing was trained
    lines: list[str] = []
    report = _compare(recipe, tmp_path / "cmp", lines, trials=3, max_minutes=1.3)  # two of three fit
    said = next(line for line in lines if line.startswith("--max-minutes"))
    assert "trimmed to 2 of 3 learning rates per arm" in said and "frozen_head" in said
    run = report.runs[0]
    assert len(run.trials) == 2 and len(run.search["full_grid"]) == 3
    assert run.search["full_grid"][1] in run.search["grid"]  # the centre is kept
    assert any("2 of 3 learning rates" in note for note in report.notes)


def test_compare_json_after_every_cell_and_a_rerun_trains_only_what_is_missing(tmp_path):
    """A crash costs nothing finished: killed in the second arm, the rerun reloads the first arm's
    cell from compare.json and the second arm's finished trials from the folder's own study."""
    recipe = _recipe(tmp_path)
    out = tmp_path / "cmp"
    lines: list[str] = []

    def crash_in_the_second_arm(line):
        lines.append(line)
        if line.startswith("compare: scratch at") and ", trial " in line:
            raise KeyboardInterrupt  # after scratch's first trial finished

    with pytest.raises(KeyboardInterrupt):
        _compare(recipe, out, None, strategies=["frozen_head", "scratch"], log=crash_in_the_second_arm)
    partial = json.loads((out / "compare.json").read_text())
    assert partial["complete"] is False and [r["strategy"] for r in partial["runs"]] == ["frozen_head"]
    assert len(_trained(lines)) == 3  # two frozen_head trials and one of scratch's
    again: list[str] = []
    report = _compare(recipe, out, again, strategies=["frozen_head", "scratch"])
    assert any("reloaded from compare.json" in line and "frozen_head" in line for line in again)
    assert [line.split(",")[0] for line in _trained(again)] == ["compare: scratch at all rows"]  # one trial left
    saved = json.loads((out / "compare.json").read_text())
    assert saved["complete"] is True and len(saved["runs"]) == 2
    assert report.runs[0].metric == partial["runs"][0]["metric"]
    assert len(report.runs[1].trials) == 2


def test_a_rerun_with_another_validation_fraction_gets_its_own_trials(tmp_path):
    import optuna

    recipe = _recipe(tmp_path)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    _compare(recipe, tmp_path / "a", storage=storage, study_name="shared")
    lines: list[str] = []
    report = _compare(recipe, tmp_path / "b", lines, storage=storage, study_name="shared", validation_fraction=0.25)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert len(names) == 2 and "-v0.2-" in names[0] and "-v0.25-" in names[1]
    assert len(_trained(lines)) == 2  # scored on the new split, not reused from the old one
    assert report.runs[0].validation_examples == 24  # 25 % of the 96 rows


def test_a_rerun_with_a_new_output_recomputes_the_chosen_predictions_instead_of_crashing(tmp_path):
    recipe = _recipe(tmp_path)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    first = _compare(recipe, tmp_path / "a", storage=storage, study_name="shared")
    lines: list[str] = []
    second = _compare(recipe, tmp_path / "b", lines, storage=storage, study_name="shared")
    assert not _trained(lines) and any("again to recompute them" in line for line in lines)
    assert second.runs[0].metric == pytest.approx(first.runs[0].metric)
    assert (tmp_path / "b" / "trials" / second.runs[0].trial_dir / f"trial-{second.runs[0].chosen_trial}.pt").is_file()


def test_an_empty_folder_adaptkit_made_does_not_block_the_rerun(tmp_path):
    from adaptkit.engine.outputs import write_manifest
    from adaptkit.judge.compare import COMPARE_FILES

    out = tmp_path / "cmp"
    (out / "trials" / "frozen_head-nall-s0-v0.2-deadbeef").mkdir(parents=True)  # made, then killed
    write_manifest(out, "compare", COMPARE_FILES)
    report = _compare(_recipe(tmp_path), out)
    assert (out / "compare.json").is_file() and report.runs


def test_a_compare_killed_while_writing_its_final_files_resumes_without_training(tmp_path):
    from adaptkit.engine.outputs import write_manifest

    recipe = _recipe(tmp_path)
    out = tmp_path / "cmp"
    first = _compare(recipe, out)
    # as a kill after compare.json and half of table.md leaves it: the manifest not yet updated
    write_manifest(out, "compare", ["trials", "compare.json"])
    (out / "report.html").unlink()
    (out / "table.md").write_text("| arm |")
    lines: list[str] = []
    second = _compare(recipe, out, lines)
    assert not _trained(lines) and any("reloaded from compare.json" in line for line in lines)
    assert second.runs[0].metric == first.runs[0].metric and (out / "report.html").is_file()
    assert (out / "table.md").read_text() != "| arm |" and "frozen_head" in (out / "table.md").read_text()


def test_another_compares_folder_is_refused_without_overwrite(tmp_path):
    from adaptkit.errors import AdaptkitError

    recipe = _recipe(tmp_path)
    _compare(recipe, tmp_path / "cmp")
    with pytest.raises(AdaptkitError, match="other settings.*--overwrite"):
        _compare(recipe, tmp_path / "cmp", trials=1)
    lines: list[str] = []
    _compare(recipe, tmp_path / "cmp", lines, trials=1, overwrite=True)
    assert len(_trained(lines)) == 1  # --overwrite starts over: the folder's own study too


_SUBPROCESS = """
import json, sys
from adaptkit.judge.compare import compare
from adaptkit.recipe.schema import Recipe
args = json.loads(sys.argv[1])
compare(Recipe.from_dict(args["recipe"]), ["frozen_head"], trials=2, storage=args["storage"], study_name="shared",
        output_dir=args["out"], bootstrap_rounds=50, baselines=[], log=lambda line: print(line, flush=True))
"""


def _spawn(tmp_path, recipe: dict, storage: str, out) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests"))
    return subprocess.Popen([sys.executable, "-c", _SUBPROCESS,
                             json.dumps({"recipe": recipe, "storage": storage, "out": str(out)})],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _running_trial(storage: str, timeout: float = 180.0) -> bool:
    import optuna

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for summary in optuna.get_all_study_summaries(storage):
                study = optuna.load_study(study_name=summary.study_name, storage=storage)
                if any("owner" in t.user_attrs for t in study.get_trials(
                        states=(optuna.trial.TrialState.RUNNING,))):
                    return True
        except Exception:  # the database is being created
            pass
        time.sleep(0.1)
    return False


def test_a_compare_killed_with_sigkill_is_resumed_without_waiting_for_its_trial(tmp_path):
    import optuna

    recipe = as_checkpoint(tiny_recipe_dict(tmp_path, "frozen_head", training={
        "epochs": 1, "num_threads": 1, "min_steps": 400}), tmp_path / "pretrained")
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    process = _spawn(tmp_path, recipe, storage, tmp_path / "cmp")
    try:
        assert _running_trial(storage), process.communicate(timeout=5)[0]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    lines: list[str] = []
    started = time.monotonic()
    report = _compare(Recipe.from_dict(recipe), tmp_path / "cmp", lines, storage=storage, study_name="shared")
    assert time.monotonic() - started < 240
    assert any("process that died" in line for line in lines)
    study = optuna.load_study(study_name=f"shared:{report.runs[0].trial_dir}", storage=storage)
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.FAIL in states and len(report.runs[0].trials) == 2


def test_two_processes_on_one_storage_and_one_output_share_the_work(tmp_path):
    """As the README describes a sweep over several machines: same --storage, same --output."""
    import optuna

    recipe = as_checkpoint(tiny_recipe_dict(tmp_path, "frozen_head", training={
        "epochs": 1, "num_threads": 1, "min_steps": 150}), tmp_path / "pretrained")
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    other = _spawn(tmp_path, recipe, storage, tmp_path / "cmp")
    try:
        assert _running_trial(storage)
        # the default edge rates, as the other process: a rate past the grid is settled once too
        report = _compare(Recipe.from_dict(recipe), tmp_path / "cmp", storage=storage, study_name="shared",
                          edge_rates=2)
    finally:
        output = other.communicate(timeout=300)[0]
    assert other.returncode == 0, output
    study = optuna.load_study(study_name=f"shared:{report.runs[0].trial_dir}", storage=storage)
    settled = [t for t in study.get_trials() if "record" in t.user_attrs]
    search = report.runs[0].search
    assert sorted(t.params["learning_rate"] for t in settled) == sorted(search["grid"] + search["extended"])  # once each
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["complete"] is True


def test_trim_keeps_the_centre_and_refuses_what_cannot_fit():
    from adaptkit.errors import AdaptkitError
    from adaptkit.judge.compare_state import CellCost, Plan, trim

    def plan():
        cells = [CellCost("lora", 100, 0, 100, 0, 60.0, [3e-4, 1e-3, 3e-3]),
                 CellCost("scratch", 100, 0, 100, 0, 120.0, [8.3e-5, 5e-4, 3e-3])]
        return Plan(cells=cells, trials=3, tried=3, step_seconds={"lora": 0.6, "full": 1.2})

    whole = plan()
    assert whole.seconds() == 540 and trim(whole, 10) == ["--max-minutes 10: the plan fits (~9.0 min)"]
    trimmed = plan()
    said = trim(trimmed, 6.5)
    assert trimmed.tried == 2 and trimmed.seconds() == 360
    assert "trimmed to 2 of 3" in said[0] and "lora 0.003" in said[0] and "scratch 0.003" in said[0]
    with pytest.raises(AdaptkitError, match="even one learning rate per arm is estimated at ~3.0 min"):
        trim(plan(), 2)
