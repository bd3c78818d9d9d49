"""The ``partial_freeze`` strategy: embeddings and the lowest blocks frozen, found per family."""
from __future__ import annotations

import pytest
import torch

from adaptkit.plugin.contract import FrozenWeights
from adaptkit.plugin.strategy import WrapContext
from adaptkit.testing import (FAMILIES, wrap_context as _context, train_steps as _train_steps,
                              check_strategy, register_family, unregister_family)
from adaptkit_partial_freeze import PartialFreeze, PartialFreezeOptions


def tiny_llama(layers: int = 2):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=3, pad_token_id=0))


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=48, num_labels=3))


def _frozen(model, context, **options) -> set[str]:
    PartialFreeze(options).wrap(model, context)
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def _all(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_check_strategy_passes():
    report = check_strategy(PartialFreeze)
    assert sum("equivalence" in line for line in report.passed) == 2


def test_check_strategy_passes_on_llama():
    register_family("llama", tiny_llama, head_modules=["score"], peft_task_type="SEQ_CLS")
    try:
        report = check_strategy(PartialFreeze, {"freeze_blocks": 1}, families=["llama"])
    finally:
        unregister_family("llama")
    assert any("llama: frozen" in line for line in report.passed)


def test_bert_embeddings_and_first_block_frozen():
    model = FAMILIES["bert"]()
    frozen = _frozen(model, _context(model, "bert"), freeze_blocks=1)
    expected = {n for n in _all(model) if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    assert frozen == expected and len(expected) > 10


def test_gpt2_embeddings_and_first_block_frozen():
    model = FAMILIES["gpt2"]()
    frozen = _frozen(model, _context(model, "gpt2"), freeze_blocks=1)
    expected = {n for n in _all(model) if n.startswith(("transformer.wte.", "transformer.wpe.", "transformer.h.0."))}
    assert frozen == expected
    assert "transformer.ln_f.weight" not in frozen and "score.weight" not in frozen


def test_llama_family_default_fraction_freezes_three_of_four_blocks():
    model = tiny_llama(layers=4)
    frozen = _frozen(model, _context(model, "llama"))
    expected = {n for n in _all(model)
                if n.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1.", "model.layers.2."))}
    assert frozen == expected
    assert not any(n.startswith(("model.layers.3.", "model.norm.", "score.")) for n in frozen)


def test_vit_freezing_pattern_and_frozen_weights_survive_training():
    torch.manual_seed(0)
    model = tiny_vit()
    strategy = PartialFreeze({"freeze_blocks": 2})
    context = WrapContext("vit", "image_classification", ["classifier"])
    strategy.wrap(model, context)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    path = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    expected = {n for n in _all(model) if n.startswith(("vit.embeddings.", f"{path}.0.", f"{path}.1."))}
    assert frozen == expected
    assert "vit.embeddings.cls_token" in frozen and "vit.embeddings.position_embeddings" in frozen
    snapshot = FrozenWeights.snapshot(model)
    trained_before = model.get_submodule(f"{path}.2").mlp.fc2.weight.clone() \
        if hasattr(model.get_submodule(f"{path}.2"), "mlp") else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    snapshot.verify("partial_freeze", model)
    if trained_before is not None:
        assert not torch.equal(model.get_submodule(f"{path}.2").mlp.fc2.weight, trained_before)


def test_fraction_rounds_down_and_one_freezes_every_block():
    model = tiny_vit()
    context = WrapContext("vit", "image_classification", ["classifier"])
    path = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    frozen = _frozen(model, context, freeze_blocks=0.5)  # 3 blocks * 0.5 -> 1
    assert any(n.startswith(f"{path}.0.") for n in frozen) and not any(n.startswith(f"{path}.1.") for n in frozen)
    frozen = _frozen(model, context, freeze_blocks=1.0)
    assert all(n in frozen for n in _all(model) if n.startswith(f"{path}."))
    assert "classifier.weight" not in frozen and "vit.layernorm.weight" not in frozen


def test_too_many_blocks_is_a_clear_error():
    model = FAMILIES["bert"]()
    with pytest.raises(ValueError, match="freeze_blocks is 5, but this model has only 2 blocks"):
        PartialFreeze({"freeze_blocks": 5}).wrap(model, _context(model, "bert"))


def test_nothing_frozen_when_asked():
    model = FAMILIES["bert"]()
    assert _frozen(model, _context(model, "bert"), freeze_blocks=0, freeze_embeddings=False) == set()


def test_glob_and_regex_patterns():
    model = FAMILIES["bert"]()
    frozen = _frozen(model, _context(model, "bert"), freeze_patterns=["*.attention.self"],
                     freeze_embeddings=False)
    assert frozen == {n for n in _all(model) if ".attention.self." in n}
    model = FAMILIES["gpt2"]()
    frozen = _frozen(model, _context(model, "gpt2"), freeze_patterns=[r"re:^transformer\.h\.1\.mlp\."],
                     freeze_embeddings=False)
    assert frozen == {n for n in _all(model) if n.startswith("transformer.h.1.mlp.")}


def test_patterns_combine_with_block_count():
    model = FAMILIES["bert"]()
    frozen = _frozen(model, _context(model, "bert"), freeze_blocks=1, freeze_patterns=["bert.pooler"])
    assert "bert.pooler.dense.weight" in frozen and "bert.encoder.layer.0.output.dense.weight" in frozen
    assert "bert.encoder.layer.1.output.dense.weight" not in frozen


def test_pattern_matching_nothing_or_only_the_head_is_an_error():
    model = FAMILIES["bert"]()
    with pytest.raises(ValueError, match=r"freeze_patterns \['\*\.atention\.\*'\] match no parameter"):
        PartialFreeze({"freeze_patterns": ["*.atention.*"]}).wrap(model, _context(model, "bert"))
    with pytest.raises(ValueError, match="match no parameter"):
        PartialFreeze({"freeze_patterns": ["classifier"]}).wrap(model, _context(model, "bert"))


def test_train_head_false_freezes_the_head():
    model = FAMILIES["gpt2"]()
    frozen = _frozen(model, _context(model, "gpt2"), freeze_blocks=1, train_head=False)
    assert "score.weight" in frozen and "transformer.h.1.mlp.c_fc.weight" not in frozen


@pytest.mark.parametrize("value", [-1, 1.5, True, "re:("])
def test_bad_options_are_rejected(value):
    key = "freeze_patterns" if value == "re:(" else "freeze_blocks"
    with pytest.raises(Exception):
        PartialFreezeOptions(**{key: [value] if key == "freeze_patterns" else value})


def test_integer_is_a_count_and_float_a_fraction():
    assert PartialFreezeOptions(freeze_blocks=2).freeze_blocks == 2
    assert isinstance(PartialFreezeOptions(freeze_blocks=2).freeze_blocks, int)
    assert isinstance(PartialFreezeOptions(freeze_blocks=0.5).freeze_blocks, float)


def test_trained_weights_move_only_above_the_frozen_blocks():
    torch.manual_seed(0)
    model = FAMILIES["bert"]()
    strategy = PartialFreeze({"freeze_blocks": 1})
    strategy.wrap(model, _context(model, "bert"))
    low = model.bert.encoder.layer[0].output.dense.weight.clone()
    high = model.bert.encoder.layer[1].output.dense.weight.clone()
    _train_steps(strategy, model)
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, low)
    assert not torch.equal(model.bert.encoder.layer[1].output.dense.weight, high)


# ---------------------------------------------------------------------------- encoder-decoder models

def tiny_captioner(encoder_layers: int = 4, decoder_layers: int = 2):
    """ViT encoder + GPT-2 decoder with cross-attention, random weights."""
    from transformers import AutoConfig, VisionEncoderDecoderModel

    config = AutoConfig.for_model(
        "vision-encoder-decoder",
        encoder={"model_type": "vit", "image_size": 16, "patch_size": 8, "hidden_size": 32,
                 "num_hidden_layers": encoder_layers, "num_attention_heads": 2, "intermediate_size": 48},
        decoder={"model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": decoder_layers, "n_head": 2,
                 "n_positions": 32, "bos_token_id": 1, "eos_token_id": 2, "add_cross_attention": True})
    return VisionEncoderDecoderModel(config)


def tiny_bart():
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(
        vocab_size=50, d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=32))


def test_find_block_list_finds_each_side_of_an_encoder_decoder():
    from adaptkit import find_block_list

    model = tiny_captioner(encoder_layers=2, decoder_layers=5)
    assert find_block_list(model) == ("decoder.transformer.h", 5)  # the longest stack, as before
    assert find_block_list(model, "encoder") == ("encoder.layers", 2)
    assert find_block_list(model, "decoder") == ("decoder.transformer.h", 5)
    assert find_block_list(tiny_bart(), "encoder") == ("model.encoder.layers", 3)
    with pytest.raises(ValueError, match="not an encoder-decoder"):
        find_block_list(FAMILIES["bert"](), "decoder")


def test_captioner_freezes_early_encoder_blocks_and_trains_the_decoder():
    """The seed's recipe: the encoder's embeddings and first blocks frozen, its later blocks and the
    whole decoder (embeddings included) trained, even where the decoder's stack is the longer."""
    model = tiny_captioner(encoder_layers=4, decoder_layers=6)
    frozen = _frozen(model, _context(model, "vision-encoder-decoder"), freeze_blocks=3)
    expected = {n for n in _all(model)
                if n.startswith(("encoder.embeddings.", "encoder.layers.0.", "encoder.layers.1.", "encoder.layers.2."))}
    assert frozen == expected
    assert not any(n.startswith("decoder.") for n in frozen)


def test_captioner_default_fraction_and_decoder_blocks():
    model = tiny_captioner(encoder_layers=4, decoder_layers=2)
    frozen = _frozen(model, _context(model, "vision-encoder-decoder"))  # the encoder family's (vit) half
    assert {n.split(".")[2] for n in frozen if n.startswith("encoder.layers.")} == {"0", "1"}
    model = tiny_captioner(encoder_layers=4, decoder_layers=2)
    frozen = _frozen(model, _context(model, "vision-encoder-decoder"), freeze_blocks=1, freeze_decoder_blocks=1)
    decoder = {n for n in frozen if n.startswith("decoder.")}
    assert decoder == {n for n in _all(model)
                       if n.startswith(("decoder.transformer.wte.", "decoder.transformer.wpe.", "decoder.transformer.h.0."))}


def test_bart_encoder_blocks_frozen_decoder_trained():
    model = tiny_bart()
    frozen = _frozen(model, _context(model, "bart"), freeze_blocks=2)
    assert "model.shared.weight" in frozen and "model.encoder.layers.1.fc1.weight" in frozen
    assert "model.encoder.layers.2.fc1.weight" not in frozen
    assert not any(n.startswith("model.decoder.") for n in frozen)


def test_decoder_blocks_on_a_one_stack_model_and_too_many_are_clear_errors():
    model = FAMILIES["bert"]()
    with pytest.raises(ValueError, match="freeze_decoder_blocks applies to encoder-decoder models"):
        PartialFreeze({"freeze_decoder_blocks": 1}).wrap(model, _context(model, "bert"))
    model = tiny_captioner(encoder_layers=2, decoder_layers=2)
    with pytest.raises(ValueError, match=r"freeze_decoder_blocks is 3, but this model's decoder"):
        PartialFreeze({"freeze_decoder_blocks": 3}).wrap(model, _context(model, "vision-encoder-decoder"))
    with pytest.raises(Exception, match="freeze_decoder_blocks must be a count"):
        PartialFreezeOptions(freeze_decoder_blocks=True)


def test_plan_of_the_captioning_recipe_says_which_blocks_stay_frozen():
    """recipes/captioning_partial_freeze.yaml: the plan names the encoder's frozen embeddings and first
    two blocks (the trained-module column folds block numbers, so it alone could not say so)."""
    from pathlib import Path

    import adaptkit
    from adaptkit.engine.planning import render_text

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "captioning_partial_freeze.yaml"
    result = adaptkit.plan(recipe)
    (entry,) = result.strategies
    assert entry.frozen == ["encoder.embeddings", "encoder.layers.0-1"]
    assert 0 < entry.trainable < entry.total
    assert "partial_freeze keeps frozen: encoder.embeddings, encoder.layers.0-1" in render_text(result)
