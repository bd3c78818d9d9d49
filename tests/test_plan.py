"""``adaptkit plan``: sizes and memory from the meta device, without weights or training."""
from __future__ import annotations

import pytest

from adaptkit.cli import main
from adaptkit.engine.planning import plan
from adaptkit.recipe.schema import Recipe
from conftest import REPO, write_recipe


def test_plan_counts_match_a_real_wrap(tiny_recipe):
    recipe = Recipe.from_dict(tiny_recipe("lora"))
    result = plan(recipe, ["full", "lora"])
    by_name = {entry.strategy: entry for entry in result.strategies}
    assert by_name["full"].error is None and by_name["lora"].error is None
    assert by_name["full"].trainable == by_name["full"].total
    # what a real run reports (see test_cli): the same model built with weights
    import adaptkit

    real = adaptkit.run(tiny_recipe("lora", training={"epochs": 1}), progress=False)
    assert by_name["lora"].trainable == real.metrics["parameters"]["trainable"]
    assert by_name["lora"].total == real.metrics["parameters"]["total"]
    assert any("query.lora_A" in t for t in by_name["lora"].touched)
    memory = by_name["lora"].memory
    assert memory["optimizer"] == 8 * by_name["lora"].trainable
    assert by_name["full"].memory["total"] > memory["total"]


@pytest.mark.slow
def test_plan_of_the_quickstart_needs_no_weights(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", str(REPO / "recipes" / "quickstart.yaml"), "--all"]) == 0
    out = capsys.readouterr().out
    assert "338,690" in out and "22,713,986" in out


def test_plan_unknown_strategy_is_a_clear_error(tiny_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora"))
    assert main(["plan", str(path), "--strategies", "lorra"]) == 2
    assert "did you mean 'lora'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- max_length vs the model (issue 14, item 6)

def _line_of(path, key: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(key))


def test_plan_refuses_a_max_length_past_the_position_table(tiny_recipe, tmp_path, capsys):
    # tiny BERT: 128 positions; 200 tokens used to fail as a tensor-size RuntimeError mid-run
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora", task={"max_length": 200}))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    line = _line_of(path, "max_length:")
    assert f"{path.resolve()}:{line}: task.max_length: 200 tokens are more than this bert model's 128 positions; " \
           f"set task.max_length to at most 128" in err, err
    assert "Traceback" not in err


def test_prompt_tuning_virtual_tokens_count_against_the_positions(tiny_recipe, tmp_path):
    from adaptkit.errors import RecipeError
    from adaptkit.recipe.loading import load_recipe

    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("prompt_tuning", task={"max_length": 120}))
    with pytest.raises(RecipeError, match="120 plus 20 positions strategy 'prompt_tuning' prepends tokens are more than this bert "
                                          "model's 128 positions; set task.max_length to at most 108"):
        plan(load_recipe(path))
    fits = write_recipe(tmp_path / "fits.yaml", tiny_recipe("prompt_tuning", task={"max_length": 108}))
    assert plan(load_recipe(fits)).strategies[0].error is None


def test_a_run_stops_at_start_on_a_max_length_past_the_positions(tiny_recipe, tmp_path):
    import adaptkit
    from adaptkit.errors import RecipeError

    recipe = tiny_recipe("full", task={"max_length": 129})
    with pytest.raises(RecipeError, match=r"task\.max_length: 129 tokens are more than this bert model's 128"):
        adaptkit.run(recipe, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "gpt2", "n_positions": 1024, "n_ctx": 1024}, 1024),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),  # positions start at 2
    ({"model_type": "llama", "max_position_embeddings": 2048, "rope_theta": 10000.0}, None),  # rotary: no table
    ({"model_type": "vit", "image_size": 224}, None),
])
def test_position_limit_from_a_config(config, limit):
    from transformers import AutoConfig

    from adaptkit.plugin.task import position_limit

    assert position_limit(config) == limit
    settings = dict(config)
    assert position_limit(AutoConfig.for_model(settings.pop("model_type"), **settings)) == limit


# ---------------------------------------------------------------------------- memory estimate (issue 15, item 6)

MEASURE = r"""
import ctypes, json, sys, threading
import psutil
import accelerate, datasets, peft, transformers, torch  # imported before the baseline: not the run's memory
import adaptkit, adaptkit.engine.runner, adaptkit.engine.train, adaptkit.engine.planning, adaptkit.plugin.contract
recipes = json.loads(sys.argv[1])
warm = json.loads(sys.argv[2])
adaptkit.run(warm, progress=False)  # one-time costs (tokenizer, arrow, autograd threads) on a far smaller model
process = psutil.Process()
fit = adaptkit.engine.train.fit
peak = [0]
def sampled_fit(*args, **kwargs):
    # the run's own peak RSS while it trains (ru_maxrss would be the process's lifetime peak, imports included)
    stop = threading.Event()
    def sample():
        while not stop.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return fit(*args, **kwargs)
    finally:
        stop.set()
        thread.join()
adaptkit.engine.train.fit = sampled_fit
figures = []
for recipe in recipes:  # smallest first: what a run frees and the trim returns is not reused by a bigger one
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what earlier runs freed goes back to the OS: an honest baseline
    except OSError:
        pass
    before = process.memory_info().rss
    peak[0] = before
    adaptkit.run(recipe, progress=False)
    figures.append({"before": before, "peak": peak[0]})
print(json.dumps(figures))
"""


def _measured_increases(recipes: list[dict], warm: dict) -> list[int]:
    """Peak RSS each training adds, measured one after another in one fresh process (one interpreter
    start and one warm-up for all of them) so this process's memory does not count."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(recipes), json.dumps(warm)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return [f["peak"] - f["before"] for f in json.loads(done.stdout.strip().splitlines()[-1])]


def test_memory_estimate_within_a_quarter_of_the_measured_peak(tiny_recipe, tmp_path):
    """Full fine-tuning of an 11M-parameter BERT (weights, gradients and AdamW state ~175 MB in
    fp32, ~90 MB in bf16): the plan's estimate against the peak RSS the run adds on this CPU."""
    from conftest import TINY_BERT

    config = {**TINY_BERT, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
              "num_attention_heads": 4}
    dtypes = ["bf16", "fp32"]  # smallest first
    recipes = [tiny_recipe("full", model={"config": config, "dtype": dtype},
                           training={"epochs": 1, "max_steps": 3, "checkpoint_every_steps": 0},
                           output={"dir": str(tmp_path / f"big-{dtype}"), "verify_export": False})
               for dtype in dtypes]
    warm = tiny_recipe("full", training={"epochs": 1, "max_steps": 1}, output={"dir": str(tmp_path / "warm")})
    measured = dict(zip(dtypes, _measured_increases(recipes, warm)))
    for dtype, recipe in zip(dtypes, recipes):
        estimate = plan(Recipe.from_dict(recipe)).strategies[0].memory["total"]
        print(f"{dtype}: estimate {estimate / 2**20:.1f} MiB, measured {measured[dtype] / 2**20:.1f} MiB")
        assert 0.75 * measured[dtype] <= estimate <= 1.25 * measured[dtype], (dtype, estimate, measured)


def test_memory_estimate_follows_dtype_4bit_checkpointing_and_sharding(tiny_recipe):
    """Each knob moves the part it should: bf16 halves weights/gradients/moments, qlora's frozen
    linear weights count 4 bits, checkpointing keeps one input per layer, shards divide the state."""
    from adaptkit.engine.planning import FOUR_BIT_BYTES, estimate_memory

    fp32 = plan(Recipe.from_dict(tiny_recipe("full")), ["full", "lora", "qlora"])
    bf16 = plan(Recipe.from_dict(tiny_recipe("full", model={"dtype": "bf16"})), ["full"])
    full32, lora, qlora = (e.memory for e in fp32.strategies)
    full16 = bf16.strategies[0].memory
    for part in ("weights", "gradients", "optimizer"):
        assert full16[part] == pytest.approx(full32[part] / 2, rel=1e-6), part
    assert full16["activations"] == full32["activations"] / 2  # a 16-bit model's activations are 16-bit
    frozen_linear = sum(m.weight.numel() for n, m in _meta_bert(tiny_recipe).named_modules()
                        if type(m).__name__ == "Linear" and "classifier" not in n)
    assert lora["weights"] - qlora["weights"] == pytest.approx(frozen_linear * (4 - FOUR_BIT_BYTES), abs=1)
    from conftest import TINY_BERT

    deep = {"config": {**TINY_BERT, "num_hidden_layers": 8}}
    plain = plan(Recipe.from_dict(tiny_recipe("full", model=deep)), ["full"]).strategies[0].memory
    checkpointed = plan(Recipe.from_dict(tiny_recipe("full", model=deep, training={"gradient_checkpointing": True})),
                        ["full"]).strategies[0].memory
    assert checkpointed["activations"] < 0.3 * plain["activations"]  # 8 layer inputs + one layer, not 8 layers
    assert checkpointed["weights"] == plain["weights"]
    eight = plan(Recipe.from_dict(tiny_recipe("full", training={"optimizer": "adamw_8bit"})), ["full"])
    assert eight.strategies[0].memory["optimizer"] == full32["optimizer"] / 4
    import torch

    model = torch.nn.Linear(64, 64)
    sharded = estimate_memory(model, None, 1, 1, "no", shards=4)
    assert sharded["weights"] == (64 * 64 + 64) * 4 // 4 and sharded["optimizer"] == (64 * 64 + 64) * 8 // 4


def test_the_memory_estimate_reads_the_declared_quantization_bits_not_the_text(tiny_recipe):
    """Issue 23 item 2: rewording a strategy's ``quantization`` text changes no estimate."""
    import adaptkit

    Lora, QLora = adaptkit.get_strategy("lora"), adaptkit.get_strategy("qlora")

    class Reworded(QLora):  # type: ignore[misc, valid-type]
        quantization = "NF4, four bits per weight"

    class Says4BitButIsNot(Lora):  # type: ignore[misc, valid-type]
        quantization = "4-bit? no: full precision"

    recipe = Recipe.from_dict(tiny_recipe("lora"))
    from adaptkit.engine.session import Session

    session = Session(recipe, log=lambda _: None)
    memory = {}
    for cls in (Lora, QLora, Reworded, Says4BitButIsNot):
        strategy = cls()
        strategy.quantization = cls.quantization  # the instance's own text, reworded too
        with session.on_meta_device():
            base = session.build_meta()
            context = session.context(base)
            model = session.wrap(strategy, base, context)
        from adaptkit.engine.planning import describe

        memory[cls] = describe(cls.__name__, model, session.config, recipe, session.sequence_length,
                               "4-bit x single process", quantization_bits=cls.quantization_bits).memory
    assert memory[Reworded]["weights"] == memory[QLora]["weights"] < memory[Lora]["weights"]
    assert memory[Says4BitButIsNot]["weights"] == memory[Lora]["weights"]


def _meta_bert(tiny_recipe):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from conftest import TINY_BERT

    settings = dict(TINY_BERT)
    with init_empty_weights():
        return AutoModelForSequenceClassification.from_config(
            AutoConfig.for_model(settings.pop("model_type"), **settings, vocab_size=30522))


def test_plan_refuses_gradient_checkpointing_that_the_wrapped_model_cannot_do(tiny_recipe, tmp_path, capsys):
    """frozen_head trains a cached-feature model that cannot recompute activations: plan passed and
    run failed (issue 22, item 15); now plan refuses what run would, and run stops at its start."""
    spec = tiny_recipe("frozen_head", training={"epochs": 1, "batch_size": 16, "seed": 0, "min_steps": 0,
                                                "gradient_checkpointing": True})
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["plan", str(path)]) == 2
    error = capsys.readouterr().err
    assert "r.yaml:" in error and "training.gradient_checkpointing: with strategy 'frozen_head', this " \
                                  "CachedHeadModel does not support gradient checkpointing" in error
    spec["strategy"] = {"name": "full"}
    assert main(["plan", str(write_recipe(tmp_path / "full.yaml", spec))]) == 0


def test_fp16_training_on_a_cpu_is_refused_by_plan_and_its_divergence_names_the_dtype(tiny_recipe, tmp_path, capsys,
                                                                                       monkeypatch):
    """model.dtype fp16 on a CPU diverged at step 3 whatever the rate, and the error blamed the rate
    (issue 22, item 12): plan refuses it, and a divergence with float16 weights on a CPU names the dtype."""
    import adaptkit.engine.models as models

    spec = tiny_recipe("full", model={"dtype": "fp16"}, training={"epochs": 2, "batch_size": 16, "seed": 0,
                                                                   "min_steps": 0, "device": "cpu"})
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["plan", str(path)]) == 2
    error = capsys.readouterr().err
    assert "model.dtype: with strategy 'full', float16 weights are trained on a CPU, which diverges" in error
    spec["model"]["dtype"] = "bf16"
    assert main(["plan", str(write_recipe(tmp_path / "bf16.yaml", spec))]) == 0

    monkeypatch.setattr(models, "half_training_on_cpu_problem", lambda model, recipe: None)  # past the check
    assert main(["run", str(path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "training diverged" in error and "The likely cause is the dtype, not the learning rate" in error


def test_what_libraries_say_while_wrapping_is_kept_under_the_strategy_not_printed(tiny_recipe, capsys, monkeypatch):
    """A plan of every strategy printed peft's warnings and progress bars above the table, unattributed."""
    import sys
    import warnings

    import adaptkit
    from adaptkit.engine.planning import HEARD_LINES, render_text

    lora = adaptkit.get_strategy("lora")
    original = lora.wrap

    def chatty(self, model, context):
        warnings.warn("Unsupported layer type encountered, proceed at your own risk.", UserWarning)
        warnings.warn("an old name", DeprecationWarning)  # for developers: left out
        for step in range(5):
            print(f"decomposition: {step}/4\r", end="", file=sys.stderr)
        return original(self, model, context)

    monkeypatch.setattr(lora, "wrap", chatty)
    result = adaptkit.plan(tiny_recipe("lora"))
    heard = result.strategies[0].heard
    assert heard[0] == "Unsupported layer type encountered, proceed at your own risk."
    assert len(heard) == HEARD_LINES and heard[1] == "decomposition: 0/4" and "an old name" not in heard
    assert capsys.readouterr().err == ""
    assert "lora: a library said: Unsupported layer type" in render_text(result)
