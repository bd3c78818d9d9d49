"""image_to_text on BLIP (``BlipForConditionalGeneration``, what ``AutoModelForImageTextToText`` maps
``model_type: blip`` to): a tiny BLIP built from a config learns the drawn-shape captions of
test_task_image_to_text, its export captions with plain transformers what ``adaptkit predict``
writes, and partial freezing and LoRA find its vision and text blocks.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from test_task_image_to_text import COLOURS, SHAPES, caption_table, draw

BLIP = {"model_type": "blip",
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        "text_config": {"vocab_size": 24, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "max_position_embeddings": 32}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from adaptkit.testing import word_tokenizer

    folder = tmp_path_factory.mktemp("blip-captions")
    train, evaluation = caption_table(folder, "train", 60, 1), caption_table(folder, "eval", 18, 2)
    words = [{"caption": f"there is a the picture shows {' '.join(COLOURS)} {' '.join(SHAPES)}"}]
    return {"folder": folder, "train": train, "eval": evaluation, "tokenizer": word_tokenizer(words, folder / "tok")}


def recipe(data, folder: Path, strategy: str = "full", **training) -> dict:
    return {
        "model": {"config": {**BLIP, "vision_config": dict(BLIP["vision_config"]),
                             "text_config": dict(BLIP["text_config"])},
                  "tokenizer": str(data["tokenizer"])},
        "task": {"type": "image_to_text", "image_folder": str(data["folder"]), "max_new_tokens": 8},
        "data": {"train": str(data["train"]), "eval": str(data["eval"])},
        "strategy": {"name": strategy},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "seed": 0, "min_steps": 0,
                     "warmup_ratio": 0.0, **training},
        "output": {"dir": str(folder / f"run-{strategy}")},
    }


def _built(data, tmp_path):
    """The task, its processor and the tiny BLIP, as a run builds them (no training)."""
    from types import SimpleNamespace

    from adaptkit import load_config
    from adaptkit_tasks.image_to_text import ImageToText

    task = ImageToText({"image_folder": str(data["folder"])})
    section = SimpleNamespace(name=None, tokenizer=str(data["tokenizer"]), revision=None, trust_remote_code=False,
                              allow_pickle=False, config=recipe(data, tmp_path)["model"]["config"])
    processor = task.load_processor(SimpleNamespace(model=section), None)
    torch.manual_seed(0)
    model = task.build_model("", load_config(SimpleNamespace(model=section), None), True).eval()
    return task, processor, model


def test_the_class_follows_model_type_and_the_loss_is_on_caption_tokens(data, tmp_path):
    import datasets
    import transformers

    task, processor, model = _built(data, tmp_path)
    assert type(model) is transformers.BlipForConditionalGeneration  # chosen from model_type, no recipe flag
    tokenizer = processor.tokenizer
    text = model.config.text_config
    # BLIP's generate starts from bos and stops at sep: both are the tokenizer's (its [BOS] and [EOS])
    assert (text.bos_token_id, text.sep_token_id, text.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    table = datasets.Dataset.from_list([{"image": "train-0.png", "caption": "there is a red square"},
                                        {"image": "train-1.png", "caption": "a green square"}])
    encoded = task.preprocess(table, processor)
    batch = task.collate(processor)([encoded[0], encoded[1]])
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all() and (batch["labels"][:, 0] == -100).all()
    with torch.no_grad():
        outputs = model(**batch)
        logits, labels = outputs.logits[:, :-1], batch["labels"][:, 1:]  # BLIP predicts token i+1 at i
        mask = labels != -100
        assert int(mask.sum()) == len(encoded[0]["labels"]) + len(encoded[1]["labels"])  # 6 + 4, no padding
        assert torch.allclose(outputs.loss, torch.nn.functional.cross_entropy(logits[mask], labels[mask]), atol=1e-6)
        kept = task.batch_outputs(task.compute_loss(model, batch)[1], batch)
    assert kept["tokens"].tolist() == [6, 4]
    assert torch.allclose(kept["loss_sum"].sum() / 10, outputs.loss, atol=1e-5)
    # at most max_new_tokens (32), capped where the text decoder's 32 positions end (the start token takes one)
    assert kept["generated"].shape[0] == 2 and kept["generated"].shape[1] <= 31


def test_partial_freeze_and_lora_find_the_vision_and_text_blocks(data, tmp_path):
    from adaptkit import find_block_list
    from adaptkit.testing import wrap_context
    from adaptkit_lora import Lora
    from adaptkit_partial_freeze import PartialFreeze

    _, _, model = _built(data, tmp_path)
    assert find_block_list(model, "encoder") == ("vision_model.encoder.layers", 2)
    assert find_block_list(model, "decoder") == ("text_decoder.bert.encoder.layer", 2)
    context = wrap_context(model, "blip", head_modules=[], peft_task_type=None)
    frozen = PartialFreeze({"freeze_blocks": 1, "freeze_decoder_blocks": 1}).frozen_names(model, context)
    assert any(n.startswith("vision_model.embeddings.") for n in frozen)  # before the first vision block
    assert any(n.startswith("vision_model.encoder.layers.0.") for n in frozen)
    assert not any(n.startswith("vision_model.encoder.layers.1.") for n in frozen)
    assert any(n.startswith("text_decoder.bert.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("text_decoder.bert.encoder.layer.1.") for n in frozen)
    wrapped = Lora().wrap(model, context)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_parameters() if ".lora_A." in n}
    assert any(".vision_model.encoder.layers.0.self_attn.qkv" in n for n in adapted)
    assert any(".text_decoder.bert.encoder.layer.0.crossattention.self.query" in n for n in adapted)
    assert any(n.endswith("intermediate.dense") for n in adapted)
    assert not any(".cls." in n for n in adapted)  # the LM head (tied to the embeddings) is not adapted


def test_a_chat_image_text_model_is_refused_by_name():
    from adaptkit.errors import AdaptkitError
    from adaptkit_tasks.captioners import captioner_for

    with pytest.raises(AdaptkitError, match="llava.*LlavaForConditionalGeneration answers a text prompt"):
        captioner_for("llava")
    assert captioner_for("blip").model_class == "BlipForConditionalGeneration"


def test_lora_and_partial_freeze_train_blip_and_predict(data, tmp_path):
    import adaptkit

    for strategy in ("lora", "partial_freeze"):
        result = adaptkit.run(recipe(data, tmp_path, strategy, max_steps=2), progress=False)
        assert result.metrics["parameters"]["trainable"] < result.metrics["parameters"]["total"]
        assert {"bleu", "cider", "token_loss"} <= set(result.eval)
        captions = adaptkit.load(result.output_dir).predict([{"image": str(data["folder"] / "eval-0.png")}])
        assert len(captions) == 1 and isinstance(captions[0], str)


@pytest.mark.slow
def test_qlora_trains_blip_in_4bit_and_keeps_the_contract(data, tmp_path):
    pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes")
    import adaptkit

    result = adaptkit.run(recipe(data, tmp_path, "qlora", max_steps=2), progress=False)
    contract = " | ".join(result.metrics["contract"])
    assert all(rule in contract for rule in ("frozen:", "export:", "signature:", "equivalence:")), contract
    captions = adaptkit.load(result.output_dir).predict([{"image": str(data["folder"] / "eval-0.png")}])
    assert len(captions) == 1 and isinstance(captions[0], str)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    import adaptkit

    folder = tmp_path_factory.mktemp("blip-trained")
    return adaptkit.run(recipe(data, folder, "full", epochs=20, learning_rate=3e-3), progress=False)


@pytest.mark.slow
def test_blip_learns_the_captions_and_its_export_captions_with_plain_transformers(trained, data, tmp_path):
    import re

    from PIL import Image
    from transformers import AutoModelForImageTextToText, VisionTextDualEncoderProcessor

    import adaptkit

    assert trained.eval["exact_match"] >= 0.75 and trained.eval["bleu"] >= 0.6, trained.eval
    card = (trained.output_dir / "README.md").read_text()  # the model card says how plain transformers generates
    assert "generation_config=model.generation_config" in card and "max_new_tokens=8" in card
    rng = random.Random(5)
    shown = [("red", "bar"), ("blue", "square"), ("green", "bar")]
    rows = [{"image": str(draw(tmp_path / f"{c}-{s}.png", c, s, rng))} for c, s in shown]
    images = [row["image"] for row in rows] + [str(data["folder"] / f"eval-{i}.png") for i in range(6)]
    written = adaptkit.load(trained.output_dir).predict([{"image": path} for path in images])
    pattern = re.compile(rf"(there is|the picture shows) a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
    assert all(pattern.fullmatch(caption) for caption in written), written
    assert sum(caption.endswith(f"{c} {s}") for caption, (c, s) in zip(written, shown)) >= 2, written
    model = AutoModelForImageTextToText.from_pretrained(trained.output_dir / "model").eval()
    assert type(model).__name__ == "BlipForConditionalGeneration"
    processor = VisionTextDualEncoderProcessor.from_pretrained(trained.output_dir / "tokenizer")
    pixels = processor.image_processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():  # BLIP's generate reads its text decoder's settings: hand it the saved ones
        ids = model.generate(pixel_values=pixels["pixel_values"], generation_config=model.generation_config)
    plain = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert [text.strip() for text in plain] == written and len(set(written)) > 1
