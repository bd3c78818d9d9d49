"""Shared fixtures: tiny models built from configs and small data written in the test."""
from __future__ import annotations

import csv
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Under pytest-xdist (`-n 2`) each worker gets its share of the cores, so two workers never
# oversubscribe the machine (two torch jobs at once with every core each run ~10x slower); set before
# torch is imported so the worker and the processes its tests start inherit it. Serial runs keep
# every core.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(THREADS)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # resolved offline to the packaged copy

# The files holding the suite's long end-to-end tests (MiniLM learning, compare, several processes),
# longest first, as measured with --durations. Under xdist's --dist loadfile a worker takes whole files
# in collection order, so these start first: one started last would leave the other worker idle at the
# end. A scheduling hint only: a stale entry costs time, never a result; unlisted files keep their order.
LONG_FILES = ["test_compare.py", "test_budget.py", "test_compare_resume.py", "test_distributed.py",
              "test_quickstart.py", "test_resume.py", "test_task_regression.py", "test_advise.py",
              "test_outputs.py", "test_example_plugin.py", "test_fsdp.py", "test_task_image_to_text.py",
              "test_task_causal_lm.py", "test_baselines.py", "test_task_token_classification.py",
              "test_judge_regression.py", "test_fsdp_qlora.py", "test_trackers.py", "test_gpu_benchmark.py"]


def pytest_collection_modifyitems(session, config, items) -> None:
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: in-file order kept

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 128}
TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}

POSITIVE = ["good", "great", "lovely", "superb", "fine", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "dreadful", "boring", "terrible"]
FILLER = ["the", "film", "was", "really", "quite", "a", "story", "plot", "and", "acting"]


def sentiment_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows a tiny model can learn: the label is which word list the sentence draws from."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_recipe_dict(tmp_path: Path, strategy: str = "full", **sections: Any) -> dict[str, Any]:
    """A complete recipe on a tiny BERT built from a config and 96/32 rows of synthetic data."""
    train = write_table(tmp_path / "train.csv", sentiment_rows(96, seed=1))
    evaluation = write_table(tmp_path / "eval.csv", sentiment_rows(32, seed=2))
    recipe = {
        "model": {"config": dict(TINY_BERT), "tokenizer": MINILM},
        "task": {"type": "sequence_classification", "text_column": "text", "label_column": "label",
                 "max_length": 32},
        "data": {"train": str(train), "eval": str(evaluation)},
        "strategy": {"name": strategy},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "seed": 0, "min_steps": 0},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def as_checkpoint(recipe: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``recipe`` with its ``model.config`` built once (seed 0) and saved in ``folder`` (save_pretrained),
    named by ``model.name``: fixed weights standing in for a pretrained checkpoint where a test needs one.
    ``compare`` refuses a model built from a config (it has no pretraining to judge)."""
    import torch
    from transformers import AutoConfig, AutoModel

    settings = dict(recipe["model"]["config"])
    if not (folder / "config.json").is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).save_pretrained(folder)
    model = {key: value for key, value in recipe["model"].items() if key != "config"}
    return {**recipe, "model": {**model, "name": str(folder)}}


@pytest.fixture
def tiny_recipe(tmp_path):
    """Factory: ``tiny_recipe(strategy="lora", training={...})`` -> recipe dict."""
    def make(strategy: str = "full", **sections: Any) -> dict[str, Any]:
        return tiny_recipe_dict(tmp_path, strategy, **sections)
    return make


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts with torch's threads as a fresh process has them.

    A run sets ``torch.set_num_threads`` for its recipe (``training.num_threads``) and the setting
    outlives it; without this, every test after a ``num_threads: 1`` recipe trained single-threaded
    (the slow MiniLM tests ran at half speed in the full suite).
    """
    yield
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
