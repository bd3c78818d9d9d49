"""Outputs people can share: Hub ids instead of local paths, tokenizers beside every export, a card
with Hugging Face metadata, and ``adaptkit push`` (dry run and its refusals; nothing reaches the Hub)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptkit.engine.runner import run
from conftest import MINILM, tiny_recipe_dict

QUIET = {"progress": False, "log": lambda _: None}
TRAINING = {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One tiny LoRA run (config-built BERT, 96 rows, one epoch), merged too: shared by the fast tests."""
    tmp_path = tmp_path_factory.mktemp("share")
    recipe = tiny_recipe_dict(tmp_path, "lora", training=TRAINING,
                              output={"dir": str(tmp_path / "run"), "merge": True})
    return run(recipe, **QUIET)


def test_every_export_folder_holds_its_tokenizer_and_loads_alone(lora_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for name in ("adapter", "model"):
        folder = lora_run.output_dir / name
        assert (folder / "tokenizer_config.json").is_file(), f"{name}/ has no tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer("a good film")["input_ids"][0] == tokenizer.cls_token_id
    merged = AutoModelForSequenceClassification.from_pretrained(lora_run.output_dir / "model")
    assert merged.config.num_labels == 2


def test_the_card_carries_hub_metadata_metrics_and_the_recipe(lora_run):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(lora_run.output_dir / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-classification"
    assert "adaptkit" in data["tags"] and "lora" in data["tags"]
    assert "base_model" not in data, "a config-built model has no Hub id; none may be invented"
    _, results = model_index_to_eval_results(data["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == pytest.approx(lora_run.metrics["eval"], abs=1e-6)
    assert data["adaptkit"]["recipe"]["strategy"]["name"] == "lora"
    assert "## Recipe" in card.text and "PeftModel.from_pretrained(base, 'adapter')" in card.text
    assert str(lora_run.output_dir) not in card.text.split("## Recipe")[0], "the card's code names no local path"


def test_hub_id_of_the_packaged_model_an_alias_and_a_local_folder(tmp_path):
    from adaptkit.engine.models import ModelSource, resolve_model_source
    from adaptkit.engine.publish import model_hub_id

    source = resolve_model_source(MINILM)
    assert source.origin == "plugin" and "site-packages" in source.location
    assert model_hub_id(MINILM, source) == MINILM
    assert model_hub_id("all-MiniLM-L6-v2", resolve_model_source("all-MiniLM-L6-v2")) == MINILM
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text(json.dumps({"_name_or_path": "org/base-model"}))
    assert model_hub_id(str(tmp_path / "mine"), ModelSource("x", str(tmp_path / "mine"), "local", True)) == "org/base-model"
    (tmp_path / "mine" / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path)}))
    assert model_hub_id("x", ModelSource("x", str(tmp_path / "mine"), "local", True)) is None
    assert model_hub_id(None, None) is None


def _hub_cache(root: Path, repo_id: str, files: Path) -> Path:
    """``files`` laid out as the Hub cache keeps a downloaded repo (blobs symlinked from a snapshot)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    for path in files.rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(files)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


LOAD_ELSEWHERE = """
import json, sys, torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder = sys.argv[1]
config = PeftConfig.from_pretrained(folder)
base = AutoModelForSequenceClassification.from_pretrained(config.base_model_name_or_path, num_labels=2)
model = PeftModel.from_pretrained(base, folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(**tokenizer(["a good film", "an awful plot"], return_tensors="pt", padding=True)).logits
print(json.dumps({"base": config.base_model_name_or_path, "logits": logits.tolist()}))
"""


@pytest.mark.slow
def test_an_adapter_copied_elsewhere_loads_with_plain_peft_from_the_hub_cache(tmp_path):
    """The real MiniLM, served from its package: the adapter names the Hub id, and a copy of only the
    adapter folder loads on "another machine" whose Hub cache holds MiniLM (HF_HUB_OFFLINE=1)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adaptkit.engine.models import resolve_model_source

    recipe = tiny_recipe_dict(tmp_path, "lora", training={**TRAINING, "max_steps": 2},
                              model={"name": MINILM, "config": None, "tokenizer": None},
                              data={"train": str(tmp_path / "train.csv"), "eval": str(tmp_path / "eval.csv"),
                                    "max_train_samples": 32, "max_eval_samples": 16})
    result = run(recipe, **QUIET)
    assert json.loads((result.output_dir / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == MINILM
    from huggingface_hub import ModelCard

    assert ModelCard.load(result.output_dir / "README.md").data.base_model == MINILM

    elsewhere = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(result.output_dir / "adapter", elsewhere)
    cache = _hub_cache(tmp_path / "hub-cache", MINILM, Path(resolve_model_source(MINILM).location))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    # on the other machine adaptkit's plugin is not there: loading must not depend on it
    out = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, str(elsewhere)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["base"] == MINILM
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_source(MINILM).location, num_labels=2)
    model = PeftModel.from_pretrained(base, result.output_dir / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir / "tokenizer")
    with torch.no_grad():
        here = model(**tokenizer(["a good film", "an awful plot"], return_tensors="pt", padding=True)).logits
    assert torch.allclose(torch.tensor(loaded["logits"]), here, atol=1e-5)
