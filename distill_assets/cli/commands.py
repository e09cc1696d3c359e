"""The CLI commands other than `backfill`: quickstart, ui, materialize, lineage, failures, report."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from pathlib import Path

from distill_assets import quickstart as qs
from distill_assets.cli.common import check_categories, emit, is_empty, keys_for, store
from distill_assets.cli.errors import RunError, UsageError
from distill_assets.lib import lineage, model_lineage
from distill_assets.lib.production import intake, state
from distill_assets.lib.settings import get_settings


def cmd_quickstart(args: argparse.Namespace) -> int:
    try:
        qs.run()
    except qs.StageFailed as e:
        raise RunError(str(e)) from None
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    home = qs.dagster_home()
    cmd = ["dagster", "dev", "-m", "distill_assets.definitions", "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={home}\nopen http://{args.host}:{args.port}/asset-groups", flush=True)
    try:
        os.execvpe(cmd[0], cmd, os.environ)
    except FileNotFoundError:
        raise RunError("`dagster` is not on PATH; install the project (pip install -e .)") from None
    return 0  # pragma: no cover


def cmd_materialize(args: argparse.Namespace) -> int:
    defs = qs.load_defs()
    if args.category:
        cats = check_categories(args.category)
        keys = keys_for(defs, args.select, partitioned_only=True)
    else:
        if not args.select:
            raise UsageError("give --category (one or more) for the per-category assets, or --select for "
                             "unpartitioned ones (e.g. --select group:training)")
        cats = check_categories(None)
        keys = keys_for(defs, args.select, partitioned_only=False)
    try:
        summaries = qs.materialize(keys, cats, defs=defs, label="materialize")
    except qs.StageFailed as e:
        raise RunError(str(e)) from None
    total = sum(s.wall_s for s in summaries)
    print(f"materialized {len(keys)} asset(s) in {len(summaries)} run(s), {total:.1f}s; "
          f"DAGSTER_HOME={qs.dagster_home()}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    fn = lineage.why if args.action == "why" else lineage.origin
    try:
        out = fn(store(), args.example_id)
    except LookupError as e:  # KeyError included: the lineage module says what it looked for
        msg = e.args[0] if e.args else ""
        raise UsageError(str(msg) or f"unknown example id {args.example_id!r}") from None
    if is_empty(out):
        raise UsageError(f"unknown example id {args.example_id!r}: no lineage recorded for it")
    if args.json and hasattr(out, "to_json"):
        print(out.to_json(orient="records", indent=2, default_handler=str))
    else:
        emit(out)
    return 0


def cmd_lineage_model(args: argparse.Namespace) -> int:
    try:
        out = model_lineage.training_rows(store(), args.artifact)
    except LookupError as e:
        raise UsageError(str(e.args[0] if e.args else e)) from None
    rows = out["rows"]
    if args.json:
        print(rows.to_json(orient="records", indent=2, default_handler=str))
        return 0
    print(f"{out['artifact']} was trained on {out['dataset']} (version {out['dataset_version']}): "
          f"{len(rows)} rows; {out['note']}")
    print(f"query: {out['sql']}")
    cols = [c for c in ("example_id", "category", "split") if c in rows.columns]
    emit(rows[cols] if cols else rows)
    return 0


def cmd_failures_add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    rep = intake.ingest_file(store(), path, source="cli")
    if rep.skipped_file:
        print(f"{path}: already ingested (same content); nothing to do")
        return 0
    print(f"{path}: {rep.lines} line(s): {rep.inserted} new failure(s) ({rep.held_out} held out for the "
          f"promotion gate), {rep.duplicates} duplicate(s), {rep.rejected} rejected")
    for r in rep.rejects[:20]:
        where = f"{r.get('source', path)}:{r.get('line')}" if r.get("line") else str(r.get("source", path))
        fld = f" field '{r['field']}'" if r.get("field") else ""
        print(f"  rejected {where}:{fld} {r.get('reason', '')} {r.get('detail', '')}".rstrip(), file=sys.stderr)
    if len(rep.rejects) > 20:
        print(f"  ... and {len(rep.rejects) - 20} more (distill failures list shows stored rows)", file=sys.stderr)
    if rep.rejected and not rep.inserted and not rep.duplicates:
        raise UsageError(f"{path}: no valid failure in the file")
    return 0


def cmd_failures_list(args: argparse.Namespace) -> int:
    if args.category:
        check_categories([args.category])
    st = store()
    if not st.table_exists("production_failures"):
        print("(no failures reported yet: distill failures add FILE)")
        return 0
    try:
        out = state.list_failures(st, status=args.status, category=args.category)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(out.to_json(orient="records", indent=2, date_format="iso", default_handler=str))
        return 0
    if out.empty:
        filt = " matching the filters" if (args.status or args.category) else " reported yet: distill failures add FILE"
        print(f"(no failures{filt})")
        return 0
    cols = [c for c in ("failure_id", "category", "status", "split", "resolved_by", "source", "reported_at", "input",
                        "bad_output") if c in out.columns]
    view = out[cols].copy() if cols else out
    for c in ("input", "bad_output"):
        if c in view.columns:
            view[c] = view[c].astype(str).str.slice(0, 60)
    emit(view)
    print(f"{len(out)} failure(s)")
    return 0


def cmd_report_open(args: argparse.Namespace) -> int:
    reports = get_settings().reports
    path = qs.latest_report(reports)
    if path is None:
        raise RunError(f"no HTML report under {reports} yet: materialize eval_report first "
                       "(distill quickstart, or from the UI)")
    print(path)
    if args.browser and not webbrowser.open(path.as_uri()):
        print(f"(no browser available; open {path.as_uri()} yourself)", file=sys.stderr)
    return 0
