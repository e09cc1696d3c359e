"""Seed and eval records: the two JSONL/CSV files of a category, parsed and validated line by line.

Bad input fails the whole file with every error named by file, line and field, before anything is written.
The column lists of the `seed_prompts` and `eval_set` tables are defined here, once.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.ids import content_hash, seed_id
from distill_assets.lib.tasks import Category

SEED_COLUMNS = ["seed_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "tags", "source", "source_file", "source_line"]
EVAL_COLUMNS = ["eval_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "source"]
DIFFICULTIES = {"easy", "medium", "hard"}
_OPTIONAL_STR = ("reference", "entry_point", "reference_response")


def _records(path: Path) -> list[tuple[int, dict]]:
    """(line, record) pairs from JSONL or CSV, with precise errors for undecodable or unparsable lines."""
    data = path.read_bytes()
    errors: list[InputError] = []
    if path.suffix.lower() == ".csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise InputError(path, line, None, f"not UTF-8 (byte 0x{data[e.start]:02x})") from None
        reader = csv.DictReader(io.StringIO(text))
        rows = []
        for rec in reader:
            for k in ("tests", "tags"):
                if rec.get(k):
                    try:
                        rec[k] = json.loads(rec[k])
                    except json.JSONDecodeError:
                        errors.append(InputError(path, reader.line_num, k, "must be a JSON list in CSV"))
            rows.append((reader.line_num, {k: (v if v != "" else None) for k, v in rec.items()}))
        if errors:
            raise InputErrors(errors)
        return rows
    rows = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            errors.append(InputError(path, n, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(InputError(path, n, None, f"broken JSON: {e.msg} at column {e.colno}"))
            continue
        if not isinstance(rec, dict):
            errors.append(InputError(path, n, None, "each line must be a JSON object"))
            continue
        rows.append((n, rec))
    if errors:
        raise InputErrors(errors)
    return rows


def validate_seed_record(path: Path, line: int, rec: dict, max_chars: int) -> list[InputError]:
    errs = []
    prompt = rec.get("prompt")
    if "prompt" not in rec:
        errs.append(InputError(path, line, "prompt", "missing required field"))
    elif not isinstance(prompt, str):
        errs.append(InputError(path, line, "prompt", f"must be a string, got {type(prompt).__name__}"))
    elif not prompt.strip():
        errs.append(InputError(path, line, "prompt", "is empty"))
    elif len(prompt) > max_chars:
        errs.append(InputError(path, line, "prompt", f"is {len(prompt)} characters; the limit is {max_chars} "
                                                     "(max_seed_chars in the task file)"))
    diff = rec.get("difficulty", "medium")
    if diff is not None and diff not in DIFFICULTIES:
        errs.append(InputError(path, line, "difficulty", f"must be one of {sorted(DIFFICULTIES)}, got {diff!r}"))
    for k in _OPTIONAL_STR:
        v = rec.get(k)
        if v is not None and not isinstance(v, (str, int, float)):
            errs.append(InputError(path, line, k, f"must be a string, got {type(v).__name__}"))
    for k in ("tests", "tags"):
        v = rec.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            errs.append(InputError(path, line, k, "must be a list of strings"))
    return errs


def load_seed_file(path: str | Path, category: Category, source: str = "seed") -> pd.DataFrame:
    """Parse, validate and id the seeds of one category. Raises InputErrors listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, None, "seed file not found")
    records = _records(path)
    errors: list[InputError] = []
    for line, rec in records:
        errors.extend(validate_seed_record(path, line, rec, category.max_seed_chars))
    if category.verify == "code":
        for line, rec in records:
            if rec.get("tests") and not rec.get("entry_point"):
                errors.append(InputError(path, line, "entry_point", "code seeds with tests need an entry_point"))
    if errors:
        raise InputErrors(errors)
    if not records:
        raise InputError(path, None, None, "no seed rows")
    rows = []
    for line, rec in records:
        prompt = rec["prompt"].strip()
        ref = rec.get("reference")
        rows.append({
            "seed_id": seed_id(category.name, prompt, source),
            "category": category.name,
            "prompt": prompt,
            "difficulty": rec.get("difficulty") or "medium",
            "reference": None if ref is None else str(ref),
            "tests": json.dumps(rec.get("tests") or []),
            "entry_point": rec.get("entry_point"),
            "reference_response": rec.get("reference_response"),
            "tags": json.dumps(rec.get("tags") or []),
            "source": source,
            "source_file": str(path),
            "source_line": line,
        })
    df = pd.DataFrame(rows, columns=SEED_COLUMNS)
    return df.drop_duplicates("seed_id", keep="first").reset_index(drop=True)


def eval_id(category: str, prompt: str, reference: str | None, source: str) -> str:
    return "e_" + content_hash("eval", category, prompt.strip(), reference, source)


def load_eval_file(path: str | Path, category: Category) -> pd.DataFrame:
    """Parse and validate one category's eval file; raises InputErrors listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, None, "eval file not found")
    records = _records(path)
    errors: list[InputError] = []
    for line, rec in records:
        errors.extend(validate_seed_record(path, line, rec, category.max_seed_chars))
        if category.verify == "label" and rec.get("reference") not in (category.labels or []):
            errors.append(InputError(path, line, "reference",
                                     f"must be one of the category's labels {category.labels}, "
                                     f"got {rec.get('reference')!r}"))
        if category.verify == "math" and rec.get("reference") in (None, ""):
            errors.append(InputError(path, line, "reference", "math eval items need a reference answer"))
        if category.verify == "code" and not (rec.get("tests") and rec.get("entry_point")):
            errors.append(InputError(path, line, "tests" if not rec.get("tests") else "entry_point",
                                     "code eval items need tests and an entry_point"))
    if errors:
        raise InputErrors(errors)
    if not records:
        raise InputError(path, None, None, "no eval rows: a category needs a held-out eval set")
    seen: dict[str, int] = {}
    rows = []
    for line, rec in records:
        prompt = rec["prompt"].strip()
        ref = None if rec.get("reference") is None else str(rec["reference"])
        eid = eval_id(category.name, prompt, ref, "eval")
        if eid in seen:
            errors.append(InputError(path, line, "prompt", f"repeats the eval item on line {seen[eid]}"))
            continue
        seen[eid] = line
        rows.append({
            "eval_id": eid,
            "category": category.name,
            "prompt": prompt,
            "difficulty": rec.get("difficulty") or "medium",
            "reference": ref,
            "tests": json.dumps(rec.get("tests") or []),
            "entry_point": rec.get("entry_point"),
            "reference_response": rec.get("reference_response"),
            "source": "eval",
        })
    if errors:
        raise InputErrors(errors)
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


GOLD_VERIFY = ("math", "label")  # kinds where a failure's `expected` is the gold answer, as for its seed


def gold_reference(verify: str, expected) -> str | None:
    """A failure's `expected` as the gold `reference` where the category checks answers (math, label): ROUGE-L
    of a correct "... the answer is: 42" against "42" is about 0.2, so a fixed failure would never pass.
    Elsewhere it is only a reference response."""
    ok = isinstance(expected, str) and expected.strip()
    return expected if ok and verify in GOLD_VERIFY else None
