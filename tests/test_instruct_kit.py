"""Shared pieces of the instruct tests: real tokenizers made in the test, tiny decoders, data.

Two tokenizers, both ``tokenizers``-backed fast tokenizers saved as a folder a recipe names:
a word-level one whose tokens are the words (so a test can write the expected ids and mask
by hand), and a byte-level BPE trained on the test's own data (what real decoders use).
Neither ships a chat template unless asked: the tests give one, or check the refusal.
"""
from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any, Optional

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
COLOURS = {"apple": "red", "banana": "yellow", "grape": "purple", "lime": "green", "plum": "purple",
           "cherry": "red", "lemon": "yellow", "kiwi": "green"}


def _wrap(backend, folder: Path, template: Optional[str]):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if template is not None:
        tokenizer.chat_template = template
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def word_tokenizer(folder: Path, words: list[str], template: Optional[str] = None):
    """One token per word (whitespace and punctuation split), the specials kept whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(words) - set(SPECIALS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(backend, folder, template)


@functools.lru_cache(maxsize=4)
def _trained_bpe(texts: tuple[str, ...], vocab_size: int) -> str:
    """The trained tokenizer as JSON, trained once per session for every test file that asks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return backend.to_str()


def bpe_tokenizer(folder: Path, corpus: list[str], vocab_size: int = 420, template: Optional[str] = None):
    """A byte-level BPE (GPT-2's scheme) trained on ``corpus``: any text encodes, nothing is unknown."""
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_str(_trained_bpe(tuple(corpus), vocab_size)), folder, template)


def tiny_config(family: str, vocab_size: int) -> dict[str, Any]:
    """A Llama- or GPT-2-shaped decoder small enough to train in a second on a CPU."""
    if family == "llama":
        return {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
                "vocab_size": vocab_size, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    return {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256,
            "vocab_size": vocab_size, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}


def build_model(family: str, vocab_size: int, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = tiny_config(family, vocab_size)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


# ---------------------------------------------------------------------------- data, four layouts

def fruit_rows(layout: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Fruit -> colour questions in one layout; a tiny model learns them in a few steps."""
    rng = random.Random(seed)
    fruits = sorted(COLOURS)
    rows = []
    for _ in range(count):
        fruit, other = rng.choice(fruits), rng.choice(fruits)
        if layout == "text":
            rows.append({"text": f"a {fruit} is {COLOURS[fruit]} and a {other} is {COLOURS[other]}"})
        elif layout == "prompt_completion":
            rows.append({"prompt": f"what colour is a {fruit}", "completion": COLOURS[fruit]})
        elif layout == "alpaca":
            rows.append({"instruction": "name the colour of the fruit", "input": fruit, "output": COLOURS[fruit]})
        else:
            rows.append({"messages": [
                {"role": "system", "content": "answer with one word"},
                {"role": "user", "content": f"what colour is a {fruit}"},
                {"role": "assistant", "content": COLOURS[fruit]},
                {"role": "user", "content": f"and a {other}"},
                {"role": "assistant", "content": COLOURS[other]}]})
    return rows


def corpus() -> list[str]:
    """Every string the fruit data can hold, for training the BPE tokenizer."""
    texts = []
    for layout in ("text", "prompt_completion", "alpaca", "messages"):
        texts += [json.dumps(row) for row in fruit_rows(layout, 40, 7)]
    return texts + ["system user assistant answer with one word name the colour of the fruit"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_word_tokenizer_keeps_specials_whole(tmp_path):
    tokenizer = word_tokenizer(tmp_path, ["hi", "user"])
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|im_start|>", "user", "hi", "<|im_end|>"]


def test_bpe_tokenizer_round_trips_any_text(tmp_path):
    tokenizer = bpe_tokenizer(tmp_path, corpus())
    text = "what colour is a Durian? ünïcode"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tokenizer) <= 420
