"""Values that used to reach a library unchecked (issue 22, item 8): each is refused with exit 2
naming the option, before any data or model is loaded and before any folder is made."""
from __future__ import annotations

import math

import pytest

from conftest import TINY_GPT2, write_recipe


def _no_work(monkeypatch):
    """compare/advise/run must not start: any call into them fails the test loudly."""
    import adaptkit.judge.advise as advise_module
    import adaptkit.judge.compare as compare_module

    def boom(*args, **kwargs):
        raise AssertionError("the work started before the arguments were checked")

    monkeypatch.setattr(compare_module, "compare", boom)
    monkeypatch.setattr(advise_module, "advise", boom)


COMPARE_ARGUMENTS = [
    pytest.param(["--storage", "not a url"], "--storage 'not a url' is not a database URL", id="storage-malformed"),
    pytest.param(["--storage", "nosuchdb://host/x"], "unknown database kind 'nosuchdb'", id="storage-dialect"),
    pytest.param(["--storage", "postgresql://user@localhost/db"], "driver is not installed", id="storage-driver"),
    pytest.param(["--storage", "sqlite:////no/such/folder/sweep.db"], "/no/such/folder of the SQLite database does "
                                                                      "not exist", id="storage-sqlite-missing"),
    pytest.param(["--storage", "sqlite:////proc/sweep.db"], "cannot write in /proc", id="storage-sqlite-unwritable"),
    pytest.param(["--seeds", "-1"], "--seeds: -1 is out of range", id="seeds-negative"),
    pytest.param(["--lr", "full=-1"], "--lr full=-1.0: a learning rate must be a number above 0", id="lr-negative"),
    pytest.param(["--lr", "full=nan"], "--lr full=nan", id="lr-nan"),
    pytest.param(["--lr", "full=1e308"], "at most 10", id="lr-huge"),
    pytest.param(["--lr", "full=0"], "--lr full=0.0: a learning rate must be a number above 0", id="lr-zero"),
    pytest.param(["--lr", "fulll=1e-3"], "'fulll' is not one of the compared arms", id="lr-unknown-arm"),
    pytest.param(["--validation-fraction", "1.5"], "--validation-fraction: 1.5 is not a share", id="fraction-1.5"),
    pytest.param(["--validation-fraction", "0"], "--validation-fraction: 0.0 is not a share", id="fraction-0"),
    pytest.param(["--bootstrap", "0"], "--bootstrap: 0 is out of range", id="bootstrap-0"),
    pytest.param(["--sizes", "-5"], "--sizes: -5 is out of range", id="sizes-negative"),
    pytest.param(["--sizes", "0"], "--sizes: 0 is out of range", id="sizes-0"),
    pytest.param(["--trials", "0"], "--trials: 0 is out of range", id="trials-0"),
    pytest.param(["--edge-rates", "-1"], "--edge-rates: -1 is out of range", id="edge-rates-negative"),
]


@pytest.mark.parametrize("extra, message", COMPARE_ARGUMENTS)
def test_compare_arguments_are_refused_before_any_work(tiny_recipe, tmp_path, capsys, monkeypatch, extra, message):
    from adaptkit.cli import main

    _no_work(monkeypatch)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--strategies", "full,scratch", "--output", str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert not out.exists()  # no manifest-only folder left behind


def test_check_compare_arguments_is_the_library_function():
    from adaptkit.errors import AdaptkitError
    from adaptkit.judge.compare_checks import check_compare_arguments

    check_compare_arguments(seeds=[0, 1], sizes=[10], learning_rates={"full": 1e-3}, trials=3,
                            validation_fraction=0.2, bootstrap_rounds=1000, storage="sqlite:///sweep.db",
                            strategies=["full", "scratch"])  # the defaults and sane values pass
    with pytest.raises(AdaptkitError, match="--bootstrap"):
        check_compare_arguments(bootstrap_rounds=5)
    with pytest.raises(AdaptkitError, match="--validation-fraction"):
        check_compare_arguments(validation_fraction=math.inf)


@pytest.mark.parametrize("rows", ["0", "-5"])
def test_advise_max_rows_below_two_is_refused(tiny_recipe, tmp_path, capsys, monkeypatch, rows):
    from adaptkit.cli import main

    _no_work(monkeypatch)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    assert main(["advise", str(path), "--max-rows", rows, "--output", str(tmp_path / "a.json")]) == 2
    error = capsys.readouterr().err
    assert f"--max-rows: {rows} is out of range" in error and "Traceback" not in error


@pytest.mark.parametrize("count", ["0", "-2"])
def test_run_num_processes_below_one_is_refused_not_silently_one(tiny_recipe, tmp_path, capsys, count):
    from adaptkit.cli import main

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe())
    assert main(["run", str(path), "--num-processes", count]) == 2
    error = capsys.readouterr().err
    assert f"--num-processes: {count} is not a count" in error
    assert not (tmp_path / "run").exists()


def _instruct_recipe(tmp_path, **task):
    from test_instruct_kit import fruit_rows, write_jsonl

    return {"model": {"config": {**TINY_GPT2, "vocab_size": 500}, "tokenizer": "sentence-transformers/all-MiniLM-L6-v2"},
            "task": {"type": "instruct", "format": "messages", "chat_template": "chatml", "max_length": 64, **task},
            "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", fruit_rows("messages", 8, 1)))},
            "strategy": {"name": "lora"}, "output": {"dir": str(tmp_path / "run")}}


@pytest.mark.parametrize("section, settings, key, fragment", [
    ("task", {"max_new_tokens": 2147483648}, "task.max_new_tokens", "at most 2,147,483,647"),
    ("task", {"temperature": 1e-300}, "task.temperature", "too small to sample with"),
    ("strategy", {"target_modules": []}, "strategy.target_modules", "an empty target_modules adapts nothing"),
])
def test_plugin_options_that_crashed_or_were_ignored_fail_validation(tmp_path, capsys, section, settings, key,
                                                                     fragment):
    from adaptkit.cli import main

    spec = _instruct_recipe(tmp_path)
    spec[section].update(settings)
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["validate", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"r.yaml:" in error and key in error and fragment in error and "Traceback" not in error


def test_generation_stops_at_the_position_table_instead_of_crashing():
    """GPT-2's learned positions end at n_positions: max_new_tokens past them is capped, and a prompt
    that fills them is an error naming both numbers (transformers raised an index error mid-predict)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from adaptkit.errors import DataError
    from adaptkit_tasks.generation import generate, tokens_that_fit

    settings = {**TINY_GPT2, "n_positions": 16, "vocab_size": 50}
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert tokens_that_fit(model, 10, 1000) == 6

    class Tokenizer:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    answer = generate(model, Tokenizer(), [[5, 6, 7, 8]], 1000, stop=[], pad_id=0)
    assert len(answer[0].split()) == 12
    with pytest.raises(DataError, match="a prompt of 16 tokens fills this model's 16 positions"):
        generate(model, Tokenizer(), [list(range(1, 17))], 10, stop=[], pad_id=0)
