"""clean_dataset rows -> tokenized training records with assistant-only labels, the split, and the dataset version.

Loss is on assistant tokens only, in every turn: each conversation is rendered once with the student chat template
(tools included: lib/chat_template.py) and tokenized with character offsets; a token is trained on (its label is its
id) only when it lies inside an assistant turn's span, and every other token (system, user, tool results, the
template's role headers) is -100. A turn's span is what rendering through that turn adds to rendering the
conversation up to it with the generation prompt: the answer, its end-of-turn marker and the template's newline.
This works with any template whose renderings of a conversation's prefixes are prefixes of the whole (ChatML,
Llama 3, Qwen); trl's `assistant_only_loss` instead needs `{% generation %}` markers, which SmolLM2's template
lacks. The records carry `input_ids` and `labels`, which trl's SFTTrainer takes as they are (then truncates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib import ledger
from distill_assets.lib.chat_template import render, tool_format
from distill_assets.lib.errors import InputError
from distill_assets.lib.split import split_of
from resources.store import DuckDBStore

IGNORE = -100


def parse_conversation(messages_json, where: str = "clean_dataset") -> list[dict]:
    """A training row's messages, checked: a conversation ending with a non-empty assistant turn."""
    try:
        msgs = json.loads(messages_json) if isinstance(messages_json, str) else list(messages_json)
    except json.JSONDecodeError as e:
        raise InputError(where, None, "messages", f"not valid JSON: {e}") from None
    if not msgs or not isinstance(msgs, list):
        raise InputError(where, None, "messages", "empty conversation")
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m or not (isinstance(m.get("content"), str) or m.get("tool_calls")):
            raise InputError(where, None, "messages", f"each message needs role and string content, got {m!r:.80}")
    if msgs[-1]["role"] != "assistant":
        raise InputError(where, None, "messages", "the last message must be the assistant's answer")
    if not conv.message_text(msgs[-1]).strip():
        raise InputError(where, None, "messages", "empty assistant answer")
    if not any(m["role"] == "user" for m in msgs):
        raise InputError(where, None, "messages", "no user turn before the assistant answer")
    problem = conv.conversation_problem(msgs)
    if problem is not None:
        raise InputError(where, None, "messages", f"not a well-formed conversation: {problem}")
    return msgs


def assistant_spans(tokenizer, msgs: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, [(start, end) character span of each assistant turn])."""
    full = render(tokenizer, msgs, tools)
    spans = []
    for i in conv.assistant_indices(msgs):
        before = render(tokenizer, msgs[:i], tools, add_generation_prompt=True)
        through = render(tokenizer, msgs[:i + 1], tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError("the chat template does not render a conversation's prefixes as prefixes of it; "
                             "assistant-only labels cannot be placed")
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_conversation(tokenizer, msgs: list[dict], tools: list[dict] | None = None) -> dict:
    """{"input_ids", "labels"}: labels are the ids inside assistant turns and -100 everywhere else."""
    text, spans = assistant_spans(tokenizer, msgs, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= start and end <= e for s, e in spans) and end > start
        labels.append(tid if inside else IGNORE)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def tokenize_records(tokenizer, records: list[dict]) -> tuple[list[dict], dict]:
    """Tokenized records for the trainer, and what the caller must report: the tool format used."""
    with_tools = any(r.get("tools") for r in records)
    fmt = tool_format(tokenizer) if with_tools else None
    out = [tokenize_conversation(tokenizer, r["messages"], r.get("tools")) for r in records]
    return out, {"tool_format": fmt, "rows_with_tools": sum(bool(r.get("tools")) for r in records)}


def _row_fractions(df: pd.DataFrame, val_fraction: float | Mapping[str, float]) -> float | np.ndarray:
    """One validation fraction, or each row's category's fraction from the task file."""
    if not isinstance(val_fraction, Mapping):
        return float(val_fraction)
    if "category" not in df.columns:
        raise InputError("clean_dataset", None, "category", "missing: needed to look up validation_fraction")
    out = []
    for i, cat in enumerate(df["category"].astype(str), start=1):
        if cat not in val_fraction:
            raise InputError("clean_dataset", i, "category", f"{cat!r} is not a category of the task file")
        out.append(float(val_fraction[cat]))
    return np.array(out)


def split_dataset(df: pd.DataFrame, val_fraction: float | Mapping[str, float]
                  ) -> tuple[list[dict], list[dict], list[str]]:
    """(train records, validation records, notes). Uses clean_dataset's `split` column. When it holds no
    validation rows, the train rows get the same example_id-hash split clean_dataset uses (lib/split.py), with
    `val_fraction` (one number, or {category: validation_fraction}) and at least one validation row."""
    notes: list[str] = []
    if df.empty:
        raise ValueError("clean_dataset is empty: nothing to train on")
    recs = []
    for i, row in enumerate(df.itertuples(index=False)):
        try:
            msgs = parse_conversation(row.messages)
        except InputError as e:
            raise InputError("clean_dataset", i + 1, "messages", f"example {row.example_id}: {e.message}") from None
        tools = getattr(row, "tools", None)
        recs.append({"messages": msgs, "tools": json.loads(tools) if isinstance(tools, str) else None,
                     "example_id": str(row.example_id), "split": str(getattr(row, "split", "train") or "train")})
    if not any(r["split"] == "validation" for r in recs):
        is_train = [r["split"] == "train" for r in recs]
        if sum(is_train) < 2:
            raise ValueError("clean_dataset needs at least 2 examples (train + validation)")
        fractions = _row_fractions(df, val_fraction)
        if isinstance(fractions, np.ndarray):
            fractions = fractions[np.array(is_train)]
        train_ids = pd.Series([r["example_id"] for r, t in zip(recs, is_train) if t])
        assigned = dict(zip(train_ids, split_of(train_ids, fractions, min_rows=2)))
        for r in recs:
            r["split"] = assigned.get(r["example_id"], r["split"]) if r["split"] == "train" else r["split"]
        k = sum(r["split"] == "validation" for r in recs)
        if not k:
            raise ValueError("clean_dataset has no validation rows and validation_fraction is 0: training "
                             "evaluates every epoch and needs at least one validation example")
        notes.append(f"no validation split in clean_dataset: held out {k} train examples by the example_id hash "
                     "split")
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "validation"]
    if not train:
        raise ValueError("clean_dataset has no train rows")
    strip = lambda rs: [{"messages": r["messages"], "tools": r["tools"], "example_id": r["example_id"]} for r in rs]
    return strip(train), strip(val), notes


def register_dataset_version(store: DuckDBStore, df: pd.DataFrame, version: str, run_id: str, *,
                             content_version: str | None = None) -> str:
    """The dataset version as an `artifacts` row, so adapter -> dataset -> examples (lineage table) is joinable.

    `version` is what trained the model: the content hash on the file store, `snapshot:<id>` on a DuckLake
    (then `SELECT * FROM clean_dataset AT (VERSION => id)` returns those rows; `distill lineage model`)."""
    artifact_id = f"dataset:{version}"
    counts = df.groupby("split").size().to_dict() if "split" in df.columns else {"train": len(df)}
    cats = sorted(df["category"].astype(str).unique().tolist()) if "category" in df.columns else []
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="clean_dataset", kind="dataset",
        path=f"{store.location}#clean_dataset", sha256=content_version or version, bytes=None,
        parent_artifact_id=None, dataset_version=version, run_id=run_id,
        metadata={"rows": len(df), "splits": counts, "categories": cats, "content_version": content_version or version,
                  "examples": "lineage.example_id where stage = 'clean_dataset'",
                  "example_ids": sorted(df["example_id"].astype(str).tolist())},
    )
    return artifact_id
