"""Model artifacts on disk: content digests, folders replaced atomically with a completion marker, and the
`artifacts` row a materialization names (how a stage finds the files its own upstream wrote)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distill_assets.lib.ids import file_sha256
from resources.store import DuckDBStore

COMPLETE_MARKER = ".complete"
_RENAME_EXCHANGE = 2  # linux/fs.h


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


def artifact_row(store: DuckDBStore, artifact_id: str, asset: str | None = None) -> dict:
    """The `artifacts` row of `artifact_id` (metadata parsed); raises naming the id when it is not registered."""
    df = store.query_df("SELECT * FROM artifacts WHERE artifact_id = ?", [artifact_id])
    if df.empty:
        raise LookupError(f"artifact {artifact_id!r} is not in the artifacts table"
                          + (f"; rematerialize {asset}" if asset else ""))
    row = df.iloc[0].to_dict()
    if asset is not None and row["asset"] != asset:
        raise LookupError(f"artifact {artifact_id!r} belongs to {row['asset']}, not {asset}")
    row["metadata"] = json.loads(row["metadata"]) if isinstance(row.get("metadata"), str) else {}
    return row


def artifact_chain(store: DuckDBStore, artifact_id: str) -> list[dict]:
    """`artifact_id` and its ancestors through `parent_artifact_id`, nearest first."""
    chain, seen = [], set()
    current: str | None = artifact_id
    while current and current not in seen:
        seen.add(current)
        df = store.query_df("SELECT * FROM artifacts WHERE artifact_id = ?", [current])
        if df.empty:
            break
        chain.append(df.iloc[0].to_dict())
        current = chain[-1].get("parent_artifact_id") or None
    return chain


# --- atomic folders -------------------------------------------------------------------------------------------

def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` (and root) to disk before the rename makes them visible."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel or fs lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(final: Path) -> None:
    """Undo what a killed writer left: an old folder set aside by the fallback path goes back in place when
    nothing replaced it, and temp folders of dead processes are removed."""
    for p in sorted(final.parent.glob(_prefix(final) + "*")):
        try:
            pid = int(p.name[len(_prefix(final)):].split("-", 1)[0])
        except ValueError:
            continue
        if _pid_alive(pid):  # a live writer (this process's other threads too) keeps its folder
            continue
        if p.name.endswith("-old") and not final.exists() and is_complete(p):
            os.rename(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder next to `final`; on success it gets the completion marker, is fsynced and replaces
    `final` in one rename (an exchange when `final` exists), so a reader, or the next process after a
    kill -9, sees the old complete folder or the new one, never neither and never a half-written one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_prefix(final)}{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        _fsync_tree(tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif _exchange(tmp, final):
            _fsync_dir(final.parent)  # the swap is durable before the old copy goes
        else:  # no atomic swap here: set the old one aside; recover_dir puts it back after a crash in between
            aside = final.parent / f"{_prefix(final)}{os.getpid()}-old"
            os.rename(final, aside)
            os.rename(tmp, final)
            tmp = aside
        _fsync_dir(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).exists()

