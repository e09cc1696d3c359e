"""Time the full quickstart from a fresh DISTILL_HOME and DAGSTER_HOME; print time per stage and per asset.

    python benchmarks/quickstart.py                 # fresh temp dirs, embedded teacher, demo task file
    python benchmarks/quickstart.py --keep DIR      # keep the data directory (inspect it with `distill ui`)
    python benchmarks/quickstart.py --json out.json # also write the figures as JSON

Budget: the whole graph in <= 600 s of wall time on 2 CPU cores. Exits 1 if a stage fails, and 3
if it succeeded but took longer than --budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", metavar="DIR", help="use (and keep) this DISTILL_HOME instead of a temp dir")
    ap.add_argument("--json", metavar="FILE", help="write the timings as JSON")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds allowed (default 600)")
    args = ap.parse_args()

    home = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="distill-qs-bench-"))
    if args.keep and home.exists() and any(home.iterdir()):
        print(f"{home} is not empty: the benchmark measures a fresh run", file=sys.stderr)
        return 2
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DISTILL_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    for var in ("TEACHER_BASE_URL", "JUDGE_BASE_URL"):  # the quickstart is the embedded defaults
        os.environ.pop(var, None)

    t0 = time.perf_counter()
    import_s = None
    from distill_assets import quickstart as qs

    try:
        t_imp = time.perf_counter()
        qs.load_defs()
        import_s = time.perf_counter() - t_imp
        summaries = qs.run()
    except qs.StageFailed as e:
        print(f"FAILED after {time.perf_counter() - t0:.1f}s: {e}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    defs = qs.load_defs()
    stages = qs.stage_times(defs, summaries)
    assets = qs.asset_times(summaries)
    runs = [{"label": s.label, "run_id": s.run_id, "wall_s": round(s.wall_s, 2)} for s in summaries]
    overhead = total - sum(stages.values())

    print("\n=== benchmarks/quickstart ===")
    print(f"cores: {os.cpu_count()}  DISTILL_HOME={home}")
    print(f"{'stage':<14}{'seconds':>9}")
    for g in [*qs.STAGE_GROUPS, *sorted(set(stages) - set(qs.STAGE_GROUPS))]:
        if g in stages:
            print(f"{g:<14}{stages[g]:9.1f}")
    print(f"{'import defs':<14}{import_s or 0:9.1f}")
    print(f"{'run overhead':<14}{overhead:9.1f}   (process start, resource init, event storage)")
    print(f"{'TOTAL':<14}{total:9.1f}   budget {args.budget:.0f}s -> {'OK' if total <= args.budget else 'OVER'}")
    print("\nslowest steps (summed over partitions):")
    for step, sec in sorted(assets.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {step:<40}{sec:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"total_s": total, "stages_s": stages, "steps_s": assets,
                                               "runs": runs, "import_s": import_s, "home": str(home)}, indent=2))
    return 0 if total <= args.budget else 3


if __name__ == "__main__":
    sys.exit(main())
