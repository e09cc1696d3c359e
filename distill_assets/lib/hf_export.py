"""The whole clean dataset as a Hugging Face dataset folder: Parquet and chat JSONL per category, and its card.

Layout of DIR (`datasets.load_dataset(DIR)` reads it: the card's YAML `configs` name the files):

    README.md                          dataset card (lib/dataset_card.py): YAML header, then provenance
    card.json                          the card's numbers, machine-readable (the same values the card prints)
    data/<category>/<split>.parquet    one config per category; the default config `all` is every category
    jsonl/<category>/<split>.jsonl     the same rows as chat JSONL: {"messages": [...], "tools": ..., ...}

Every Parquet file has one Arrow schema (FEATURES), so the `all` config can read them together: `messages` is a
list of {role, content, tool_calls, tool_call_id} (tool call arguments as JSON text, OpenAI's wire form),
`tools` the category's function schemas as JSON text (null without tools). Categories with no rows get no
config; the card says so. The folder is written to a temporary sibling and swapped in, so a reader never sees
half of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distill_assets.lib.conversation import loads
from distill_assets.lib.dataset import COLUMNS
from distill_assets.lib.dataset_card import card_facts, render_card
from distill_assets.lib.ids import frame_version
from distill_assets.lib.tasks import TaskFile
from resources.store import DuckDBStore

SPLITS = ("train", "validation")
_CALL = pa.struct([("id", pa.string()), ("type", pa.string()),
                   ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.list_(_CALL)),
                      ("tool_call_id", pa.string())])
FEATURES = pa.schema([("example_id", pa.string()), ("category", pa.string()), ("messages", pa.list_(_MESSAGE)),
                      ("tools", pa.string()), ("seed_id", pa.string()), ("method", pa.string()),
                      ("difficulty", pa.string()), ("source", pa.string()), ("generation_id", pa.string())])


def _message(m: dict) -> dict:
    calls = None
    if m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            fn = c.get("function", {})
            args = fn.get("arguments")
            calls.append({"id": c.get("id"), "type": c.get("type", "function"),
                          "function": {"name": fn.get("name"),
                                       "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return {"role": m.get("role"), "content": m.get("content"), "tool_calls": calls,
            "tool_call_id": m.get("tool_call_id")}


def _text(v) -> str | None:
    return None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def records(df: pd.DataFrame) -> list[dict]:
    """clean_dataset rows as export records (messages parsed, every other field text or null)."""
    out = []
    for r in df.to_dict("records"):
        rec = {k: _text(r.get(k)) for k in FEATURES.names if k != "messages"}
        rec["messages"] = [_message(m) for m in loads(r.get("messages")) or []]
        out.append(rec)
    return out


def _jsonl_record(rec: dict) -> dict:
    # chat JSONL keeps only the keys a message has, as OpenAI and TRL write it
    msgs = [{k: v for k, v in m.items() if v is not None} for m in rec["messages"]]
    return {**rec, "messages": msgs}


def read_clean(store: DuckDBStore, names: list[str]) -> pd.DataFrame:
    if not store.table_exists("clean_dataset"):
        return pd.DataFrame(columns=FEATURES.names)
    df = store.query_df("SELECT * FROM clean_dataset WHERE list_contains(?, category) ORDER BY category, example_id",
                        [names])
    if "tools" not in df.columns:  # written before tools existed
        df["tools"] = None
    return df


def _write_split(tmp: Path, category: str, split: str, part: pd.DataFrame) -> dict:
    recs = records(part)
    pq_path = tmp / "data" / category / f"{split}.parquet"
    js_path = tmp / "jsonl" / category / f"{split}.jsonl"
    pq_path.parent.mkdir(parents=True, exist_ok=True)
    js_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(recs, schema=FEATURES), pq_path)
    with open(js_path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(_jsonl_record(r), ensure_ascii=False) + "\n")
    return {"rows": len(recs), "parquet": str(pq_path.relative_to(tmp)), "jsonl": str(js_path.relative_to(tmp)),
            "parquet_bytes": pq_path.stat().st_size, "jsonl_bytes": js_path.stat().st_size}


def export_hf_dataset(store: DuckDBStore, tasks: TaskFile, out_dir: str | Path, encode=None) -> dict:
    """Write the dataset folder for every category of `tasks`; returns the card's facts (also card.json).
    `encode` (texts -> unit vectors) adds the embedding rule to the contamination re-check of the exported rows;
    without it the n-gram rules run alone, and the card says so."""
    out_dir = Path(out_dir).resolve()
    df = read_clean(store, tasks.names)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files: dict[str, dict] = {}
        for cat in tasks.names:
            part = df[df["category"] == cat]
            if part.empty:
                continue
            files[cat] = {s: _write_split(tmp, cat, s, part[part["split"] == s]) for s in SPLITS
                          if (part["split"] == s).any()}
            # the clean_dataset partition's own data version (the same content hash over its columns)
            files[cat]["dataset_version"] = frame_version(part[[c for c in COLUMNS if c in part.columns]])
        facts = card_facts(store, tasks, df, files, encode)
        (tmp / "README.md").write_text(render_card(facts), encoding="utf-8")
        (tmp / "card.json").write_text(json.dumps(facts, indent=1, default=str), encoding="utf-8")
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return facts
