"""The README's quick start, for real: LoRA on the packaged MiniLM and the shipped SST-2 subset."""
from __future__ import annotations

import json

import pytest

from adaptkit.cli import main
from conftest import REPO


@pytest.mark.slow
def test_quickstart_reaches_080_dev_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # output.dir is relative to the working directory
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # proves nothing is downloaded
    # The shipped recipe sets no training.num_threads, so the run keeps the process's torch thread
    # count: every core, as in a user's fresh `adaptkit run` (conftest restores it after each test).
    assert main(["run", str(REPO / "recipes" / "quickstart.yaml"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "runs" / "quickstart" / "metrics.json").read_text())
    assert metrics["eval_examples"] == 872 and metrics["train_examples"] == 2000
    assert metrics["eval"]["accuracy"] >= 0.80, metrics["eval"]
    assert metrics["parameters"]["trainable"] == 338_690  # the reference LoRA r=8 figure
    assert any("equivalence" in line for line in metrics["contract"])
