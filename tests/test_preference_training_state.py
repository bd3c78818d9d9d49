"""What a task keeps with the run and what it logs while training (``Task.training_state``,
``Task.training_metrics``), on the preference task and on a task that uses neither.

- ``reference: precompute``: a run interrupted after its first checkpoint and resumed reads the
  reference table back from the checkpoint, bit for bit the table computed before the first step,
  and never computes it again (from a model that has trained by then, it would differ: checked);
- the trackers, ``loss_curve`` and history get reward accuracy, rewards and margin, finite;
- a task without the hooks logs and checkpoints exactly what it did before, and the loop never
  touches the metric sums for it.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from adaptkit.engine.checkpoint import STATE_FILE, TASK_STATE_FILE, Checkpointer
from adaptkit.engine.runner import run
from adaptkit.engine.train_metrics import MetricSums
from conftest import tiny_recipe_dict
from test_instruct_kit import tiny_config, write_jsonl
from test_task_preference import (batch_of, colour_rows, make_task, models, tokenizer,  # noqa: F401 (fixtures)
                                  tokenizer_dir)

SAVE = Checkpointer.save
METRICS = ("reward_accuracy", "rewards_chosen", "rewards_rejected", "reward_margin", "logps_chosen", "logps_rejected")


class _Stop(Exception):
    """Stands for a kill right after the first checkpoint."""


def _record_saves(monkeypatch, stop_after: int | None = None) -> list[dict]:
    """Wrap ``Checkpointer.save``: record each checkpoint's files, trainer state and task state
    (they are deleted when the run succeeds), and raise ``_Stop`` after ``stop_after`` saves."""
    saved: list[dict] = []

    def save(self, trainer_state):
        path = SAVE(self, trainer_state)
        task_file = path / TASK_STATE_FILE
        saved.append({"files": sorted(p.name for p in path.iterdir()),
                      "state": json.loads((path / STATE_FILE).read_text()),
                      "task": load_file(str(task_file)) if task_file.is_file() else None})
        if stop_after is not None and len(saved) >= stop_after:
            raise _Stop
        return path

    monkeypatch.setattr(Checkpointer, "save", save)
    return saved


def _record_tracker_logs(monkeypatch) -> list[dict]:
    from accelerate import Accelerator

    logged: list[dict] = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, log_kwargs=None: logged.append(
        {**values, "_step": step}))
    return logged


def _preference_spec(tmp_path, tokenizer_dir, rows, **training) -> dict:
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    return {"model": {"config": tiny_config("llama", vocab), "tokenizer": str(tokenizer_dir)},
            "task": {"type": "preference", "objective": "dpo", "reference": "precompute", "chat_template": "chatml",
                     "max_length": 64, "max_new_tokens": 4},
            "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", rows)),
                     "eval": str(write_jsonl(tmp_path / "eval.jsonl", rows[:8]))},
            "strategy": {"name": "full"},
            "training": {"epochs": 1, "max_steps": 4, "batch_size": 8, "learning_rate": 1e-2, "seed": 0,
                         "warmup_ratio": 0.0, "checkpoint_every_steps": 2, "num_threads": 1, **training},
            "output": {"dir": str(tmp_path / "run")}}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tokenizer_dir):  # noqa: F811 (the imported fixture)
    """DPO, full fine-tuning of a tiny Llama built from a config (the reference is the weights before
    the first step: no checkpoint to reload them from), ``reference: precompute``: stopped after the
    checkpoint at step 2, then resumed to step 4 with a tracker on."""
    from adaptkit_tasks.preference import Preference

    tmp_path = tmp_path_factory.mktemp("pref_resume")
    spec = _preference_spec(tmp_path, tokenizer_dir, colour_rows(32, 4))
    computed, loaded = [], []
    original_precompute, original_load = Preference._precompute, Preference.load_training_state

    def precompute(self, model):
        original_precompute(self, model)
        computed.append(self.training_state())  # the table as it is before the first optimizer step

    def load(self, state):
        loaded.append(state)
        original_load(self, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Preference, "_precompute", precompute)
        patch.setattr(Preference, "load_training_state", load)
        first = _record_saves(patch, stop_after=1)
        with pytest.raises(_Stop):
            run(spec, progress=False, log=lambda _: None)
        assert len(computed) == 1
        second = _record_saves(patch)
        logged = _record_tracker_logs(patch)
        piped = io.StringIO()  # not a terminal: the progress display prints a line per log step
        with contextlib.redirect_stderr(piped):
            result = run({**spec, "training": {**spec["training"], "report_to": ["tensorboard"]}},
                         progress=True, log=lambda _: None, resume=True)
    return {"before": computed[0], "computed": computed, "loaded": loaded, "first": first, "second": second,
            "logged": logged, "result": result, "spec": spec, "stderr": piped.getvalue()}


def test_resumed_run_reads_the_reference_table_from_before_training_bit_for_bit(resumed):
    before, result = resumed["before"], resumed["result"]
    assert resumed["first"][0]["state"]["step"] == 2 and TASK_STATE_FILE in resumed["first"][0]["files"]
    assert len(resumed["computed"]) == 1, "the resumed run computed the reference table again"
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["steps"] == 4
    (loaded,) = resumed["loaded"]
    after = resumed["second"][-1]["task"]  # what the resumed run holds at its last checkpoint (step 4)
    assert set(before) == set(loaded) == set(after) >= {"reference_tokens", "reference_lengths", "reference_logps"}
    for name in before:
        assert torch.equal(loaded[name], before[name]) and torch.equal(after[name], before[name]), name
    assert before["reference_logps"].dtype == torch.float64 and before["reference_logps"].numel() >= 16
    # the output folder keeps it too
    kept = load_file(str(result.output_dir / TASK_STATE_FILE))
    assert all(torch.equal(kept[name], before[name]) for name in before)
    notes = " ".join(result.metrics["task_notes"])
    assert "computed once before the first step" in notes and "snapshot of the starting weights" in notes
    assert "computed once before the first step" in (result.output_dir / "README.md").read_text()


def test_the_table_differs_from_what_the_trained_model_would_give(resumed, tokenizer_dir):  # noqa: F811
    """Why the table must be kept: the trained model's log-probs of the same answers are not the
    reference's, so a table computed again at the resume would have changed the reference silently."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptkit_tasks.chat_templates import install_template
    from adaptkit_tasks.preference import Preference

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    install_template(tok, "chatml", "test")
    task = Preference({"chat_template": "chatml", "max_length": 64})
    task.load_training_state(resumed["before"])
    rows = [json.loads(line) for line in open(resumed["spec"]["data"]["train"])]
    encoded = task.preprocess(datasets.Dataset.from_list(rows[:8]), tok)
    batch = task.sequences(task.collate(tok)([encoded[i] for i in range(len(encoded))]))
    keys = task._keys(batch["input_ids"], batch["attention_mask"])
    reference = torch.tensor([task._precomputed[key] for key in keys], dtype=torch.float64)  # every key read back
    trained = AutoModelForCausalLM.from_pretrained(str(resumed["result"].output_dir / "model")).eval()
    with torch.no_grad():
        now = task._answer_logps(trained, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
    assert (now.double() - reference).abs().max() > 1e-2


def test_trackers_history_and_loss_curve_show_the_preference_metrics(resumed):
    logged, metrics = resumed["logged"], resumed["result"].metrics
    train = [entry for entry in logged if "train/loss" in entry]
    assert [entry["_step"] for entry in train] == [4]  # LOG_EVERY is 10: the last step only
    for name in METRICS:
        assert math.isfinite(train[0][f"train/{name}"]), name
    assert 0.0 <= train[0]["train/reward_accuracy"] <= 1.0
    assert train[0]["train/reward_margin"] == pytest.approx(
        train[0]["train/rewards_chosen"] - train[0]["train/rewards_rejected"], abs=1e-5)
    curve = metrics["loss_curve"][-1]
    assert curve["step"] == 4 and all(curve[name] == train[0][f"train/{name}"] for name in METRICS)
    # steps 3-4 ran in the resumed process, 1-2 before the stop: the epoch's mean spans both
    assert all(math.isfinite(metrics["history"][-1][f"train_{name}"]) for name in METRICS)
    assert "task_metrics" in resumed["first"][0]["state"]
    (line,) = [line for line in resumed["stderr"].splitlines() if line.startswith("step 4/4")]
    assert f"reward_accuracy {train[0]['train/reward_accuracy']:.4f}" in line and "reward_margin" in line
    assert "│ train_reward_accuracy " in resumed["stderr"]  # a row of the summary table (too many for columns)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_batch_training_metrics_are_its_evaluation_metrics(tokenizer, models, objective):  # noqa: F811
    """The training figures (masked sums on the device) agree with the evaluation's on the same batch
    (gathered rows, boolean indexing): two computations of one definition."""
    policy, reference = models
    task = make_task(tokenizer, objective=objective)
    task._reference_model = reference
    rows = colour_rows(6, 9)
    if objective == "kto":
        rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r, side in zip(rows, ["chosen", "rejected", "rejected", "chosen", "rejected", "rejected"])]
    batch = batch_of(task, tokenizer, rows)
    with torch.no_grad():
        _, outputs = task.compute_loss(policy, batch)
    training = {name: float(value) for name, value in task.training_metrics(outputs, batch).items()}
    evaluation = task.compute_metrics(**task.batch_outputs(outputs, batch))
    assert set(training) == set(evaluation) == set(METRICS)
    assert 0.0 < evaluation["reward_accuracy"] < 1.0 or evaluation["reward_margin"] != 0.0
    for name in METRICS:
        assert training[name] == pytest.approx(evaluation[name], rel=1e-5, abs=1e-6), name


def test_plan_counts_the_precomputed_table(resumed):
    """plan's reference_table is at least what the table held in memory (its keys and values), for
    any strategy; with reference: auto there is no table."""
    import adaptkit
    from adaptkit_tasks.preference import Preference

    task = Preference({"chat_template": "chatml"})
    task.load_training_state(resumed["before"])
    held = sum(sys.getsizeof(key) + sys.getsizeof(value) for key, value in task._precomputed.items())
    spec = resumed["spec"]
    for strategy in ("full", "lora"):
        memory = adaptkit.plan({**spec, "strategy": {"name": strategy}}).strategies[0].memory
        assert memory["reference_table"] >= held and memory["total"] == sum(v for k, v in memory.items()
                                                                             if k != "total")
    auto = adaptkit.plan({**spec, "task": {**spec["task"], "reference": "auto"}}).strategies[0].memory
    assert "reference_table" not in auto


def test_a_resumed_full_fine_tune_from_a_config_refuses_a_reference_it_no_longer_has(
        tmp_path, tokenizer_dir):  # noqa: F811
    """reference: auto snapshots the weights at the first step; after a resume those are trained."""
    from adaptkit.errors import AdaptkitError

    spec = _preference_spec(tmp_path, tokenizer_dir, colour_rows(16, 4), max_steps=4)
    spec["task"]["reference"] = "auto"
    with pytest.MonkeyPatch.context() as patch:
        _record_saves(patch, stop_after=1)
        with pytest.raises(_Stop):
            run(spec, progress=False, log=lambda _: None)
    with pytest.raises(AdaptkitError, match="no longer has those weights.*task.reference: precompute"):
        run(spec, progress=False, log=lambda _: None, resume=True)


def test_a_task_without_the_hooks_logs_and_checkpoints_what_it_did_before(tmp_path, monkeypatch):
    """Sequence classification: trackers get the loss and learning rate only, the loss curve and history
    no task figures, a checkpoint no task file; the metric sums are never touched."""

    def untouched(self, values):
        raise AssertionError("MetricSums.add ran for a task without training_metrics")

    monkeypatch.setattr(MetricSums, "add", untouched)
    saved = _record_saves(monkeypatch)
    logged = _record_tracker_logs(monkeypatch)
    recipe = tiny_recipe_dict(tmp_path, "lora", training={"epochs": 1, "max_steps": 3, "checkpoint_every_steps": 2,
                                                          "report_to": ["tensorboard"], "num_threads": 1})
    metrics = run(recipe, progress=False, log=lambda _: None).metrics
    train = [entry for entry in logged if any(key.startswith("train/") for key in entry)]
    assert [sorted(entry) for entry in train] == [["_step", "train/learning_rate", "train/loss"]]
    assert [sorted(entry) for entry in metrics["loss_curve"]] == [["loss", "step"]]
    assert not [key for key in metrics["history"][0] if key.startswith("train_") and key != "train_loss"]
    assert saved and all(TASK_STATE_FILE not in s["files"] and "task_metrics" not in s["state"] for s in saved)
    assert not (tmp_path / "run" / TASK_STATE_FILE).exists()


def test_metric_sums_average_finite_values_per_window_and_survive_a_checkpoint():
    sums = MetricSums(torch.device("cpu"))
    t = torch.tensor
    sums.add({"accuracy": t(1.0), "margin": t(2.0)})
    sums.add({"accuracy": t(0.0), "margin": t(float("nan"))})  # a batch where the margin is undefined
    assert sums.read_window(None) == {"accuracy": 0.5, "margin": 2.0}
    sums.add({"accuracy": t(0.5), "margin": t(4.0), "late": t(3.0)})  # a name first seen now
    saved = json.loads(json.dumps(sums.state()))
    restored = MetricSums(torch.device("cpu"))
    restored.load(saved)
    for each in (sums, restored):
        assert each.read_epoch(None) == {"accuracy": 0.5, "margin": 3.0, "late": 3.0}
        assert each.read_window(None) == {"accuracy": 0.5, "margin": 4.0, "late": 3.0}
        assert each.read_window(None) == {}  # nothing counted since the last read
        each.reset_epoch()
        assert each.read_epoch(None) == {}


def test_a_reward_model_batch_training_metrics_are_its_evaluation_metrics(tokenizer):  # noqa: F811
    import datasets

    from test_task_reward import make_task as reward_task, tiny_scorer

    task = reward_task(tokenizer)
    table = datasets.Dataset.from_list(colour_rows(6, 9))
    task.setup(table)
    encoded = task.preprocess(table, tokenizer)
    batch = task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])
    with torch.no_grad():
        _, outputs = task.compute_loss(tiny_scorer(len(tokenizer)), batch)
    training = {name: float(value) for name, value in task.training_metrics(outputs, batch).items()}
    evaluation = task.compute_metrics(**task.batch_outputs(outputs, batch))
    assert set(training) == set(evaluation) and evaluation["margin"] != 0.0
    for name in evaluation:
        assert training[name] == pytest.approx(evaluation[name], rel=1e-5, abs=1e-6), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a host sync exists only with an accelerator")
@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_training_metrics_never_wait_on_the_gpu(objective):
    """The per-step part (the task's figures, their sums) runs with CUDA's sync check set to error."""
    from types import SimpleNamespace

    from adaptkit_tasks.preference import Preference

    device = torch.device("cuda")
    task = Preference({"objective": objective})
    outputs = SimpleNamespace(rewards=torch.randn(8, device=device), logps=-torch.rand(8, device=device),
                              desirable=torch.arange(8, device=device) % 3 == 0)
    sums = MetricSums(device)
    sums.add(task.training_metrics(outputs, {}))  # the first batch sizes the sums
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            sums.add(task.training_metrics(outputs, {}))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert set(sums.read_window(None)) == set(METRICS)


def test_check_task_holds_the_training_hooks_to_what_the_loop_relies_on():
    """check_task: training_metrics must give device tensors (a Python number is refused), and
    training_state must come back through safetensors and load_training_state."""
    from adaptkit.errors import TaskContractViolation
    from adaptkit.testing import check_task
    from test_task_conformance import _cases, _first_party_tasks

    base = _first_party_tasks()["sequence_classification"]
    options, rows = _cases()["sequence_classification"]

    class ReadsBack(base):  # type: ignore[misc, valid-type]
        def training_metrics(self, outputs, batch):
            return {"hits": float((outputs.logits.argmax(-1) == batch["labels"]).float().mean())}

    class Keeps(base):  # type: ignore[misc, valid-type]
        def __init__(self, options=None):
            super().__init__(options)
            self.kept = torch.arange(4, dtype=torch.float64)

        def training_state(self):
            return {"kept": self.kept}

        def load_training_state(self, state):
            self.kept = state.get("kept", self.kept)

    class Forgets(Keeps):
        def load_training_state(self, state):
            self.kept = torch.zeros(4, dtype=torch.float64)

    with pytest.raises(TaskContractViolation, match=r"rule 'metrics'.*0-dim floating tensors.*'hits': float"):
        check_task(ReadsBack, options, rows=rows, families=["bert"])
    report = check_task(Keeps, options, rows=rows, families=["bert"])
    assert any("training_state round-trips (1 tensors)" in line for line in report.passed)
    with pytest.raises(TaskContractViolation, match=r"rule 'state'.*after load_training_state"):
        check_task(Forgets, options, rows=rows, families=["bert"])
