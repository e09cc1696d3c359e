"""Failure intake: JSONL files, a drop folder and a Python function all feed `production_failures`.

Every input is untrusted text. Rules that follow from that:
- only five fields are read (category, input, bad_output, expected, reported_at; see `parse.py`); anything
  else in a record, such as a `status`, `failure_id` or `split` key, is ignored, so content cannot steer it;
- the category must be one the task file declares; sizes are capped by the category's limits;
- values only ever reach SQL as `?` parameters;
- a file is ingested in one transaction: its failures, its rejects and its file record commit together or not
  at all; a bad row never blocks the good rows of the same file, and it is kept in `failure_rejects` with the
  file, line, field and reason, so nothing is lost.

`failure_id` is a content hash of (category, input, bad_output): the same failure reported twice is stored once.
Whether a failure is held out for evaluation is decided here, once, at insert (`split.py`: by a hash of its
category and prompt, so every failure with the same prompt is on the same side).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from distill_assets.lib.ids import content_hash, file_sha256
from distill_assets.lib.production import HELD_OUT, HELDOUT_SPLIT, PENDING, TRAIN_SPLIT
from distill_assets.lib.production.parse import parse_csv, parse_jsonl, reject_row, validate_records
from distill_assets.lib.production.split import assign_splits, is_held_out, split_key
from distill_assets.lib.settings import production_settings
from distill_assets.lib.tasks import TaskFile, load_tasks
from resources.clock import utcnow
from resources.store import DuckDBStore, insert_df


@dataclass
class IngestReport:
    source: str
    lines: int = 0
    inserted: int = 0
    held_out: int = 0
    duplicates: int = 0
    rejected: int = 0  # rows (lines) rejected; a row can have several reject reasons
    failure_ids: list[str] = field(default_factory=list)  # newly stored ids
    rejects: list[dict] = field(default_factory=list)
    skipped_file: bool = False  # the same file (by sha256) was ingested before

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejects"] = [{k: v for k, v in r.items() if k != "raw"} for r in self.rejects]
        return d



def failure_id(category: str, input_text: str, bad_output: str) -> str:
    return "f_" + content_hash("failure", category, input_text.strip(), bad_output.strip())


def _utc(v: Any, now: datetime) -> pd.Timestamp:
    if not isinstance(v, str):
        return pd.Timestamp(now)
    t = pd.Timestamp(v)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _normalize(good: pd.DataFrame, tasks: TaskFile, source: str, now: datetime) -> pd.DataFrame:
    out = pd.DataFrame({
        "category": good["category"].astype(str),
        "input": good["input"].map(lambda v: v.strip()),
        "bad_output": good["bad_output"].map(lambda v: v.strip()),
        "expected": good["expected"].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v))
                                         else str(v).strip()),
        "reported_at": [_utc(v, now) for v in good["reported_at"]],
        "source_line": good["line"].astype(int),
    })
    out["failure_id"] = [failure_id(c, i, b) for c, i, b in zip(out["category"], out["input"], out["bad_output"])]
    held = [is_held_out(split_key(c, i), tasks.category(c).heldout_failure_fraction)
            for i, c in zip(out["input"], out["category"])]
    out["split"] = [HELDOUT_SPLIT if h else TRAIN_SPLIT for h in held]
    out["status"] = [HELD_OUT if h else PENDING for h in held]
    out["source"] = source
    out["ingested_at"] = pd.Timestamp(now)
    out["updated_at"] = pd.Timestamp(now)
    out["batch_key"] = None
    out["resolved_by"] = None
    return out


def _store(store: DuckDBStore, report: IngestReport, good: pd.DataFrame, tasks: TaskFile,
           now: datetime, file_record: dict | None, origin: str) -> IngestReport:
    """One transaction: new failures (with fresh ingest_seq), duplicate notes, rejects, the file record."""
    rows = _normalize(good, tasks, origin, now) if not good.empty else pd.DataFrame()
    def write(conn) -> IngestReport:  # may run again after a lake commit conflict: from the same report
        rep = replace(report, rejects=list(report.rejects), failure_ids=list(report.failure_ids))
        if not rows.empty:
            first = rows.drop_duplicates("failure_id", keep="first")
            for _, r in rows[rows.duplicated("failure_id", keep="first")].iterrows():
                line0 = int(first.loc[first["failure_id"] == r["failure_id"], "source_line"].iloc[0])
                rep.rejects.append(reject_row(rep.source, int(r["source_line"]), "failure_id", "duplicate",
                                              r["failure_id"], f"same failure as line {line0}"))
            existing = conn.execute(
                "SELECT failure_id, status FROM production_failures WHERE list_contains(?, failure_id)",
                [first["failure_id"].tolist()],
            ).fetchall()
            known = dict(existing)
            for _, r in first[first["failure_id"].isin(known)].iterrows():
                rep.rejects.append(reject_row(rep.source, int(r["source_line"]), "failure_id", "duplicate",
                                              r["failure_id"], f"already stored (status {known[r['failure_id']]})"))
            new = first[~first["failure_id"].isin(known)].reset_index(drop=True)
            assign_splits(conn, new, tasks)
            rep.duplicates = int(len(rows) - len(new))
            if not new.empty:
                seq0 = conn.execute("SELECT coalesce(max(ingest_seq), 0) FROM production_failures").fetchall()[0][0]
                new["ingest_seq"] = range(int(seq0) + 1, int(seq0) + 1 + len(new))
                insert_df(conn, "production_failures", new, on_conflict="error")
                rep.inserted = int(len(new))
                rep.held_out = int((new["status"] == HELD_OUT).sum())
                rep.failure_ids = new["failure_id"].tolist()
        if rep.rejects:
            rj = pd.DataFrame(rep.rejects, columns=["source", "line", "field", "reason", "raw", "detail"])
            rj["line"] = rj["line"].astype("Int32")
            rj["rejected_at"] = pd.Timestamp(now)
            insert_df(conn, "failure_rejects", rj)
        bad_lines = {(r["line"]) for r in rep.rejects if r["reason"] != "duplicate"}
        rep.rejected = len(bad_lines)
        if file_record is not None:
            insert_df(conn, "failure_files", pd.DataFrame([{
                "sha256": file_record["sha256"], "path": file_record["path"], "lines": rep.lines,
                "inserted": rep.inserted, "rejected": rep.rejected, "duplicates": rep.duplicates,
                "ingested_at": now}]), on_conflict="replace")
        return rep

    return store.transact(write)


def add_failures(store: DuckDBStore, records: list[dict], source: str = "python", *,
                 tasks: TaskFile | None = None, now: datetime | None = None) -> IngestReport:
    """Ingest failures given as dicts (the Python entry point). Bad records are rejected, never raised."""
    tasks = tasks or load_tasks()
    now = now or utcnow()
    parsed, rejects = [], []
    for i, rec in enumerate(records, start=1):
        raw = json.dumps(rec, default=str, ensure_ascii=False) if isinstance(rec, dict) else repr(rec)
        if isinstance(rec, dict):
            parsed.append((i, rec, raw))
        else:
            rejects.append(reject_row(source, i, None, "not_an_object", raw, "each record must be a dict"))
    good, bad = validate_records(parsed, source, tasks)
    report = IngestReport(source=source, lines=len(records), rejects=rejects + bad)
    return _store(store, report, good, tasks, now, None, source)


def ingest_file(store: DuckDBStore, path: str | Path, source: str = "file", *,
                tasks: TaskFile | None = None, now: datetime | None = None,
                max_line_bytes: int | None = None, record_path: str | Path | None = None) -> IngestReport:
    """Ingest one JSONL (or CSV) file in one transaction. A file already ingested (same sha256) is skipped.

    `source` names the channel (file, cli, drop_folder); rejects name the file (`record_path`, default the
    path) and line, and each stored failure's `source` is `channel:file` with its `source_line`."""
    path = Path(path)
    tasks = tasks or load_tasks()
    now = now or utcnow()
    where = str(record_path or path.resolve())
    sha = file_sha256(path)
    with store.connect() as conn:
        seen = conn.execute("SELECT path FROM failure_files WHERE sha256 = ?", [sha]).fetchall()
    if seen:
        return IngestReport(source=where, skipped_file=True)
    parse = parse_csv if path.suffix.lower() == ".csv" else parse_jsonl
    records, rejects, n = parse(path, where, max_line_bytes or production_settings().max_line_bytes)
    good, bad = validate_records(records, where, tasks)
    report = IngestReport(source=where, lines=n, rejects=rejects + bad)
    return _store(store, report, good, tasks, now, {"sha256": sha, "path": where}, f"{source}:{where}")


def _processed_target(folder: Path, name: str, sha: str) -> Path:
    target = folder / name
    if not target.exists():
        return target
    stem, suffix = os.path.splitext(name)
    return folder / f"{stem}.{sha[:12]}.{uuid.uuid4().hex[:6]}{suffix}"


def ingest_drop_folder(store: DuckDBStore, folder: str | Path | None = None, *, tasks: TaskFile | None = None,
                       now: datetime | None = None) -> list[IngestReport]:
    """Ingest every `*.jsonl` in the drop folder, then move it to `processed/` with an atomic rename.

    Producers should write `name.jsonl.tmp` (or a dotfile) and rename it when complete; only finished
    `*.jsonl` files are picked up. A file is moved only after its transaction committed; if the move is lost
    (crash in between), the next scan finds its sha256 in `failure_files` and just moves it. Nothing is
    overwritten in `processed/`."""
    folder = Path(folder) if folder else production_settings().failures_dir
    if not folder.is_dir():
        return []
    done = folder / "processed"
    reports = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".jsonl", ".csv")
                       and not p.name.startswith(".")):
        done.mkdir(exist_ok=True)
        sha = file_sha256(path)
        target = _processed_target(done, path.name, sha)
        report = ingest_file(store, path, source="drop_folder", tasks=tasks, now=now, record_path=target)
        os.replace(path, target)  # same filesystem: atomic, and the file is never deleted
        reports.append(report)
    return reports
