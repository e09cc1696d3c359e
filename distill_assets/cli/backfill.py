"""`distill backfill`: an asset backfill stored in the Dagster instance, as the UI's "Materialize partitions".

The backfill daemon (`dagster dev`, or `dagster-daemon run` in production) turns it into one run per partition,
honouring the instance's run queue and concurrency pools. `--wait` follows it to the end and, when no daemon is
running for this DAGSTER_HOME, starts one for the duration.
"""

from __future__ import annotations

import argparse
import random
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg

# Dagster has no public Python API that creates an asset backfill (the UI goes through its GraphQL server, and
# `dagster job backfill` makes job backfills); this is the one private name the CLI uses, only in `_add_backfill`.
from dagster._core.execution.backfill import PartitionBackfill

from distill_assets import quickstart as qs
from distill_assets.cli.common import check_categories, keys_for
from distill_assets.cli.errors import RunError

BACKFILL_TAG = "dagster/backfill"  # the system tag Dagster puts on every run of a backfill
# BulkActionStatus values, compared as strings so no other private name is needed
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}
TERMINAL = SUCCEEDED | {"COMPLETED_FAILED", "FAILED", "CANCELED"}


def _new_backfill_id() -> str:
    # the same shape as Dagster's own ids (8 lowercase letters), which the UI shows in /runs/b/<id>
    return "".join(random.choice(string.ascii_lowercase) for _ in range(8))


def _add_backfill(instance: dg.DagsterInstance, defs: dg.Definitions, keys: list[dg.AssetKey], cats: list[str],
                  title: str | None) -> str:
    backfill_id = _new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=defs.resolve_asset_graph(), partition_names=cats,
        asset_selection=keys, backfill_timestamp=time.time(),
        tags={"distill/entry": "cli-backfill"}, dynamic_partitions_store=instance, all_partitions=False,
        title=title, description=None, run_config=None)
    instance.add_backfill(backfill)
    return backfill_id


def _backfill_daemon_alive(instance: Any, within_s: float = 120.0) -> bool:
    try:
        beats = instance.get_daemon_heartbeats()
    except Exception:
        return False
    now = time.time()
    return any(t == "BACKFILL" and now - hb.timestamp < within_s for t, hb in beats.items())


def _follow(instance: dg.DagsterInstance, backfill_id: str, timeout: float, daemon: subprocess.Popen | None,
            log_name: str) -> tuple[str, list]:
    """Print status changes until the backfill ends; returns its final status and its runs."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status = instance.get_backfill(backfill_id).status.value
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        state = (status, tuple(sorted(r.status.value for r in runs)))
        if state != last:
            counts: dict[str, int] = {}
            for r in runs:
                counts[r.status.value] = counts.get(r.status.value, 0) + 1
            print(f"  {status}: runs {counts or '{}'}", flush=True)
            last = state
        if status in TERMINAL:
            return status, runs
        if time.monotonic() > deadline:
            raise RunError(f"backfill {backfill_id} still {status} after {timeout:.0f}s")
        if daemon is not None and daemon.poll() is not None:
            raise RunError(f"dagster-daemon exited ({daemon.returncode}); see {log_name}")
        time.sleep(2)


def _daemon_program() -> str:
    """dagster-daemon beside this Python (its venv need not be on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "dagster-daemon"
    return str(beside) if beside.exists() else (shutil.which("dagster-daemon") or "dagster-daemon")


def cmd_backfill(args: argparse.Namespace) -> int:
    cats = check_categories(args.category)
    defs = qs.load_defs()
    keys = keys_for(defs, args.select, partitioned_only=True)
    instance = qs.get_instance()
    home = qs.dagster_home()
    backfill_id = _add_backfill(instance, defs, keys, cats, args.title)
    print(f"backfill {backfill_id}: {len(keys)} asset(s) x {len(cats)} partition(s) "
          f"({', '.join(cats)}); DAGSTER_HOME={home}")
    print(f"  in the UI: /runs/b/{backfill_id}")
    daemon = None
    log_name = str(home / "daemon.log")
    if not _backfill_daemon_alive(instance):
        if not args.wait:
            print("  no backfill daemon is running for this instance yet: start `distill ui` (dagster dev) or "
                  "`dagster-daemon run -m distill_assets.definitions`, or rerun with --wait")
            return 0
        print("  starting dagster-daemon for this backfill", flush=True)
        log = open(log_name, "ab")
        daemon = subprocess.Popen([_daemon_program(), "run", "-m", "distill_assets.definitions"],
                                  stdout=log, stderr=subprocess.STDOUT)
    if not args.wait:
        return 0
    try:
        status, runs = _follow(instance, backfill_id, args.timeout, daemon, log_name)
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
    failed_runs = [r.run_id for r in runs if r.status.value == "FAILURE"]
    if status not in SUCCEEDED or failed_runs:
        raise RunError(f"backfill {backfill_id} ended {status}; failed runs: {', '.join(failed_runs) or '-'}")
    print(f"backfill {backfill_id} succeeded: {len(runs)} run(s)")
    return 0
