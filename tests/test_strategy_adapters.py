"""The ``adapters`` strategy: bottleneck adapters on forward hooks, removed exactly."""
from __future__ import annotations

import json

import pytest
import torch

from adaptkit.plugin.contract import architecture_signature, model_outputs
from adaptkit.plugin.strategy import WrapContext
from adaptkit.testing import (FAMILIES, check_strategy, perturb_trainable as _perturb_trainable, register_family,
                              sample_batch as _batch, train_steps as _train_steps, unregister_family,
                              wrap_context as _context)
from adaptkit_adapters import AdaptersOptions, BottleneckAdapters
from adaptkit_adapters.model import AdapterModel, find_sites


def tiny_llama():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=3, pad_token_id=0))


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=48, num_labels=3))


@pytest.mark.parametrize("config", ["houlsby", "pfeiffer"])
def test_check_strategy_passes(config):
    report = check_strategy(BottleneckAdapters, {"config": config})
    assert sum("removal - base outputs restored exactly" in line for line in report.passed) == 2


def test_check_strategy_passes_on_llama():
    register_family("llama", tiny_llama, head_modules=["score"], peft_task_type="SEQ_CLS")
    try:
        report = check_strategy(BottleneckAdapters, {"config": "houlsby", "non_linearity": "swish"},
                                families=["llama"])
    finally:
        unregister_family("llama")
    assert any("llama: removal" in line for line in report.passed)


@pytest.mark.parametrize("family, expected", [
    ("bert", {"bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"}),
    ("gpt2", {"transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"}),
])
def test_houlsby_sites_per_family(family, expected):
    base = FAMILIES[family]()
    sites = find_sites(base, family, "houlsby")
    assert len(sites) == 4 and expected <= set(sites) and set(sites.values()) == {32}
    assert len(find_sites(base, family, "pfeiffer")) == 2


@pytest.mark.parametrize("model_type", ["llama", "an-unknown-family"])
def test_sites_found_without_the_family_table(model_type):
    sites = find_sites(tiny_llama(), model_type, "houlsby")
    assert set(sites) == {f"model.layers.{i}.{m}" for i in (0, 1) for m in ("self_attn.o_proj", "mlp.down_proj")}


def test_heuristic_agrees_with_the_table_for_bert_gpt2_vit():
    for family, build in [("bert", FAMILIES["bert"]), ("gpt2", FAMILIES["gpt2"]), ("vit", tiny_vit)]:
        model = build()
        assert find_sites(model, "unknown", "houlsby") == find_sites(model, family, "houlsby"), family


def test_new_adapters_are_exactly_the_identity_and_base_is_untouched():
    torch.manual_seed(0)
    base = FAMILIES["bert"]().eval()
    signature = architecture_signature(base)
    before = model_outputs(base, _batch(7))
    model = BottleneckAdapters({"config": "houlsby"}).wrap(base, _context(base, "bert"))
    assert isinstance(model, AdapterModel)
    assert architecture_signature(model.base) == signature  # nothing inserted into the base tree
    assert torch.equal(model_outputs(model, _batch(7)), before)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapters", "base"}
    assert all(n.startswith(("adapters.", "base.classifier.")) for n, p in model.named_parameters()
               if p.requires_grad)


def test_hooks_change_outputs_and_unwrap_removes_them():
    torch.manual_seed(0)
    base = FAMILIES["gpt2"]().eval()
    before = model_outputs(base, _batch(7))
    strategy = BottleneckAdapters({"config": "houlsby", "train_head": False})
    model = strategy.wrap(base, _context(base, "gpt2"))
    _perturb_trainable(model, [])
    assert not torch.equal(model_outputs(model, _batch(7)), before)
    assert not any(p.requires_grad for p in model.base.parameters())
    restored = strategy.unwrap(model)
    assert restored is base
    assert all(not m._forward_hooks for m in restored.modules())
    assert torch.equal(model_outputs(restored, _batch(7)), before)


def test_export_folder_and_reload(tmp_path):
    torch.manual_seed(0)
    base = FAMILIES["bert"]().eval()
    strategy = BottleneckAdapters({"config": "pfeiffer", "reduction_factor": 8, "non_linearity": "tanh"})
    model = strategy.wrap(base, _context(base, "bert"))
    _train_steps(strategy, model)
    expected = model_outputs(model, _batch(7))
    folder = strategy.save(model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapters.safetensors",
                                                         "head.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["config"] == "pfeiffer" and config["non_linearity"] == "tanh"
    assert [s["module"] for s in config["sites"]] == ["bert.encoder.layer.0.output.dense",
                                                     "bert.encoder.layer.1.output.dense"]
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapters.safetensors"))
    assert weights["bert__encoder__layer__0__output__dense.down.weight"].shape == (4, 32)
    torch.manual_seed(0)  # the same pretrained base, freshly built: head and adapters come from the folder
    fresh = FAMILIES["bert"]().eval()
    assert not torch.equal(model_outputs(fresh, _batch(7)), expected)
    reloaded = BottleneckAdapters().load(fresh, folder)  # options come from the folder, not the instance
    torch.testing.assert_close(model_outputs(reloaded, _batch(7)), expected, atol=1e-6, rtol=1e-6)


def test_vit_adapters_hook_and_remove_exactly():
    torch.manual_seed(0)
    base = tiny_vit().eval()
    pixels = {"pixel_values": torch.randn(2, 3, 16, 16)}
    before = model_outputs(base, pixels)
    strategy = BottleneckAdapters({"config": "houlsby"})
    model = strategy.wrap(base, WrapContext("vit", "image_classification", ["classifier"]))
    assert len(model.adapters) == 4
    _perturb_trainable(model, ["classifier"])
    assert not torch.equal(model_outputs(model, pixels), before)
    assert torch.equal(model_outputs(strategy.unwrap(model), pixels), before)


def test_bad_site_name_is_a_clear_error():
    base = FAMILIES["bert"]()
    with pytest.raises(ValueError, match="ffn_output 'mlp.nope' is not a module of block 0"):
        BottleneckAdapters({"ffn_output": "mlp.nope"}).wrap(base, _context(base, "bert"))


def test_options_are_validated():
    with pytest.raises(Exception, match="houlsby"):
        AdaptersOptions(config="lora")
    with pytest.raises(Exception, match="swish"):
        AdaptersOptions(non_linearity="sigmoid")
    with pytest.raises(Exception, match="greater than 0"):
        AdaptersOptions(reduction_factor=0)


def test_bottleneck_size_follows_reduction_factor():
    base = FAMILIES["bert"]()
    model = BottleneckAdapters({"reduction_factor": 4}).wrap(base, _context(base, "bert"))
    adapter = next(iter(model.adapters.values()))
    assert adapter.down.out_features == 8 and adapter.up.in_features == 8


def test_adaptkit_run_writes_and_reloads_the_adapter_folder(tmp_path):
    import adaptkit
    from conftest import tiny_recipe_dict

    recipe = tiny_recipe_dict(tmp_path, "adapters", training={"epochs": 1})
    recipe["strategy"]["config"] = "houlsby"
    result = adaptkit.run(recipe, progress=False)
    folder = result.output_dir / "adapter"
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapters.safetensors", "head.safetensors"} <= names
    assert {name for name in names - {"adapter_config.json", "adapters.safetensors", "head.safetensors"}
            if not name.startswith(("tokenizer", "special_tokens", "vocab"))} == set()  # the rest: the tokenizer
    assert any(line.startswith("signature") for line in result.metrics["contract"])
    rows = adaptkit.load(result.output_dir).predict([{"text": "the film was great"}, {"text": "awful plot"}])
    assert len(rows) == 2 and all(row["label"] in {"0", "1"} for row in rows)
