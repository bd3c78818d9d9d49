"""Knobs a large model needs (issue 15): load dtype, attention kernel, device map, gradient
checkpointing and the optimizer, each shown to have its effect on a tiny CPU model."""
from __future__ import annotations

import pytest
import torch

import adaptkit
from adaptkit.errors import RecipeError
from adaptkit.recipe.schema import Recipe
from adaptkit.engine.session import Session
from conftest import MINILM, TINY_BERT


def _session(tiny_recipe, strategy="lora", **sections) -> Session:
    return Session(Recipe.from_dict(tiny_recipe(strategy, **sections)), log=lambda _: None)


@pytest.fixture
def tiny_folder(tmp_path):
    """A tiny pretrained BERT saved as a transformers folder (safetensors, fp32)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}, vocab_size=30522)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _pretrained(tiny_recipe, folder, **model):
    return {"model": {"name": str(folder), "tokenizer": MINILM, "config": None, **model}}


# ------------------------------------------------------------------------------------ model.dtype

@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             ("fp32", torch.float32)])
def test_dtype_loads_pretrained_weights_in_that_dtype(tiny_recipe, tiny_folder, dtype, expected):
    base = _session(tiny_recipe, **_pretrained(tiny_recipe, tiny_folder, dtype=dtype)).build_base()
    assert {p.dtype for p in base.parameters()} == {expected}


def test_dtype_builds_a_config_model_in_that_dtype_and_auto_follows_the_checkpoint(tiny_recipe, tiny_folder):
    base = _session(tiny_recipe, model={"dtype": "bf16"}).build_base()
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # the build does not leak its dtype
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tiny_folder).to(torch.bfloat16).save_pretrained(tiny_folder)
    auto = _session(tiny_recipe, **_pretrained(tiny_recipe, tiny_folder, dtype="auto")).build_base()
    assert {p.dtype for p in auto.parameters()} == {torch.bfloat16}


def test_lora_run_on_a_bf16_base_passes_its_contract(tiny_recipe, tmp_path):
    """The merge into bf16 weights rounds (1.2e-4 here, over lora's 1e-4): the tolerance follows the base dtype."""
    result = adaptkit.run(tiny_recipe("lora", model={"dtype": "bf16"}, training={"epochs": 1}), progress=False)
    assert result.metrics["steps"] == 6
    assert any(line.startswith("equivalence") for line in result.metrics["contract"])


def test_dtype_rejects_unknown_names(tiny_recipe):
    with pytest.raises(RecipeError, match="dtype"):
        Recipe.from_dict(tiny_recipe(model={"dtype": "float64"}))


# ------------------------------------------------------------------------ model.attn_implementation

@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_model_config(tiny_recipe, tiny_folder, kernel):
    pretrained = _session(tiny_recipe, **_pretrained(tiny_recipe, tiny_folder, attn_implementation=kernel))
    assert pretrained.build_base().config._attn_implementation == kernel
    built = _session(tiny_recipe, model={"attn_implementation": kernel}).build_base()
    assert built.config._attn_implementation == kernel


def test_flash_attention_is_refused_at_validate_when_flash_attn_is_missing(tiny_recipe, tmp_path):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(RecipeError, match="model.attn_implementation.*flash-attn package, which is not installed"):
        Recipe.from_dict(tiny_recipe(model={"attn_implementation": "flash_attention_2"}))


# --------------------------------------------------------------------------------- model.device_map

def test_device_map_reaches_from_pretrained(tiny_recipe, tiny_folder, monkeypatch):
    """With one CPU there is nothing to spread over: what can be shown is that the map reaches
    transformers (which then places each module as it loads) and the model still loads and runs."""
    from transformers import AutoModelForSequenceClassification

    seen = {}
    real = AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    mapping = {"bert": "cpu", "classifier": "cpu"}
    base = _session(tiny_recipe, **_pretrained(tiny_recipe, tiny_folder, device_map=mapping)).build_base()
    assert seen["device_map"] == mapping
    assert base(input_ids=torch.tensor([[101, 2204, 102]])).logits.shape == (1, 2)


def test_device_map_is_refused_with_several_processes(tiny_recipe, tiny_folder, monkeypatch):
    session = _session(tiny_recipe, **_pretrained(tiny_recipe, tiny_folder, device_map="auto"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match="model.device_map.*single process, and this run has 2 processes"):
        session.build_base()


def test_device_map_is_refused_by_plan_under_a_distributed_section(tiny_recipe, tiny_folder):
    from adaptkit.engine.planning import plan

    recipe = Recipe.from_dict(tiny_recipe(**_pretrained(tiny_recipe, tiny_folder, device_map="auto"),
                                          distributed={"backend": "fsdp"}))
    with pytest.raises(RecipeError, match="model.device_map"):
        plan(recipe)


def test_device_map_beside_a_distributed_section_is_one_rule_for_plan_and_run(tiny_recipe, tiny_folder, monkeypatch):
    """Issue 23 item 1: models.check_device_map owns the rule; plan used to refuse a distributed section
    beside device_map while a run launched on one process built the model anyway."""
    from adaptkit.engine.models import check_device_map

    sections = {**_pretrained(tiny_recipe, tiny_folder, device_map="auto"), "distributed": {"backend": "ddp"}}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RecipeError, match=r"model.device_map.*cannot be combined with the distributed section \(ddp"):
        _session(tiny_recipe, **sections).build_base()
    with pytest.raises(RecipeError, match="cannot be combined with the distributed section"):
        check_device_map(Recipe.from_dict(tiny_recipe(**sections)))
    check_device_map(Recipe.from_dict(tiny_recipe(**_pretrained(tiny_recipe, tiny_folder, device_map="auto"))))


def test_device_map_is_refused_for_a_config_model(tiny_recipe):
    with pytest.raises(RecipeError, match="device_map places pretrained weights"):
        Recipe.from_dict(tiny_recipe(model={"device_map": "auto"}))


# ------------------------------------------------------------------------ gradient checkpointing

def _saved_bytes_and_grads(model, batch) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes autograd saves for backward during one forward (a saved-tensors hook counts them), and
    the gradients of the trainable parameters after backward."""
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return saved, grads


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_gradient_checkpointing_saves_less_for_backward_and_gives_the_same_gradients(tiny_recipe, strategy):
    from adaptkit.engine.models import enable_gradient_checkpointing
    from adaptkit.engine.session import wrap_checked
    from adaptkit.plugin.strategy import WrapContext

    config = {**TINY_BERT, "num_hidden_layers": 4, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    recipe = tiny_recipe(strategy, model={"config": config})
    if strategy == "lora":
        recipe["strategy"]["dropout"] = 0.0
    session = Session(Recipe.from_dict(recipe), log=lambda _: None)
    base = session.build_base()
    context = WrapContext(model_type="bert", task=session.task.name, head_modules=session.task.head_modules(base),
                          peft_task_type=session.task.peft_task_type)
    model = wrap_checked(session.strategy_cls(session.recipe.strategy_options), base, context)
    batch = session.task.collate(session.tokenizer)([session.train_data[i] for i in range(16)])
    plain, plain_grads = _saved_bytes_and_grads(model, batch)
    enable_gradient_checkpointing(model)
    checkpointed, grads = _saved_bytes_and_grads(model, batch)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)
    assert grads.keys() == plain_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6)
    # PEFT adapters inside checkpointed blocks still get gradients (lora_A's are 0 at step 1: B starts at 0)
    inside = [g for n, g in grads.items() if ".layer." in n and "lora_A" not in n]
    assert inside and all(g.abs().sum() > 0 for g in inside)


def test_gradient_checkpointing_run_trains_lora_to_the_same_loss(tiny_recipe, tmp_path):
    settings = {"epochs": 1, "max_steps": 3}
    results = []
    for name, extra in (("a", {}), ("b", {"gradient_checkpointing": True})):
        recipe = tiny_recipe("lora", training={**settings, **extra}, output={"dir": str(tmp_path / name)})
        recipe["strategy"]["dropout"] = 0.0
        results.append(adaptkit.run(recipe, progress=False))
    plain, checkpointed = results
    assert checkpointed.metrics["steps"] == 3
    assert checkpointed.eval["loss"] == pytest.approx(plain.eval["loss"], rel=1e-4)


# ------------------------------------------------------------------------------- training.optimizer

def _state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v))


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizer_state_is_about_a_quarter_of_adamw(name):
    from adaptkit.engine.train import make_optimizer

    torch.manual_seed(0)
    sizes = {}
    for which in ("adamw_torch", name):
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
        optimizer = make_optimizer(which, [{"params": list(model.parameters())}], 1e-3)
        model(torch.randn(4, 256)).sum().backward()
        optimizer.step()
        sizes[which] = _state_bytes(optimizer)
    ratio = sizes[name] / sizes["adamw_torch"]
    assert 0.24 < ratio < 0.30, sizes  # 2 x 1 byte per value + block scales, against 2 x 4 bytes


def test_fused_adamw_takes_the_same_steps_as_adamw():
    from adaptkit.engine.train import make_optimizer

    results = []
    for which in ("adamw_torch", "adamw_torch_fused"):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 4)
        optimizer = make_optimizer(which, [{"params": list(model.parameters()), "weight_decay": 0.01}], 1e-2)
        assert optimizer.defaults.get("fused") is (True if which.endswith("fused") else None)
        for _ in range(3):
            model(torch.randn(8, 16)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        results.append(model.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_run_with_the_8bit_optimizer(tiny_recipe):
    result = adaptkit.run(tiny_recipe("full", training={"epochs": 1, "max_steps": 2, "optimizer": "adamw_8bit"}),
                          progress=False)
    assert result.metrics["steps"] == 2


def test_8bit_optimizer_refused_at_validate_without_bitsandbytes(tiny_recipe, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(RecipeError, match="training.optimizer.*bitsandbytes' optimizer, which is not installed"):
        Recipe.from_dict(tiny_recipe(training={"optimizer": "adamw_8bit"}))
    with pytest.raises(RecipeError, match="optimizer"):
        Recipe.from_dict(tiny_recipe(training={"optimizer": "sgd"}))
