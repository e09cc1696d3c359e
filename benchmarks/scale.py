"""Scale benchmark: N distinct English seed prompts through seed_prompts -> clean_dataset, one asset (with its
checks) per process, against a fast local OpenAI-compatible test server (zero latency, deterministic varied
answers; benchmarks/scale_workload.py). Prints, per stage and N: wall time of the run (and of its embedding),
rows in and out, peak RSS, and the growth exponent of the wall time from the smallest to the largest N.

    python benchmarks/scale.py --n 10000 100000            # file store
    python benchmarks/scale.py --n 200 --json out.json      # smoke size
    python benchmarks/scale.py --store both --n 10000       # the file store and a DuckLake side by side
                                                            # (a throwaway PostgreSQL server is its catalog)
    python benchmarks/scale.py --embedder onnx-int8         # EMBEDDER_BACKEND of the runs (default: torch)

Targets on 2 cores at 100k: every stage but its embedding within 2 minutes, peak RSS <= 6 GB, no stage worse
than linear except near-dup (the exponent is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import scale_workload as wl

STAGES = ["seed_prompts", "eval_set", "raw_generations", "quality_filtered", "deduplicated", "judged", "verified",
          "balanced", "decontaminated", "clean_dataset"]
UPSTREAM = {"raw_generations": "seed_prompts", "clean_dataset": "decontaminated"}
RESULT_TAG = "SCALE_RESULT "
RSS_TARGET_GB = 6.0
STAGE_TARGET_S = 120.0


# ---------------------------------------------------------------- one stage, in its own process

def run_stage(stage: str) -> int:
    """Child mode: materialize `stage` (and its checks) for the benchmark category; print one JSON line."""
    t0 = time.perf_counter()
    from distill_assets import quickstart as qs
    from resources import embedder as emb_mod

    defs = qs.load_defs()
    keys = qs.resolve_selection(defs, stage)
    t1 = time.perf_counter()
    summaries = qs.materialize(keys, [wl.CATEGORY], defs=defs, label=f"scale {stage}", echo=lambda s: None)
    wall = time.perf_counter() - t1
    s = summaries[-1]
    print(RESULT_TAG + json.dumps({"stage": stage, "success": s.success, "failure": s.failure, "run_s": wall,
                                   "startup_s": t1 - t0, "steps": s.step_s, "embed": emb_mod.STATS.as_dict(),
                                   "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}),
          flush=True)
    return 0 if s.success else 1


def _spawn(stage: str, env: dict) -> dict:
    """Run one stage in a child process (its peak RSS is the child's own, as it reports it)."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--stage", stage], env=env, capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith(RESULT_TAG)), None)
    if line is None:
        raise RuntimeError(f"stage {stage} printed no result (exit {p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(line[len(RESULT_TAG):])
    res["proc_s"] = time.perf_counter() - t
    if not res["success"]:
        raise RuntimeError(f"stage {stage} failed: {res['failure']}\n{p.stderr[-3000:]}")
    return res


# ---------------------------------------------------------------- rows in and out, from the store

def _counts(where: dict, stage: str) -> tuple[int | None, int | None]:
    """(rows in, rows out) of `stage`, read through the store the run wrote to (a file or a DuckLake)."""
    import duckdb

    from resources.store import DuckDBStore

    store = DuckDBStore(**where)

    def table_count(name: str, kept_only: bool) -> int | None:
        try:
            cols = set(store.query_df(f"SELECT * FROM {name} LIMIT 0").columns)
        except duckdb.CatalogException:
            return None
        where_sql = "WHERE keep" if kept_only and "keep" in cols else ""
        return int(store.query_df(f"SELECT count(*) AS n FROM {name} {where_sql}")["n"][0])

    if stage in UPSTREAM:
        return table_count(UPSTREAM[stage], True), table_count(stage, False)
    return table_count(stage, False), table_count(stage, True)


# ---------------------------------------------------------------- one N

def run_n(n: int, workdir: Path, base_url: str, store: str, stages: list[str], save=lambda: None,
          pg=None, embedder: str = "torch") -> dict[str, dict]:
    """One N on one store; `pg`: the Postgres server whose fresh database is the DuckLake's catalog."""
    home = workdir / f"n{n}-{store}"
    tasks = home / "task" / "tasks.yaml"
    if stages == STAGES or not tasks.exists():
        tasks = wl.write_workload(home / "task", n)
    where: dict = {"database": str(home / "distill.duckdb")}
    lake_env: dict = {}
    if store == "ducklake":
        catalog_file = home / "catalog.dsn"  # --stages reruns reuse the run's own catalog
        if stages == STAGES or not catalog_file.exists():
            home.mkdir(parents=True, exist_ok=True)
            catalog_file.write_text(pg.new_database(f"scale_{n}_{os.getpid()}_{int(time.time())}"))
        where = {**where, "catalog": catalog_file.read_text(), "data_path": str(home / "lake_data")}
        lake_env = {"DISTILL_STORE": f"ducklake:postgres:{where['catalog']}", "DISTILL_DATA_PATH": where["data_path"]}
    env = {**os.environ, **lake_env, "DISTILL_HOME": str(home), "DISTILL_TASKS": str(tasks),
           "DAGSTER_HOME": str(home / "dagster_home"), "TEACHER_BASE_URL": base_url,
           "TEACHER_MODEL": "fake-teacher", "TEACHER_MAX_CONCURRENCY": "64", "JUDGE_MODEL": "fake-judge",
           "TOKENIZERS_PARALLELISM": "false", "EMBEDDER_BACKEND": embedder}
    (home / "dagster_home").mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}
    for stage in stages:
        res = _spawn(stage, env)
        res["rows_in"], res["rows_out"] = _counts(where, stage)
        if stage == "seed_prompts":
            res["rows_in"] = n
        out[stage] = res
        save(n, stage, res)  # kept as each stage ends: a long run stopped midway still reports what it did
        e = res["embed"]
        print(f"  n={n:>7} {stage:<17} run {res['run_s']:7.1f}s (embedding {e['encode_s']:6.1f}s, "
              f"{e['encoded']} new texts) rows {res['rows_in']} -> {res['rows_out']}  rss {res['rss_gb']:.2f} GB",
              flush=True)
    return out


def _exponent(a: float, b: float, na: int, nb: int) -> float | None:
    if a <= 0 or b <= 0 or na == nb:
        return None
    return math.log(b / a) / math.log(nb / na)


def table(results: dict[str, dict[int, dict[str, dict]]]) -> str:
    """One side-by-side table: per stage, per store and N, run / embedding seconds, rows, RSS; the exponent."""
    lines = []
    for store, by_n in results.items():
        ns = sorted(by_n)
        head = "| stage | " + " | ".join(f"N={n:,}: run s (embed s) | rows in -> out | RSS GB" for n in ns)
        head += f" | exponent {ns[0]:,}->{ns[-1]:,} (run; non-embedding) |" if len(ns) > 1 else " |"
        lines += [f"store: {store}", head, "|" + "---|" * (head.count("|") - 1)]
        for stage in [s for s in STAGES if all(s in by_n[n] for n in ns)]:  # a stopped run: what all have
            cells = []
            for n in ns:
                r = by_n[n][stage]
                cells += [f"{r['run_s']:.1f} ({r['embed']['encode_s']:.1f})",
                          f"{r['rows_in']:,} -> {r['rows_out']:,}" if r["rows_out"] is not None else "-",
                          f"{r['rss_gb']:.2f}"]
            if len(ns) > 1:
                a, b = by_n[ns[0]][stage], by_n[ns[-1]][stage]
                ex = _exponent(a["run_s"], b["run_s"], ns[0], ns[-1])
                ex2 = _exponent(a["run_s"] - a["embed"]["encode_s"], b["run_s"] - b["embed"]["encode_s"],
                                ns[0], ns[-1])
                cells.append(f"{ex:.2f}; {ex2:.2f}" if ex is not None and ex2 is not None else "-")
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        for n in ns:
            runs = by_n[n]
            if not runs:
                continue
            emb = sum(r["embed"]["encode_s"] for r in runs.values())
            texts = sum(r["embed"]["encoded"] for r in runs.values())
            asked = sum(r["embed"]["requested"] for r in runs.values())
            worst = max((r["run_s"] - r["embed"]["encode_s"], s) for s, r in runs.items())
            lines.append(f"N={n:,}: total run {sum(r['run_s'] for r in runs.values()):.1f} s, process total "
                         f"{sum(r['proc_s'] for r in runs.values()):.1f} s; embedding {emb:.1f} s for {texts:,} "
                         f"distinct new texts ({texts / emb if emb else 0:.0f} texts/s; {asked:,} asked, the rest "
                         f"from the cache); peak RSS {max(r['rss_gb'] for r in runs.values()):.2f} GB "
                         f"(target {RSS_TARGET_GB:.0f}); slowest non-embedding stage {worst[1]} {worst[0]:.1f} s "
                         f"(target {STAGE_TARGET_S:.0f})")
    return "\n".join(lines)


def _lake_missing() -> str | None:
    """Why a DuckLake run cannot start here (no PostgreSQL server binaries, no DuckLake extension), or None."""
    from resources import lake
    from tests.fakes.postgres_server import postgres_available

    for ok, why in (postgres_available(), lake.ducklake_extensions_available()):
        if not ok:
            return why
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 100000], help="numbers of seed prompts")
    ap.add_argument("--store", choices=["file", "ducklake", "both"], default="file")
    ap.add_argument("--embedder", choices=["torch", "onnx", "onnx-int8"], default="torch",
                    help="EMBEDDER_BACKEND of the runs (benchmarks/embedding.py compares the two)")
    ap.add_argument("--workdir", help="keep the runs here (default: a temp dir, removed)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES,
                    help="rerun only these stages on the runs kept in --workdir (default: all, from scratch)")
    ap.add_argument("--report", metavar="JSON", help="print the table of a saved --json file and exit")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.stage:
        return run_stage(args.stage)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(table({s: {int(n): v for n, v in r.items()} for s, r in saved.items()}))
        return 0
    stores = ["file", "ducklake"] if args.store == "both" else [args.store]
    if "ducklake" in stores and (why := _lake_missing()):
        print(f"ducklake: {why}", file=sys.stderr)
        return 2
    from tests.fakes.openai_server import FakeOpenAIServer
    from tests.fakes.postgres_server import PostgresServer

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="distill-scale-")
    workdir = Path(args.workdir or tmp.name).resolve()
    results: dict[str, dict[int, dict]] = {}
    t0 = time.perf_counter()

    def saver(store: str):
        def save(n: int, stage: str, res: dict) -> None:
            results.setdefault(store, {}).setdefault(n, {})[stage] = res
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {s: {str(k): v for k, v in r.items()} for s, r in results.items()}, indent=1))
        return save

    try:
        with contextlib.ExitStack() as stack:
            srv = stack.enter_context(FakeOpenAIServer(responder=wl.respond, tool_responder=None,
                                                       model="fake-teacher"))
            # the DuckLake's catalog: a throwaway PostgreSQL server, as a cluster's would be a shared one
            pg = stack.enter_context(PostgresServer()) if "ducklake" in stores else None
            for store in stores:
                for n in args.n:  # in the order given: the largest first still gets its figures if stopped
                    run_n(n, workdir, srv.base_url, store, args.stages, saver(store), pg=pg,
                          embedder=args.embedder)
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\n=== benchmarks/scale ({os.cpu_count()} cores, embedder {args.embedder}, "
          f"{time.perf_counter() - t0:.0f} s) ===")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
