"""Parsing and validation of failure records: JSONL/CSV lines to records, records to good rows and rejects.

Every input is untrusted text: only five fields are read (category, input, bad_output, expected, reported_at);
anything else in a record, such as a `status`, `failure_id` or `split` key, is ignored, so content can never
steer the pipeline. A bad row becomes a reject naming the file, line, field and reason.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from distill_assets.lib.tasks import Category, TaskFile

FIELDS = ("category", "input", "bad_output", "expected", "reported_at")
RAW_PREVIEW_CHARS = 4096  # rejects keep a preview; the full file is kept in processed/


def _preview(raw: str) -> str:
    if len(raw) <= RAW_PREVIEW_CHARS:
        return raw
    return raw[:RAW_PREVIEW_CHARS] + f"...[truncated, {len(raw)} characters in all]"


def reject_row(source: str, line: int | None, fld: str | None, reason: str, raw: str, detail: str = "") -> dict:
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
                rejects.append(reject_row(source, n, None, "line_too_long", "",
                                       f"line of {size} bytes; the limit is {max_line_bytes} "
                                       "(DISTILL_FAILURE_MAX_LINE_BYTES); the file keeps it"))
                continue
            raw = chunk.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rejects.append(reject_row(source, n, None, "not_utf8", raw.decode("utf-8", errors="backslashreplace"),
                                       f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8"))
                continue
            if n == 1 and text.startswith("\ufeff"):
                text = text[1:]
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                rejects.append(reject_row(source, n, None, "broken_json", text, f"{e.msg} at column {e.colno}"))
                continue
            if not isinstance(rec, dict):
                rejects.append(reject_row(source, n, None, "not_an_object", text, "each line must be a JSON object"))
                continue
            records.append((n, rec, text))
    return records, rejects, n


def parse_csv(path: Path, source: str, max_line_bytes: int) -> tuple[list[tuple[int, dict, str]], list[dict], int]:
    """CSV with a header row (category,input,bad_output,expected,reported_at); empty cells are null. Bytes
    that are not UTF-8 reject only the rows that hold them."""
    records, rejects = [], []
    if path.stat().st_size > max_line_bytes * 64:
        return [], [reject_row(source, None, None, "file_too_large", "",
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
                rejects.append(reject_row(source, n, None, "not_utf8", raw.encode("utf-8", "surrogateescape")
                                       .decode("utf-8", "backslashreplace"), "row holds bytes that are not UTF-8"))
                continue
            if None in rec:
                rejects.append(reject_row(source, n, None, "broken_csv", raw, "more cells than header columns"))
                continue
            records.append((n, {k: (v if v != "" else None) for k, v in rec.items() if k}, raw))
    except csv.Error as e:
        rejects.append(reject_row(source, reader.line_num, None, "broken_csv", "", str(e)))
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
            rejects.append(reject_row(source, int(df.at[i, "line"]), fld, reason, records[i][2],
                                   f"{fld} {msgs.get(reason, reason)}"))
    return df.drop(index=list(bad)).copy(), rejects
