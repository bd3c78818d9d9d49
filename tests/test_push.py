"""``adaptkit push``: the dry run, its refusals, offline failure, and what reaches huggingface_hub
(HfApi is replaced: nothing goes to the Hub)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptkit.errors import AdaptkitError
from adaptkit.engine.runner import run
from conftest import tiny_recipe_dict

QUIET = {"progress": False, "log": lambda _: None}
TRAINING = {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1, "min_steps": 0}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One tiny LoRA run (config-built BERT, 96 rows, one epoch)."""
    tmp_path = tmp_path_factory.mktemp("push")
    return run(tiny_recipe_dict(tmp_path, "lora", training=TRAINING, output={"dir": str(tmp_path / "run")}), **QUIET)


def test_dry_run_lists_exactly_the_run_files_and_validates_the_card(lora_run, capsys):
    from adaptkit.cli import main
    from adaptkit.engine.outputs import manifest_files
    from adaptkit.engine.publish import push

    plan = push(lora_run.output_dir, "someone/tiny-lora", dry_run=True)
    assert plan.files == sorted(manifest_files(lora_run.output_dir))
    assert "adapter/adapter_model.safetensors" in plan.files and "README.md" in plan.files
    assert plan.url is None and plan.card["library_name"] == "peft"
    assert main(["push", str(lora_run.output_dir), "someone/tiny-lora", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in plan.files) and "dry run" in out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def test_push_refuses_an_incomplete_contract_a_damaged_card_and_a_bad_repo_id(lora_run, tmp_path):
    from adaptkit.engine.publish import push

    copy = _copy(lora_run.output_dir, tmp_path)
    with pytest.raises(AdaptkitError, match="not of the form owner/name"):
        push(copy, "no-owner", dry_run=True)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["contract"] = [line for line in metrics["contract"] if not line.startswith("export")]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(AdaptkitError, match="contract checks are incomplete, missing export"):
        push(copy, "someone/x", dry_run=True)
    del metrics["contract"]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(AdaptkitError, match="no contract checks"):
        push(copy, "someone/x", dry_run=True)

    copy = _copy(lora_run.output_dir, tmp_path / "2")
    card = (copy / "README.md").read_text()
    (copy / "README.md").write_text(card.replace("library_name: peft", "base_model: /home/me/model\nlibrary_name: peft"))
    with pytest.raises(AdaptkitError, match="base_model '/home/me/model' is not a Hub id"):
        push(copy, "someone/x", dry_run=True)
    (copy / "README.md").write_text(card.replace("model-index:", "model-index: [[[", 1))
    with pytest.raises(AdaptkitError, match="metadata does not parse"):
        push(copy, "someone/x", dry_run=True)
    import re

    (copy / "README.md").write_text(re.sub(r"(\n\s+value: )[0-9.e-]+", r"\1.nan", card, count=1))
    with pytest.raises(AdaptkitError, match="is nan; a card must report finite scores"):
        push(copy, "someone/x", dry_run=True)
    (copy / "README.md").write_text(card)
    (copy / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdaptkitError, match="adapter/adapter_model.safetensors listed in its manifest is missing"):
        push(copy, "someone/x", dry_run=True)


def test_push_offline_fails_at_once_and_uploads_nothing(lora_run, monkeypatch, capsys):
    import time

    import huggingface_hub

    from adaptkit.cli import main

    called = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: called.append("create"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    started = time.perf_counter()
    assert main(["push", str(lora_run.output_dir), "someone/tiny-lora"]) == 2
    assert time.perf_counter() - started < 5 and not called
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and "Nothing was uploaded" in err and "Traceback" not in err


def test_push_uploads_exactly_the_listed_files_through_huggingface_hub(lora_run, monkeypatch):
    """The network is replaced at HfApi; what adaptkit hands it (repo, privacy, patterns) is checked."""
    import fnmatch

    import huggingface_hub

    from adaptkit.engine import publish
    calls = {}
    monkeypatch.setattr(publish.sources, "hub_unreachable", lambda timeout=3.0: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **k: calls.setdefault("create", (repo_id, k["private"])))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **k: calls.setdefault("upload", k) and None)
    plan = publish.push(lora_run.output_dir, "someone/tiny-lora", private=True, token="hf_x")
    assert calls["create"] == ("someone/tiny-lora", True)
    everything = sorted(p.relative_to(lora_run.output_dir).as_posix()
                        for p in lora_run.output_dir.rglob("*") if p.is_file())
    sent = [name for name in everything if any(fnmatch.fnmatch(name, pattern)
                                               for pattern in calls["upload"]["allow_patterns"])]
    assert sent == plan.files and ".adaptkit-manifest.json" not in sent
    assert plan.url == "https://huggingface.co/someone/tiny-lora"


def test_output_push_to_hub_in_a_recipe_keeps_the_run_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    from adaptkit.recipe.schema import Recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tiny_recipe_dict(tmp_path, "lora", training=TRAINING,
                              output={"dir": str(tmp_path / "run"), "push_to_hub": "someone/tiny"})
    assert Recipe.from_dict(recipe).output.push_to_hub == "someone/tiny"
    with pytest.raises(AdaptkitError, match=r"finished and is in .*run, but output.push_to_hub failed: cannot push "
                                            r"to the Hub: HF_HUB_OFFLINE is set.*adaptkit push .*run someone/tiny"):
        run(recipe, **QUIET)
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "adapter").is_dir()


def test_a_link_leading_out_of_the_run_folder_is_refused_and_named_by_the_dry_run(lora_run, tmp_path, capsys):
    """A listed file replaced by a symbolic link to a secret: the upload would read the secret."""
    from adaptkit.cli import main
    from adaptkit.engine.outputs import manifest_files
    from adaptkit.engine.publish import push

    copy = _copy(lora_run.output_dir, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_token_do_not_share\n")
    victim = next(name for name in sorted(manifest_files(copy)) if name not in ("README.md", "metrics.json")
                  and "/" not in name)
    (copy / victim).unlink()
    (copy / victim).symlink_to(secret)
    assert main(["push", str(copy), "someone/x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{victim} -> {secret}" in err and "out of the run folder" in err and "nothing is uploaded" in err
    with pytest.raises(AdaptkitError, match="symbolic link leads out"):
        push(copy, "someone/x", dry_run=True)

    (copy / victim).unlink()  # a folder above a listed file, linked elsewhere, is the same leak
    shutil.copy(lora_run.output_dir / victim, copy / victim)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(copy / "adapter"), elsewhere)
    (copy / "adapter").symlink_to(elsewhere)
    with pytest.raises(AdaptkitError, match="adapter/adapter_model.safetensors -> "):
        push(copy, "someone/x", dry_run=True)

    (copy / "adapter").unlink()  # a link that stays inside the folder uploads what the folder holds
    shutil.move(str(elsewhere), copy / "adapter-real")
    (copy / "adapter").symlink_to("adapter-real")
    assert push(copy, "someone/x", dry_run=True).files == sorted(manifest_files(lora_run.output_dir))
