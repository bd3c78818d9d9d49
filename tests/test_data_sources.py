"""data.train / data.eval naming datasets (Hub ids, dataset folders) and mixtures of weighted sources.

No network: a Hub dataset is made "cached" in the test's own caches, the way an earlier online load
(datasets' Arrow cache) or ``huggingface-cli download --repo-type dataset`` (the Hub cache) leaves it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from adaptkit.engine.data import load_splits, mixture_counts
from adaptkit.errors import DataError, RecipeError
from adaptkit.recipe.schema import Recipe
from adaptkit.recipe.loading import load_recipe
from conftest import REPO, tiny_recipe_dict, write_recipe

HUB_ID = "adaptkit-test/tiny-set"


def _rows(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"text": f"{prefix} {i} good" if i % 2 else f"{prefix} {i} bad", "label": i % 2, "id": f"{prefix}{i}"}
            for i in range(count)]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _recipe(tmp_path: Path, data: dict[str, Any], **training: Any) -> Recipe:
    spec = tiny_recipe_dict(tmp_path)
    spec["data"] = data
    spec["training"].update(training)
    return load_recipe(write_recipe(tmp_path / "recipe.yaml", spec))


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty datasets and Hub caches of the test's own, offline (datasets and the hub client read the
    settings at import, so the module values are set as well as the environment)."""
    import datasets.config
    import huggingface_hub.constants

    hub, arrow = tmp_path / "hf" / "hub", tmp_path / "hf" / "datasets"
    hub.mkdir(parents=True)
    arrow.mkdir(parents=True)
    for name, value in (("HF_HOME", tmp_path / "hf"), ("HF_HUB_CACHE", hub), ("HF_DATASETS_CACHE", arrow),
                        ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", arrow)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub, arrow


def _cache_as_loaded(arrow: Path, repo_id: str, rows: list[dict[str, Any]], tmp_path: Path) -> None:
    """Leave ``repo_id`` in datasets' Arrow cache as a load from the Hub does (owner___name/config/version/hash)."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    owner, name = repo_id.split("/")
    source = _jsonl(tmp_path / f"{name}-source.jsonl", rows)
    builder = Json(cache_dir=str(arrow), dataset_name=name, config_name="default", config_id="default",
                   hash="0123abcd", data_files=DataFilesDict.from_patterns({"train": [str(source)]}))
    builder.download_and_prepare()
    (arrow / name).rename(arrow / f"{owner}___{name}")


def _download_snapshot(hub: Path, repo_id: str, files: dict[str, str]) -> None:
    """Leave ``repo_id`` in the Hub cache as ``huggingface-cli download --repo-type dataset`` does."""
    repo = hub / f"datasets--{repo_id.replace('/', '--')}"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, text in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _dataset_folder(root: Path) -> Path:
    """A dataset repository folder: two configs in a README, nested JSON ({"rows": [...]}) per split."""
    root.mkdir()
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.json\n"
                  f"  - split: test\n    path: {c}/test.json\n" for c in ("easy", "hard"))
        + "---\n# tiny\n")
    for config in ("easy", "hard"):
        (root / config).mkdir()
        for split, count in (("train", 12), ("test", 4)):
            payload = {"version": 1, "rows": _rows(f"{config}-{split}", count)}
            (root / config / f"{split}.json").write_text(json.dumps(payload))
    return root


# ---------------------------------------------------------------------------- recipe shape

def test_plain_paths_read_and_record_as_before(tmp_path):
    recipe = _recipe(tmp_path, {"train": str(_jsonl(tmp_path / "t.jsonl", _rows("t", 20))), "eval": "t.jsonl"})
    assert isinstance(recipe.data.train, Path)
    resolved = recipe.resolved_dict()["data"]
    assert resolved["train"] == str(tmp_path / "t.jsonl") and resolved["eval"] == str(tmp_path / "t.jsonl")


@pytest.mark.parametrize("data, message", [
    ({"train": {"name": HUB_ID, "weight": 2}}, "data.train.weight: weight only means something in a mixture"),
    ({"train": [{"name": HUB_ID, "weight": 1}, {"path": "t.jsonl"}]},
     "data.train.1: give every source of the mixture a weight, or none"),
    ({"train": {"name": HUB_ID}, "eval": {"name": HUB_ID}}, "data.eval: give the split of 'adaptkit-test/tiny-set'"),
    ({"train": {"path": "t.jsonl", "split": "test"}}, "data.train: split only applies to a dataset given by name"),
    ({"train": {"path": "t.jsonl", "field": "rows"}}, "field picks the list of rows inside a .json file"),
    ({"train": {"path": "t.jsonl", "name": HUB_ID}}, "data.train: give either path"),
    ({"train": [{"name": HUB_ID, "wieght": 1}]}, "data.train.0.wieght: unknown key"),
    ({"train": [{"path": "t.jsonl", "weight": -1}]}, "data.train.0.weight: Input should be greater than 0"),
])
def test_bad_source_shapes_name_the_key(tmp_path, data, message):
    _jsonl(tmp_path / "t.jsonl", _rows("t", 20))
    with pytest.raises(RecipeError, match="recipe.yaml:[0-9]+: ") as caught:
        _recipe(tmp_path, data)
    assert message in str(caught.value)


def test_mixture_counts_share_the_total_by_weight():
    assert mixture_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert mixture_counts(40, [3, 1]) == [30, 10]
    assert mixture_counts(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # 3.5, 1.75, 1.75: largest remainders
    assert sum(mixture_counts(1001, [0.3, 0.3, 0.4])) == 1001


# ---------------------------------------------------------------------------- named datasets

def test_dataset_folder_by_name_with_config_split_and_field(tmp_path, caches):
    _dataset_folder(tmp_path / "tiny-repo")
    recipe = _recipe(tmp_path, {
        "train": {"name": "./tiny-repo", "config": "hard", "field": "rows"},
        "eval": {"name": "./tiny-repo", "config": "hard", "split": "test", "field": "rows"}})
    splits = load_splits(recipe, ["text", "label"], stratify_column="label")
    assert sorted(splits.train["id"]) == sorted(f"hard-train{i}" for i in range(12))
    assert sorted(splits.eval["id"]) == sorted(f"hard-test{i}" for i in range(4))
    assert recipe.resolved_dict()["data"]["train"]["name"] == str(tmp_path / "tiny-repo")


@pytest.mark.parametrize("change, message", [
    ({"config": "medium"}, "BuilderConfig 'medium' not found"),
    ({"split": "validation"}, "Unknown split"),
    ({"field": "records"}, "field 'records' names no key of the JSON files"),
])
def test_dataset_folder_mistakes_are_data_errors(tmp_path, caches, change, message):
    _dataset_folder(tmp_path / "tiny-repo")
    recipe = _recipe(tmp_path, {"train": {"name": "./tiny-repo", "config": "hard", "field": "rows", **change}})
    with pytest.raises(DataError, match="data.train: cannot load dataset folder './tiny-repo'") as caught:
        load_splits(recipe, ["text", "label"])
    assert message in str(caught.value)


def test_missing_dataset_folder_is_refused_at_validate(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: data.train.name: dataset folder not found"):
        _recipe(tmp_path, {"train": {"name": "./no-such-repo"}})


def test_hub_id_loads_from_the_datasets_cache_when_offline(tmp_path, caches):
    _, arrow = caches
    _cache_as_loaded(arrow, HUB_ID, _rows("hub", 20), tmp_path)
    recipe = _recipe(tmp_path, {"train": {"name": HUB_ID}}, seed=3)  # validate passes: it is cached
    splits = load_splits(recipe, ["text", "label"], stratify_column="label")
    assert sorted(list(splits.train["id"]) + list(splits.eval["id"])) == sorted(f"hub{i}" for i in range(20))
    assert len(splits.eval) == 2 and splits.eval_source == f"10% of {HUB_ID}[train] (stratified, seed 3)"


def test_hub_id_loads_from_a_cli_download_when_the_hub_is_unreachable(tmp_path, caches, monkeypatch):
    """No HF_HUB_OFFLINE, but no answer from the Hub: offline mode for that one load, then restored."""
    import datasets.config

    import adaptkit.plugin.sources

    hub, _ = caches
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(adaptkit.plugin.sources, "hub_unreachable", lambda timeout=3.0: "huggingface.co:443 refused")
    _download_snapshot(hub, HUB_ID, {"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in _rows("snap", 10)),
                                     "data/test.jsonl": "".join(json.dumps(r) + "\n" for r in _rows("st", 4))})
    recipe = _recipe(tmp_path, {"train": {"name": HUB_ID}, "eval": {"name": HUB_ID, "split": "test"}})
    splits = load_splits(recipe, ["text", "label"])
    assert sorted(splits.train["id"]) == sorted(f"snap{i}" for i in range(10))
    assert sorted(splits.eval["id"]) == sorted(f"st{i}" for i in range(4))
    assert datasets.config.HF_HUB_OFFLINE is False  # offline only for the load


def test_hub_id_neither_cached_nor_reachable_fails_at_once_with_the_fetch_command(tmp_path, caches):
    spec = tiny_recipe_dict(tmp_path)
    spec["data"] = {"train": {"name": HUB_ID, "config": "default"}}
    path = write_recipe(tmp_path / "recipe.yaml", spec)
    with pytest.raises(RecipeError) as caught:  # validate: from the files alone
        load_recipe(path)
    for part in (f"recipe.yaml:{_line(path, 'name:')}: data.train.name: dataset {HUB_ID!r} is not in the local cache",
                 f"huggingface-cli download --repo-type dataset {HUB_ID}", "datasets.load_dataset("):
        assert part in str(caught.value)
    recipe = load_recipe(path, check_files=False)
    started = time.monotonic()
    with pytest.raises(DataError, match=f"data.train: dataset '{HUB_ID}' is not in the local cache") as caught:
        load_splits(recipe, ["text", "label"])
    assert time.monotonic() - started < 5  # no retry loop
    assert "HF_HUB_OFFLINE is set" in str(caught.value)
    assert f"huggingface-cli download --repo-type dataset {HUB_ID}" in str(caught.value)


def _line(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_cli_validate_refuses_an_uncached_hub_id_without_torch_or_datasets(tmp_path, caches):
    mixture = {"train": [{"path": str(_jsonl(tmp_path / "a.jsonl", _rows("a", 10))), "weight": 1},
                         {"name": HUB_ID, "weight": 1}]}
    spec = tiny_recipe_dict(tmp_path)
    spec["data"] = mixture
    path = write_recipe(tmp_path / "recipe.yaml", spec)
    script = ("import sys\nfrom adaptkit.cli import main\ntry:\n    code = main(['validate', sys.argv[1]])\n"
              "except SystemExit as exc:\n    code = exc.code\n"
              "print('imported', 'torch' in sys.modules, 'datasets' in sys.modules)\nsys.exit(code)")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO / "tests")}, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert f"data.train.1.name: dataset {HUB_ID!r} is not in the local cache" in out.stderr + out.stdout
    assert "imported False False" in out.stdout


# ---------------------------------------------------------------------------- mixtures

def test_mixture_draws_each_source_to_its_weighted_share(tmp_path, caches):
    _jsonl(tmp_path / "a.jsonl", _rows("a", 40))
    _jsonl(tmp_path / "b.jsonl", _rows("b", 5))
    _jsonl(tmp_path / "e.jsonl", _rows("e", 6))
    data = {"train": [{"path": "a.jsonl", "weight": 0.75}, {"path": "b.jsonl", "weight": 0.25}],
            "eval": "e.jsonl", "max_train_samples": 40}
    splits = load_splits(_recipe(tmp_path, data, seed=1), ["text", "label"])
    ids = Counter(splits.train["id"])
    a_rows = {key: n for key, n in ids.items() if key.startswith("a")}
    b_rows = {key: n for key, n in ids.items() if key.startswith("b")}
    assert sum(a_rows.values()) == 30 and set(a_rows.values()) == {1}  # 30 of 40 rows, without replacement
    assert sum(b_rows.values()) == 10 and b_rows == {f"b{i}": 2 for i in range(5)}  # every row twice
    assert len(splits.eval) == 6
    assert list(splits.train["id"]) != sorted(splits.train["id"])  # shuffled across sources
    again = load_splits(_recipe(tmp_path, data, seed=1), ["text", "label"])
    other = load_splits(_recipe(tmp_path, data, seed=2), ["text", "label"])
    assert list(again.train["id"]) == list(splits.train["id"]) != list(other.train["id"])


def test_mixture_without_weights_is_the_concatenation_and_renames_per_source(tmp_path, caches):
    _, arrow = caches
    _cache_as_loaded(arrow, HUB_ID, _rows("hub", 8), tmp_path)
    _jsonl(tmp_path / "b.jsonl", [{"sentence": r["text"], "label": r["label"], "id": r["id"], "extra": 1}
                                  for r in _rows("b", 6)])
    data = {"train": [{"name": HUB_ID}, {"path": "b.jsonl", "columns": {"sentence": "text"}}],
            "eval": {"name": HUB_ID, "split": "train[:2]"}}
    splits = load_splits(_recipe(tmp_path, data), ["text", "label"])
    assert sorted(splits.train["id"]) == sorted([f"hub{i}" for i in range(8)] + [f"b{i}" for i in range(6)])
    assert splits.train.column_names == ["text", "label", "id"]  # the columns every source has
    assert list(splits.eval["id"]) == ["hub0", "hub1"]


def test_mixture_holds_out_eval_and_validation_with_no_row_in_two_splits(tmp_path, caches):
    _jsonl(tmp_path / "a.jsonl", _rows("a", 40))
    _jsonl(tmp_path / "b.jsonl", _rows("b", 10))
    data = {"train": [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl", "weight": 1}],
            "eval_fraction": 0.2, "validation_fraction": 0.25, "max_train_samples": 40}
    splits = load_splits(_recipe(tmp_path, data), ["text", "label"], stratify_column="label")
    train, held, validation = set(splits.train["id"]), set(splits.eval["id"]), set(splits.validation["id"])
    assert not train & held and not train & validation and not held & validation
    # eval: 20% of each source's own rows; validation: 25% of each source's 20 drawn rows
    assert Counter(i[0] for i in splits.eval["id"]) == {"a": 8, "b": 2}
    assert Counter(i[0] for i in splits.validation["id"]) == {"a": 5, "b": 5}
    assert Counter(i[0] for i in splits.train["id"]) == {"a": 15, "b": 15}  # b: its 3 remaining rows, upsampled
    assert splits.eval_source == "20% of each of a.jsonl, b.jsonl (stratified, seed 0)"


def test_mixture_sources_whose_columns_do_not_convert_are_named(tmp_path, caches):
    _jsonl(tmp_path / "a.jsonl", _rows("a", 10))
    _jsonl(tmp_path / "b.jsonl", [{**r, "label": ["x"]} for r in _rows("b", 10)])
    data = {"train": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]}
    with pytest.raises(DataError, match="data.train.1: its columns .* cannot take the types of data.train.0's"):
        load_splits(_recipe(tmp_path, data), ["text", "label"])


def test_mixture_trains_end_to_end(tmp_path, caches):
    """A tiny BERT run on a cached Hub dataset mixed with a local file; the run records the mixture."""
    from adaptkit.engine.runner import run

    _, arrow = caches
    _cache_as_loaded(arrow, HUB_ID, _rows("hub", 24), tmp_path)
    spec = tiny_recipe_dict(tmp_path, training={"epochs": 1, "max_steps": 2})
    spec["data"] = {"train": [{"name": HUB_ID, "weight": 2}, {"path": "train.csv", "weight": 1}],
                    "max_train_samples": 48}
    result = run(write_recipe(tmp_path / "recipe.yaml", spec), progress=False, log=lambda _: None)
    recorded = yaml.safe_load((result.output_dir / "recipe.yaml").read_text())["data"]["train"]
    assert [source["name"] for source in recorded] == [HUB_ID, None]
    assert recorded[1]["path"] == str(tmp_path / "train.csv") and recorded[0]["weight"] == 2
    assert result.metrics["eval_source"] == f"10% of each of {HUB_ID}[train], train.csv (stratified, seed 0)"
    assert result.metrics["train_examples"] == 48
