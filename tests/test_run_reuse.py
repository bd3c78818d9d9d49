"""A finished run reused (issue 25, items 4 and 5): as the base of a new recipe (adaptkit.engine.stacking),
and beside other runs' adapters on one base model (adaptkit.engine.serving).

One tiny BERT (config, seed 0) and a handful of short runs on it, shared by the module: two LoRA runs on
different rows, an IA3 run, a full fine-tune, and a LoRA run whose ``model.name`` is the first run.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import adaptkit
from adaptkit import AdaptkitError
from adaptkit.cli import main
from conftest import MINILM, TINY_GPT2, sentiment_rows, tiny_recipe_dict, write_table

ROWS = [{"text": row["text"]} for row in sentiment_rows(12, seed=9)]


def _recipe(root: Path, folder_name: str, strategy: str, data_seed: int, **model) -> dict:
    folder = root / folder_name
    folder.mkdir()
    recipe = tiny_recipe_dict(folder, strategy=strategy)
    recipe["data"]["train"] = str(write_table(folder / "train.csv", sentiment_rows(48, seed=data_seed)))
    recipe["training"].update(epochs=1, learning_rate=1e-2)
    if model:
        recipe["model"] = dict(model)
    return recipe


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The module's runs; the merged bases go to a cache folder of the module's own ($ADAPTKIT_CACHE)."""
    root = tmp_path_factory.mktemp("reuse")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTKIT_CACHE", str(root / "cache"))
        recipes = {name: _recipe(root, name, strategy, seed)
                   for name, strategy, seed in (("a", "lora", 1), ("b", "lora", 2), ("ia3", "ia3", 1), ("full", "full", 1))}
        recipes["a"]["task"]["pooling"] = "mean"  # not BERT's pooler: what a base made from run a must keep
        recipes["full"]["task"]["pooling"] = "mean"
        recipes["b"]["output"]["merge"] = True  # also writes its merged model/
        found = {name: adaptkit.run(recipe, progress=False).output_dir for name, recipe in recipes.items()}
        found["stacked_recipe"] = _recipe(root, "stacked", "lora", 3, name=str(found["a"]))
        found["stacked"] = adaptkit.run(found["stacked_recipe"], progress=False).output_dir
        found["root"] = root
        yield found


def _logits(predictor, rows=ROWS) -> torch.Tensor:
    import datasets

    encoded = predictor.task.preprocess(datasets.Dataset.from_list(rows), predictor.tokenizer)
    batch = predictor.task.collate(predictor.tokenizer)([encoded[i] for i in range(len(encoded))])
    batch.pop("labels", None)
    with torch.no_grad():
        return predictor.model.eval()(**batch).logits


# ---------------------------------------------------------------------------- a run as the base of a recipe

def test_a_run_as_base_records_the_chain_in_metrics_recipe_and_card(runs):
    stacked, a = runs["stacked"], runs["a"]
    summary = json.loads((stacked / "metrics.json").read_text())
    first = json.loads((a / "metrics.json").read_text())
    assert summary["chain"] == [
        {"base": "bert built from model.config"},
        {"run": str(a.resolve()), "strategy": "lora", "task": "sequence_classification",
         "metric": f"accuracy {first['eval']['accuracy']:.4f}", "previous_adapter": "merge"}]
    recipe_text = (stacked / "recipe.yaml").read_text()
    assert recipe_text.splitlines()[0] == (f"# base chain: bert built from model.config -> {a.resolve()} "
                                           f"(lora, accuracy {first['eval']['accuracy']:.4f}) -> this run")
    assert yaml.safe_load(recipe_text)["model"]["name"] == str(a)  # comments only: the copy still loads as a recipe
    card = (stacked / "README.md").read_text()
    assert "## Built on a finished run" in card and f"-> run (lora, accuracy {first['eval']['accuracy']:.4f})" in card
    assert summary["base_model_id"] is None  # no Hub model holds the base with run a's change in it
    assert "predictor = adaptkit.load('.')" in card and summary["base_model"] not in card  # no cache path to copy
    rules = {line.split(":", 1)[0] for line in summary["contract"]}
    assert {"frozen", "export", "signature", "equivalence"} <= rules
    assert (Path(summary["base_model"]) / "config.json").is_file()
    assert Path(summary["base_model"]).parent.parent == runs["root"] / "cache"


def test_the_base_is_run_a_merged_with_its_architecture_and_outputs(runs, monkeypatch):
    """What the stacked recipe builds as its base computes what run a computes, and has the architecture of
    run a's model with its adapter merged; a second session reads the cached merge without loading run a."""
    from adaptkit.engine import predict
    from adaptkit.engine.session import Session
    from adaptkit.plugin.contract import architecture_signature

    monkeypatch.setenv("ADAPTKIT_CACHE", str(runs["root"] / "cache"))
    run_a = adaptkit.load(runs["a"])
    expected = _logits(run_a)
    merged_a = run_a.model.merge_and_unload()

    def no_reload(*args, **kwargs):
        raise AssertionError("the merged base should come from the cache")

    monkeypatch.setattr(predict, "load_run", no_reload)
    session = Session(runs["stacked_recipe"], log=lambda message: None)
    assert session.source.origin == "run"
    assert adaptkit.declared_pooling(session.source.location)[0] == "mean"  # run a's head read the mean
    base = session.build_base()
    assert architecture_signature(base) == architecture_signature(merged_a)
    torch.testing.assert_close(_logits(predict.Predictor(base, session.tokenizer, session.task)), expected,
                               rtol=0, atol=1e-5)


def test_the_stacked_run_reloads_to_its_own_eval_score(runs):
    """adaptkit.load rebuilds the chain (run a merged, then the stacked adapter): its predictions on the eval
    rows score exactly what the run recorded."""
    stacked = runs["stacked"]
    summary = json.loads((stacked / "metrics.json").read_text())
    import csv

    with open(summary["recipe"]["data"]["eval"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    predictions = adaptkit.load(stacked).predict([{"text": row["text"]} for row in rows])
    accuracy = sum(p["label"] == row["label"] for p, row in zip(predictions, rows)) / len(rows)
    assert accuracy == pytest.approx(summary["eval"]["accuracy"], abs=1e-9)


def test_a_whole_model_run_is_its_model_folder(runs, tmp_path):
    """run b (lora with output.merge: true) wrote model/, which is the base as it is; the full fine-tune's head
    read the mean of the tokens, so its base is a cached folder of links to model/'s files plus that declaration,
    and computes what the run computes."""
    from adaptkit.engine.session import Session
    from adaptkit.engine.stacking import chain_of

    def session_on(run: Path) -> Session:
        recipe = tiny_recipe_dict(tmp_path, strategy="lora")
        recipe["model"] = {"name": str(run)}
        return Session(recipe, log=lambda message: None)

    merged = session_on(runs["b"])
    assert (merged.source.origin, Path(merged.source.location)) == ("run", (runs["b"] / "model").resolve())
    full = session_on(runs["full"])
    location = Path(full.source.location)
    assert location.parent.parent == runs["root"] / "cache"
    assert (location / "model.safetensors").resolve() == (runs["full"] / "model" / "model.safetensors").resolve()
    assert adaptkit.declared_pooling(str(location))[0] == "mean"
    assert chain_of(full.source)[-1]["strategy"] == "full"
    run_full = adaptkit.load(runs["full"])
    torch.testing.assert_close(_logits(type(run_full)(full.build_base(), full.tokenizer, full.task)), _logits(run_full),
                               rtol=0, atol=1e-6)


def test_a_run_built_on_a_run_is_a_base_too_and_the_chain_grows(runs, tmp_path, monkeypatch):
    """The stacked run as the base of a third recipe: its merge rebuilds run a's merged base first (cached),
    the chain lists both runs, and a relative model.name is recorded absolute in the run's recipe."""
    from adaptkit.engine.session import Session
    from adaptkit.engine.stacking import chain_of, describe_chain

    recipe = tiny_recipe_dict(tmp_path, strategy="lora")
    monkeypatch.chdir(runs["stacked"].parent)
    recipe["model"] = {"name": runs["stacked"].name}  # "run", relative to the working folder
    session = Session(recipe, log=lambda message: None)
    chain = chain_of(session.source)
    assert [link.get("run") for link in chain] == [None, str(runs["a"].resolve()), str(runs["stacked"].resolve())]
    assert describe_chain(chain).startswith("bert built from model.config -> ") and \
        describe_chain(chain).endswith(" (lora, accuracy " + f"{json.loads((runs['stacked'] / 'metrics.json').read_text())['eval']['accuracy']:.4f}) -> this run")
    assert session.recipe.resolved_dict()["model"]["name"] == str(runs["stacked"].resolve())
    stacked_base = adaptkit.load(runs["stacked"]).model.merge_and_unload()
    built = session.build_base()
    probe = {"input_ids": torch.tensor([[101, 2204, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(built.eval()(**probe).logits, stacked_base.eval()(**probe).logits, rtol=0, atol=1e-5)


def test_a_run_of_another_task_or_label_set_is_refused_naming_both(runs, tmp_path):
    causal = tiny_recipe_dict(tmp_path, strategy="lora")
    causal["model"] = {"name": str(runs["a"])}
    causal["task"] = {"type": "causal_lm", "text_column": "text", "max_length": 32}
    with pytest.raises(AdaptkitError) as refused:
        adaptkit.plan(causal)
    message = str(refused.value)
    assert "'sequence_classification' run" in message and "task is 'causal_lm'" in message
    assert "AutoModelForSequenceClassification" in message and "AutoModelForCausalLM" in message

    three = tiny_recipe_dict(tmp_path, strategy="lora")
    three["model"] = {"name": str(runs["a"])}
    rows = [{**row, "label": index % 3} for index, row in enumerate(sentiment_rows(30, seed=4))]
    three["data"]["train"] = str(write_table(tmp_path / "three.csv", rows))
    with pytest.raises(AdaptkitError, match=r"labels \['0', '1'\] and this recipe's data has the labels "
                                            r"\['0', '1', '2'\]"):
        adaptkit.plan(three)


def test_a_run_and_a_config_together_are_refused(runs, tmp_path):
    recipe = tiny_recipe_dict(tmp_path, strategy="lora")
    recipe["model"]["name"] = str(runs["a"])  # beside the tiny BERT's model.config
    with pytest.raises(AdaptkitError, match="model.config builds a model from a config and would ignore the run"):
        adaptkit.plan(recipe)


def test_a_run_whose_change_cannot_be_merged_is_refused(runs, tmp_path):
    """A strategy whose unwrap removes what it learned (prompt tuning) would hand the new recipe the old base."""
    copy = tmp_path / "prompt_run"
    shutil.copytree(runs["ia3"], copy)
    summary = json.loads((copy / "metrics.json").read_text())
    summary["strategy"] = "prompt_tuning"
    (copy / "metrics.json").write_text(json.dumps(summary))
    recipe = tiny_recipe_dict(tmp_path, strategy="lora")
    recipe["model"] = {"name": str(copy)}
    with pytest.raises(AdaptkitError, match="strategy 'prompt_tuning' cannot be merged into its base"):
        adaptkit.plan(recipe)


# ---------------------------------------------------------------------------- many adapters on one base

def test_load_runs_builds_the_base_once_and_each_adapter_predicts_what_its_run_alone_does(runs, monkeypatch):
    from adaptkit.engine import models

    built = []
    original = models.build_model
    monkeypatch.setattr(models, "build_model", lambda *args, **kwargs: built.append(1) or original(*args, **kwargs))
    served = adaptkit.load_runs([runs["a"], runs["b"]])
    assert len(built) == 1  # one base for both runs
    alone = {name: adaptkit.load(runs[name]) for name in ("a", "b")}
    assert len(built) == 3
    for index, name in enumerate(("a", "b")):
        assert served.predict(ROWS, adapter=index) == alone[name].predict(ROWS)
        assert torch.equal(_logits(served.predictor(runs[name])), _logits(alone[name]))
    assert not torch.equal(_logits(alone["a"]), _logits(alone["b"]))  # the switch is real: the runs differ
    assert served.predict(ROWS, adapter=str(runs["a"])) == alone["a"].predict(ROWS)  # back to the first, by path
    with pytest.raises(AdaptkitError, match="no loaded run is 5; the loaded runs are 0: "):
        served.predict(ROWS, adapter=5)
    with pytest.raises(AdaptkitError, match="'run' is the folder name of 2 loaded runs"):
        served.predict(ROWS, adapter="run")  # both runs' folders are called run


def test_cli_predict_with_several_runs_writes_what_each_run_alone_writes(runs, tmp_path, capsys):
    inputs = [write_table(tmp_path / f"in{i}.csv", [{"text": r["text"]} for r in sentiment_rows(7, seed=20 + i)])
              for i in range(2)]
    together = [tmp_path / "a.csv", tmp_path / "b.csv"]
    assert main(["predict", str(runs["a"]), str(runs["b"]), "--input", str(inputs[0]), "--input", str(inputs[1]),
                 "--output", str(together[0]), "--output", str(together[1])]) == 0
    for name, source, output in zip(("a", "b"), inputs, together):
        alone = tmp_path / f"alone-{name}.csv"
        assert main(["predict", str(runs[name]), "--input", str(source), "--output", str(alone)]) == 0
        assert output.read_bytes() == alone.read_bytes() and len(output.read_text().splitlines()) == 8
    assert main(["predict", str(runs["a"]), str(runs["b"]), "--input", str(inputs[0]),
                 "--output", str(tmp_path / "x.csv")]) == 2
    error = capsys.readouterr().err
    assert "2 runs and 1 --input files: give one --input per run" in error and "Traceback" not in error


@pytest.mark.parametrize("other, fragment", [
    ("full", "strategy 'full' exported a whole model"),
    ("ia3", "its adapter is peft IA3 (strategy 'ia3')"),
    ("stacked", "was trained on another base than"),
    ("a", "the same run is named twice"),
])
def test_runs_that_cannot_share_a_base_are_refused_with_the_reason(runs, other, fragment):
    with pytest.raises(AdaptkitError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        adaptkit.load_runs([runs["a"], runs[other]])


def test_runs_on_two_versions_of_one_base_run_are_refused(runs, tmp_path):
    """Two runs built on run a, one of them when run a held other weights (its merged base differs)."""
    earlier = tmp_path / "earlier"
    shutil.copytree(runs["stacked"], earlier)
    summary = json.loads((earlier / "metrics.json").read_text())
    summary["base_model"] = str(tmp_path / "cache" / "run-bases" / "0123456789abcdef01234567")
    (earlier / "metrics.json").write_text(json.dumps(summary))
    with pytest.raises(AdaptkitError, match="as it was at different times"):
        adaptkit.load_runs([runs["stacked"], earlier])


def test_qlora_trains_on_a_run_base_loaded_directly_in_4bit(runs, tmp_path):
    """The merged base is a plain model folder, so qlora's 4-bit from_pretrained reads it like any checkpoint."""
    from adaptkit.engine.session import Session

    recipe = json.loads(json.dumps(runs["stacked_recipe"]))
    recipe["strategy"] = {"name": "qlora"}
    recipe["output"] = {"dir": str(tmp_path / "qlora")}
    session = Session(recipe, log=lambda message: None)
    base = session.build_base(session.strategy())
    assert base.config.quantization_config.load_in_4bit and session.source.origin == "run"
    result = adaptkit.run(recipe, progress=False)
    assert [link.get("run") for link in result.metrics["chain"]] == [None, str(runs["a"].resolve())]
    assert {"frozen", "export", "signature", "equivalence"} <= {line.split(":", 1)[0]
                                                               for line in result.metrics["contract"]}


# ---------------------------------------------------------------------------- previous_adapter: keep

def _lm_recipe(root: Path, folder_name: str, strategy: str = "lora", **model) -> dict:
    recipe = _recipe(root, folder_name, strategy, 5, **(model or {"config": {**TINY_GPT2, "vocab_size": 30522},
                                                                   "tokenizer": MINILM}))
    recipe["task"] = {"type": "causal_lm", "text_column": "text", "max_length": 32}
    return recipe


@pytest.fixture(scope="module")
def lm_runs(runs):
    """A LoRA run on a tiny GPT-2 (no task head), and a LoRA run trained beside its adapter (keep)."""
    root = runs["root"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTKIT_CACHE", str(root / "cache"))
        first = adaptkit.run(_lm_recipe(root, "lm"), progress=False).output_dir
        kept_recipe = _lm_recipe(root, "lm_kept", name=str(first), previous_adapter="keep")
        yield {"lm": first, "kept": adaptkit.run(kept_recipe, progress=False).output_dir, "kept_recipe": kept_recipe}


def test_keep_trains_beside_the_runs_frozen_adapter_and_saves_both(runs, lm_runs):
    from safetensors.torch import load_file

    first, kept = lm_runs["lm"], lm_runs["kept"]
    summary = json.loads((kept / "metrics.json").read_text())
    before = json.loads((first / "metrics.json").read_text())
    previous = load_file(str(first / "adapter" / "adapter_model.safetensors"))
    saved = load_file(str(kept / "adapter" / "previous" / "adapter_model.safetensors"))
    assert saved.keys() == previous.keys() and all(torch.equal(saved[k], previous[k]) for k in previous)
    frozen = [int(line.split()[1]) for line in (summary["contract"][0], before["contract"][0])]
    assert frozen[0] == frozen[1] + len(previous)  # the base's tensors and, frozen too, the run's adapter
    assert summary["chain"][-1]["previous_adapter"] == "keep"
    card = (kept / "README.md").read_text()
    assert "(lora, perplexity" in card and "kept beside, frozen" in card and "`adapter/previous/`" in card
    assert {"frozen", "export", "signature", "equivalence"} <= {line.split(":", 1)[0] for line in summary["contract"]}
    assert adaptkit.load(kept).model.active_adapters == ["previous", "default"]


def test_keep_export_computes_what_its_adapter_does_on_the_run_merged(runs, lm_runs, monkeypatch):
    """The kept run's own adapter, loaded with plain peft onto run lm merged (what merge would have trained on),
    gives what adaptkit.load of the kept run (both adapters unmerged) gives."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptkit.engine.stacking import merged_run_folder

    monkeypatch.setenv("ADAPTKIT_CACHE", str(runs["root"] / "cache"))
    kept = adaptkit.load(lm_runs["kept"])
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(merged_run_folder(lm_runs["lm"])),
                                       str(lm_runs["kept"] / "adapter"))
    probe = kept.tokenizer(["the film was lovely", "a dreadful plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(**probe).logits, kept.model.eval()(**probe).logits,
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("base, strategy, fragment", [
    ("a", "lora", "both runs train the task head (classifier, score) and peft makes one adapter's copy"),
    ("lm", "ia3", "the run's adapter is peft LORA and strategy 'ia3' builds peft IA3"),
    ("lm", "full", "strategy 'full' does not build a peft adapter"),
    ("full", "lora", "strategy 'full' exported a whole model"),
    (None, "lora", "applies when model.name is a finished adaptkit run folder"),
])
def test_keep_is_refused_at_plan_where_peft_cannot_hold_both(runs, lm_runs, tmp_path, base, strategy, fragment):
    recipe = tiny_recipe_dict(tmp_path, strategy=strategy)
    if base == "lm":
        recipe["task"] = {"type": "causal_lm", "text_column": "text", "max_length": 32}
    folder = lm_runs["lm"] if base == "lm" else runs[base] if base else runs["a"] / "adapter"
    recipe["model"] = {"name": str(folder), "previous_adapter": "keep", **({} if base else {"tokenizer": MINILM})}
    with pytest.raises(AdaptkitError, match=re.escape(fragment)):
        adaptkit.plan(recipe)


def test_load_runs_refuses_a_run_trained_beside_a_kept_adapter(lm_runs):
    with pytest.raises(AdaptkitError, match="model.previous_adapter: keep"):
        adaptkit.load_runs([lm_runs["kept"], lm_runs["lm"]])


def test_resuming_on_a_base_run_that_was_trained_again_is_refused(runs, tmp_path):
    """The recipe names the same folder; the run in it is another one: resuming would continue training
    weights learned on the old base on top of the new one."""
    import shutil

    from adaptkit.engine.checkpoint import STATE_FILE, check_same_recipe, identity_hash, recipe_identity
    from adaptkit.recipe.schema import Recipe

    base = tmp_path / "a"
    shutil.copytree(runs["a"], base)
    recipe = Recipe.from_dict(_recipe(tmp_path, "on-a", "lora", 3, name=str(base)))
    identity = json.loads(json.dumps(recipe_identity(recipe), default=str))
    checkpoint = tmp_path / "step-1"
    checkpoint.mkdir()
    (checkpoint / STATE_FILE).write_text(json.dumps({"recipe_hash": identity_hash(identity), "recipe": identity}))
    check_same_recipe(checkpoint, recipe_identity(recipe))  # the same base run: resumes
    summary = json.loads((base / "metrics.json").read_text())
    summary["train_seconds"] = summary.get("train_seconds", 0) + 1.0  # what a second training of the run writes
    (base / "metrics.json").write_text(json.dumps(summary))
    with pytest.raises(adaptkit.AdaptkitError, match="the run model.name names was trained again"):
        check_same_recipe(checkpoint, recipe_identity(recipe))


def test_a_run_trained_again_replaces_its_merged_base_in_the_cache(runs, tmp_path, monkeypatch):
    """Each training of a run gets a new cache key; the old merge went stale and stayed forever."""
    import shutil

    from adaptkit.engine.stacking import merged_run_folder

    monkeypatch.setenv("ADAPTKIT_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "cache" / "run-bases" / "another-run"  # another run's merge is never touched
    other.mkdir(parents=True)
    (other / "adaptkit-run.json").write_text(json.dumps({"run": str(runs["b"].resolve())}))
    base = tmp_path / "a"
    shutil.copytree(runs["a"], base)
    first = merged_run_folder(base)
    summary = json.loads((base / "metrics.json").read_text())
    summary["train_seconds"] = summary.get("train_seconds", 0) + 1.0
    (base / "metrics.json").write_text(json.dumps(summary))
    second = merged_run_folder(base)
    assert second != first and (second / "config.json").is_file() and not first.exists()
    assert other.is_dir()
