"""The preference task: its masks token by token, each objective against TRL's own code on the same
batch of a tiny Llama-shaped model, the reference without a copy, bad rows named, and learning.

Oracles (trl 1.16, a test-only dependency):
- DPO sigmoid / ipo / hinge: ``trl.DPOTrainer._compute_loss`` run unbound on a stand-in trainer (its
  attributes only) with TRL's fused LM head on a copy of the same model, reference log-probs from
  the fused head on a copy of the same reference: TRL masks, sums and scores the batch itself;
- DPO sigmoid with label smoothing (conservative DPO, which TRL 1.16's DPO sigmoid no longer has):
  ``trl.experimental.cpo.CPOTrainer.cpo_loss`` (loss_type sigmoid, the same formula) on the
  log-ratios TRL's DPO path computes;
- SimPO: ``CPOTrainer.get_batch_logps`` (average per token) and ``CPOTrainer.cpo_loss`` (loss_type simpo);
- ORPO: ``ORPOTrainer.get_batch_logps`` and ``ORPOTrainer.odds_ratio_loss``, plus the chosen answers' NLL;
- KTO: ``trl.KTOTrainer._compute_loss`` unbound, with the KL estimate's mismatched pairs as its
  ``KL_*`` inputs.
"""
from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import REPO
from test_instruct_kit import bpe_tokenizer, tiny_config, write_jsonl

FRUITS = ["apple", "banana", "grape", "lime", "plum", "cherry", "lemon", "melon", "peach", "pear", "kiwi", "fig"]
COLOURS = ["red", "yellow", "purple", "green", "orange", "blue", "pink", "brown"]
OTHERS = ["round", "small", "soft", "sweet", "fresh", "heavy", "ripe", "smooth"]


def colour_rows(count: int, seed: int, fruits: list[str] = FRUITS) -> list[dict]:
    """Prompts about a fruit; the chosen answer names a colour, the rejected one another word (the
    synthetic preference a random model does not hold). Which word is which varies by row."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        fruit = rng.choice(fruits)
        rows.append({"prompt": f"describe the {fruit}", "chosen": f"it is {rng.choice(COLOURS)}",
                     "rejected": f"it is {rng.choice(OTHERS)}"})
    return rows


def corpus() -> list[str]:
    texts = [json.dumps(row) for row in colour_rows(200, 3)]
    return texts + [" ".join(FRUITS + COLOURS + OTHERS + ["describe the it is system user assistant be brief"])]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pref_tokenizer")
    bpe_tokenizer(folder, corpus(), vocab_size=300)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    from adaptkit_tasks.chat_templates import install_template

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    install_template(tok, "chatml", "test")
    return tok


def tiny_llama(vocab: int, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = tiny_config("llama", vocab)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def models(tokenizer):
    """A policy and a different reference, so log-ratios are not zero."""
    return tiny_llama(len(tokenizer), 0), tiny_llama(len(tokenizer), 1)


def make_task(tokenizer, **options):
    from adaptkit_tasks.preference import Preference

    task = Preference(options)
    task._tokenizer = tokenizer
    return task


def encode(task, tokenizer, rows):
    import datasets

    table = datasets.Dataset.from_list(rows)
    task.setup(table)
    return task.preprocess(table, tokenizer)


def batch_of(task, tokenizer, rows):
    encoded = encode(task, tokenizer, rows)
    return task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])


# ---------------------------------------------------------------------------- masks

def test_prompt_once_then_each_answer_labelled_token_by_token(tokenizer):
    task = make_task(tokenizer)
    row = {"prompt": "describe the apple", "chosen": "it is red", "rejected": "it is round soft"}
    encoded = encode(task, tokenizer, [row])[0]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for side in ("chosen", "rejected"):
        ids, labels = encoded[f"{side}_input_ids"], encoded[f"{side}_labels"]
        assert ids[:len(prompt_ids)] == prompt_ids  # the same prompt tokens for both answers
        assert labels[:len(prompt_ids)] == [-100] * len(prompt_ids)
        answer = [token for token, label in zip(ids, labels) if label != -100]
        assert labels[len(prompt_ids):] == ids[len(prompt_ids):]  # every answer token, and only those
        assert tokenizer.decode(answer) == row[side] + "<|im_end|>\n"


def test_layouts_encode_alike(tokenizer):
    """Strings, a shared conversation without prompt column, and UltraFeedback's repeated prompt give
    the same tokens; a multi-turn prompt's earlier assistant turn is context, not answer."""
    task = make_task(tokenizer)
    user = {"role": "user", "content": "describe the plum"}
    strings = {"prompt": "describe the plum", "chosen": "it is purple", "rejected": "it is ripe"}
    shared = {"chosen": [user, {"role": "assistant", "content": "it is purple"}],
              "rejected": [user, {"role": "assistant", "content": "it is ripe"}]}
    ultra = {"prompt": "describe the plum", **shared}
    answers_as_messages = {"prompt": [user], "chosen": [{"role": "assistant", "content": "it is purple"}],
                           "rejected": json.dumps([{"role": "assistant", "content": "it is ripe"}])}
    encoded = [encode(task, tokenizer, [row])[0] for row in (strings, shared, ultra, answers_as_messages)]
    assert all(e == encoded[0] for e in encoded[1:])

    history = [{"role": "user", "content": "describe the fig"}, {"role": "assistant", "content": "it is brown"}, user]
    multi = encode(task, tokenizer, [{"prompt": history, "chosen": "it is purple", "rejected": "it is ripe"}])[0]
    labelled = [t for t, label in zip(multi["chosen_input_ids"], multi["chosen_labels"]) if label != -100]
    assert tokenizer.decode(labelled) == "it is purple<|im_end|>\n"


def test_a_pair_is_one_row_with_both_answers_side_by_side(tokenizer, models):
    """A batch split across processes by rows keeps its pairs whole; the task lays them out as chosen
    rows then rejected rows for its forward pass; a plain forward pass runs on the batch as it is."""
    task = make_task(tokenizer)
    rows = colour_rows(3, 0)
    batch = batch_of(task, tokenizer, rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # what any causal LM takes
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] % 2 == 0
    assert torch.isfinite(models[0](**batch).loss)
    sequences = task.sequences(batch)
    assert sequences["input_ids"].shape[0] == 6
    for i, row in enumerate(rows):
        for side, index in (("chosen", i), ("rejected", i + 3)):
            labels = sequences["labels"][index]
            text = tokenizer.decode(sequences["input_ids"][index][labels != -100])
            assert text == row[side] + "<|im_end|>\n"
            assert sequences["attention_mask"][index].sum() == len(encode(task, tokenizer, [row])[0][f"{side}_input_ids"])


def test_kto_rows_carry_desirability_where_no_loss_reads(tokenizer, models):
    task = make_task(tokenizer, objective="kto")
    rows = [{"prompt": "describe the kiwi", "completion": "it is green", "label": "desirable"},
            {"prompt": "describe the kiwi", "completion": "it is soft", "label": "false"}]
    batch = batch_of(task, tokenizer, rows)
    assert batch["labels"][:, 0].tolist() == [1, -100]
    assert task._desirable(batch["labels"]).tolist() == [True, False]
    # a causal LM's own loss ignores labels[:, 0]: the same with either value
    model = models[0]
    other = {**batch, "labels": batch["labels"].clone()}
    other["labels"][:, 0] = -100
    assert torch.equal(model(**batch).loss, model(**other).loss)


@pytest.mark.parametrize("row,message", [
    ({"prompt": "p", "chosen": "a"}, "rejected is empty"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "must end with an assistant"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]}, "share no opening"),
])
def test_bad_rows_are_named(tokenizer, row, message):
    task = make_task(tokenizer)
    assert message in task.row_problem(row)
    kto = make_task(tokenizer, objective="kto")
    assert "desirability label" in kto.row_problem({"prompt": "p", "completion": "a", "label": "maybe"})


def test_options_refuse_unknown_objective_and_misplaced_smoothing():
    from pydantic import ValidationError

    from adaptkit_tasks.preference import PreferenceOptions

    with pytest.raises(ValidationError, match="unknown objective 'ppo'"):
        PreferenceOptions(objective="ppo")
    with pytest.raises(ValidationError, match="label_smoothing applies"):
        PreferenceOptions(objective="dpo", loss_type="hinge", label_smoothing=0.1)


# ---------------------------------------------------------------------------- agreement with TRL

class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    gather = gather_for_metrics

    @staticmethod
    def unwrap_model(model):
        return model


def _fused(model):
    from trl.trainer.utils import add_fused_lm_head

    fused = copy.deepcopy(model)
    add_fused_lm_head(fused, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return fused


def _trainer(model, **attributes):
    return SimpleNamespace(model=model, accelerator=_Accelerator(), aux_loss_enabled=False, precompute_ref_logps=True,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                           **attributes)


@pytest.fixture(scope="module")
def pair_batch(tokenizer):
    return batch_of(make_task(tokenizer), tokenizer, colour_rows(4, 11))


@pytest.fixture(scope="module")
def pair_seqs(tokenizer, pair_batch):
    """The pairs as chosen rows, then rejected rows: the layout TRL's DPO batches have."""
    return make_task(tokenizer).sequences(pair_batch)


@pytest.fixture(scope="module")
def trl_dpo_inputs(models, pair_seqs):
    """TRL's DPO inputs for the batch, the reference's log-probs from TRL's fused head."""
    _, reference = models
    completion = (pair_seqs["labels"] != -100).long()
    labels = pair_seqs["input_ids"].masked_fill(completion == 0, -100)
    with torch.no_grad():
        ref = _fused(reference)(input_ids=pair_seqs["input_ids"], attention_mask=pair_seqs["attention_mask"],
                                labels=labels, fused_lm_head=True).log_probs.sum(dim=1)
    ref_chosen, ref_rejected = ref.chunk(2)
    return {"input_ids": pair_seqs["input_ids"], "attention_mask": pair_seqs["attention_mask"],
            "completion_mask": completion, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.5), ("hinge", 2.0)])
def test_dpo_matches_trl(tokenizer, models, pair_batch, trl_dpo_inputs, loss_type, beta):
    from trl import DPOTrainer

    policy, reference = models
    task = make_task(tokenizer, objective="dpo", loss_type=loss_type, beta=beta)
    task._reference_model = reference  # a frozen reference of another seed: log-ratios are not zero
    loss, outputs = task.compute_loss(policy, pair_batch)

    fused = _fused(policy)
    trainer = _trainer(fused, ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[loss_type],
                       loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False)
    expected = DPOTrainer._compute_loss(trainer, fused, dict(trl_dpo_inputs), False)
    assert abs(float(expected.detach())) > 1e-3
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)
    logged = trainer._metrics["eval"]
    metrics = task.compute_metrics(**task.batch_outputs(outputs, pair_batch))
    assert metrics["reward_accuracy"] == pytest.approx(logged["rewards/accuracies"][0])
    assert metrics["reward_margin"] == pytest.approx(logged["rewards/margins"][0], rel=1e-4, abs=1e-5)
    assert metrics["rewards_chosen"] == pytest.approx(logged["rewards/chosen"][0], rel=1e-4, abs=1e-5)
    assert metrics["logps_rejected"] == pytest.approx(logged["logps/rejected"][0], rel=1e-5)


def test_conservative_dpo_matches_trl(tokenizer, models, pair_batch, pair_seqs, trl_dpo_inputs):
    from trl.experimental.cpo import CPOTrainer

    policy, reference = models
    task = make_task(tokenizer, objective="dpo", beta=0.3, label_smoothing=0.2)
    task._reference_model = reference
    loss, _ = task.compute_loss(policy, pair_batch)

    completion = trl_dpo_inputs["completion_mask"]
    labels = pair_seqs["input_ids"].masked_fill(completion == 0, -100)
    with torch.no_grad():
        logps = _fused(policy)(input_ids=pair_seqs["input_ids"], attention_mask=pair_seqs["attention_mask"],
                               labels=labels, fused_lm_head=True).log_probs.sum(dim=1)
    chosen, rejected = logps.chunk(2)
    stand_in = SimpleNamespace(alpha=0.0, loss_type="sigmoid", beta=0.3, label_smoothing=0.2,
                               accelerator=_Accelerator())
    losses, _, _ = CPOTrainer.cpo_loss(stand_in, chosen - trl_dpo_inputs["ref_chosen_logps"],
                                       rejected - trl_dpo_inputs["ref_rejected_logps"])
    assert float(loss.detach()) == pytest.approx(float(losses.mean()), rel=1e-5)


def _logits_and_labels(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits, batch["labels"]


def test_simpo_matches_trl(tokenizer, models, pair_batch, pair_seqs):
    from trl.experimental.cpo import CPOTrainer

    policy, _ = models
    task = make_task(tokenizer, objective="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=0.1)
    loss, _ = task.compute_loss(policy, pair_batch)
    logits, labels = _logits_and_labels(policy, pair_seqs)
    logps = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True,
                                       is_encoder_decoder=False)
    stand_in = SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=0.1,
                               accelerator=_Accelerator())
    losses, _, _ = CPOTrainer.cpo_loss(stand_in, *logps.chunk(2))
    assert float(loss.detach()) == pytest.approx(float(losses.mean()), rel=1e-5)


def test_orpo_matches_trl(tokenizer, models, pair_batch, pair_seqs):
    from trl.experimental.orpo import ORPOTrainer

    policy, _ = models
    task = make_task(tokenizer, objective="orpo", beta=0.25)
    loss, _ = task.compute_loss(policy, pair_batch)
    logits, labels = _logits_and_labels(policy, pair_seqs)
    logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True,
                                        is_encoder_decoder=False)
    stand_in = SimpleNamespace(beta=0.25, accelerator=_Accelerator())
    losses, *_ = ORPOTrainer.odds_ratio_loss(stand_in, *logps.chunk(2))
    half = labels.shape[0] // 2  # TRL's NLL: cross entropy over the chosen rows' answer tokens
    nll = torch.nn.functional.cross_entropy(logits[:half, :-1].reshape(-1, logits.shape[-1]),
                                            labels[:half, 1:].reshape(-1), ignore_index=-100)
    assert float(loss.detach()) == pytest.approx(float(nll - losses.mean()), rel=1e-5)


def test_kto_matches_trl(tokenizer, models):
    from trl import KTOTrainer

    from adaptkit_tasks.preference import mismatched_pairs

    policy, reference = models
    task = make_task(tokenizer, objective="kto", beta=0.2, desirable_weight=1.5, undesirable_weight=0.7)
    task._reference_model = reference
    rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r, side in zip(colour_rows(5, 4), ["chosen", "rejected", "rejected", "chosen", "rejected"])]
    batch = batch_of(task, tokenizer, rows)
    loss, _ = task.compute_loss(policy, batch)

    completion = (batch["labels"] != -100).long()
    completion[:, 0] = 0
    kl_ids, kl_mask, kl_labels = mismatched_pairs(batch["input_ids"], batch["attention_mask"], batch["labels"])
    fused_ref = _fused(reference)
    with torch.no_grad():
        ref = fused_ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["input_ids"].masked_fill(completion == 0, -100), fused_lm_head=True)
        ref_kl = fused_ref(input_ids=kl_ids, attention_mask=kl_mask, labels=kl_labels, fused_lm_head=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "completion_mask": completion,
              "label": torch.tensor([row["label"] for row in rows]), "KL_input_ids": kl_ids,
              "KL_attention_mask": kl_mask, "KL_completion_mask": (kl_labels != -100).long(),
              "ref_logps": ref.log_probs.sum(dim=1), "ref_KL_logps": ref_kl.log_probs.sum(dim=1)}
    fused = _fused(policy)
    trainer = _trainer(fused, calculate_KL=True, loss_type="kto", beta=0.2, desirable_weight=1.5,
                       undesirable_weight=0.7)
    trainer._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(trainer, model, batch)
    expected = KTOTrainer._compute_loss(trainer, fused, inputs, False)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------- the reference without a copy

def test_adapter_reference_is_the_base_with_the_adapter_off(tokenizer, models, pair_seqs):
    """With LoRA the reference is the same model with the adapter disabled: no copy is made, and its
    log-probs are the base's even after the adapter has changed."""
    from peft import LoraConfig, get_peft_model

    policy, _ = models
    base = copy.deepcopy(policy)
    expected = make_task(tokenizer)._answer_logps(base, pair_seqs["input_ids"], pair_seqs["attention_mask"],
                                                   pair_seqs["labels"])[0]
    wrapped = get_peft_model(copy.deepcopy(policy), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                              init_lora_weights=False))
    task = make_task(tokenizer)
    reference = task._reference_logps(wrapped, pair_seqs)
    assert task._reference_model is None
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)
    policy_logps = task._answer_logps(wrapped, pair_seqs["input_ids"], pair_seqs["attention_mask"],
                                      pair_seqs["labels"])[0]
    assert not torch.allclose(policy_logps, expected)  # the adapter does change the policy


def test_full_fine_tune_reference_is_a_frozen_copy_and_precompute_keeps_none(tokenizer, models, pair_seqs):
    policy, _ = models
    model = copy.deepcopy(policy)
    task = make_task(tokenizer)
    before = task._reference_logps(model, pair_seqs)
    assert task._reference_model and not any(p.requires_grad for p in task._reference_model.values())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05)
    torch.testing.assert_close(task._reference_logps(model, pair_seqs), before)

    ahead = make_task(tokenizer, reference="precompute")
    encode(ahead, tokenizer, colour_rows(4, 11))
    precomputed = ahead._reference_logps(copy.deepcopy(policy), pair_seqs)
    assert ahead._reference_model is None
    assert set(ahead._precomputed) == set(ahead._keys(pair_seqs["input_ids"], pair_seqs["attention_mask"]))
    torch.testing.assert_close(precomputed, before)



def test_frozen_reference_of_a_wrapper_with_hooks_stays_frozen(tokenizer, models, pair_seqs):
    """A strategy that wraps the model and reaches into it with forward hooks (bottleneck adapters):
    the reference is the weights at the first step, even though the hooks call the live modules."""
    class Hooked(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base, self.shift = base, torch.nn.Parameter(torch.zeros(()))
            base.model.norm.register_forward_hook(lambda module, args, output: output + self.shift)

        def forward(self, **inputs):
            return self.base(**inputs)

    model = Hooked(copy.deepcopy(models[0]))
    task = make_task(tokenizer)
    before = task._reference_logps(model, pair_seqs)
    with torch.no_grad():
        model.shift.fill_(0.5)
    after = task._answer_logps(model, pair_seqs["input_ids"], pair_seqs["attention_mask"], pair_seqs["labels"])[0]
    assert not torch.allclose(after, before)  # the live model moved
    torch.testing.assert_close(task._reference_logps(model, pair_seqs), before)


def test_plan_counts_the_reference_copy_for_full_fine_tuning_only(tmp_path, tokenizer_dir):
    import adaptkit

    rows = write_jsonl(tmp_path / "rows.jsonl", colour_rows(8, 0))

    def memory(strategy: str, **task) -> dict:
        spec = {"model": {"config": tiny_config("llama", 300), "tokenizer": str(tokenizer_dir)},
                "task": {"type": "preference", "chat_template": "chatml", "max_length": 64, **task},
                "data": {"train": str(rows), "eval": str(rows)}, "strategy": {"name": strategy},
                "training": {"batch_size": 8}, "output": {"dir": str(tmp_path / "run")}}
        return adaptkit.plan(spec).strategies[0].memory

    full, lora = memory("full"), memory("lora")
    assert full["reference"] == full["weights"] > 0 and "reference" not in lora
    assert full["total"] == sum(v for k, v in full.items() if k != "total")
    model = tiny_llama(300, 0)
    parts = {"weights": 1, "gradients": 1, "optimizer": 2, "step": 1, "activations": 10, "logits": 5}
    for options in ({"reference": "precompute"}, {"objective": "simpo"}):
        assert make_task(None, **options).memory_estimate(model, parts) == parts
    # KTO's KL estimate pairs rows anew in every batch: its reference copy stays even with precompute
    assert "reference" in make_task(None, objective="kto", reference="precompute").memory_estimate(model, parts)
    # a pair's row holds both answers: the activations are counted for twice max_length tokens
    assert make_task(None).sequence_length() == 2 * make_task(None, objective="kto").sequence_length() == 1024


# ---------------------------------------------------------------------------- end to end

def _run(tmp_path, tokenizer_dir, name, task, train, held, strategy="lora", steps=4, lr=1e-2, model=None):
    import adaptkit
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    spec = {"model": model or {"config": tiny_config("llama", vocab)},
            "task": {"chat_template": "chatml", "max_length": 64, "max_new_tokens": 8, **task},
            "data": {"train": str(write_jsonl(tmp_path / f"{name}_train.jsonl", train)),
                     "eval": str(write_jsonl(tmp_path / f"{name}_eval.jsonl", held))},
            "strategy": {"name": strategy},
            "training": {"epochs": 1, "max_steps": steps, "batch_size": 16, "learning_rate": lr, "seed": 0,
                         "warmup_ratio": 0.0},
            "output": {"dir": str(tmp_path / name)}}
    spec["model"]["tokenizer"] = str(tokenizer_dir)
    return adaptkit.run(spec, progress=False)


def test_kto_runs_with_lora_and_reports_preference_metrics(tmp_path, tokenizer_dir):
    from adaptkit_tasks.preference import Preference

    rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in colour_rows(16, 5) for side in ("chosen", "rejected")]
    result = _run(tmp_path, tokenizer_dir, "kto", {"type": "preference", "objective": "kto"}, rows, rows[:8])
    metrics = result.metrics
    assert metrics["task"] == "preference" and metrics["export"]["kind"] == "adapter"
    assert set(Preference.metric_names) <= set(metrics["eval"]) and math.isfinite(metrics["eval"]["loss"])
    assert 0.0 <= metrics["eval"]["reward_accuracy"] <= 1.0


def test_validate_names_the_file_and_line_of_a_bad_pair(tmp_path, capsys):
    from adaptkit.cli import main

    rows = tmp_path / "train.jsonl"
    rows.write_text((REPO / "recipes/data/preference/train.jsonl").read_text() + json.dumps(
        {"prompt": "tell me about the fig", "chosen": "it is brown", "rejected": [{"role": "user", "content": "hm"}]})
        + "\n")
    data = yaml.safe_load((REPO / "recipes/preference.yaml").read_text())
    data["data"] = {"train": str(rows), "eval": str(REPO / "recipes/data/preference/eval.jsonl")}
    data["model"]["tokenizer"] = str(REPO / "data/instruct/tokenizer")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{rows}:65:" in error and "rejected must end with an assistant turn" in error and "Traceback" not in error


@pytest.mark.slow
def test_shipped_recipe_learns_the_preference_and_answers_with_colours(tmp_path, monkeypatch):
    """recipes/preference.yaml as shipped (ORPO from random weights): held-out reward accuracy >= 0.9,
    and `adaptkit predict` answers questions about unseen fruits by naming a colour."""
    from adaptkit.cli import main

    data = yaml.safe_load((REPO / "recipes/preference.yaml").read_text())
    data["output"]["dir"] = str(tmp_path / "run")
    data["data"] = {key: str(REPO / f"recipes/data/preference/{key}.jsonl") for key in ("train", "eval")}
    path = tmp_path / "preference.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(REPO)
    assert main(["run", str(path), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval"]["reward_accuracy"] >= 0.9
    output = tmp_path / "answers.jsonl"
    assert main(["predict", str(tmp_path / "run"), "--input", str(REPO / "recipes/data/preference/predict.jsonl"),
                 "--output", str(output)]) == 0
    answers = [json.loads(line)["prediction"] for line in output.read_text().splitlines()]
    assert len(answers) == 4 and sum(any(word in COLOURS for word in a.split()) for a in answers) >= 3


@pytest.mark.slow
def test_dpo_teaches_a_preference_the_base_does_not_hold(tmp_path, tokenizer_dir, tokenizer):
    """A tiny Llama first learns to answer "it is <word>" (SFT on both answers: it prefers other words
    to colours on held-out fruits), then DPO (full fine-tuning, a frozen reference loaded from the SFT
    checkpoint) on pairs that prefer the colour: held-out reward accuracy rises from <= 0.6 to >= 0.9,
    and greedy answers to held-out fruits name colours."""
    import adaptkit
    from transformers import AutoModelForCausalLM

    train, held = colour_rows(64, 1, FRUITS[:8]), colour_rows(32, 2, FRUITS[8:])
    sft_rows = [{"prompt": r["prompt"], "completion": r[side]} for r in train for side in ("chosen", "rejected")]
    sft = _run(tmp_path, tokenizer_dir, "sft", {"type": "instruct", "format": "prompt_completion"}, sft_rows,
               sft_rows[:8], strategy="full", steps=60)
    base = AutoModelForCausalLM.from_pretrained(str(sft.output_dir / "model")).eval()
    held_batch = make_task(tokenizer).sequences(batch_of(make_task(tokenizer), tokenizer, held))
    with torch.no_grad():
        logps = make_task(tokenizer)._answer_logps(base, held_batch["input_ids"], held_batch["attention_mask"],
                                                   held_batch["labels"])[0]
    before = float((logps[:32] > logps[32:]).float().mean())

    dpo = _run(tmp_path, tokenizer_dir, "dpo", {"type": "preference", "objective": "dpo", "beta": 0.5}, train, held,
               strategy="full", steps=10, lr=1e-3, model={"name": str(sft.output_dir / "model")})
    after = dpo.metrics["eval"]["reward_accuracy"]
    assert before <= 0.6 and after >= 0.9, (before, after)
    questions = [{"prompt": f"describe the {fruit}"} for fruit in FRUITS[8:]]

    def colourful(run) -> int:
        return sum(any(word in COLOURS for word in answer.split()) for answer in adaptkit.load(run).predict(questions))

    assert colourful(sft.output_dir) <= 1 and colourful(dpo.output_dir) >= 3
