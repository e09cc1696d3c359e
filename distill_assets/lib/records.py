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

from distill_assets.lib import conversation as conv
from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.ids import content_hash, seed_id
from distill_assets.lib.tasks import Category
from distill_assets.lib.verification.tools import check_call

# `messages`: the seed's conversation (JSON, user turn last) when it is one, else null; `prompt` is then its last
# user turn, so every stage that reads prompts (contamination, Self-Instruct examples) still has one.
SEED_COLUMNS = ["seed_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "tags", "source", "source_file", "source_line", "messages"]
EVAL_COLUMNS = ["eval_id", "category", "prompt", "difficulty", "reference", "tests", "entry_point",
                "reference_response", "source", "messages"]
DIFFICULTIES = {"easy", "medium", "hard"}
_OPTIONAL_STR = ("reference", "entry_point", "reference_response")


def _records(path: Path) -> tuple[list[tuple[int, dict]], list[InputError]]:
    """(line, record) pairs from JSONL or CSV, and precise errors for undecodable or unparsable lines (the
    callers add the rows' own errors, so one run lists every bad line)."""
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
            for k in ("tests", "tags", "messages", "expected_tool_call"):
                if rec.get(k):
                    try:
                        rec[k] = json.loads(rec[k])
                    except json.JSONDecodeError:
                        kind = "an object" if k == "expected_tool_call" else "a list"
                        errors.append(InputError(path, reader.line_num, k, f"must be JSON ({kind}) in CSV"))
            rows.append((reader.line_num, {k: (v if v != "" else None) for k, v in rec.items()}))
        return rows, errors
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
    return rows, errors


def _messages_errors(path: Path, line: int, msgs, max_chars: int) -> list[InputError]:
    problem = conv.conversation_problem(msgs, ends_with=("user", "tool"), allow_system=False)
    if problem == "system_in_seed":
        return [InputError(path, line, "messages", "a seed conversation has no system turn: the category's "
                                                    "system_prompt in the task file is used")]
    if problem is not None:
        hint = {"seed_must_end_with_user": "it must end with a user turn or tool result (the teacher answers it)",
                "wrong_roles_or_order": "turns must start with user and alternate user/assistant"}.get(problem, "")
        return [InputError(path, line, "messages", f"not a valid OpenAI chat list: {problem}"
                                                    + (f"; {hint}" if hint else ""))]
    for m in msgs:  # OpenAI-compatible servers refuse a tool result that does not name its call
        if m.get("role") == "tool" and not isinstance(m.get("tool_call_id"), str):
            return [InputError(path, line, "messages", "a tool turn needs tool_call_id, the id of the call it "
                                                        "answers")]
    size = sum(len(conv.message_text(m)) for m in msgs)
    if size > max_chars:
        return [InputError(path, line, "messages", f"is {size} characters; the limit is {max_chars} "
                                                    "(max_seed_chars in the task file)")]
    return []


def _expected_call_errors(path: Path, line: int, rec: dict, category: Category | None) -> list[InputError]:
    call = rec.get("expected_tool_call")
    if call is None:
        return []
    field = "expected_tool_call"
    if category is None or not category.tools:
        return [InputError(path, line, field, "only a category with `tools` can expect a tool call")]
    if rec.get("reference") is not None:
        return [InputError(path, line, field, "give either reference or expected_tool_call, not both")]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(call.get("arguments"),
                                                                                                dict):
        return [InputError(path, line, field, "must be an object {name: string, arguments: object}")]
    reason, detail = check_call(call, category.tools_json())
    if reason is not None:
        return [InputError(path, line, field, f"{reason}: {detail.get('error') or detail}")]
    return []


def validate_seed_record(path: Path, line: int, rec: dict, max_chars: int,
                         category: Category | None = None) -> list[InputError]:
    errs = _expected_call_errors(path, line, rec, category)
    prompt = rec.get("prompt")
    if rec.get("messages") is not None:
        if rec.get("prompt") is not None:
            errs.append(InputError(path, line, "messages", "give either prompt or messages, not both"))
        else:
            errs.extend(_messages_errors(path, line, rec["messages"], max_chars))
    elif "prompt" not in rec:
        errs.append(InputError(path, line, "prompt", "missing required field (or give `messages`, a conversation)"))
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
    records, errors = _records(path)
    for line, rec in records:
        errors.extend(validate_seed_record(path, line, rec, category.max_seed_chars, category))
    if category.verify == "code":
        for line, rec in records:
            if rec.get("tests") and not rec.get("entry_point"):
                errors.append(InputError(path, line, "entry_point", "code seeds with tests need an entry_point"))
    if errors:
        raise InputErrors(sorted(errors, key=lambda e: e.line or 0))
    if not records:
        raise InputError(path, None, None, "no seed rows")
    rows = []
    for line, rec in records:
        prompt, messages, key = _prompt_of(rec)
        ref = _reference_of(rec)
        rows.append({
            "seed_id": seed_id(category.name, key, source),
            "category": category.name,
            "prompt": prompt,
            "difficulty": rec.get("difficulty") or "medium",
            "reference": ref,
            "tests": json.dumps(rec.get("tests") or []),
            "entry_point": rec.get("entry_point"),
            "reference_response": rec.get("reference_response"),
            "tags": json.dumps(rec.get("tags") or []),
            "source": source,
            "source_file": str(path),
            "source_line": line,
            "messages": messages,
        })
    df = pd.DataFrame(rows, columns=SEED_COLUMNS)
    return df.drop_duplicates("seed_id", keep="first").reset_index(drop=True)


def _prompt_of(rec: dict) -> tuple[str, str | None, str]:
    """(prompt, messages JSON or None, the text the id hashes) of a validated record."""
    if rec.get("messages") is None:
        p = rec["prompt"].strip()
        return p, None, p
    msgs = [{k: v for k, v in m.items()} for m in rec["messages"]]
    return conv.last_user(msgs).strip(), conv.dumps(msgs), conv.canonical(msgs)


def _reference_of(rec: dict) -> str | None:
    if rec.get("expected_tool_call") is not None:  # the expected call is the gold answer, as canonical JSON
        c = rec["expected_tool_call"]
        return json.dumps({"name": c["name"], "arguments": c["arguments"]}, sort_keys=True, ensure_ascii=False)
    ref = rec.get("reference")
    return None if ref is None else str(ref)


def eval_id(category: str, prompt: str, reference: str | None, source: str) -> str:
    return "e_" + content_hash("eval", category, prompt.strip(), reference, source)


def load_eval_file(path: str | Path, category: Category) -> pd.DataFrame:
    """Parse and validate one category's eval file; raises InputErrors listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, None, "eval file not found")
    records, errors = _records(path)
    for line, rec in records:
        errors.extend(validate_seed_record(path, line, rec, category.max_seed_chars, category))
        if category.verify == "tool_call" and rec.get("expected_tool_call") is None:
            errors.append(InputError(path, line, "expected_tool_call", "tool_call eval items need the expected call"))
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
        raise InputErrors(sorted(errors, key=lambda e: e.line or 0))
    if not records:
        raise InputError(path, None, None, "no eval rows: a category needs a held-out eval set")
    seen: dict[str, int] = {}
    rows = []
    for line, rec in records:
        prompt, messages, key = _prompt_of(rec)
        ref = _reference_of(rec)
        eid = eval_id(category.name, key, ref, "eval")
        if eid in seen:
            errors.append(InputError(path, line, "messages" if messages else "prompt",
                                     f"repeats the eval item on line {seen[eid]}"))
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
            "messages": messages,
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
