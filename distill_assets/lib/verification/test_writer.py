"""Tests for code that came without any: the teacher writes them from the instruction alone.

The test writer sees the task and the function's name and parameters (so its asserts call the right function),
never the solution's body, so a solution cannot pass tests written to fit it. Its answer is JSON-schema
constrained and parsed strictly: only single-line `assert` statements that parse as Python survive.
"""

from __future__ import annotations

import ast
import json
import re

from distill_assets.lib.verification.code import extract_code
from resources.llm import ChatRequest

SYSTEM = "You write unit tests for Python functions. You never see the solution."
TEMPLATE = """Task:
{instruction}

The solution defines: {signature}

Write {n} independent single-line Python assert statements that check a correct solution of this task, each
of the form `assert {name}(...) == <literal expected value>`. Use only literal arguments and results."""


def tests_schema(n: int) -> dict:
    return {"type": "object", "properties": {"tests": {"type": "array", "items": {"type": "string"},
                                                       "minItems": 1, "maxItems": n}},
            "required": ["tests"]}


def signature_of(response: str | None, entry_point: str | None = None) -> tuple[str, str] | None:
    """(name, `def name(params)`) of the solution's entry function, without its body; None if there is none."""
    code = extract_code(response, entry_point)
    if code is None:
        return None
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if entry_point:
        funcs = [f for f in funcs if f.name == entry_point] or funcs
    if not funcs:
        return None
    fn = funcs[-1] if not entry_point else funcs[0]
    return fn.name, f"def {fn.name}({ast.unparse(fn.args)})"


def writer_messages(instruction: str, signature: str, name: str, n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": TEMPLATE.format(instruction=instruction.strip(), signature=signature,
                                                        name=name, n=n)}]


_ASSERT = re.compile(r"^\s*assert\s.+$")


def parse_tests(text: str | None, name: str, n: int) -> list[str]:
    """The valid assert lines of the writer's answer (JSON `{"tests": [...]}` or plain lines)."""
    if not text:
        return []
    candidates: list[str] = []
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("tests"), list):
            candidates = [str(t) for t in obj["tests"]]
    except ValueError:
        candidates = text.splitlines()
    out = []
    for line in candidates:
        line = line.strip().strip("`").strip()
        if not _ASSERT.match(line) or "\n" in line or f"{name}(" not in line:
            continue
        try:
            node = ast.parse(line)
        except SyntaxError:
            continue
        if len(node.body) == 1 and isinstance(node.body[0], ast.Assert) and line not in out:
            out.append(line)
    return out[:n]


def needs_tests(row: dict) -> bool:
    tests = row.get("tests")
    if tests is None or (isinstance(tests, float) and tests != tests):
        return True
    try:
        return not json.loads(tests) if isinstance(tests, str) else not tests
    except ValueError:
        return True


def write_missing_tests(df, n: int, complete) -> tuple[object, dict]:
    """Fill `tests` (JSON list) of code rows that have none with teacher-written asserts; `tests_source` says
    where each row's tests came from (given | teacher_written). `complete(requests) -> results` is the
    teacher's session. Returns the frame and counts for the metadata."""
    out = df.copy()
    out["tests_source"] = ["given" if not needs_tests(r) else None for r in out.to_dict("records")]
    todo, requests = [], []
    for i, r in zip(out.index, out.to_dict("records")):
        if not needs_tests(r):
            continue
        sig = signature_of(r.get("response"), r.get("entry_point") if isinstance(r.get("entry_point"), str) else None)
        if sig is None:
            continue  # no function to test: verification says verify_no_code
        name, signature = sig
        todo.append((i, name))
        requests.append(ChatRequest(messages=writer_messages(str(r.get("instruction") or ""), signature, name, n),
                                    temperature=0.0, max_tokens=64 * n, json_schema=tests_schema(n),
                                    schema_name="unit_tests"))
    written = 0
    for (i, name), res in zip(todo, complete(requests) if requests else []):
        tests = parse_tests(res.content if res.ok else None, name, n)
        if tests:
            out.at[i, "tests"] = json.dumps(tests)
            out.at[i, "tests_source"] = "teacher_written"
            if not isinstance(out.at[i, "entry_point"], str) or not out.at[i, "entry_point"]:
                out.at[i, "entry_point"] = name
            written += 1
    return out, {"asked": len(requests), "written": written}
