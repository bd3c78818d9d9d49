"""``adaptkit merge`` (adaptkit.engine.merge): several LoRA runs on one base -> one adapter run folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import adaptkit
from adaptkit import AdaptkitError
from adaptkit.cli import main
from conftest import sentiment_rows, tiny_recipe_dict, write_table

ROWS = [{"text": row["text"]} for row in sentiment_rows(6, seed=7)]
EQUAL_RANK_METHODS = [("linear", None), ("ties", 0.5), ("dare_linear", 0.5), ("dare_ties", 0.5),
                      ("magnitude_prune", 0.5)]


def _run(root: Path, name: str, rank: int, data_seed: int, seed: int = 0, learning_rate: float = 1e-2) -> Path:
    folder = root / name
    folder.mkdir()
    recipe = tiny_recipe_dict(folder, strategy="lora")
    recipe["data"]["train"] = str(write_table(folder / "train.csv", sentiment_rows(32, seed=data_seed)))
    recipe["data"]["eval"] = str(write_table(folder / "eval.csv", sentiment_rows(16, seed=99)))
    recipe["strategy"]["r"] = rank
    recipe["training"].update(epochs=2, learning_rate=learning_rate, seed=seed)
    return adaptkit.run(recipe, progress=False).output_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three LoRA runs on the same tiny BERT (config and seed 0) from different rows, two of rank 4 and
    one of rank 2, and one run on another base (seed 1 builds other random weights)."""
    root = tmp_path_factory.mktemp("merge")
    return {"a": _run(root, "a", 4, data_seed=1), "b": _run(root, "b", 4, data_seed=2, learning_rate=2e-2),
            "c": _run(root, "c", 2, data_seed=3), "other": _run(root, "other", 4, data_seed=1, seed=1),
            "eval": root / "a" / "eval.csv"}


def _logits(model, predictor, rows: list[dict]) -> torch.Tensor:
    import datasets

    encoded = predictor.task.preprocess(datasets.Dataset.from_list(rows), predictor.tokenizer)
    batch = predictor.task.collate(predictor.tokenizer)([encoded[i] for i in range(len(encoded))])
    batch.pop("labels", None)
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.fixture(scope="module")
def first(runs):
    """Run a loaded once: its outputs, and its base with the adapter and trained head taken out (what
    plain peft loads a merged adapter onto)."""
    predictor = adaptkit.load(runs["a"])
    logits = _logits(predictor.model, predictor, ROWS)
    base = predictor.model.unload()
    for name, module in list(base.named_modules()):  # the head the run trained: back to the base's own
        if hasattr(module, "original_module"):
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, module.original_module)
    return {"predictor": predictor, "logits": logits, "base": base}


@pytest.mark.parametrize("method, density", [*EQUAL_RANK_METHODS, ("cat", None), ("svd", None)])
def test_each_method_writes_a_run_that_plain_peft_loads(runs, first, tmp_path, method, density):
    import copy

    from peft import PeftModel

    second = runs["c"] if method in ("cat", "svd") else runs["b"]  # cat and svd take unequal ranks
    output = tmp_path / method
    result = adaptkit.merge([runs["a"], second], method, output, weights=[0.7, 0.3], density=density)
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["merge"]["method"] == method and [s["run"] for s in summary["merge"]["sources"]] == [
        str(runs["a"]), str(second)]
    assert any(line.startswith("export: adapter/ reloads with peft") for line in summary["contract"])
    card = (output / "README.md").read_text()
    assert f"combination_type `{method}`" in card and str(runs["a"]) in card and str(second) in card
    config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == {"cat": 6, "svd": 4}.get(method, 4)
    loaded = adaptkit.load(output)
    merged = _logits(loaded.model, loaded, ROWS)
    plain = PeftModel.from_pretrained(copy.deepcopy(first["base"]), str(output / "adapter"))
    assert torch.allclose(_logits(plain, first["predictor"], ROWS), merged, atol=1e-5)
    assert not torch.allclose(first["logits"], merged, atol=1e-4), "the merge left the first run as it was"
    assert result.output_dir == output


def test_heads_are_the_weighted_mean_of_the_sources(runs, tmp_path):
    from safetensors.torch import load_file

    adaptkit.merge([runs["a"], runs["b"]], "linear", tmp_path / "m", weights=[3.0, 1.0])

    def head(folder: Path) -> torch.Tensor:
        tensors = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
        return next(v for k, v in tensors.items() if "classifier" in k and k.endswith("weight"))

    expected = 0.75 * head(runs["a"]) + 0.25 * head(runs["b"])
    assert torch.allclose(head(tmp_path / "m"), expected, atol=1e-6)


def test_runs_on_different_bases_are_refused_and_nothing_is_written(runs, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(AdaptkitError, match=r"trained on another base .*seed 1 against 0"):
        adaptkit.merge([runs["a"], runs["other"]], "linear", output)
    assert not output.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method, density, weights, message", [
    ("linear", None, None, "needs adapters of equal rank .* ranks 4, 2: use cat or svd"),
    ("ties", None, None, "give --density"),
    ("dare_ties", 1.5, None, "--density 1.5 is outside"),
    ("svd", 0.5, None, "--density means nothing to --method svd"),
    ("cat", None, [1.0], "--weights gives 1 value"),
    ("averaged", None, None, "not a merge method"),
])
def test_what_cannot_merge_is_refused_before_anything_is_written(runs, tmp_path, method, density, weights, message):
    output = tmp_path / "out"
    with pytest.raises(AdaptkitError, match=message):
        adaptkit.merge([runs["a"], runs["c"]], method, output, weights=weights, density=density)
    assert not output.exists()


def test_cli_merges_and_evaluates(runs, tmp_path, capsys):
    output = tmp_path / "cli"
    code = main(["merge", str(runs["a"]), str(runs["b"]), "--method", "dare_linear", "--density", "0.8",
                 "--weights", "0.5", "0.5", "--output", str(output), "--eval", str(runs["eval"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "merged 2 runs by dare_linear" in out and "eval on" in out and "accuracy" in out
    summary = json.loads((output / "metrics.json").read_text())
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0 and summary["eval_source"] == str(runs["eval"])
    assert main(["merge", str(runs["a"]), str(runs["other"]), "--method", "linear", "--output",
                 str(tmp_path / "no")]) == 2
    assert "another base" in capsys.readouterr().err and not (tmp_path / "no").exists()
