"""image_to_text: a tiny ViT + GPT-2 captioner, built from configs, learns what is drawn.

Images are generated here: a red, green or blue square or bar, and the caption says which
("there is a red square"), so a model that learns shows it on held-out images.
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
import torch

COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 210)}
SHAPES = ("square", "bar")
VIT = {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 4,
       "num_attention_heads": 4, "intermediate_size": 128}


def draw(path: Path, colour: str, shape: str, rng: random.Random) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (32, 32), (235, 235, 235))
    side = rng.randint(12, 20)
    x, y = rng.randint(1, 31 - side), rng.randint(1, 31 - side)
    # a square, or a bar across the whole image as thick as a third of the square
    box = [x, y, x + side, y + side] if shape == "square" else [0, y, 31, y + side // 3]
    ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def caption_table(folder: Path, name: str, count: int, seed: int) -> Path:
    """``count`` images (every colour x shape in turn) and a CSV naming them by relative path; every
    fourth image has a second caption on its own row."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        colour, shape = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
        draw(folder / f"{name}-{i}.png", colour, shape, rng)
        rows.append({"image": f"{name}-{i}.png", "caption": f"there is a {colour} {shape}"})
        if i % 4 == 0:
            rows.append({"image": f"{name}-{i}.png", "caption": f"the picture shows a {colour} {shape}"})
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from adaptkit.testing import word_tokenizer

    folder = tmp_path_factory.mktemp("captions")
    train, evaluation = caption_table(folder, "train", 60, 1), caption_table(folder, "eval", 18, 2)
    words = [{"caption": f"there is a the picture shows {' '.join(COLOURS)} {' '.join(SHAPES)}"}]
    tokenizer = word_tokenizer(words, folder / "tokenizer")
    return {"folder": folder, "train": train, "eval": evaluation, "tokenizer": tokenizer}


def recipe(data, tmp_path: Path, strategy: str = "full", epochs: int = 1, **training) -> dict:
    decoder = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 24}
    return {
        "model": {"config": {"model_type": "vision-encoder-decoder", "encoder": dict(VIT), "decoder": decoder},
                  "tokenizer": str(data["tokenizer"])},
        "task": {"type": "image_to_text", "image_folder": str(data["folder"]), "max_new_tokens": 8},
        "data": {"train": str(data["train"]), "eval": str(data["eval"])},
        "strategy": {"name": strategy},
        "training": {"epochs": epochs, "batch_size": 16, "learning_rate": 5e-3, "seed": 0, "min_steps": 0,
                     "warmup_ratio": 0.0, **training},
        "output": {"dir": str(tmp_path / f"run-{strategy}")},
    }


def _task_and_processor(data, tmp_path):
    from types import SimpleNamespace

    from adaptkit_tasks.image_to_text import ImageToText

    task = ImageToText({"image_folder": str(data["folder"])})
    section = SimpleNamespace(name=None, tokenizer=str(data["tokenizer"]), revision=None, trust_remote_code=False,
                              allow_pickle=False, config=recipe(data, tmp_path)["model"]["config"])
    processor = task.load_processor(SimpleNamespace(model=section), None)
    return task, processor, section


def test_several_captions_per_image_give_one_row_each(data, tmp_path):
    import datasets

    task, processor, _ = _task_and_processor(data, tmp_path)
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"image": "train-0.png", "caption": ["there is a red square", "a red square"]}) + "\n"
                     + json.dumps({"image": "train-1.png", "caption": "there is a green square"}) + "\n")
    table = datasets.load_dataset("json", data_files=str(jsonl), split="train")
    encoded = task.preprocess(table, processor)
    assert len(encoded) == 3  # two captions of one image, one of the other
    tokenizer = processor.tokenizer
    assert tokenizer.decode(encoded[0]["labels"][:-1]) == "there is a red square"
    assert encoded[0]["labels"][-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in encoded[0]["labels"]
    assert encoded[0]["pixel_values"] == encoded[1]["pixel_values"] != encoded[2]["pixel_values"]
    batch = task.collate(processor)([encoded[i] for i in range(3)])
    labels, inputs = batch["labels"], batch["decoder_input_ids"]
    assert (inputs[:, 0] == tokenizer.bos_token_id).all()  # the start token is an input, never a label
    assert torch.equal(inputs[0, 1:], labels[0, :-1])  # the labels shifted right
    assert (labels[2] == -100).sum() == labels.shape[1] - len(encoded[2]["labels"])


@pytest.mark.parametrize("line, content, problem", [
    (3, "train-1.png,\n", "caption: the caption is empty"),
    (2, "missing.png,there is a red square\n", "image file 'missing.png' not found"),
])
def test_a_bad_row_is_named_by_file_and_line(data, tmp_path, line, content, problem):
    import adaptkit
    from adaptkit.errors import AdaptkitError

    rows = ["image,caption\n", "train-0.png,there is a red square\n", "train-1.png,there is a green square\n"]
    rows[line - 1] = content
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(rows))
    broken = recipe(data, tmp_path)
    broken["data"]["train"] = str(bad)
    with pytest.raises(AdaptkitError) as caught:
        adaptkit.run(broken, progress=False)
    assert f"bad.csv:{line}" in str(caught.value) and problem in str(caught.value)


def test_loss_is_on_caption_tokens_only(data, tmp_path):
    import transformers

    from adaptkit import load_config

    task, processor, section = _task_and_processor(data, tmp_path)
    from types import SimpleNamespace

    config = load_config(SimpleNamespace(model=section), None)
    torch.manual_seed(0)
    model = task.build_model("", config, True).eval()
    assert isinstance(model, transformers.VisionEncoderDecoderModel)
    import datasets

    table = datasets.Dataset.from_list([{"image": "train-0.png", "caption": "there is a red square"},
                                        {"image": "train-1.png", "caption": "a green square"}])
    encoded = task.preprocess(table, processor)
    batch = task.collate(processor)([encoded[0], encoded[1]])
    with torch.no_grad():
        outputs = model(**batch)
        labels = batch["labels"]
        mask = labels != -100
        by_hand = torch.nn.functional.cross_entropy(outputs.logits[mask], labels[mask])
        assert torch.allclose(outputs.loss, by_hand, atol=1e-6)
        assert int(mask.sum()) == len(encoded[0]["labels"]) + len(encoded[1]["labels"])  # 6 + 4, padding not counted
        padded = dict(batch, decoder_input_ids=batch["decoder_input_ids"].clone())
        padded["decoder_input_ids"][1, -1] = 7  # what sits at a padded position changes no scored token
        assert torch.allclose(model(**padded).loss, outputs.loss, atol=1e-6)
        kept = task.batch_outputs(task.compute_loss(model, batch)[1], batch)
    assert kept["tokens"].tolist() == [6, 4] and kept["generated"].shape[0] == 2
    assert kept["image"][0] != kept["image"][1]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One full fine-tune long enough to learn the captions (shared by the learning and export tests)."""
    import adaptkit

    folder = tmp_path_factory.mktemp("trained")
    untrained = adaptkit.run(recipe(data, folder / "untrained", "full", max_steps=1, learning_rate=1e-9), progress=False)
    result = adaptkit.run(recipe(data, folder, "full", epochs=15, learning_rate=2e-3), progress=False)
    return untrained, result


@pytest.mark.slow
def test_trained_captions_on_held_out_images_become_right(trained, data, tmp_path):
    import adaptkit

    untrained, result = trained
    assert set(result.eval) >= {"bleu", "chrf", "rougeL", "cider", "exact_match", "token_loss"}
    # 75 steps on 60 images: 0.89 of the 18 held-out images captioned exactly (0.0 untrained), BLEU 0.96
    assert result.eval["exact_match"] >= 0.75 and untrained.eval["exact_match"] == 0.0
    assert result.eval["bleu"] >= untrained.eval["bleu"] + 0.6
    assert result.eval["token_loss"] < untrained.eval["token_loss"] / 4
    rng = random.Random(5)
    shown = [("red", "bar"), ("blue", "square"), ("green", "bar")]
    rows = [{"image": str(draw(tmp_path / f"{c}-{s}.png", c, s, rng))} for c, s in shown]
    captions = adaptkit.load(result.output_dir).predict(rows)
    pattern = re.compile(rf"(there is|the picture shows) a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
    assert all(pattern.fullmatch(caption) for caption in captions), captions
    assert sum(caption.endswith(f"{c} {s}") for caption, (c, s) in zip(captions, shown)) >= 2, captions


@pytest.mark.slow
def test_export_generates_with_plain_transformers_what_predict_writes(trained, data):
    from PIL import Image
    from transformers import VisionEncoderDecoderModel, VisionTextDualEncoderProcessor

    import adaptkit

    _, result = trained
    images = [str(data["folder"] / f"eval-{i}.png") for i in range(6)]
    written = adaptkit.load(result.output_dir).predict([{"image": path} for path in images])
    model = VisionEncoderDecoderModel.from_pretrained(result.output_dir / "model").eval()
    processor = VisionTextDualEncoderProcessor.from_pretrained(result.output_dir / "tokenizer")
    pixels = processor.image_processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels["pixel_values"])  # the saved generation_config
    plain = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert [text.strip() for text in plain] == written and len(set(written)) > 1


@pytest.mark.parametrize("strategy", ["lora", "partial_freeze",
                                      pytest.param("adapters", marks=pytest.mark.slow),
                                      pytest.param("ia3", marks=pytest.mark.slow)])
def test_strategy_trains_and_predicts(strategy, data, tmp_path):
    import adaptkit

    chosen = recipe(data, tmp_path, strategy, max_steps=3)
    if strategy == "ia3":  # peft knows no IA3 defaults for vision-encoder-decoder: the recipe names both sides
        chosen["strategy"].update(target_modules=["k_proj", "v_proj", "fc2", "c_attn", "mlp.c_proj"],
                                  feedforward_modules=["fc2", "mlp.c_proj"])
    result = adaptkit.run(chosen, progress=False)
    assert result.metrics["parameters"]["trainable"] < result.metrics["parameters"]["total"]
    assert {"bleu", "cider", "token_loss"} <= set(result.eval)
    captions = adaptkit.load(result.output_dir).predict([{"image": str(data["folder"] / "eval-0.png")}])
    assert len(captions) == 1 and isinstance(captions[0], str)
    if strategy == "lora":  # both sides adapted: the ViT's projections and GPT-2's (cross-)attention
        from safetensors import safe_open

        with safe_open(str(result.output_dir / "adapter" / "adapter_model.safetensors"), "pt") as handle:
            keys = list(handle.keys())
        assert any(".encoder." in k for k in keys) and any("decoder.transformer.h" in k for k in keys)
        assert any("crossattention" in k for k in keys)


def test_frozen_head_is_refused_for_lack_of_a_head(data, tmp_path):
    import adaptkit
    from adaptkit.errors import AdaptkitError

    with pytest.raises(AdaptkitError, match="head"):
        adaptkit.run(recipe(data, tmp_path, "frozen_head", max_steps=1), progress=False)


def _judged_recipe(data, folder: Path, trained) -> dict:
    """LoRA on the captioner that learned the toy captions, at 40 rows: the judge's "pretrained" model
    (compare refuses a model built from a config: it judges pretraining)."""
    judged = recipe(data, folder, "lora", epochs=3, learning_rate=5e-3)
    judged["model"] = {"name": str(trained[1].output_dir / "model"), "tokenizer": str(data["tokenizer"])}
    return judged


@pytest.mark.slow
def test_advise_and_compare_judge_a_captioner_in_bleu(trained, data, tmp_path):
    """advise times the strategies on the captioner; compare trains lora on the pretrained captioner and
    scratch (the same config, random weights) on the same 40 rows, and states the verdict in BLEU."""
    import adaptkit

    judged = _judged_recipe(data, tmp_path, trained)
    advice = adaptkit.advise(judged, strategies=["lora", "partial_freeze"], log=lambda _: None)
    assert advice.task == "image_to_text"
    assert all(s.seconds_per_step and s.seconds_per_step > 0 for s in advice.strategies), \
        [(s.strategy, s.skipped, s.probe_error) for s in advice.strategies]
    report = adaptkit.compare(judged, ["lora", "scratch"], seeds=[0], sizes=[40], trials=1, bootstrap_rounds=200,
                              output_dir=str(tmp_path / "compare"), log=lambda _: None)
    assert report.metric == "bleu" and report.greater_is_better is True
    rows = {row.strategy: row for row in report.rows}
    # the toy captions are learnable from 40 rows: scratch gets there too (BLEU 0.87 against lora's 0.95
    # measured), so the test holds the judge to its arithmetic, not to a verdict the data cannot give
    assert rows["lora"].metric > 0.8 and rows["lora"].metric >= rows["scratch"].metric > 0.0, rows
    assert rows["scratch"].kind == "scratch" and rows["lora"].trainable < rows["scratch"].trainable, rows
    table = (tmp_path / "compare" / "table.md").read_text()
    assert "bleu" in table and any(v in table for v in ("positive transfer", "no clear difference")), table
