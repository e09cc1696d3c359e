"""Failure intake: JSONL files, a drop folder and a Python function all feed `production_failures`.

Every input is untrusted text. Rules that follow from that:
- only five fields are read (category, input, bad_output, expected, reported_at); anything else in a record,
  such as a `status`, `failure_id` or `split` key, is ignored, so content can never steer the pipeline;
- the category must be one the task file declares; sizes are capped by the category's limits;
- values only ever reach SQL as `?` parameters;
- a file is ingested in one transaction: its failures, its rejects and its file record commit together or not
  at all; a bad row never blocks the good rows of the same file, and it is kept in `failure_rejects` with the
  file, line, field and reason, so nothing is lost.

`failure_id` is a content hash of (category, input, bad_output): the same failure reported twice is stored once.
Whether a failure is held out for evaluation is decided here, once, by a hash of its category and prompt
(`split_key`), so every failure with the same prompt is on the same side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pandera.pandas as pa

from distill_assets.ids import content_hash, file_sha256, seed_id
from distill_assets.production import (
    HELD_OUT, HELDOUT_SPLIT, IN_TRAINING, PENDING, RESOLVED, STATUSES, TRAIN_SPLIT, production_settings,
)
from distill_assets.tasks import Category, TaskFile, load_tasks
from resources.store import DuckDBStore, insert_df, utcnow

FIELDS = ("category", "input", "bad_output", "expected", "reported_at")
TRANSITIONS: dict[str, set[str]] = {
    PENDING: {IN_TRAINING, HELD_OUT},
    IN_TRAINING: {RESOLVED},
    HELD_OUT: {RESOLVED},
    RESOLVED: set(),
}
RAW_PREVIEW_CHARS = 4096  # rejects keep a preview; the full file is kept in processed/

FAILURE_FILES_DDL = """
    CREATE TABLE IF NOT EXISTS failure_files (
        sha256 VARCHAR PRIMARY KEY, path VARCHAR, lines INTEGER, inserted INTEGER, rejected INTEGER,
        duplicates INTEGER, ingested_at TIMESTAMPTZ)"""


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

    as_dict = to_dict


def failure_id(category: str, input_text: str, bad_output: str) -> str:
    return "f_" + content_hash("failure", category, input_text.strip(), bad_output.strip())


def split_key(category: str, input_text: str) -> str:
    """What the held-out split is decided on: the prompt, not the failure. The same question reported twice
    with different bad outputs is two failures, and both must land on the same side: one seed and one eval row
    with the same prompt would contaminate training (and the blocking seed check would stop the retrain)."""
    return "s_" + content_hash("failure-split", category, input_text.strip())


def is_held_out(key: str, fraction: float) -> bool:
    """Deterministic held-out choice by hash of `split_key(category, input)`: the same prompt is always on
    the same side of the split."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha256(("heldout:" + key).encode()).hexdigest()[:12], 16) / float(16 ** 12)
    return bucket < fraction


# --------------------------------------------------------------------------------------------- parsing


def _preview(raw: str) -> str:
    if len(raw) <= RAW_PREVIEW_CHARS:
        return raw
    return raw[:RAW_PREVIEW_CHARS] + f"...[truncated, {len(raw)} characters in all]"


def _reject(source: str, line: int | None, fld: str | None, reason: str, raw: str, detail: str = "") -> dict:
    return {"source": source, "line": line, "field": fld, "reason": reason, "raw": _preview(raw), "detail": detail}


def parse_jsonl(path: Path, source: str, max_line_bytes: int) -> tuple[list[tuple[int, dict, str]], list[dict], int]:
    """(line, record, raw) for each JSON-object line; rejects for lines that are not UTF-8, not JSON, not an
    object or too long. Lines are read with a byte limit, so a huge line never sits in memory whole."""
    records, rejects, n = [], [], 0
    with open(path, "rb") as f:
        while True:
            chunk = f.readline(max_line_bytes + 1)
            if not chunk:
                break
            n += 1
            if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
                size = len(chunk)
                while chunk and not chunk.endswith(b"\n"):  # skip the rest of this line
                    chunk = f.readline(1 << 20)
                    size += len(chunk)
                rejects.append(_reject(source, n, None, "line_too_long", "",
                                       f"line of {size} bytes; the limit is {max_line_bytes} "
                                       "(DISTILL_FAILURE_MAX_LINE_BYTES); the file keeps it"))
                continue
            raw = chunk.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rejects.append(_reject(source, n, None, "not_utf8", raw.decode("utf-8", errors="backslashreplace"),
                                       f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8"))
                continue
            if n == 1 and text.startswith("\ufeff"):
                text = text[1:]
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                rejects.append(_reject(source, n, None, "broken_json", text, f"{e.msg} at column {e.colno}"))
                continue
            if not isinstance(rec, dict):
                rejects.append(_reject(source, n, None, "not_an_object", text, "each line must be a JSON object"))
                continue
            records.append((n, rec, text))
    return records, rejects, n


def parse_csv(path: Path, source: str, max_line_bytes: int) -> tuple[list[tuple[int, dict, str]], list[dict], int]:
    """CSV with a header row (category,input,bad_output,expected,reported_at); empty cells are null. Bytes
    that are not UTF-8 reject only the rows that hold them."""
    records, rejects = [], []
    if path.stat().st_size > max_line_bytes * 64:
        return [], [_reject(source, None, None, "file_too_large", "",
                            f"CSV over {max_line_bytes * 64} bytes; split it or use JSONL")], 0
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    n = 1
    try:
        for rec in reader:
            n = reader.line_num
            raw = ",".join(str(v) for v in rec.values())
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:
                rejects.append(_reject(source, n, None, "not_utf8", raw.encode("utf-8", "surrogateescape")
                                       .decode("utf-8", "backslashreplace"), "row holds bytes that are not UTF-8"))
                continue
            if None in rec:
                rejects.append(_reject(source, n, None, "broken_csv", raw, "more cells than header columns"))
                continue
            records.append((n, {k: (v if v != "" else None) for k, v in rec.items() if k}, raw))
    except csv.Error as e:
        rejects.append(_reject(source, reader.line_num, None, "broken_csv", "", str(e)))
    return records, rejects, n


# ------------------------------------------------------------------------------------------ validation


def _is_str(s: pd.Series) -> pd.Series:
    return s.map(lambda v: isinstance(v, str))


def _is_str_or_na(s: pd.Series) -> pd.Series:
    return s.map(lambda v: v is None or (isinstance(v, float) and pd.isna(v)) or isinstance(v, (str, int, float))
                 and not isinstance(v, bool))


def _ts_ok(s: pd.Series) -> pd.Series:
    def ok(v):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return True
        if not isinstance(v, str):
            return False
        try:
            return not pd.isna(pd.Timestamp(v))
        except (ValueError, TypeError, OverflowError):
            return False
    return s.map(ok)


def _check(fn, name: str) -> pa.Check:
    # the reject reason is the check name; the human-readable message comes from MESSAGES
    return pa.Check(fn, name=name)


def record_schema(tasks: TaskFile) -> pa.DataFrameSchema:
    """Shape of a failure record: types, required fields and a known category."""
    names = set(tasks.names)
    return pa.DataFrameSchema(
        {
            "category": pa.Column(object, nullable=False, checks=[
                _check(lambda s: s.map(lambda v: isinstance(v, str) and v in names), "unknown_category")]),
            "input": pa.Column(object, nullable=False, checks=[
                _check(_is_str, "not_a_string"),
                _check(lambda s: s.map(lambda v: not isinstance(v, str) or bool(v.strip())), "empty")]),
            "bad_output": pa.Column(object, nullable=False, checks=[_check(_is_str, "not_a_string")]),
            "expected": pa.Column(object, nullable=True, checks=[_check(_is_str_or_na, "not_a_string")]),
            "reported_at": pa.Column(object, nullable=True, checks=[_check(_ts_ok, "bad_timestamp")]),
        },
        strict=False,
        name="production_failure",
    )


def size_schema(category: Category) -> pa.DataFrameSchema:
    """Size limits of one category: the input becomes a seed prompt, so it obeys `max_seed_chars` too."""
    limit = category.max_failure_bytes

    def fits(s: pd.Series) -> pd.Series:
        return s.map(lambda v: len(str(v).encode("utf-8")) <= limit)

    cols = {c: pa.Column(object, nullable=True, checks=[_check(fits, "too_large")])
            for c in ("input", "bad_output", "expected")}
    cols["input"].checks.append(
        _check(lambda s: s.map(lambda v: len(str(v)) <= category.max_seed_chars), "too_long"))
    return pa.DataFrameSchema(cols, strict=False, name=f"production_failure[{category.name}]")


def _messages(tasks: TaskFile, category: str | None) -> dict[str, str]:
    cat = tasks.category(category) if category in tasks.names else None
    return {
        "missing": "required field is missing or null",
        "unknown_category": f"must be one of {tasks.names} (the task file's categories)",
        "not_a_string": "must be a string",
        "empty": "is empty",
        "bad_timestamp": "must be an ISO 8601 timestamp",
        "too_large": f"over {cat.max_failure_bytes} UTF-8 bytes (max_failure_bytes)" if cat else "too large",
        "too_long": f"over {cat.max_seed_chars} characters (max_seed_chars)" if cat else "too long",
    }


def _failure_cases(schema: pa.DataFrameSchema, df: pd.DataFrame) -> pd.DataFrame:
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as e:
        return e.failure_cases
    return pd.DataFrame(columns=["column", "check", "index"])


def validate_records(records: list[tuple[int, dict, str]], source: str, tasks: TaskFile
                     ) -> tuple[pd.DataFrame, list[dict]]:
    """Validate parsed records with pandera. Returns the good rows (with `line`) and one reject per
    (line, field, reason)."""
    if not records:
        return pd.DataFrame(columns=[*FIELDS, "line"]), []
    rows = [{f: rec.get(f) for f in FIELDS} for _, rec, _ in records]
    df = pd.DataFrame(rows, columns=list(FIELDS), dtype=object)
    df["line"] = [ln for ln, _, _ in records]
    bad: dict[int, list[tuple[str, str]]] = {}

    def collect(fc: pd.DataFrame) -> None:
        for _, r in fc.iterrows():
            if r.get("index") is None or pd.isna(r.get("index")):
                continue
            reason = {"not_nullable": "missing"}.get(str(r["check"]), str(r["check"]))
            bad.setdefault(int(r["index"]), []).append((str(r["column"]), reason))

    collect(_failure_cases(record_schema(tasks), df))
    ok = df.drop(index=list(bad))
    for cat, group in ok.groupby("category", sort=False):
        collect(_failure_cases(size_schema(tasks.category(cat)), group))
    rejects = []
    for i in sorted(bad):
        msgs = _messages(tasks, df.at[i, "category"] if isinstance(df.at[i, "category"], str) else None)
        for fld, reason in dict.fromkeys(bad[i]):
            rejects.append(_reject(source, int(df.at[i, "line"]), fld, reason, records[i][2],
                                   f"{fld} {msgs.get(reason, reason)}"))
    return df.drop(index=list(bad)).copy(), rejects


# ----------------------------------------------------------------------------------------------- store


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


def _set_side(new: pd.DataFrame, idx, split: str) -> None:
    new.at[idx, "split"] = split
    new.at[idx, "status"] = HELD_OUT if split == HELDOUT_SPLIT else PENDING


def _overlap_pairs(rows: pd.DataFrame, anchors: pd.DataFrame, cfg) -> set[tuple[int, int]]:
    """(i, j): row i of `rows` and row j of `anchors` would trip the seed contamination check's n-gram rules
    if one of them were a seed and the other an eval row, in either role. Texts are the prompt and the
    expected answer (a failure's seed and eval row both carry them: prompt and reference_response)."""
    from checks.contamination import build_index

    def frame(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"eval_id": [str(k) for k in range(len(df))],
                             "prompt": df["prompt"].fillna("").astype(str).to_numpy(),
                             "reference_response": df["reference_response"].fillna("").astype(str).to_numpy()})

    def hits(evals: pd.DataFrame, queries: pd.DataFrame) -> set[tuple[int, int]]:
        """(query row, eval row) pairs the check's rules match with `queries` as the training side."""
        out: set[tuple[int, int]] = set()
        for n, fields in ((cfg.ngram_long, cfg.long_eval_fields), (cfg.ngram_short, cfg.short_eval_fields)):
            idx = build_index(evals, n, fields, cfg.min_ngram_words)
            for q, (p, r) in enumerate(zip(queries["prompt"], queries["reference_response"])):
                for text in (p, r):
                    out.update((q, int(e)) for e, _ in idx.matches(text))
        return out

    a, r = frame(anchors), frame(rows)
    if a.empty or r.empty:
        return set()
    return hits(a, r) | {(i, j) for j, i in hits(r, a)}


def _split_anchors(conn, category: Category) -> pd.DataFrame:
    """What a new failure of the category must not straddle: stored failures (their split), the eval file (its
    items are eval rows: held-out side) and the seed file (its items are seeds: training side)."""
    from distill_assets.eval_set import load_eval_file
    from distill_assets.seeds import load_seed_file

    stored = conn.execute(
        "SELECT input, expected, split FROM production_failures WHERE category = ? ORDER BY ingest_seq",
        [category.name]).df()
    parts = [pd.DataFrame({"prompt": stored["input"], "reference_response": stored["expected"],
                           "split": stored["split"]})]
    for load, side in ((load_eval_file, HELDOUT_SPLIT), (load_seed_file, TRAIN_SPLIT)):
        try:
            df = load(category.eval if side == HELDOUT_SPLIT else category.seeds, category)
        except Exception:  # a broken task file is reported by its own assets; the split still holds
            continue
        parts.append(pd.DataFrame({"prompt": df["prompt"], "reference_response": df["reference_response"],
                                   "split": side}))
    return pd.concat(parts, ignore_index=True)


def _assign_splits(conn, new: pd.DataFrame, tasks: TaskFile) -> None:
    """Final split of new failures, in ingest order, so that no seed/eval pair the blocking contamination
    checks would flag is ever made from the failures:

    1. a prompt already stored keeps its split (rows ingested under an older rule or fraction decide);
    2. a failure that overlaps, by the category's n-gram contamination rules, a stored failure, an eval-file item,
       a seed-file item or an earlier failure of this batch joins that side (held-out wins if it touches both:
       a held-out prompt must never become a seed);
    3. otherwise the hash of its prompt decides (set in `_normalize`), which gives the configured fraction.

    Paraphrases that only the embedding rule would catch are not clustered here (no encoder at intake); the
    blocking seed check still catches them."""
    if new.empty:
        return
    stored = conn.execute(
        """SELECT category, input, min(split) AS split FROM production_failures
           WHERE list_contains(?, input) GROUP BY category, input""",
        [sorted(set(new["input"]))],
    ).fetchall()
    known = {(c, i): sp for c, i, sp in stored}
    for cat, group in new.groupby("category", sort=False):
        anchors = _split_anchors(conn, tasks.category(cat))
        rows = pd.DataFrame({"prompt": group["input"].to_numpy(), "reference_response": group["expected"].to_numpy()})
        cfg = tasks.category(cat).contamination
        anchor_sides: dict[int, set[str]] = {}
        for i, j in _overlap_pairs(rows, anchors, cfg):
            anchor_sides.setdefault(i, set()).add(anchors.at[j, "split"])
        peers: dict[int, set[int]] = {}
        for i, j in _overlap_pairs(rows, rows, cfg):
            if i != j:
                peers.setdefault(i, set()).add(j)
                peers.setdefault(j, set()).add(i)
        sides: list[str] = []
        for pos, idx in enumerate(group.index):
            exact = known.get((cat, new.at[idx, "input"]))
            touched = set(anchor_sides.get(pos, ())) | {sides[j] for j in peers.get(pos, ()) if j < pos}
            side = exact or (HELDOUT_SPLIT if HELDOUT_SPLIT in touched else TRAIN_SPLIT if touched else
                             new.at[idx, "split"])
            if side != new.at[idx, "split"]:
                _set_side(new, idx, side)
            sides.append(side)


def _store(store: DuckDBStore, report: IngestReport, good: pd.DataFrame, tasks: TaskFile,
           now: datetime, file_record: dict | None, origin: str) -> IngestReport:
    """One transaction: new failures (with fresh ingest_seq), duplicate notes, rejects, the file record."""
    rows = _normalize(good, tasks, origin, now) if not good.empty else pd.DataFrame()
    with store.connect() as conn:
        conn.execute(FAILURE_FILES_DDL)
        if not rows.empty:
            first = rows.drop_duplicates("failure_id", keep="first")
            for _, r in rows[rows.duplicated("failure_id", keep="first")].iterrows():
                line0 = int(first.loc[first["failure_id"] == r["failure_id"], "source_line"].iloc[0])
                report.rejects.append(_reject(report.source, int(r["source_line"]), "failure_id", "duplicate",
                                              r["failure_id"], f"same failure as line {line0}"))
            existing = conn.execute(
                "SELECT failure_id, status FROM production_failures WHERE list_contains(?, failure_id)",
                [first["failure_id"].tolist()],
            ).fetchall()
            known = dict(existing)
            for _, r in first[first["failure_id"].isin(known)].iterrows():
                report.rejects.append(_reject(report.source, int(r["source_line"]), "failure_id", "duplicate",
                                              r["failure_id"], f"already stored (status {known[r['failure_id']]})"))
            new = first[~first["failure_id"].isin(known)].reset_index(drop=True)
            _assign_splits(conn, new, tasks)
            report.duplicates = int(len(rows) - len(new))
            if not new.empty:
                seq0 = conn.execute("SELECT coalesce(max(ingest_seq), 0) FROM production_failures").fetchall()[0][0]
                new["ingest_seq"] = range(int(seq0) + 1, int(seq0) + 1 + len(new))
                insert_df(conn, "production_failures", new, on_conflict="error")
                report.inserted = int(len(new))
                report.held_out = int((new["status"] == HELD_OUT).sum())
                report.failure_ids = new["failure_id"].tolist()
        if report.rejects:
            rj = pd.DataFrame(report.rejects, columns=["source", "line", "field", "reason", "raw", "detail"])
            rj["line"] = rj["line"].astype("Int32")
            rj["rejected_at"] = pd.Timestamp(now)
            insert_df(conn, "failure_rejects", rj)
        bad_lines = {(r["line"]) for r in report.rejects if r["reason"] != "duplicate"}
        report.rejected = len(bad_lines)
        if file_record is not None:
            conn.execute(
                "INSERT OR REPLACE INTO failure_files VALUES (?, ?, ?, ?, ?, ?, ?)",
                [file_record["sha256"], file_record["path"], report.lines, report.inserted, report.rejected,
                 report.duplicates, now],
            )
    return report


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
            rejects.append(_reject(source, i, None, "not_an_object", raw, "each record must be a dict"))
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
        conn.execute(FAILURE_FILES_DDL)
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


# ------------------------------------------------------------------------------------------ read / status


def list_failures(store: DuckDBStore, status: str | Iterable[str] | None = None, category: str | None = None
                  ) -> pd.DataFrame:
    where, params = [], []
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = set(statuses) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {sorted(unknown)}; one of {STATUSES}")
        where.append("list_contains(?, status)")
        params.append(statuses)
    if category is not None:
        where.append("category = ?")
        params.append(category)
    sql = "SELECT * FROM production_failures" + (" WHERE " + " AND ".join(where) if where else "")
    return store.query_df(sql + " ORDER BY ingest_seq", params)


def list_rejects(store: DuckDBStore, source: str | None = None) -> pd.DataFrame:
    if source:
        return store.query_df("SELECT * FROM failure_rejects WHERE source = ? ORDER BY line", [source])
    return store.query_df("SELECT * FROM failure_rejects ORDER BY rejected_at, source, line")


def _ids(failures: Any) -> list[str]:
    if isinstance(failures, pd.DataFrame):
        if "failure_id" not in failures.columns:
            return []
        failures = failures["failure_id"]
    return [str(f) for f in failures if f is not None and not (isinstance(f, float) and pd.isna(f))]


def set_status(store: DuckDBStore, failures: Any, new_status: str, *, resolved_by: str | None = None) -> int:
    """Move failures to `new_status` where the lifecycle allows it; others are left as they are.
    Returns how many rows changed."""
    if new_status not in STATUSES:
        raise ValueError(f"unknown status {new_status!r}; one of {STATUSES}")
    ids = _ids(failures)
    sources = [s for s, targets in TRANSITIONS.items() if new_status in targets]
    if not ids or not sources:
        return 0
    with store.connect() as conn:
        n = conn.execute(
            "SELECT count(*) FROM production_failures WHERE list_contains(?, failure_id) AND list_contains(?, status)",
            [ids, sources],
        ).fetchall()[0][0]
        conn.execute(
            """UPDATE production_failures SET status = ?, updated_at = ?,
                   resolved_by = CASE WHEN ? = 'resolved' THEN ? ELSE resolved_by END
               WHERE list_contains(?, failure_id) AND list_contains(?, status)""",
            [new_status, utcnow(), new_status, resolved_by, ids, sources],
        )
    return int(n)


def mark_in_training(store: DuckDBStore, failures: Any) -> int:
    """Pending failures whose seeds were built move to in_training (ids, or a frame with `failure_id`)."""
    return set_status(store, failures, IN_TRAINING)


# ------------------------------------------------------------------------------------- hooks for the graph

SEED_COLUMNS = ["seed_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "tags", "source", "source_file", "source_line"]


def production_seed_rows(store: DuckDBStore, category: str) -> pd.DataFrame:
    """Seed rows (source=production) from the training side of the split. Held-out failures never appear.

    Resolved training failures stay in: dropping them would let the next retrain forget what fixed them."""
    df = store.query_df(
        """SELECT failure_id, category, input, expected, source_line FROM production_failures
           WHERE category = ? AND split = ? AND list_contains(?, status) ORDER BY ingest_seq""",
        [category, TRAIN_SPLIT, [PENDING, IN_TRAINING, RESOLVED]],
    )
    out = pd.DataFrame({
        "seed_id": [seed_id(category, p, source="production") for p in df["input"]],
        "category": df["category"].astype(str),
        "prompt": df["input"].astype(str),
        "difficulty": "medium",
        "reference": df["expected"].astype(object).where(df["expected"].notna(), None),
        "tests": "[]",
        "entry_point": pd.Series([None] * len(df), dtype=object),
        "reference_response": df["expected"].astype(object).where(df["expected"].notna(), None),
        "tags": '["production"]',
        "source": "production",
        "source_file": "production_failures",
        "source_line": df["source_line"].fillna(0).astype(int),
        "failure_id": df["failure_id"].astype(str),
    }, columns=[*SEED_COLUMNS, "failure_id"])
    return out.drop_duplicates("seed_id").reset_index(drop=True)


def heldout_failure_rows(store: DuckDBStore, category: str) -> pd.DataFrame:
    """The held-out failures of a category. eval_set builds their eval rows itself (`extra_eval_rows`, eval id =
    hash of the prompt); `promotion.heldout_map` maps eval results back to failures by that id."""
    return store.query_df(
        """SELECT failure_id, category, input, bad_output, expected, status FROM production_failures
           WHERE category = ? AND split = ? ORDER BY ingest_seq""",
        [category, HELDOUT_SPLIT],
    )
