"""Model weight identity: local folders hashed once (memoised by file stats), hub ids pinned to the
commit in the local Hugging Face cache, and a clear error when nothing can pin them."""

from pathlib import Path

import pytest

from resources.weights import folder_digest, weights_identity

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _model_folder(root: Path, payload: bytes) -> Path:
    folder = root / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "sub" / "diffusion_pytorch_model.bin").write_bytes(b"second")
    return folder


def test_local_folder_identity_follows_the_weight_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    first = _model_folder(tmp_path / "a", b"weights")
    same = _model_folder(tmp_path / "b", b"weights")
    other = _model_folder(tmp_path / "c", b"weightz")
    assert weights_identity(str(first)) == weights_identity(str(same))
    assert weights_identity(str(first)) != weights_identity(str(other))
    assert len(weights_identity(str(first))) == 16
    # config files do not count: only weights
    (first / "config.json").write_text('{"changed": true}')
    assert weights_identity(str(first)) == weights_identity(str(same))


def test_local_folder_digest_is_memoised_by_file_stats(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    folder = _model_folder(tmp_path, b"weights")
    identity = folder_digest(folder)
    memos = list((tmp_path / "home" / "cache" / "weights").iterdir())
    assert [memo.read_text() for memo in memos] == [identity]
    (folder / "model.safetensors").write_bytes(b"new weights, new size")
    assert folder_digest(folder) != identity


def test_folder_without_weights_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no weight files"):
        weights_identity(str(tmp_path / "empty"))


def test_a_commit_revision_is_kept_as_it_is():
    assert weights_identity("org/model", COMMIT) == COMMIT


def test_hub_id_resolves_to_the_commit_in_the_local_cache(tmp_path, monkeypatch):
    """A real Hugging Face cache layout: refs/main names the snapshot folder of the commit."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "model_index.json").write_text("{}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert weights_identity("org/model") == COMMIT


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"cannot pin 'org/absent'.*40-hex commit"):
        weights_identity("org/absent")
