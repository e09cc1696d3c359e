"""Atomic artifact folders, their digest, and artifact rows by id."""

import pytest

from distill_assets.lib import ledger
from distill_assets.lib.artifacts import artifact_chain, artifact_row, atomic_dir, dir_digest, is_complete
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


def test_artifact_row_by_id_and_its_chain(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    with pytest.raises(LookupError, match="rematerialize merged_model"):
        artifact_row(store, "merged_model:x", "merged_model")
    for aid, asset, parent in (("a1", "lora_adapter", None), ("m1", "merged_model", "a1")):
        ledger.register_artifact(store, artifact_id=aid, asset=asset, kind="k", path="/p", sha256="s", bytes=1,
                                 parent_artifact_id=parent, dataset_version=None, run_id="r", metadata={"k": aid})
    assert artifact_row(store, "m1", "merged_model")["metadata"] == {"k": "m1"}
    with pytest.raises(LookupError, match="belongs to lora_adapter"):
        artifact_row(store, "a1", "merged_model")
    assert [r["artifact_id"] for r in artifact_chain(store, "m1")] == ["m1", "a1"]
