"""Code verifications per second: the bubblewrap sandbox vs the old in-process guard, side by side.

    flock /tmp/distill-bench.lock python benchmarks/verify_sandbox.py [--n 200] [--workers 2 4] [--repeat 1]

200 small solutions (about a third of them wrong), 3 assert lines each, one sandbox run per solution (all
of a row's tests in one run), through a thread pool as the `verified` asset runs them. Prints, per worker
count, verifications per second for each mode and whether every verdict came out as expected. The "old
guard" is `distill_assets.verification.sandbox.run_code_tests` where that module still exists, else this
sandbox's own isolation="guard".
"""

import argparse
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_assets.lib.verification.sandbox import bwrap_available, run_code_tests  # noqa: E402

TEMPLATES = [  # (code, tests, entry point, a wrong variant)
    ("def add(a, b):\n    return a + b\n", ["assert add({a}, {b}) == {s}", "assert add(0, {b}) == {b}",
                                            "assert add({a}, 0) == {a}"], "add", "a - b"),
    ("def mul(a, b):\n    return a * b\n", ["assert mul({a}, {b}) == {p}", "assert mul(1, {b}) == {b}",
                                            "assert mul({a}, 0) == 0"], "mul", "a + b"),
    ("def rev(s):\n    return s[::-1]\n", ["assert rev('ab{a}') == '{r}'", "assert rev('') == ''",
                                           "assert rev('x') == 'x'"], "rev", "s"),
    ("def fact(n):\n    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r\n",
     ["assert fact(5) == 120", "assert fact(0) == 1", "assert fact(3) == 6"], "fact", "n"),
]


def solutions(n: int, seed: int = 0) -> list[tuple[str, list[str], str, str]]:
    """(code, tests, entry point, expected status): a third of them return something else."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        code, tests, ep, wrong = TEMPLATES[i % len(TEMPLATES)]
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        bad = rng.random() < 1 / 3
        if bad:
            code = code.rsplit("return", 1)[0] + f"return {wrong}\n"
        tests = [t.format(a=a, b=b, s=a + b, p=a * b, r=f"ab{a}"[::-1]) for t in tests]
        out.append((code, tests, ep, "fail" if bad else "pass"))
    return out


def old_guard():
    try:
        from distill_assets.verification.sandbox import run_code_tests as old
        return "old guard (distill_assets.verification.sandbox)", old
    except ImportError:
        return "guard mode (isolation='guard')", lambda *a, **k: run_code_tests(*a, isolation="guard", **k)


def measure(run, sols, workers: int) -> tuple[float, int, dict]:
    def one(s):
        code, tests, ep, _ = s
        return run(code, tests, ep, timeout_s=5.0, memory_mb=512)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, sols))
    wall = time.perf_counter() - t0
    wrong = sum(r.status != s[3] for r, s in zip(results, sols))
    statuses: dict = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return len(sols) / wall, wrong, statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    ok, why = bwrap_available()
    if not ok:
        sys.exit(f"bubblewrap cannot run here: {why}")
    sols = solutions(args.n)
    guard_name, guard = old_guard()
    modes = [("bubblewrap", run_code_tests), (guard_name, guard)]
    for _, run in modes:  # warm: the interpreter probe and the page cache
        run(*sols[0][:3], timeout_s=5.0)
    print(f"{args.n} solutions ({sum(s[3] == 'fail' for s in sols)} wrong), 3 tests each; {why}; "
          f"{os.cpu_count()} cpu(s), load {os.getloadavg()[0]:.1f}")
    for workers in args.workers:
        for name, run in modes:
            best = max((measure(run, sols, workers) for _ in range(args.repeat)), key=lambda m: m[0])
            rate, wrong, statuses = best
            print(f"  workers={workers}  {name:48s} {rate:6.1f} verifications/s  "
                  f"verdicts {'all as expected' if not wrong else f'{wrong} unexpected'} {statuses}")


if __name__ == "__main__":
    main()
