"""The clean dataset: the training set of one category, the rows that survived every filter, in chat format.

Columns: example_id, category, messages (JSON: system, then every user/assistant turn, tool calls in OpenAI
form), split (train | validation), the provenance columns seed_id, method, difficulty, source, generation_id,
and tools (the category's function schemas, JSON, or null). Every row's messages must render with the student
chat template (SmolLM2's `apply_chat_template`, tool calls in the plain-text form where the template has no tool
support: lib/chat_template.py); a row that does not is quarantined in the ledger.

Exported per partition, atomically, to $DISTILL_HOME/datasets/<category>/: train.jsonl, validation.jsonl
(`datasets.load_dataset("json", data_files=...)` rows: {"messages": [...], ...}) and data.parquet (all rows with
their split). The dataset version is the content hash of the table (ids.frame_version), also the data version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib.chat_template import render
from distill_assets.lib.split import split_of
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category
from distill_assets.lib.tokenizer import student_tokenizer

PROVENANCE = ["seed_id", "method", "difficulty", "source", "generation_id"]
COLUMNS = ["example_id", "category", "messages", "split"] + PROVENANCE + ["tools"]
_KEEP_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def build_messages(row: dict | pd.Series) -> list[dict]:
    msgs = None
    if isinstance(row.get("messages"), str):
        try:
            msgs = json.loads(row["messages"])
        except json.JSONDecodeError:
            msgs = None
    if not isinstance(msgs, list):
        msgs = [{"role": "user", "content": row.get("instruction")},
                {"role": "assistant", "content": row.get("response")}]
    system = [m for m in msgs if isinstance(m, dict) and m.get("role") == "system"]
    if not system and isinstance(row.get("system_prompt"), str) and row["system_prompt"]:
        msgs = [{"role": "system", "content": row["system_prompt"]}] + msgs
    return [{k: m[k] for k in _KEEP_KEYS if k in m} for m in msgs if isinstance(m, dict)]


def template_problem(msgs: list[dict], tokenizer, tools: list[dict] | None = None) -> str | None:
    """None when the messages are a system prompt and a well-formed conversation ending with the assistant,
    every turn has text or a tool call, and it renders with the chat template without losing any of it."""
    if not msgs or msgs[0].get("role") != "system" or conv.conversation_problem(msgs) is not None:
        return "not_a_system_led_conversation"
    if not isinstance(msgs[0]["content"], str) or not all(conv.message_text(m).strip() for m in msgs[1:]):
        return "empty_or_non_string_content"
    try:
        text = render(tokenizer, msgs, tools)
    except Exception as e:  # jinja errors of any kind mean the student cannot train on it
        return f"chat_template_error: {type(e).__name__}: {e}"[:300]
    if not all((m.get("content") or "") in text for m in msgs):
        return "chat_template_lost_content"
    return None


def clean_frame(df: pd.DataFrame, category: Category, tokenizer=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(annotated input rows for the ledger, the clean dataset table)."""
    if tokenizer is None:
        tokenizer = student_tokenizer()
    # plain dicts of the four columns read, not iterrows (a Series built per row of every column)
    cols = [c for c in ("messages", "instruction", "response", "system_prompt") if c in df.columns]
    msgs = [build_messages(r) for r in df[cols].to_dict("records")]
    tools = category.tools_json()
    problems = [template_problem(m, tokenizer, tools) for m in msgs]
    bad = [p is not None for p in problems]
    ev = [{"problem": p} if p else {"chat_template": "ok"} for p in problems]
    annotated = annotate(df, [not b for b in bad], [p or "" for p in problems], ev, quarantined=bad)
    good = annotated["keep"].to_numpy(dtype=bool)
    out = pd.DataFrame({
        "example_id": df["example_id"].astype(str).to_numpy()[good],
        "category": category.name,
        "messages": [json.dumps(m, ensure_ascii=False) for m, g in zip(msgs, good) if g],
    })
    out["split"] = split_of(out["example_id"], category.validation_fraction) if len(out) else []
    for c in PROVENANCE:
        out[c] = df[c].to_numpy()[good] if c in df.columns else None
    out["tools"] = json.dumps(tools, ensure_ascii=False) if tools else None
    out = out[COLUMNS].sort_values("example_id").reset_index(drop=True)
    return annotated, out


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonl_records(df: pd.DataFrame) -> list[dict]:
    recs = []
    for r in df.to_dict("records"):
        r = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        r["messages"] = json.loads(r["messages"])
        if isinstance(r.get("tools"), str):
            r["tools"] = json.loads(r["tools"])
        recs.append(r)
    return recs


def export_dataset(df: pd.DataFrame, out_dir: Path, version: str) -> dict[str, Path]:
    """train.jsonl, validation.jsonl, data.parquet and manifest.json under out_dir, each replaced atomically."""
    paths = {}
    for split in ("train", "validation"):
        part = df[df["split"] == split]

        def w(tmp, part=part):
            with open(tmp, "w", encoding="utf-8") as f:
                for r in jsonl_records(part):
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

        paths[split] = out_dir / f"{split}.jsonl"
        _atomic_write(paths[split], w)
    paths["parquet"] = out_dir / "data.parquet"
    _atomic_write(paths["parquet"], lambda tmp: df.to_parquet(tmp, index=False))
    manifest = {"dataset_version": version, "rows": int(len(df)),
                "splits": {s: int((df["split"] == s).sum()) for s in ("train", "validation")},
                "files": {k: p.name for k, p in paths.items()}}
    paths["manifest"] = out_dir / "manifest.json"
    _atomic_write(paths["manifest"], lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return paths
