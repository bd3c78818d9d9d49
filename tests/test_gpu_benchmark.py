"""benchmarks/gpu.py in its CPU smoke mode: the same code the GPU run executes (adaptkit.run on
recipe dicts, transformers' Trainer on the same session), so a change in adaptkit's or
transformers' API breaks this test instead of the first GPU run (issue 15, item 5)."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu  # noqa: E402


def test_smoke_run_writes_every_row_and_target(tmp_path, monkeypatch, capsys):
    # gpu.main in this process (the script's __main__ is only ``sys.exit(main())``): a second
    # interpreter importing torch, transformers and adaptkit again cost seconds and proved nothing more.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main() sets it; kept to this test
    # --budget: the row budget guards a GPU lease; a loaded CI machine must not skip rows this test checks
    code = gpu.main(["--smoke", "--budget", "3600", "--out", str(tmp_path)])  # conftest restores the threads it sets
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    names = [r["row"] for r in result["rows"]]
    assert names == [gpu.row_name(*row) for row in gpu.ROWS]
    for row in result["rows"]:
        assert "error" not in row and "skipped" not in row, row
        assert row["steps"] > 0 and row["tokens_per_second"] > 0 and row["peak_bytes"] > 0
        assert row["mfu"] is None  # no peak rate for a CPU: omitted, not invented
    # both engines saw the same tokens (same rows, same packing) for the rows they share
    by = {r["row"]: r for r in result["rows"]}
    assert by["adaptkit lora packed"]["tokens"] == by["trainer lora packed"]["tokens"] \
        == by["adaptkit lora padded"]["tokens"]
    assert by["adaptkit lora packed"]["steps"] < by["adaptkit lora padded"]["steps"]  # packing joins rows
    assert [t["target"] for t in result["targets"]] == [
        "LoRA tokens/s >= 1.1x Trainer's (packed rows)", "MFU >= 40 % with packing (LoRA)",
        "QLoRA peak memory <= 0.4x LoRA's"]
    table = (tmp_path / "gpu.md").read_text()
    assert "SMOKE RUN" in table
    for name in names:
        assert f"| {name} |" in table


def test_smoke_never_writes_into_the_gpu_results(tmp_path):
    assert gpu.main(["--smoke", "--out", str(gpu.RESULTS)]) == 2


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10G", 125e12),
                                        ("NVIDIA L4", 121e12), ("NVIDIA H100 PCIe", None), ("Tesla T4", None)])
def test_peak_rates_by_device_name(name, peak):
    found, why = gpu.device_peak(name)
    assert found == peak
    if peak is None:
        assert "MFU omitted" in why and name in why


def test_flops_per_token_of_the_1b_model():
    # TinyLlama-1.1B: 1.10e9 parameters, 0.066e9 of them in the input embedding (not a matmul)
    matmul = gpu.flops_per_token(gpu.LLAMA_1B, "full", 0) / 6
    assert 1.02e9 < matmul < 1.05e9
    assert gpu.flops_per_token(gpu.LLAMA_1B, "lora", 0) == pytest.approx(4 * matmul)
    attention = gpu.flops_per_token(gpu.LLAMA_1B, "full", 1024) - 6 * matmul
    assert attention == 12 * 22 * 2048 * 1024
