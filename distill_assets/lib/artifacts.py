"""Model artifacts on disk: content digests, atomic folders with a completion marker, and the newest
`artifacts` row of an asset (how a stage finds the files its upstream wrote)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from distill_assets.lib.ids import file_sha256
from resources.store import DuckDBStore

COMPLETE_MARKER = ".complete"


def dir_digest(path: str | Path) -> tuple[str, int]:
    """(sha256 over sorted relative paths + file hashes, total bytes) of a folder, or of a single file."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path), path.stat().st_size
    h = hashlib.sha256()
    total = 0
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != COMPLETE_MARKER):
        rel = p.relative_to(path).as_posix()
        if rel.startswith("checkpoints/"):
            continue
        h.update(rel.encode() + b"\0" + file_sha256(p).encode() + b"\n")
        total += p.stat().st_size
    return h.hexdigest(), total


def latest_artifact(store: DuckDBStore, asset: str) -> dict:
    """The newest `artifacts` row of `asset` (raises with a hint when the asset was never materialized)."""
    if not store.table_exists("artifacts"):
        df = pd.DataFrame()
    else:
        df = store.query_df(
            "SELECT * FROM artifacts WHERE asset = ? ORDER BY created_at DESC LIMIT 1", [asset]
        )
    if df.empty:
        raise RuntimeError(f"no artifact registered for {asset!r}; materialize {asset} first")
    row = df.iloc[0].to_dict()
    row["metadata"] = json.loads(row["metadata"]) if isinstance(row.get("metadata"), str) else {}
    return row


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder next to `final`, renamed into place (with the completion marker) only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).exists()
