"""Teacher-call throughput: distill's session vs the naive sequential loop, side by side, one run.

A local OpenAI-compatible server answers every request after a fixed latency (default 200 ms). The bound for
concurrency C is C / latency requests per second; the target is >= 90% of it. Then a kill -9 at 50% of the
calls and a rerun: the number of calls paid twice must be 0. It also prints the CPU one request costs the
client and the server process, which share the machine's cores.

    python benchmarks/generation_throughput.py [--n 3000] [--concurrency 64] [--latency 0.2]
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openai import OpenAI  # noqa: E402

from distill_assets.lib.ledger import open_store  # noqa: E402
from resources.llm import ChatRequest, LLMResource  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, serve_in_subprocess  # noqa: E402

CHILD = """
import sys
from distill_assets.lib.ledger import open_store
from resources.llm import ChatRequest, LLMResource
store = open_store(sys.argv[1])
llm = LLMResource(base_url=sys.argv[2], model="bench", max_concurrency=int(sys.argv[4]))
reqs = [ChatRequest(messages=[{"role": "user", "content": f"kill-{i}"}], max_tokens=32) for i in range(int(sys.argv[3]))]
with llm.session(store) as s:
    s.complete(reqs)
"""


def naive_loop(base_url: str, prompts: list[str]) -> float:
    """A plain generate_response() called once per prompt, in order: how distillation scripts usually do it."""
    client = OpenAI(base_url=base_url, api_key="none")
    t0 = time.perf_counter()
    for p in prompts:
        _ = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": p}],
                                           temperature=0.7, max_tokens=32).choices[0].message.content
    return time.perf_counter() - t0


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process or of `pid`; the server shares the cores."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:  # not Linux
        return float("nan")


def ours(base_url: str, prompts: list[str], concurrency: int, db: str, server_pid: int) -> dict:
    llm = LLMResource(base_url=base_url, model="bench", max_concurrency=concurrency)
    reqs = [ChatRequest(messages=[{"role": "user", "content": p}], max_tokens=32) for p in prompts]
    with llm.session(open_store(db)) as s:
        c0, s0, t0 = cpu_seconds(), cpu_seconds(server_pid), time.perf_counter()
        res = s.complete(reqs)
        dt = time.perf_counter() - t0
        c1, s1 = cpu_seconds(), cpu_seconds(server_pid)
    return {"seconds": dt, "ok": sum(r.ok for r in res), "client_cpu_ms": 1000 * (c1 - c0) / len(reqs),
            "server_cpu_ms": 1000 * (s1 - s0) / len(reqs)}


def kill_at_half(n: int, concurrency: int, latency: float, tmp: str) -> dict:
    db = os.path.join(tmp, "kill.duckdb")
    keys_seen: list[str] = []
    with FakeOpenAIServer(latency_s=latency) as srv:
        orig = srv.responder

        def record(body):
            keys_seen.append(body["messages"][0]["content"])
            return orig(body)

        srv.responder = record
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, db, srv.base_url, str(n), str(concurrency)], env=env,
                                cwd=ROOT)
        while len(keys_seen) < n // 2 and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = list(keys_seen)
        keys_seen.clear()
        from resources.llm_journal import replay_journals

        replay_journals(open_store(db), Path(db).parent / "journal")
        import json as _json

        persisted = {_json.loads(r)["messages"][0]["content"] for r in open_store(db).query_df(
            "SELECT request_json FROM teacher_calls WHERE status = 'ok'")["request_json"]}
        subprocess.run([sys.executable, "-c", CHILD, db, srv.base_url, str(n), str(concurrency)], env=env, cwd=ROOT,
                       check=True)
        second = list(keys_seen)
    store = open_store(db)
    persisted_before = len(first)
    ok = store.query_df("SELECT count(*) AS n FROM teacher_calls WHERE status = 'ok'")["n"][0]
    from collections import Counter

    both = Counter(first + second)
    in_flight = sum(1 for k, c in both.items() if c > 1) - len(persisted & set(second))
    return {"answered_before_kill": persisted_before, "persisted_before_kill": len(persisted),
            "asked_in_rerun": len(second), "repeated_persisted_calls": len(persisted & set(second)),
            "re_asked_in_flight_at_kill": in_flight, "ledger_ok": int(ok), "expected": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--naive-n", type=int, default=50, help="prompts for the sequential loop (it is slow)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    bound = args.concurrency / args.latency
    # the server runs in its own process, as a real teacher would, so it does not share the client's GIL
    proc, url = serve_in_subprocess(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            g = naive_loop(url, [f"naive-{i}" for i in range(args.naive_n)])
            o = ours(url, [f"ours-{i}" for i in range(args.n)], args.concurrency, os.path.join(tmp, "b.duckdb"),
                     proc.pid)
            dt, ok = o["seconds"], o["ok"]
            k = kill_at_half(min(args.n, 2000), args.concurrency, args.latency, tmp)
    finally:
        proc.terminate()
    print(f"\nserver latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, bound {bound:.0f} req/s")
    print(f"{'':28}{'requests':>10}{'seconds':>10}{'req/s':>10}{'of bound':>10}")
    print(f"{'naive sequential loop':28}{args.naive_n:>10}{g:>10.2f}{args.naive_n / g:>10.1f}"
          f"{100 * args.naive_n / g / bound:>9.1f}%")
    print(f"{'distill session':28}{ok:>10}{dt:>10.2f}{ok / dt:>10.1f}{100 * ok / dt / bound:>9.1f}%")
    print(f"speedup vs naive loop: {(ok / dt) / (args.naive_n / g):.0f}x")
    print(f"CPU per request ({os.cpu_count()} cores shared with the server): client {o['client_cpu_ms']:.2f} ms, "
          f"server process {o['server_cpu_ms']:.2f} ms")
    print(f"\nkill -9 at 50% then rerun: {k}")
    print(f"repeated calls for keys already persisted: {k['repeated_persisted_calls']} (target 0); "
          f"{k['re_asked_in_flight_at_kill']} answers were on the wire at the kill and are asked again")


if __name__ == "__main__":
    main()
