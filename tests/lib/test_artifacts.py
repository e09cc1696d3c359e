"""Atomic artifact folders, their digest, and the newest artifact row."""

import pytest

from distill_assets.lib import ledger
from distill_assets.lib.artifacts import atomic_dir, dir_digest, is_complete, latest_artifact
from distill_assets.lib.ledger import open_store


def test_atomic_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("x")
    assert is_complete(final) and (final / "a.txt").read_text() == "x"


def test_digest_ignores_marker_and_checkpoints(tmp_path):
    d = tmp_path / "m"
    with atomic_dir(d) as tmp:
        (tmp / "w.bin").write_bytes(b"123")
    sha, size = dir_digest(d)
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "c.bin").write_bytes(b"zzz")
    assert dir_digest(d) == (sha, size) and size == 3
    (d / "w.bin").write_bytes(b"124")
    assert dir_digest(d)[0] != sha


def test_latest_artifact_names_the_missing_asset(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    with pytest.raises(RuntimeError, match="materialize merged_model first"):
        latest_artifact(store, "merged_model")
    ledger.register_artifact(store, artifact_id="m1", asset="merged_model", kind="hf_model", path="/p", sha256="s",
                             bytes=1, parent_artifact_id=None, dataset_version=None, run_id="r",
                             metadata={"k": 1})
    assert latest_artifact(store, "merged_model")["metadata"] == {"k": 1}
