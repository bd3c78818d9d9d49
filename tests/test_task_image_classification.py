"""image_classification end to end: a tiny ViT from a config tells red squares from blue ones."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

TINY_VIT = {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 37}
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


def draw(path: Path, colour: str, rng: random.Random) -> Path:
    """A noisy square of the class colour on a grey background, at a size the model must resize."""
    from PIL import Image

    size = rng.choice([24, 40, 48])
    image = Image.new("RGB", (size, size), (128, 128, 128))
    pixels = image.load()
    side = rng.randint(size // 2, size - 2)
    left, top = rng.randint(0, size - side), rng.randint(0, size - side)
    for x in range(left, left + side):
        for y in range(top, top + side):
            pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def image_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = random.Random(seed)
    for colour in COLOURS:
        for i in range(per_class):
            draw(root / colour / f"{i}.png", colour, rng)
    return root


def image_recipe(tmp_path: Path, strategy: str, train, evaluation) -> dict:
    return {
        "model": {"config": dict(TINY_VIT)},
        "task": {"type": "image_classification"},
        "data": {"train": str(train), "eval": str(evaluation)},
        "strategy": {"name": strategy},
        "training": {"epochs": 4, "batch_size": 16, "min_steps": 0, "learning_rate": 3e-3 if strategy == "full" else 1e-2,
                     "seed": 0, "warmup_ratio": 0.0},
        "output": {"dir": str(tmp_path / f"run-{strategy}")},
    }


def test_a_config_built_vit_needs_no_tokenizer_but_a_text_task_does(tmp_path):
    from adaptkit.errors import RecipeError
    from adaptkit.recipe.schema import Recipe

    train = image_folder(tmp_path / "train", 2, 0)
    recipe = image_recipe(tmp_path, "full", train, train)
    assert Recipe.from_dict(recipe).data.train == train  # a folder is valid data.train
    recipe["task"] = {"type": "sequence_classification"}
    with pytest.raises(RecipeError, match="needs model.tokenizer"):
        Recipe.from_dict(recipe, check_files=False)


def test_image_folder_loads_with_class_names(tmp_path):
    from adaptkit.engine.data import load_table

    table = load_table(image_folder(tmp_path / "train", 3, 0))
    assert len(table) == 6 and set(table.column_names) == {"image", "label"}
    assert table.features["label"].names == ["blue", "red"]


def test_full_run_on_an_image_folder_learns_and_reloads(tmp_path):
    import adaptkit

    train = image_folder(tmp_path / "train", 48, 1)
    evaluation = image_folder(tmp_path / "eval", 12, 2)
    result = adaptkit.run(image_recipe(tmp_path, "full", train, evaluation), progress=False)
    assert result.metrics["task_state"] == {"labels": ["blue", "red"]}
    assert result.eval["accuracy"] >= 0.95 and result.eval["macro_f1"] >= 0.95
    assert result.metrics["train_examples_per_second"] > 0  # counted from pixel_values, not input_ids
    assert (result.output_dir / "tokenizer" / "preprocessor_config.json").is_file()  # the processor is saved
    predictor = adaptkit.load(result.output_dir)
    rng = random.Random(9)
    rows = [{"image": str(draw(tmp_path / "new" / f"{c}.png", c, rng))} for c in ("red", "blue", "red")]
    predictions = predictor.predict(rows)
    assert [p["label"] for p in predictions] == ["red", "blue", "red"]
    assert all(0.5 < p["score"] <= 1.0 for p in predictions)


def test_lora_run_on_an_image_path_column(tmp_path):
    """Images named by path in a JSONL table, string labels; LoRA trains adapters and the head."""
    import adaptkit

    folder = image_folder(tmp_path / "images", 40, 3)
    paths = sorted(folder.glob("*/*.png"))
    rows = [{"picture": str(p), "colour": p.parent.name} for p in paths]
    random.Random(0).shuffle(rows)
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:64]))
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows[64:]))
    recipe = image_recipe(tmp_path, "lora", train, evaluation)
    recipe["task"].update(image_column="picture", label_column="colour")
    recipe["training"]["epochs"] = 6
    result = adaptkit.run(recipe, progress=False)
    assert result.metrics["export"]["kind"] == "adapter"
    # A 27k-parameter ViT: rank-8 adapters are a large share of it, but still a minority.
    assert result.metrics["parameters"]["trainable"] < 0.4 * result.metrics["parameters"]["total"]
    assert result.eval["accuracy"] >= 0.8
    predictions = adaptkit.load(result.output_dir).predict([{"picture": rows[64]["picture"]}])
    assert predictions[0]["label"] in {"red", "blue"}
