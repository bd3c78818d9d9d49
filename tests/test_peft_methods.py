"""Every peft method as a strategy (plugins/adaptkit_peft_methods): generated from peft's registry,
options from its config classes, the conformance kit on tiny BERT, Llama and ViT models, or a
refusal at wrap with peft's own reason."""
from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch

import adaptkit
from adaptkit import PreflightError, WrapContext
from adaptkit.plugin.contract import (FrozenWeights, architecture_signature, check_close, check_signature,
                                      check_wrapped, head_shapes, model_outputs, reload_export)
from adaptkit.testing import (NUM_LABELS, VOCAB, check_strategy, register_family, sample_batch, strategy_checks,
                              unregister_family)
from adaptkit_peft_methods import strategies
from adaptkit_peft_methods.catalog import peft_methods, peft_version
from adaptkit_peft_methods.methods import SKIPPED

# (method, family) -> what the refusal must say: peft's own reason where peft gives one.
REFUSED = {
    ("adaption_prompt", "bert"): "peft says: Unsupported model type for adaption prompt: 'bert'",
    ("adaption_prompt", "vit"): "peft says: Unsupported model type for adaption prompt: 'vit'",
    ("beft", "llama"): "cannot merge into this llama model: peft says: Base layer has no bias",
    ("shadow", "vit"): "its input is pixel_values, not token ids",
    ("trainable_tokens", "vit"): "its input is pixel_values, not token ids",
    ("p_tuning", "vit"): "its input is pixel_values, not token ids",
    ("prefix_tuning", "bert"): "Model does not support past key values.*huggingface/peft#1962",
    ("prefix_tuning", "llama"): "Model does not support past key values.*huggingface/peft#1962",
    ("prefix_tuning", "vit"): "Model does not support past key values",
}

STRATEGIES = strategies()
FAMILIES = ("bert", "llama", "vit")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=64, num_labels=NUM_LABELS, pad_token_id=0))


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                               num_labels=NUM_LABELS))


def tiny_llama_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                        pad_token_id=0))


def image_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(4, 3, 16, 16, generator=generator),
            "labels": torch.randint(0, NUM_LABELS, (4,), generator=generator)}


def lm_batch(seed: int) -> dict[str, torch.Tensor]:
    batch = sample_batch(seed)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


@pytest.fixture(scope="module", autouse=True)
def llama_family():
    register_family("llama", tiny_llama, head_modules=["score"], peft_task_type="SEQ_CLS", replace=True)
    yield
    unregister_family("llama")


def trial(cls, options, build, batch, heads, peft_type, model_type, export=True):
    """The kit's checks, for a model the kit cannot feed (an image model, a language model): wrap keeps
    the head, frozen weights stay bit-identical over real steps (``after_step`` called), training changes
    the outputs, the export reloads with plain peft to the same outputs, and unwrap gives the base
    signature with merged outputs equal (mergeable) or the base outputs exactly (removal)."""
    torch.manual_seed(0)
    base = build().eval()
    probe = batch(7)
    signature, before = architecture_signature(base), model_outputs(base, probe)
    torch.manual_seed(0)
    model = build().eval()
    strategy = cls(options)
    context = WrapContext(model_type=model_type, task="t", head_modules=list(heads), peft_task_type=peft_type)
    wrapped = strategy.wrap(model, context)
    check_wrapped(cls, wrapped, head_shapes(base, heads))
    frozen = FrozenWeights.snapshot(wrapped)
    optimizer = torch.optim.AdamW([g for g in strategy.parameter_groups(wrapped, 1e-2, 0.0) if g["params"]], lr=1e-2)
    wrapped.train()
    for step in range(2):
        wrapped(**batch(100 + step)).loss.backward()
        optimizer.step()
        strategy.after_step(wrapped, step)
        optimizer.zero_grad()
    frozen.verify(cls, wrapped)
    trained = model_outputs(wrapped, probe)
    assert not torch.equal(trained, before), "training changed nothing"
    if export:
        with tempfile.TemporaryDirectory() as tmp:
            strategy.save(wrapped, Path(tmp) / "export")
            reloaded, how = reload_export(strategy, Path(tmp) / "export", lambda: (torch.manual_seed(0), build())[1],
                                          type(base))
            check_close(cls, "export", trained, model_outputs(reloaded, probe), 1e-4, f"export reloaded with {how}")
    unwrapped = strategy.unwrap(wrapped)
    check_signature(cls, signature, architecture_signature(unwrapped), heads)
    if cls.mergeable:
        check_close(cls, "equivalence", trained, model_outputs(unwrapped, probe), cls.merge_tolerance, "merged")
    return unwrapped


def run_family(name, family):
    """Every check of the kit on llama (export included); on bert and vit every check but the export (it
    is the slowest, and the export path does not depend on the family): the matrix stays near 20 s."""
    cls = STRATEGIES[name]
    options = cls.conformance_options  # what the kit uses for tiny models (c3a's block of 8, ...)
    if family == "vit":
        return trial(cls, options, tiny_vit, image_batch, ["classifier"], None, "vit", export=False)
    if family == "llama":
        return check_strategy(cls, options, families=[family])
    for check_name, check in strategy_checks(cls, options, families=[family]):
        if check.rule != "export":
            check()


# Llama runs every check of the kit and is the quick loop (-m "not slow", ~15 s); BERT and ViT double
# the matrix's time and are marked slow (they still run in CI, like every slow test).
CASES = [pytest.param(name, family, id=f"{name}-{family}",
                      marks=() if family == "llama" or (name, family) in REFUSED else pytest.mark.slow)
         for name in sorted(STRATEGIES) for family in FAMILIES]


@pytest.mark.parametrize("name, family", CASES)
def test_method_keeps_the_contract_or_is_refused_with_peft_reason(name, family):
    expected = REFUSED.get((name, family))
    if expected is None:
        run_family(name, family)
        return
    with pytest.raises((PreflightError, adaptkit.ContractViolation)) as caught:
        run_family(name, family)
    text = str(caught.value)
    assert f"strategy {name!r}" in text and re.search(expected, text, re.S), text


def test_prefix_tuning_runs_on_a_causal_language_model():
    """The transformers 5 clash is with classifiers only: on a causal LM prefix tuning trains, exports to
    plain peft and is removed exactly."""
    unwrapped = trial(STRATEGIES["prefix_tuning"], {"num_virtual_tokens": 4}, tiny_llama_lm, lm_batch, [],
                      "CAUSAL_LM", "llama")
    assert type(unwrapped).__name__ == "LlamaForCausalLM"
    assert STRATEGIES["prefix_tuning"]({"num_virtual_tokens": 4}).positions_added() == 4


def test_the_catalog_is_peft_registry_read_without_importing_it():
    """What the catalog read from peft's source is what importing peft gives: the same methods, fields,
    defaults (literals), help texts, prompt-learning kind; mergeable where some layer implements merge."""
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    registry = {kind.value.lower(): cls for kind, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    catalog = peft_methods()
    assert set(catalog) == set(registry)
    for name, method in catalog.items():
        real = {f.name: f for f in dataclasses.fields(registry[name])}
        assert method.field_names() == set(real), name
        for item in method.fields:
            field = real[item.name]
            default = (field.default if field.default is not dataclasses.MISSING else
                       field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
            literal = type(default) in (type(None), bool, int, float, str, list, dict, tuple)  # not an Enum
            if literal:
                assert item.default == default, (name, item.name)
            assert item.help == " ".join(str(field.metadata.get("help", "")).split()), (name, item.name)
        assert method.prompt_learning == issubclass(registry[name], PromptLearningConfig), name
    # Lily's merge only raises; Shadow, Poly and adaption prompt define none; LoHa's comes from LycorisLayer
    assert [n for n in ("lily", "shadow", "poly", "adaption_prompt") if catalog[n].mergeable] == []
    assert all(catalog[n].mergeable for n in ("loha", "lokr", "vera", "adalora", "oft", "ln_tuning"))


def test_every_peft_method_is_a_strategy_or_skipped_for_a_reason():
    catalog = peft_methods()
    registered = adaptkit.list_strategies()
    for name, method in catalog.items():
        if name in SKIPPED:
            assert name not in STRATEGIES
        elif not method.prompt_learning or name in ("prefix_tuning", "p_tuning"):
            assert registered[name] is STRATEGIES[name], name
    assert {"loha", "lokr", "oft", "boft", "vera", "fourierft", "adalora", "hra", "miss", "c3a", "randlora",
            "shira", "ln_tuning", "trainable_tokens"} <= set(STRATEGIES)
    assert registered["lora"] is not STRATEGIES.get("lora")  # adaptkit's own lora is untouched
    assert STRATEGIES["loha"].upstream == f"peft {peft_version()}"


def test_options_come_from_the_config_class():
    options = STRATEGIES["loha"].Options
    schema = options.model_json_schema()
    assert schema["properties"]["r"]["default"] == 8
    assert "rank" in schema["properties"]["r"]["description"].lower()
    assert "task_type" not in schema["properties"] and "modules_to_save" not in schema["properties"]
    assert schema["properties"]["train_head"]["default"] is True
    assert options(r=4).r == 4
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        options(rank=4)
    with pytest.raises(ValueError, match="r\n.*integer"):
        options(r="four")
    with pytest.raises(ValueError, match="needs token_indices"):
        STRATEGIES["trainable_tokens"].Options()
    assert STRATEGIES["adalora"].Options().total_step is None  # the run's step count fills it (WrapContext.total_steps)


def test_an_unknown_option_in_a_recipe_suggests_the_closest(tmp_path):
    from conftest import tiny_recipe_dict, write_recipe

    recipe = tiny_recipe_dict(tmp_path, strategy="vera")
    recipe["strategy"]["projection_prng_kay"] = 1
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    with pytest.raises(adaptkit.RecipeError, match="did you mean 'projection_prng_key'") as caught:
        adaptkit.load_recipe(path)
    assert "recipe.yaml:" in str(caught.value) and "strategy.projection_prng_kay" in str(caught.value)
    recipe["strategy"].pop("projection_prng_kay")
    recipe["strategy"]["r"] = 4
    assert adaptkit.load_recipe(write_recipe(path, recipe)).strategy.r == 4


def test_plan_refuses_a_method_with_peft_reason(tmp_path):
    from conftest import tiny_recipe_dict

    plan = adaptkit.plan(tiny_recipe_dict(tmp_path, strategy="loha"),
                         strategies=["loha", "ln_tuning", "miss", "shadow"])
    by_name = {entry.strategy: entry for entry in plan.strategies}
    assert by_name["loha"].error is None and by_name["loha"].trainable > 0
    # peft has no LN-tuning targets for BERT: the family's normalisation layers are found by class
    assert by_name["ln_tuning"].error is None and any("LayerNorm" in t for t in by_name["ln_tuning"].touched)
    # MiSS's default rank (64) is wider than the tiny model's 32 inputs: peft's own words
    assert "peft says: `r` (64) must be less than or equal to in_features" in by_name["miss"].error
    # peft's Shadow finds only a layers/h stack; BERT's encoder.layer is given as its default targets
    assert by_name["shadow"].error is None and by_name["shadow"].trainable > 0


def test_adalora_reallocates_ranks_through_after_step():
    """AdaLoRA's budget schedule runs in ``after_step``: after its warm-up, ranks are masked to the target."""
    from adaptkit.testing import build_family, train_steps, wrap_context

    strategy = STRATEGIES["adalora"]({"total_step": 10, "tinit": 1, "tfinal": 1, "deltaT": 1, "init_r": 6,
                                      "target_r": 2})
    model = build_family("bert")
    wrapped = strategy.wrap(model, wrap_context(model, "bert"))
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    for step in range(9):
        wrapped(**sample_batch(step)).loss.backward()
        optimizer.step()
        strategy.after_step(wrapped, step)
        optimizer.zero_grad()
    ranks = [int((module.lora_E["default"] != 0).sum()) for module in wrapped.modules() if hasattr(module, "lora_E")
             and "default" in module.lora_E]
    assert ranks and sum(ranks) < 6 * len(ranks), ranks


def test_plugins_lists_the_methods_with_peft_version(capsys):
    from adaptkit.cli import main

    assert main(["plugins", "--json"]) == 0
    listed = next(p for p in json.loads(capsys.readouterr().out) if "loha" in p["strategies"])
    assert listed["upstream"]["loha"] == f"peft {peft_version()}"
    assert set(STRATEGIES) <= set(listed["strategies"])


def test_a_run_gives_adalora_its_rank_allocation_after_each_step(tmp_path):
    """The training loop calls ``Strategy.after_step``: a real AdaLoRA run ends with ranks masked by its
    budget (peft's rank_pattern in the exported adapter), and keeps the contract. The recipe gives no
    total_step: the run's own count is used (WrapContext.total_steps), here 6, the small-data floor's
    (32 rows at batch 16 is 2 steps an epoch; 1 epoch raised to 3), not the 2 the epochs give."""
    from conftest import sentiment_rows, tiny_recipe_dict, write_table

    recipe = tiny_recipe_dict(tmp_path, strategy="adalora")
    recipe["data"]["train"] = str(write_table(tmp_path / "small.csv", sentiment_rows(32, seed=1)))
    recipe["strategy"].update(tinit=1, tfinal=1, deltaT=1, init_r=6, target_r=2)
    recipe["training"].update(epochs=1, min_steps=6, learning_rate=1e-2)
    result = adaptkit.run(recipe, progress=False)
    config = json.loads((result.output_dir / "adapter" / "adapter_config.json").read_text())
    assert config["total_step"] == result.metrics["steps"] == result.metrics["budget"]["total_steps"] == 6
    kept = [sum(mask) for mask in config["rank_pattern"].values()]
    assert kept and all(k < 6 for k in kept), config["rank_pattern"]
    contract = json.loads((result.output_dir / "metrics.json").read_text())["contract"]
    assert any(line.startswith("equivalence:") for line in contract)


def test_plugins_check_reports_a_refused_family_as_a_refusal_not_a_failure():
    """``adaptkit plugins --check`` runs each strategy with its ``conformance_options``; a method peft
    refuses on a kit family (GPT-2's Conv1D layers for LoHa) passes on the others and names the refusal."""
    from adaptkit.plugin.conformance import check_installed

    results = {r.strategy: r for r in check_installed(["loha", "adalora"])}
    assert results["loha"].passed and re.match(r"[1-9]\d* checks passed", results["loha"].detail)
    assert "refuses gpt2" in results["loha"].detail and "Conv1D" in results["loha"].detail
    assert results["adalora"].passed and "refuses" not in results["adalora"].detail  # total_step from the kit options


def test_a_misspelt_target_is_refused_and_a_layer_kind_peft_knows_is_left_to_it():
    context = WrapContext(model_type="llama", task="t", head_modules=["score"], peft_task_type="SEQ_CLS")
    with pytest.raises(adaptkit.TargetModuleError, match=r"'v_prj' matches no module.*did you mean 'v_proj'"):
        STRATEGIES["loha"]({"target_modules": ["q_proj", "v_prj"]}).wrap(tiny_llama(), context)
    wrapped = STRATEGIES["ln_tuning"]({"target_modules": ["input_layernorm"]}).wrap(tiny_llama(), context)
    tuned = {n.split(".ln_tuning_layers")[0].rsplit(".", 1)[-1] for n, p in wrapped.named_parameters()
             if p.requires_grad and "ln_tuning_layers" in n}
    assert tuned == {"input_layernorm"}  # Llama's RMSNorm: a kind adaptkit's check does not list, peft adapts


def test_c3a_block_size_is_fitted_to_the_model_when_the_recipe_leaves_it_out(tmp_path):
    """peft's default block of 256 does not divide MiniLM's 384: C3A was refused on the shipped model."""
    from adaptkit_peft_methods.strategy import dividing_block
    from conftest import tiny_recipe_dict

    minilm_shaped = torch.nn.ModuleDict({"query": torch.nn.Linear(384, 384), "up": torch.nn.Linear(384, 1536),
                                         "down": torch.nn.Linear(1536, 384), "classifier": torch.nn.Linear(384, 2)})
    assert dividing_block(minilm_shaped, ["classifier"], 256) == 192  # the head's 2 outputs are not adapted
    assert dividing_block(minilm_shaped, [], 256) == 2
    assert dividing_block(torch.nn.ModuleDict({"x": torch.nn.Linear(768, 3072)}), [], 256) == 256  # peft's default fits
    recipe = tiny_recipe_dict(tmp_path, "c3a")  # 32-wide: 256 divides nothing
    assert adaptkit.plan(recipe).strategies[0].error is None
    vblora = adaptkit.plan(tiny_recipe_dict(tmp_path, "vblora")).strategies[0]  # vector_length fitted too
    assert vblora.meta_limited and "vector_length" not in vblora.error  # its init calls .item(): not on meta
    recipe["strategy"]["block_size"] = 3  # the recipe's own value wins, and peft says why it cannot
    with pytest.raises(PreflightError, match="block size should be a factor of the input size"):
        adaptkit.plan(recipe)
