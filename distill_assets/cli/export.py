"""`distill export dataset DIR`: clean_dataset as a Hugging Face dataset folder with a generated card."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill_assets.cli.common import store
from distill_assets.cli.errors import RunError, UsageError
from distill_assets.lib.contamination import encoder
from distill_assets.lib.hf_export import export_hf_dataset
from distill_assets.lib.settings import embedded_embedder_dir, embedder_path
from distill_assets.lib.tasks import load_tasks
from resources.embedder import EmbedderResource


def cmd_export_dataset(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    s = store()
    if not s.table_exists("clean_dataset"):
        raise RunError("no clean_dataset in the ledger yet: materialize it first (distill quickstart, or "
                       "distill materialize --category <name>)")
    encode = None
    if not args.ngrams_only:
        emb = EmbedderResource(model_path=embedder_path(),
                               embedded_model_dir=None if embedder_path() else str(embedded_embedder_dir()))
        encode = encoder(emb, s)
    facts = export_hf_dataset(s, load_tasks(), out, encode=encode)
    for name, c in facts["categories"].items():
        print(f"{name}: {c['splits']['train']} train, {c['splits']['validation']} validation "
              f"(contaminated on re-check: {c['contamination']['recheck_contaminated']})")
    for name in facts["empty_categories"]:
        print(f"{name}: no rows (no config)")
    print(f"wrote {facts['rows']} example(s) to {out.resolve()} (card: README.md)")
    return 0
