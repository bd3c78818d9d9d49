"""Faults and hostile input: nothing is lost, nothing runs that the user did not ask for.

Each test makes one thing go wrong (a NaN loss, a full disk, Ctrl-C, a second run, a broken
plugin, a hostile recipe, data file or name) and checks what the user keeps and sees: files
kept, exit codes, the message. tests/README.md lists them all.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptkit.engine.checkpoint
from adaptkit.engine.checkpoint import STATE_FILE, checkpoint_root, latest_checkpoint
from adaptkit.cli import main
from adaptkit.errors import AdaptkitError, CheckpointWriteError, PluginError, RecipeError, TrainingDiverged
from adaptkit.engine.outputs import lock_path, run_lock, safe_join
from adaptkit.plugin.registry import build_registry, reset_registry
from adaptkit.engine.runner import run
from conftest import MINILM, REPO, sentiment_rows, tiny_recipe_dict, write_recipe, write_table
from plugin_fixtures import GOOD_EXTRA, fake_distribution

QUIET = {"progress": False, "log": lambda _: None}
# 96 rows in batches of 4: 24 optimizer steps; a checkpoint every 5 of them.
FAULT_TRAINING = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "seed": 0, "num_threads": 1,
                  "checkpoint_every_steps": 5, "keep_checkpoints": 5}


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def _recipe(tmp_path: Path, strategy: str = "full", **training) -> dict:
    return tiny_recipe_dict(tmp_path, strategy, training={**FAULT_TRAINING, **training})


def _step(checkpoint: Path) -> int:
    return json.loads((checkpoint / STATE_FILE).read_text())["step"]


# ---------------------------------------------------------------------------- NaN / inf loss

def _poison_loss(monkeypatch, from_call: int, value: float) -> None:
    """From the ``from_call``-th training forward on, the loss is multiplied by NaN or inf."""
    from transformers.models.bert.modeling_bert import BertForSequenceClassification

    real = BertForSequenceClassification.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= from_call:
                out["loss"] = out["loss"] * value
        return out

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


def test_nan_loss_stops_before_a_checkpoint_and_the_last_good_one_resumes(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    root = checkpoint_root(tmp_path / "run")
    _poison_loss(monkeypatch, from_call=13, value=float("nan"))  # step 13: between checkpoints 10 and 15
    with pytest.raises(TrainingDiverged) as caught:
        run(recipe, **QUIET)
    message = str(caught.value)
    assert "step 15" in message and "before writing a checkpoint" in message
    assert "step-00000010" in message and "finite up to step 10" in message
    assert not (tmp_path / "run").exists()
    kept = latest_checkpoint(root)
    assert kept is not None and kept.name == "step-00000010", "the last good checkpoint must be kept"
    assert not (root / "step-00000015").exists() and not list(root.glob(".tmp-*"))
    for name, tensor in load_file(str(kept / "trainable-0.safetensors")).items():
        assert torch.isfinite(tensor).all(), f"{name} saved with non-finite values"

    monkeypatch.undo()
    resumed = run(recipe, resume=True, **QUIET)
    assert resumed.metrics["resumed_from_step"] == 10
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_infinite_loss_is_caught_at_the_next_log_sync_and_exits_2(tmp_path, monkeypatch, capsys):
    recipe = _recipe(tmp_path, checkpoint_every_steps=0)  # no checkpoint until the end of the run
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    _poison_loss(monkeypatch, from_call=12, value=float("inf"))
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged") and "step 20" in err and "steps 11-20" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert latest_checkpoint(checkpoint_root(tmp_path / "run")) is None, "nothing with NaN weights is saved"


# ---------------------------------------------------------------------------- full disk

def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    root = checkpoint_root(tmp_path / "run")
    real = adaptkit.engine.checkpoint.save_tensors
    calls = {"n": 0}

    def disk_full(state, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 10): the disk is full half way
            Path(path).write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path)

    monkeypatch.setattr(adaptkit.engine.checkpoint, "save_tensors", disk_full)
    with pytest.raises(CheckpointWriteError) as caught:
        run(recipe, **QUIET)
    message = str(caught.value)
    assert "step-00000010" in message and "No space left on device" in message
    assert "step-00000005 is intact" in message and "--resume" in message
    assert [p.name for p in root.iterdir() if not p.name.startswith("logs")] == ["step-00000005"]
    assert not (tmp_path / "run").exists()

    monkeypatch.undo()
    resumed = run(recipe, resume=True, **QUIET)
    assert resumed.metrics["resumed_from_step"] == 5
    assert resumed.metrics["steps"] == 24


def test_write_failures_are_told_by_their_type_and_errno_not_by_words():
    """torch and safetensors wrap a failed write in their own errors; words in a message are no guide."""
    from safetensors import SafetensorError

    from adaptkit.engine.write_errors import failed_write_errno

    def chained(outer: BaseException, inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException:
                raise outer
        except BaseException as exc:
            return exc

    assert failed_write_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    assert failed_write_errno(OSError(errno.EIO, "Input/output error")) == errno.EIO
    assert failed_write_errno(SafetensorError("Error while serializing: I/O error: No space left on device "
                                         "(os error 28)")) == errno.ENOSPC
    # torch.save to a Python file: the file's OSError is the context of torch's RuntimeError
    assert failed_write_errno(chained(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                                 OSError(errno.ENOSPC, "No space left on device"))) == errno.ENOSPC
    # torch.save to a path: C++ streams, no errno anywhere
    assert failed_write_errno(chained(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                                 RuntimeError("basic_ios::clear: iostream error"))) == 0
    assert failed_write_errno(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")) == 0
    # not write failures, whatever they say: bugs are re-raised as they are
    assert failed_write_errno(ValueError("could not write the value")) is None
    assert failed_write_errno(RuntimeError("CUDA error: device-side assert triggered")) is None
    assert failed_write_errno(chained(KeyError("write"), OSError(errno.ENOSPC, "x"))) is None


def test_torchs_own_write_error_is_a_checkpoint_write_error_and_other_errors_leave_no_partial_folder(
        tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    root = checkpoint_root(tmp_path / "run")
    real_save = torch.save

    def torch_fails_writing(obj, f, *args, **kwargs):  # as torch.save to a path fails on a full disk
        if str(f).endswith("optimizer.bin") and ".tmp-step-00000010" in str(f):
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9664 vs 9556")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", torch_fails_writing)
    with pytest.raises(CheckpointWriteError) as caught:
        run(recipe, **QUIET)
    assert "cannot write checkpoint step-00000010" in str(caught.value) and "inline_container" in str(caught.value)
    assert "step-00000005 is intact" in str(caught.value)
    assert sorted(p.name for p in root.iterdir() if p.name != "logs") == ["step-00000005"]
    monkeypatch.undo()

    real_tensors = adaptkit.engine.checkpoint.save_tensors

    def bug(state, path):  # not a write failure: re-raised as it is, but no half folder is left behind
        if ".tmp-step-00000010" in str(path):
            Path(path).write_bytes(b"\0" * 10)
            raise RuntimeError("CUDA error: device-side assert triggered")
        real_tensors(state, path)

    monkeypatch.setattr(adaptkit.engine.checkpoint, "save_tensors", bug)
    with pytest.raises(RuntimeError, match="device-side assert"):
        run(recipe, resume=True, **QUIET)
    assert sorted(p.name for p in root.iterdir() if p.name != "logs") == ["step-00000005"]


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(mib)``: a real file system of that size (a tmpfs), unmounted afterwards.

    Needs root and a kernel that lets it mount; where ``mount`` is refused the test is skipped
    with the reason printed, so the fault is never only simulated without saying so.
    """
    mounted: list[Path] = []

    def make(mib: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(where)],
                                  capture_output=True, text=True, timeout=30)
            reason = done.stderr.strip() or f"exit {done.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            done, reason = None, str(exc)
        if done is None or done.returncode != 0:
            print(f"real full-disk test skipped: cannot mount a {mib} MiB tmpfs ({reason})")
            pytest.skip(f"cannot mount a small tmpfs here ({reason})")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _tree_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / (1 << 20)


def test_a_real_full_disk_mid_checkpoint_exits_2_naming_the_space_needed_and_resume_continues(
        tmp_path, small_disk, capsys):
    """20 MiB: checkpoint 5 (about 11.5 MiB) fits; at step 10 the weights fit and torch's write of
    optimizer.bin fails (RuntimeError "unexpected pos", no errno). Before: a traceback, a
    .tmp-step folder and a 100 % disk."""
    disk = small_disk(20)
    recipe = {**_recipe(tmp_path), "output": {"dir": str(disk / "run")}}
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    root = checkpoint_root(disk / "run")

    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert "cannot write checkpoint step-00000010" in err and "No space left on device" in err, err[-2000:]
    found = re.search(r"needs about ([\d.]+) MiB; ([\d.]+) MiB is free there now", err)
    assert found, err[-2000:]
    needed, free = float(found.group(1)), float(found.group(2))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000005"], "the partial folder is removed"
    assert abs(needed - _tree_mib(root / "step-00000005")) < 0.5, (needed, _tree_mib(root / "step-00000005"))
    disk_free = shutil.disk_usage(disk).free / (1 << 20)
    assert abs(free - disk_free) < 0.2 and disk_free > 20 - needed - 1, "the partial write's space came back"
    assert "step-00000005 is intact" in err and "--resume" in err
    assert not (disk / "run").exists()

    # --resume while the disk is still as full: the same clear exit, nothing lost
    assert main(["run", str(path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "resuming from step-00000005" in err and "cannot write checkpoint step-00000010" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in root.iterdir()) == ["step-00000005"]

    # room made: the run finishes from step 5
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True, capture_output=True, timeout=30)
    assert main(["run", str(path), "--resume", "--no-progress"]) == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads((disk / "run" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 5 and metrics["steps"] == 24


# ---------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_writes_a_final_checkpoint_and_exits_130_with_resume_advice(tmp_path):
    recipe = _recipe(tmp_path, epochs=2, checkpoint_every_steps=7)
    write_table(tmp_path / "train.csv", sentiment_rows(480, seed=1))  # 240 steps: time to interrupt
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    root = checkpoint_root(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "adaptkit", "run", str(path), "--no-progress"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(root) is None:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    found = re.search(r"interrupted at step (\d+) of 240", err)
    assert found, err[-3000:]
    stopped = int(found.group(1))
    assert f"adaptkit run {path} --resume" in err
    assert stopped < 240, "the run finished before the interrupt; the test proves nothing"
    assert _step(latest_checkpoint(root)) == stopped, "the final checkpoint is the step it stopped at"
    assert not (tmp_path / "run").exists()

    resumed = run(recipe, resume=True, **QUIET)
    assert resumed.metrics["resumed_from_step"] == stopped and resumed.metrics["steps"] == 240


# ---------------------------------------------------------------------------- two runs, one folder

HOLD_LOCK = ("import sys, time; from pathlib import Path; from adaptkit.engine.outputs import run_lock; "
             "lock = run_lock(Path(sys.argv[1])); lock.__enter__(); print('held', flush=True); time.sleep(120)")


def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_path(out).read_text().strip() == str(holder.pid)
        assert main(["run", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "another adaptkit run" in err and str(lock_path(out)) in err
        assert not out.exists() and not checkpoint_root(out).exists(), "the refused run wrote nothing"
    finally:
        holder.kill()  # dies holding the lock: its lock file stays behind, stale
        holder.wait()
    assert lock_path(out).exists()
    with run_lock(out):  # the kernel dropped the dead holder's lock: the next run takes it over
        assert lock_path(out).read_text().strip() == str(os.getpid())
    assert not lock_path(out).exists(), "a finished run removes its lock file"


# ---------------------------------------------------------------------------- broken plugins

RAISES_IN_HOOKS = '''
from adaptkit import hookimpl

@hookimpl
def adaptkit_on_event(event, payload):
    raise ValueError("observer exploded")

@hookimpl
def adaptkit_resolve_model(name):
    return 42 if name == "acme/wrong-type" else None
'''

BAD_REGISTRATIONS = '''
from adaptkit import hookimpl

@hookimpl
def adaptkit_register_strategies(register):
    register("not a class")
'''

RETURNS_A_LIST = '''
from adaptkit import hookimpl

@hookimpl
def adaptkit_register_tasks(register):
    return ["a task"]
'''

EVIL_NAME = '''
from adaptkit import Strategy, hookimpl

class Escape(Strategy):
    """Its name would put compare's run folder outside the output root."""
    name = "../../escape"

@hookimpl
def adaptkit_register_strategies(register):
    register(Escape)
'''

CRASHY = '''
from adaptkit import hookimpl
from adaptkit_full import FullFineTune

class Crashy(FullFineTune):
    """Crashes inside wrap."""
    name = "crashy"

    def wrap(self, model, context):
        return 1 / 0

class Leaky(FullFineTune):
    """unwrap leaves an extra parameter behind: breaks the signature rule."""
    name = "leaky"

    def unwrap(self, model):
        import torch
        model.register_parameter("leftover", torch.nn.Parameter(torch.zeros(1)))
        return model

@hookimpl
def adaptkit_register_strategies(register):
    register(Crashy)
    register(Leaky)
'''


@pytest.fixture
def broken_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_distribution(site, "adaptkit-noisy", "0.2", {"noisy_plugin": RAISES_IN_HOOKS}, {"noisy": "noisy_plugin"})
    fake_distribution(site, "adaptkit-badreg", "0.3", {"badreg_plugin": BAD_REGISTRATIONS, "list_plugin": RETURNS_A_LIST,
                                                       "evil_plugin": EVIL_NAME},
                      {"badreg": "badreg_plugin", "returns_list": "list_plugin", "evil": "evil_plugin"})
    fake_distribution(site, "adaptkit-crashy", "1.0", {"crashy_plugin": CRASHY}, {"crashy": "crashy_plugin"})
    fake_distribution(site, "adaptkit-extra", "1.0", {"extra_plugin": GOOD_EXTRA}, {"extra": "extra_plugin"})
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    return site


def test_a_plugin_raising_in_a_hook_or_answering_the_wrong_type_is_named(broken_site):
    from adaptkit.engine.models import resolve_model_source

    registry = build_registry()
    with pytest.raises(PluginError) as caught:
        registry.manager.hook.adaptkit_on_event(event="run_start", payload={})
    assert "plugin 'noisy' (distribution adaptkit-noisy 0.2) failed in hook adaptkit_on_event" in str(caught.value)
    assert "ValueError: observer exploded" in str(caught.value)
    with pytest.raises(PluginError, match=r"'noisy' \(distribution adaptkit-noisy 0.2\) broke hook "
                                          r"adaptkit_resolve_model: it returned int 42"):
        resolve_model_source("acme/wrong-type")
    assert resolve_model_source(MINILM).origin == "plugin"  # the packaged-models plugin keeps working


def test_bad_registrations_are_reported_and_the_other_plugins_keep_working(broken_site):
    registry = build_registry()
    plugins = {p.name: p for p in registry.plugins}
    assert plugins["badreg"].distribution == "adaptkit-badreg"
    assert "adaptkit_register_strategies failed" in plugins["badreg"].error
    assert "'not a class', not a subclass of adaptkit.Strategy" in plugins["badreg"].error
    assert "adaptkit_register_tasks failed" in plugins["returns_list"].error
    assert "returned list, not None" in plugins["returns_list"].error
    assert "'../../escape' is not allowed" in plugins["evil"].error
    assert "../../escape" not in registry.strategies
    assert {"third_party_noop", "crashy", "leaky", "full", "lora"} <= set(registry.strategies)
    assert plugins["extra"].error is None and plugins["crashy"].error is None


def test_a_plugin_crashing_or_breaking_the_contract_at_run_time_is_named(broken_site, tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", _recipe(tmp_path, "crashy"))
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'crashy' (distribution adaptkit-crashy 1.0)" in err and "Crashy.wrap" in err, err
    assert "ZeroDivisionError" in err and "Traceback" not in err

    recipe = _recipe(tmp_path, "leaky", max_steps=2, checkpoint_every_steps=0)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2  # the observer plugin raises at run_start
    err = capsys.readouterr().err
    assert "plugin 'noisy' (distribution adaptkit-noisy 0.2) failed in hook adaptkit_on_event" in err
    assert not checkpoint_root(tmp_path / "run").exists()

    recipe["plugins"] = ["adaptkit-crashy"]  # leave the noisy observer out: the run reaches the contract
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "strategy 'leaky' broke the contract rule 'signature'" in err
    assert "distribution adaptkit-crashy 1.0" in err
    assert not (tmp_path / "run").exists()


def test_plugins_check_runs_the_conformance_kit_per_strategy(broken_site, capsys):
    assert main(["plugins", "--check", "leaky,full"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAIL  leaky  \(plugin crashy, distribution adaptkit-crashy 1.0\): ContractViolation: "
                     r"strategy 'leaky' broke the contract rule 'signature'", out), out
    assert re.search(r"PASS  full  \(plugin full, distribution adaptkit", out), out
    assert "1 of 2 strategies pass" in out
    assert main(["plugins", "--check", "full"]) == 0
    assert main(["plugins", "--check", "nosuch"]) == 2
    assert "unknown strategy 'nosuch'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- nothing runs unasked

def test_recipe_tags_that_build_python_objects_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "recipe.yaml"
    path.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n'
                    f"data: {{train: train.csv}}\nstrategy: {{name: full}}\noutput: {{dir: out}}\n")
    with pytest.raises(RecipeError) as caught:
        from adaptkit.recipe.loading import load_recipe

        load_recipe(path)
    message = str(caught.value)
    assert f"{path}:1: invalid YAML" in message and "python/object/apply:os.system" in message
    assert "safe loading" in message
    assert not marker.exists()
    assert main(["validate", str(path)]) == 2


def test_pickle_weights_refused_by_run_unless_allowed(tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    recipe = _recipe(tmp_path)
    recipe["model"] = {"name": str(folder), "tokenizer": MINILM}
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds only pickle weights (pytorch_model.bin)" in err and "allow_pickle" in err
    assert not (tmp_path / "run").exists()


def test_trust_remote_code_is_off_unless_the_recipe_says_so(tmp_path, monkeypatch):
    import transformers

    from adaptkit.engine.models import load_tokenizer, resolve_model_source
    from adaptkit.recipe.schema import Recipe

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("spy: stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    for setting in (None, True):
        recipe = _recipe(tmp_path)
        recipe["model"] = {"name": MINILM, **({"trust_remote_code": setting} if setting is not None else {})}
        loaded = Recipe.from_dict(recipe)
        with pytest.raises(AdaptkitError):
            load_tokenizer(loaded, resolve_model_source(MINILM))
    assert seen == [False, True]


SIDE_EFFECT = '''
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("I ran")
'''


def test_recipe_plugins_key_loads_only_the_listed_distributions(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_distribution(site, "adaptkit-extra", "1.0", {"extra_plugin": GOOD_EXTRA}, {"extra": "extra_plugin"})
    fake_distribution(site, "adaptkit-sneaky", "1.0", {"sneaky_plugin": SIDE_EFFECT}, {"sneaky": "sneaky_plugin"})
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    from adaptkit.recipe.loading import load_recipe

    recipe = _recipe(tmp_path, "third_party_noop")
    recipe["plugins"] = ["adaptkit-extra"]
    loaded = load_recipe(write_recipe(tmp_path / "recipe.yaml", recipe))
    assert loaded.plugins == ["adaptkit-extra"] and loaded.strategy.name == "third_party_noop"
    assert not (site / "imported.marker").exists(), "a plugin the recipe did not list was imported"
    from adaptkit.engine.planning import plan  # planning (like advise and predict) keeps to the list too

    reset_registry()
    planned = plan(loaded, strict=False)  # the fixture's strategy has no wrap: planned, with its error
    assert planned.strategies[0].strategy == "third_party_noop" and "NotImplementedError" in planned.strategies[0].error
    assert not (site / "imported.marker").exists(), "plan imported a plugin the recipe did not list"

    recipe["plugins"] = ["adaptkit-sneaky"]
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: strategy.name: unknown strategy 'third_party_noop'"):
        load_recipe(write_recipe(tmp_path / "recipe.yaml", recipe))


def test_names_from_input_cannot_escape_the_output_root(tmp_path):
    root = tmp_path / "out"
    assert safe_join(root, "runs", "lora-n100-s0") == root / "runs" / "lora-n100-s0"
    for bad in ("..", "../x", "a/../../b", "/etc/passwd", "", ".", "x\x00y", "a\\b"):
        with pytest.raises(AdaptkitError, match="one plain path component"):
            safe_join(root, bad)
    # A checkpoint's trainer_state.json names the best epoch's folder: a hostile one is refused.
    from adaptkit.engine.checkpoint import CheckpointConfig, Checkpointer

    class NoAccelerator:
        is_main_process = True

        def register_save_state_pre_hook(self, hook):
            return type("Handle", (), {"remove": lambda self: None})()

        register_load_state_pre_hook = register_save_state_pre_hook

    checkpointer = Checkpointer(CheckpointConfig(root=root), NoAccelerator())
    with pytest.raises(AdaptkitError, match="one plain path component"):
        checkpointer.load_best("../../../etc")


# ---------------------------------------------------------------------------- bad data, before any model

@pytest.fixture
def no_model_building(monkeypatch):
    """Fail loudly if anything gets as far as building a model."""
    import adaptkit.engine.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built although the data is bad")

    monkeypatch.setattr(adaptkit.engine.models, "build_model", refuse)


@pytest.mark.parametrize("rows, labels, fragment", [
    pytest.param("text,label\na b,0\nc d,1\ne f,2\n", ["0", "1"], "train.csv:4: label '2' is not in task.labels",
                 id="label-not-in-list"),
    pytest.param("text,label\na b,0\nc d,0\ne f,0\n", None, "holds 1 distinct label(s) (0)", id="single-class"),
    pytest.param("text,label\na b,0\nc d,1,extra\n", None, "train.csv:3: row has 3 field(s), the header has 2",
                 id="ragged-row"),
    pytest.param("text,label\na b,0\nc d,\n", None, "train.csv:3: the label column 'label' is empty", id="empty-label"),
    pytest.param("text,label\n", None, "no rows (an empty training split)", id="empty-split"),
    pytest.param("", None, "train.csv is empty", id="empty-file"),
    pytest.param("text,label\na b,0\n\xff\xfe\x00binary,1\n", None, "not UTF-8 text", id="binary-bytes"),
])
def test_bad_data_rows_exit_2_with_file_and_row_before_any_model(tmp_path, capsys, no_model_building,
                                                                   rows, labels, fragment):
    recipe = _recipe(tmp_path)
    recipe["data"].pop("eval")
    if labels:
        recipe["task"]["labels"] = labels
    (tmp_path / "train.csv").write_bytes(rows.encode("latin-1"))
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert f"{path}:" in err and "data.train" in err and "Traceback" not in err
    assert main(["validate", str(path)]) == 2  # validate finds it too, without torch


def test_bad_labels_in_json_data_are_found_at_load_with_the_row(tmp_path, capsys, no_model_building):
    """JSON and Parquet are not scanned by validate: the same checks run when the data is loaded."""
    recipe = _recipe(tmp_path)
    rows = sentiment_rows(12, seed=4)
    rows[6]["label"] = 7
    (tmp_path / "train.json").write_text(json.dumps(rows))
    recipe["data"] = {"train": str(tmp_path / "train.json"), "eval": recipe["data"]["eval"]}
    recipe["task"]["labels"] = [0, 1]
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.json: row 7: label '7' is not in task.labels ['0', '1']" in err, err


def test_unreadable_or_missing_data_files_exit_2(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    (tmp_path / "train.csv").unlink()
    (tmp_path / "train.csv").mkdir()  # exists but cannot be read as a file
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["validate", str(path)]) == 2
    assert "data.train: cannot read" in capsys.readouterr().err
    (tmp_path / "train.csv").rmdir()
    assert main(["validate", str(path)]) == 2
    assert "data.train: file not found" in capsys.readouterr().err
