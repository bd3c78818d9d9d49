"""The ``qlora`` strategy: a 4-bit bitsandbytes base (on CPU) with LoRA on top."""
from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from transformers.pytorch_utils import Conv1D

import adaptkit
from adaptkit.plugin.contract import architecture_signature, model_outputs
from adaptkit.testing import (FAMILIES, sample_batch as _batch, wrap_context as _context,
                              train_steps as _train_steps, check_strategy)
from adaptkit_lora import LoraOptions
from adaptkit_qlora import MERGE_TOLERANCE, QLora, QLoraOptions


def _wrapped(family: str, options=None):
    torch.manual_seed(0)
    base = FAMILIES[family]()
    strategy = QLora(options)
    return strategy, strategy.wrap(base, _context(base, family))


def test_check_strategy_passes():
    report = check_strategy(QLora)
    assert sum("equivalence" in line for line in report.passed) == 2


def test_check_strategy_passes_with_fp4_and_dora():
    check_strategy(QLora, {"quant_type": "fp4", "use_dora": True, "double_quant": False}, families=["bert"])


def test_options_extend_lora_options():
    """qlora takes every lora option with lora's default: both subclass adaptkit.LowRankOptions
    (the shared public block), so neither plugin imports the other."""
    assert issubclass(QLoraOptions, adaptkit.LowRankOptions) and issubclass(LoraOptions, adaptkit.LowRankOptions)
    qlora = QLoraOptions.model_fields
    assert LoraOptions.model_fields and all(name in qlora and qlora[name].default == field.default
                                            for name, field in LoraOptions.model_fields.items())
    assert QLoraOptions().quant_type == "nf4" and QLoraOptions().double_quant is True
    with pytest.raises(ValueError):
        QLoraOptions(quant_type="int4")
    with pytest.raises(ValueError):
        QLoraOptions(compute_dtype="float64")


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_linear_layers_are_4bit_and_the_head_is_not(family):
    _, model = _wrapped(family)
    base = model.get_base_model()
    quantized = [n for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized
    plain = [n for n, m in base.named_modules() if type(m) in (torch.nn.Linear, Conv1D) and ".lora_" not in n]
    head = "classifier" if family == "bert" else "score"
    # the only full-precision linear layers left are the head (its trained copy and the original)
    assert plain and all(n.startswith(head + ".") for n in plain), plain
    weight = base.get_submodule(quantized[0]).weight
    assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4"
    assert any(isinstance(m, bnb.nn.Embedding4bit) for m in base.modules())


def test_skip_modules_stay_in_full_precision():
    _, model = _wrapped("bert", {"skip_modules": ["pooler", "layer.1.output.dense"]})
    base = model.get_base_model()
    assert type(base.bert.pooler.dense.base_layer) is torch.nn.Linear  # "dense" is a LoRA target too
    assert isinstance(base.bert.encoder.layer[1].output.dense.base_layer, torch.nn.Linear)
    assert not isinstance(base.bert.encoder.layer[1].output.dense.base_layer, bnb.nn.Linear4bit)
    assert isinstance(base.bert.encoder.layer[0].output.dense.base_layer, bnb.nn.Linear4bit)


def test_4bit_weights_and_scales_bit_identical_after_training():
    strategy, model = _wrapped("bert")
    layers = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Embedding4bit))]
    before = [(m.weight.data.clone(), m.weight.quant_state.absmax.clone()) for m in layers]
    _train_steps(strategy, model)
    model_outputs(model, _batch(7))  # an eval forward too (bitsandbytes may repack CPU weights there)
    for layer, (weight, absmax) in zip(layers, before):
        assert torch.equal(layer.weight.data, weight)
        assert torch.equal(layer.weight.quant_state.absmax, absmax)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_unwrap_dequantizes_to_the_base_classes_and_dtype(family):
    torch.manual_seed(0)
    base = FAMILIES[family]()
    signature = architecture_signature(base)
    strategy = QLora()
    model = strategy.wrap(base, _context(base, family))
    _train_steps(strategy, model)
    merged = strategy.unwrap(model)
    assert architecture_signature(merged) == signature
    assert all(p.dtype == torch.float32 for p in merged.parameters())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_merge_tolerance_follows_compute_dtype(dtype):
    strategy, model = _wrapped("bert", {"compute_dtype": dtype})
    assert strategy.merge_tolerance == MERGE_TOLERANCE[dtype] > QLora.merge_tolerance
    _train_steps(strategy, model)
    wrapped = model_outputs(model, _batch(7))
    merged = model_outputs(strategy.unwrap(model), _batch(7))
    worst = (wrapped - merged).abs().max().item()
    assert 0 < worst <= strategy.merge_tolerance


def test_load_reproduces_the_wrapped_outputs_exactly(tmp_path):
    strategy, model = _wrapped("gpt2", {"train_head": True})
    _train_steps(strategy, model)
    wrapped = model_outputs(model, _batch(7))
    strategy.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    torch.manual_seed(0)
    reloaded = QLora().load(FAMILIES["gpt2"](), tmp_path / "adapter")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules())
    assert torch.equal(model_outputs(reloaded, _batch(7)), wrapped)


def test_run_end_to_end_enforces_the_contract(tiny_recipe):
    result = adaptkit.run(tiny_recipe("qlora", training={"epochs": 1}), progress=False)
    assert result.metrics["strategy"] == "qlora"
    assert any(line.startswith("equivalence") for line in result.metrics["contract"])
    assert (result.output_dir / "adapter" / "adapter_config.json").exists()


def test_frozen_head_stays_full_precision_through_save_and_load():
    """With train_head off the head is still kept out of quantization, in wrap and in load."""
    report = check_strategy(QLora, {"train_head": False}, families=["bert"])
    assert any("export" in line for line in report.passed)


def _pretrained_qlora(tmp_path, **training):
    """A recipe that trains qlora on a tiny pretrained BERT folder (so from_pretrained runs)."""
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import MINILM, TINY_BERT, tiny_recipe_dict

    settings = {**{k: v for k, v in TINY_BERT.items() if k != "model_type"}, "hidden_size": 64,
                "intermediate_size": 128}
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**settings, vocab_size=30522)).save_pretrained(tmp_path / "tiny")
    return tiny_recipe_dict(tmp_path, "qlora", model={"name": str(tmp_path / "tiny"), "tokenizer": MINILM,
                                                      "config": None},
                            training={"epochs": 1, "max_steps": 3, **training},
                            output={"dir": str(tmp_path / "run"), "merge": True})


def test_pretrained_base_is_loaded_directly_in_4bit(tmp_path):
    from adaptkit.recipe.schema import Recipe
    from adaptkit.engine.session import Session

    session = Session(Recipe.from_dict(_pretrained_qlora(tmp_path)), log=lambda _: None)
    base = session.build_base()
    quantization = base.config.quantization_config  # from_pretrained got a BitsAndBytesConfig
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant and quantization.llm_int8_skip_modules == ["classifier"]
    query = base.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, bnb.nn.Linear4bit) and query.weight.dtype == torch.uint8  # before any wrap
    assert type(base.classifier) is torch.nn.Linear and base.classifier.weight.dtype == torch.float32
    # the same bytes as quantizing the float32 layer in place (what a base loaded without the
    # strategy's arguments gets in QLora.load), so exports reload onto either
    from transformers import AutoModelForSequenceClassification

    from adaptkit_qlora import quantize_model

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny", num_labels=2)
    quantize_model(plain, QLoraOptions(), ["classifier"])
    again = plain.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(again.data, query.weight.data)
    assert torch.equal(again.quant_state.absmax, query.weight.quant_state.absmax)


def test_run_on_a_4bit_loaded_base_keeps_the_contract_and_exports_a_plain_merged_model(tmp_path):
    import json

    result = adaptkit.run(_pretrained_qlora(tmp_path), progress=False)
    contract = " ".join(result.metrics["contract"])
    assert "signature: unwrapped model has exactly the base architecture" in contract
    assert "equivalence" in contract and "export: adapter/ reloads" in contract
    merged = json.loads((result.output_dir / "model" / "config.json").read_text())
    assert "quantization_config" not in merged  # the merged model is full precision, loads without bitsandbytes
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "model")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def _tiny_gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)).eval()


def test_tied_embeddings_stay_one_full_precision_tensor_through_wrap_and_merge():
    """Before: with quantize_embeddings (the default) GPT-2's wte went 4-bit while the tied lm_head was
    kept, and the merged model came out untied (a second 64x32 matrix, tie_word_embeddings false)."""
    from adaptkit.plugin.contract import check_signature

    base = _tiny_gpt2_lm()
    signature = architecture_signature(base)
    assert signature.shared == (("transformer.wte.weight", "lm_head.weight"),)
    strategy = QLora()
    context = adaptkit.WrapContext(model_type="gpt2", task="causal_lm", head_modules=[], peft_task_type="CAUSAL_LM")
    model = strategy.wrap(base, context)
    inner = model.get_base_model()
    assert type(inner.transformer.wte) is torch.nn.Embedding and inner.lm_head.weight is inner.transformer.wte.weight
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in inner.modules())  # the blocks are still 4-bit
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):  # the LoRA factors move, so the merge is a real one
        ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = strategy.unwrap(model)
    assert merged.lm_head.weight is merged.transformer.wte.weight
    check_signature("qlora", signature, architecture_signature(merged))


def test_the_contract_refuses_a_model_whose_tied_weights_came_apart():
    from adaptkit.plugin.contract import check_signature

    base = _tiny_gpt2_lm()
    untied = _tiny_gpt2_lm()
    untied.lm_head.weight = torch.nn.Parameter(untied.transformer.wte.weight.detach().clone())
    with pytest.raises(adaptkit.ContractViolation, match="'transformer.wte.weight' and 'lm_head.weight' are one "
                                                         "tensor .tied weights. in the base model"):
        check_signature("qlora", architecture_signature(base), architecture_signature(untied))
