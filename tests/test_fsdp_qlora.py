"""QLoRA under FSDP2 on CPUs: 2 processes over gloo train the adapter 1 process trains.

Under FSDP qlora stores the packed 4-bit bytes as the base's float dtype (``bnb_4bit_quant_storage``;
the bytes are the same), so ``fully_shard`` shards the frozen 4-bit base like any float weight,
and bitsandbytes restores each layer's quantization state from the module in forward
(``fix_4bit_weight_quant_state_from_module``). With uint8 storage accelerate 1.15 leaves the
4-bit weights out of sharding (a warning in ``fsdp2_prepare_model``): every process would hold
the whole base. The harness (forked processes wired as torchrun wires them) is test_fsdp's.
"""
from __future__ import annotations

import pytest
import torch

import adaptkit
from adaptkit.engine.runner import run
from adaptkit.errors import PreflightError
from conftest import sentiment_rows
from test_fsdp import FSDP2, QUIET, _all_ok, _exported, _recipe, _watch_sharding, _worst, in_processes

pytest.importorskip("bitsandbytes")


def _storage_seen(seen: dict) -> None:
    """Record the dtype wrap stored the 4-bit word embeddings in (filled in the fork; the export
    check reloads single-process, uint8)."""
    import adaptkit_qlora.strategy as adaptkit_qlora  # where QLora looks it up

    original = adaptkit_qlora.quantize_model

    def quantize_model(model, *args, **kwargs):
        model = original(model, *args, **kwargs)
        seen.setdefault("storage", str(model.get_input_embeddings().weight.dtype))  # wrap; not the reload
        return model

    adaptkit_qlora.quantize_model = quantize_model


def test_fsdp2_qlora_two_processes_train_what_one_process_trains(tmp_path):
    """2 processes x 8 rows with the 4-bit base sharded by FSDP2 against 1 process x 16 rows:
    float32 storage, each process holds half of the packed embedding, the adapter weights agree
    to 1e-5, the contract (frozen 4-bit bytes, merge) holds, and the exported adapter reloads
    and predicts what the one-process export predicts."""
    recipe = _recipe(tmp_path, "qlora", "two", FSDP2)
    recipe["output"]["verify_export"] = True

    def target(rank: int):
        seen = _watch_sharding()
        _storage_seen(seen)
        seen["metrics"] = run(recipe, **QUIET).metrics
        return seen

    found = in_processes(target)
    _all_ok(found)
    seen = found[0][1]
    assert seen["storage"] == "torch.float32", "under FSDP the 4-bit bytes must be stored as a float dtype"
    assert seen["fsdp2"] and seen["sharded_class"].startswith("FSDP"), "the run was not sharded"
    assert seen["local_rows"] == seen["full_rows"] // 2, "each process should hold half of the 4-bit embedding"
    contract = " ".join(seen["metrics"]["contract"])
    assert "frozen" in contract and "equivalence" in contract and "export: adapter/ reloads" in contract
    reference = run(_recipe(tmp_path, "qlora", "one", {}), **QUIET)
    two, one = _exported(tmp_path / "two"), _exported(tmp_path / "one")
    assert any("lora_A" in k for k in two) and {k: v.shape for k, v in two.items()} == {
        k: v.shape for k, v in one.items()}, "export holds shards"
    assert _worst(two, one) <= 1e-5
    assert seen["metrics"]["steps"] == reference.metrics["steps"] == 8
    assert seen["metrics"]["eval"]["loss"] == pytest.approx(reference.eval["loss"], abs=1e-5)
    rows = [{"text": row["text"]} for row in sentiment_rows(8, seed=3)]
    assert adaptkit.load(tmp_path / "two").predict(rows) == adaptkit.load(tmp_path / "one").predict(rows)


def test_qlora_plans_under_fsdp2_is_refused_under_fsdp1_and_stores_float_bytes_only_under_fsdp(
        tmp_path, capsys, monkeypatch):
    """FSDP version 1 stays refused before any weight is read (plan and run), and so does a bf16
    compute dtype under FSDP2 (bitsandbytes casts frozen biases in place); FSDP2 plans, and
    the plan names it. The quant storage is the base's float dtype under FSDP, uint8 otherwise."""
    import adaptkit_qlora
    from test_preflight import _plan_cli

    monkeypatch.setenv("COLUMNS", "240")  # the plan's lines follow the terminal: wide enough for one line each

    code, out, err = _plan_cli(tmp_path, _recipe(tmp_path, "qlora", "one", {"backend": "fsdp"}), capsys)
    assert code == 2 and "FSDP version 1 is not supported with a 4-bit base" in err and "Use DDP" in err
    with pytest.raises(PreflightError, match="FSDP version 1 is not supported with a 4-bit base"):
        run(_recipe(tmp_path, "qlora", "one", {"backend": "fsdp"}), **QUIET)
    bf16 = _recipe(tmp_path, "qlora", "one", FSDP2)
    bf16["strategy"]["compute_dtype"] = "bfloat16"
    code, out, err = _plan_cli(tmp_path, bf16, capsys)
    assert code == 2 and "qlora' under FSDP needs compute_dtype: float32 (got bfloat16)" in err
    code, out, err = _plan_cli(tmp_path, _recipe(tmp_path, "qlora", "one", FSDP2), capsys)
    assert code == 0 and "float32 compute x" in out and "fsdp2 (launched on several processes)" in out, out + err

    strategy = adaptkit_qlora.QLora({"compute_dtype": "bfloat16"})
    assert strategy.quant_storage(torch.float32) == torch.uint8
    assert strategy.load_kwargs([], torch.float32)["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setattr(adaptkit_qlora.strategy, "fsdp_version", lambda: 2)  # where QLora looks it up
    assert strategy.quant_storage(torch.float32) == torch.float32  # the base's dtype, not the compute dtype
    assert strategy.load_kwargs([], torch.float32)["quantization_config"].bnb_4bit_quant_storage == torch.float32


def test_fsdp2_qlora_on_a_base_loaded_in_4bit_matches_one_process(tmp_path):
    """The pretrained path: transformers loads the base 4-bit (``load_kwargs``), with float32
    ``bnb_4bit_quant_storage`` under FSDP2; 2 processes hold half of it each and train the adapter
    1 process trains (1e-5; 1.5e-8 measured), frozen 4-bit bytes and merge contract intact."""
    import json

    from test_strategy_qlora import _pretrained_qlora

    base = _pretrained_qlora(tmp_path, batch_size=16, num_threads=1)
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # the same function on every rank
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(config))
    base["strategy"]["dropout"] = 0.0
    two = {**base, "output": {**base["output"], "dir": str(tmp_path / "two")},
           "distributed": {**FSDP2, "collective_timeout_seconds": 60}}

    def target(rank: int):
        import adaptkit_qlora.strategy as adaptkit_qlora  # where QLora looks it up

        seen = _watch_sharding()
        original = adaptkit_qlora.quantize_model

        def quantize_model(model, *args, **kwargs):  # what from_pretrained stored, before qlora's own pass
            seen.setdefault("loaded_storage", str(model.get_submodule(
                "bert.encoder.layer.0.attention.self.query").weight.dtype))
            return original(model, *args, **kwargs)

        adaptkit_qlora.quantize_model = quantize_model
        seen["contract"] = run(two, **QUIET).metrics.get("contract")
        return seen

    found = in_processes(target)
    _all_ok(found)
    seen = found[0][1]
    assert seen["loaded_storage"] == "torch.float32"
    assert seen["local_rows"] == seen["full_rows"] // 2, "each process should hold half of the 4-bit embedding"
    assert any(line.startswith("frozen") for line in seen["contract"])
    run({**base, "output": {**base["output"], "dir": str(tmp_path / "one")}}, **QUIET)
    assert _worst(_exported(tmp_path / "two"), _exported(tmp_path / "one")) <= 1e-5
