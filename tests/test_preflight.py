"""Pre-flight: what other fine-tuning tools let a user find out hours later, caught before training.

Each test reproduces an anchor failure from another tool's tracker and shows adaptkit's clear
error (exit 2 from the CLI) or correct result.
"""
from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file

import adaptkit
from adaptkit import hookimpl
from adaptkit.engine.checkpoint import checkpoint_root, latest_checkpoint
from adaptkit.cli import main
from adaptkit.errors import AdaptkitError, ContractViolation
from adaptkit.engine.runner import run
from adaptkit.plugin.strategy import WrapContext
from adaptkit.plugin.targets import PreflightError, TargetModuleError
from adaptkit.testing import tiny_bert
from conftest import tiny_recipe_dict, write_recipe

QUIET = {"progress": False, "log": lambda _: None}


def _plan_cli(tmp_path: Path, recipe: dict, capsys, *args: str) -> tuple[int, str, str]:
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    code = main(["plan", str(path), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- 2. target modules

@pytest.mark.parametrize("strategy, options, entry, closest", [
    # peft #1959 / torchtune #1486: one misspelt name beside valid ones is silently ignored by peft
    ("lora", {"target_modules": ["query", "qery", "value"]}, "qery", "query"),
    ("lora", {"target_modules": ["qery"]}, "qery", "query"),  # nothing matches at all
    ("qlora", {"target_modules": ["query", "vlaue"]}, "vlaue", "value"),
    ("ia3", {"target_modules": ["key", "value", "dnse"], "feedforward_modules": ["dnse"]}, "dnse", "dense"),
    ("ia3", {"target_modules": ["key", "value", "dense"], "feedforward_modules": ["output.dens"]},
     "output.dens", "dense"),
])
def test_unmatched_target_modules_are_errors_with_the_closest_name(strategy, options, entry, closest):
    cls = adaptkit.get_strategy(strategy)
    model = tiny_bert()
    context = WrapContext(model_type="bert", task="sequence_classification", head_modules=["classifier"],
                          peft_task_type="SEQ_CLS")
    with pytest.raises(TargetModuleError) as caught:
        cls(options).wrap(model, context)
    message = str(caught.value)
    assert f"entry {entry!r} matches no module of this bert model" in message
    assert f"did you mean {closest!r}?" in message
    assert "names that can be targeted: dense, key" in message and "query" in message
    if len(options["target_modules"]) > 1 and entry in options["target_modules"]:
        assert "peft would silently adapt only those" in message
    assert isinstance(caught.value, AdaptkitError) and caught.value.exit_code == 2


def test_a_regex_that_matches_nothing_and_the_head_are_named(tmp_path):
    context = WrapContext(model_type="bert", task="sequence_classification", head_modules=["classifier"],
                          peft_task_type="SEQ_CLS")
    Lora = adaptkit.get_strategy("lora")
    with pytest.raises(TargetModuleError, match=r"regex '\.\*qery' matches no module.*whole qualified name"):
        Lora({"target_modules": ".*qery"}).wrap(tiny_bert(), context)
    with pytest.raises(TargetModuleError, match="'classifier'.*it is the task head"):
        Lora({"target_modules": ["query", "classifier"]}).wrap(tiny_bert(), context)
    # valid names (and a valid regex) still wrap
    assert Lora({"target_modules": r".*attention\.self\.query"}).wrap(tiny_bert(), context) is not None
    assert Lora({"target_modules": ["query", "value"]}).wrap(tiny_bert(), context) is not None


def test_a_misspelt_target_stops_plan_and_run_before_training(tiny_recipe, tmp_path, capsys):
    recipe = tiny_recipe("lora")
    recipe["strategy"]["target_modules"] = ["query", "qery"]
    code, out, err = _plan_cli(tmp_path, recipe, capsys)
    assert code == 2
    assert "error: strategy 'lora': target_modules entry 'qery' matches no module" in err
    assert "did you mean 'query'?" in err
    with pytest.raises(TargetModuleError, match="did you mean 'query'"):
        run(recipe, **QUIET)
    assert not Path(recipe["output"]["dir"]).exists()
    assert not checkpoint_root(Path(recipe["output"]["dir"])).exists(), "nothing was trained"


# ---------------------------------------------------------------------------- 1. combinations

def test_qlora_without_bitsandbytes_is_refused_with_the_install_command(tiny_recipe, tmp_path, capsys,
                                                                        monkeypatch):
    import adaptkit_qlora.strategy as adaptkit_qlora  # where QLora looks it up

    monkeypatch.setattr(adaptkit_qlora, "bitsandbytes_available", lambda: False)
    code, out, err = _plan_cli(tmp_path, tiny_recipe("qlora"), capsys)
    assert code == 2
    assert "strategy 'qlora' needs bitsandbytes" in err and "pip install bitsandbytes" in err
    # planned beside others, the refused strategy is one row of the table, not the end of the plan
    code, out, err = _plan_cli(tmp_path, tiny_recipe("lora"), capsys, "--strategies", "lora,qlora")
    assert code == 0 and "needs bitsandbytes" in out and "7,746" in out


def test_qlora_with_fsdp_is_refused(tiny_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # the plan's lines follow the terminal: wide enough for one line each
    recipe = tiny_recipe("qlora", distributed={"backend": "fsdp"})
    code, out, err = _plan_cli(tmp_path, recipe, capsys)
    assert code == 2
    assert "strategy 'qlora' cannot run with distributed setting 'fsdp" in err and "Use DDP" in err
    with pytest.raises(PreflightError, match="FSDP"):
        run(recipe, **QUIET)
    # lora with the same setting plans, and the table shows the combination
    code, out, err = _plan_cli(tmp_path, tiny_recipe("lora", distributed={"backend": "fsdp"}), capsys)
    assert code == 0 and "no quantization, fp32 x fsdp" in out


def test_the_distributed_setting_is_typed_and_its_text_only_shown(tiny_recipe):
    """Issue 23 item 2: qlora decides on ``WrapContext.distributed``'s fields, not on the words people
    read; ``extra["distributed"]`` keeps the text for plugins that read it there."""
    from adaptkit.engine.distributed import distributed_setting
    from adaptkit.engine.session import Session
    from adaptkit.plugin.strategy import DistributedSetting
    from adaptkit.recipe.schema import Recipe

    two = Recipe.from_dict(tiny_recipe("qlora", distributed={"backend": "fsdp", "fsdp": {"version": 2}}))
    setting = distributed_setting(two, 3)
    assert setting == DistributedSetting("fsdp", fsdp_version=2, num_processes=3) and setting.fsdp
    assert str(setting) == "fsdp2 x3 processes"
    assert str(distributed_setting(Recipe.from_dict(tiny_recipe("lora", distributed={"backend": "ddp"})))) == \
        "ddp (launched on several processes)"
    assert distributed_setting(Recipe.from_dict(tiny_recipe("lora"))) is None
    session = Session(two, log=lambda _: None)
    context = session.context(tiny_bert(), setting)
    assert context.distributed is setting and context.extra["distributed"] == "fsdp2 x3 processes"
    qlora = adaptkit.get_strategy("qlora")
    # a reworded text changes nothing: FSDP1 is refused, FSDP2 passes, whatever extra says
    fsdp1 = WrapContext("bert", "sequence_classification", ["classifier"], "SEQ_CLS",
                        extra={"distributed": "single process"}, distributed=DistributedSetting("fsdp", 1, 2))
    with pytest.raises(PreflightError, match="FSDP version 1"):
        qlora().preflight(fsdp1)
    fsdp2 = WrapContext("bert", "sequence_classification", ["classifier"], "SEQ_CLS",
                        extra={"distributed": "fsdp x2 processes"}, distributed=DistributedSetting("fsdp", 2, 2))
    qlora().preflight(fsdp2)


def test_prompt_tuning_on_a_model_peft_cannot_prompt_is_refused(tmp_path, capsys):
    from test_task_image_classification import image_folder, image_recipe

    images = image_folder(tmp_path / "images", 2, 0)
    code, out, err = _plan_cli(tmp_path, image_recipe(tmp_path, "prompt_tuning", images, images), capsys)
    assert code == 2
    # the reason, not peft's KeyError: None from inside get_peft_model (a captioner got that too)
    assert "strategy 'prompt_tuning' cannot train a vit model for task 'image_classification'" in err
    assert "this task has none" in err and "KeyError" not in err


def test_options_that_do_not_apply_to_the_task_are_refused(tmp_path, capsys):
    from test_task_causal_lm import lm_recipe

    recipe = lm_recipe(tmp_path / "lm", "lora")
    recipe["strategy"]["train_head"] = False  # causal_lm has no task head: the option does nothing
    code, out, err = _plan_cli(tmp_path, recipe, capsys)
    assert code == 2
    assert "option train_head does not apply to task 'causal_lm'" in err


def test_plan_shows_the_setup_and_a_missing_required_plugin_names_the_install_command(tiny_recipe, tmp_path,
                                                                                     capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # the table follows the terminal: wide enough for one line per row
    code, out, err = _plan_cli(tmp_path, tiny_recipe("qlora"), capsys, "--strategies", "lora,qlora")
    assert code == 0
    assert "no quantization, fp32 x single process" in out
    assert "nf4 4-bit (bitsandbytes), float32 compute x single process" in out
    recipe = {**tiny_recipe("lora"), "requires": ["adaptkit-no-such-plugin>=1.0"]}
    code, out, err = _plan_cli(tmp_path, recipe, capsys)
    assert code == 2 and "install it with: pip install 'adaptkit-no-such-plugin>=1.0'" in err


# ---------------------------------------------------------------------------- 1. + 3. + 4. on real runs

def _crash_after_training(monkeypatch):
    from adaptkit.plugin import contract
    def crash(model, batch):
        raise RuntimeError("simulated crash after training")

    monkeypatch.setattr(contract, "model_outputs", crash)


def test_resume_wraps_once_and_refuses_another_plugin_version(tmp_path, monkeypatch):
    """axolotl #2568: resuming LoRA wrapped the model a second time (base_model.model.base_model...)."""
    recipe = tiny_recipe_dict(tmp_path, "lora", training={"epochs": 1, "batch_size": 16, "seed": 0,
                                                          "num_threads": 1})
    out = Path(recipe["output"]["dir"])
    with monkeypatch.context() as patch:
        _crash_after_training(patch)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(recipe, **QUIET)
    checkpoint = latest_checkpoint(checkpoint_root(out))
    assert checkpoint is not None
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["recipe"]["plugins"]["adaptkit"] == adaptkit.__version__

    # A plugin upgraded between the crash and the resume: refused, naming the distribution and versions.
    from adaptkit.plugin.registry import get_registry

    with monkeypatch.context() as patch:
        for info in get_registry().plugins:  # the first-party plugins all come from this distribution
            if info.distribution == "adaptkit":
                patch.setattr(info, "version", "9.9.9")
        with pytest.raises(AdaptkitError) as caught:
            run(recipe, resume=True, **QUIET)
    assert f"plugin distribution adaptkit: version {adaptkit.__version__} in the checkpoint, 9.9.9 now" \
        in str(caught.value)
    # Other strategy options: refused too, naming the option.
    changed = {**recipe, "strategy": {"name": "lora", "r": 4}}
    with pytest.raises(AdaptkitError, match=r"strategy\.r: 8 in the checkpoint, 4 now"):
        run(changed, resume=True, **QUIET)

    lines: list[str] = []
    resumed = run(recipe, resume=True, progress=False, log=lines.append)
    assert resumed.metrics["resumed_from_step"] is not None
    keys = list(load_file(str(out / "adapter" / "adapter_model.safetensors")))
    assert not [k for k in keys if "base_model.model.base_model" in k], keys[:3]
    targets = {re.sub(r"\.lora_[AB]\..*$", "", k) for k in keys if ".lora_" in k}
    for target in targets:
        assert sum(k.startswith(target + ".lora_A.") for k in keys) == 1, target
        assert sum(k.startswith(target + ".lora_B.") for k in keys) == 1, target
    fresh = run({**recipe, "output": {"dir": str(tmp_path / "fresh")}}, **QUIET)
    assert resumed.metrics["parameters"] == fresh.metrics["parameters"]
    assert len(targets) == 2 * 6 + 1  # query, key, value, 3 dense per layer (2 layers), the pooler: once each
    # the plan was logged at the start of the run, from the model the run built
    table = next(line for line in lines if "est. peak memory" in line)
    assert f"{resumed.metrics['parameters']['trainable']:,}" in table and "single process" in table
    assert any("equivalence" in c and "32 eval rows, head included" in c for c in resumed.metrics["contract"])


class DropsTrainedHead(adaptkit.get_strategy("lora")):
    """peft #2502 / LLaMA-Factory #5186: the merge keeps the LoRA update but loses the trained head
    (the modules_to_save copy), so the merged classifier is the untrained one."""

    name = "drops_trained_head"

    def wrap(self, model, context):
        self._head = context.head_modules[0]
        self._untrained = {k: v.detach().clone() for k, v in model.get_submodule(self._head).state_dict().items()}
        return super().wrap(model, context)

    def unwrap(self, model):
        merged = model.merge_and_unload()
        merged.get_submodule(self._head).load_state_dict(self._untrained)
        return merged


def test_a_merge_that_drops_the_trained_head_fails_the_run(tiny_recipe, tmp_path, monkeypatch):
    import adaptkit.plugin.registry as plugins

    module = types.SimpleNamespace(
        adaptkit_register_strategies=hookimpl(lambda register: register(DropsTrainedHead)))
    registry = plugins.build_registry(extra_plugins=[("drops_trained_head_plugin", module)])
    monkeypatch.setattr(plugins, "get_registry", lambda: registry)
    recipe = tiny_recipe("drops_trained_head", training={"epochs": 1, "learning_rate": 1e-2})
    with pytest.raises(ContractViolation) as caught:
        run(recipe, **QUIET)
    assert caught.value.rule == "equivalence"
    assert caught.value.parameter == "classifier.weight"
    message = str(caught.value)
    assert "rule 'equivalence' on 'classifier.weight'" in message
    assert "on eval batch 1 of 2 (16 rows)" in message and "logits[" in message
    assert "the trained head was not merged back" in message
    assert not (tmp_path / "run").exists()


def test_the_python_api_raises_what_the_cli_reports(tiny_recipe):
    recipe = tiny_recipe("ia3")
    recipe["strategy"].update(target_modules=["key", "valeu"], feedforward_modules=[])
    with pytest.raises(TargetModuleError, match="did you mean 'value'"):
        adaptkit.plan(recipe)
    from adaptkit.engine.planning import plan
    from adaptkit.recipe.schema import Recipe

    with pytest.raises(TargetModuleError):  # still the function once the module is imported
        adaptkit.plan(recipe)
    result = plan(Recipe.from_dict(recipe), ["ia3", "lora"], strict=False)
    assert isinstance(result.strategies[0].failure, TargetModuleError) and result.strategies[1].error is None
