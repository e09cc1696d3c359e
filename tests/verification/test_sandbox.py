import json
import os
import socket
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from distill_assets.verification import extract_code
from distill_assets.verification.sandbox import run_code_tests

ADD = "def add(a, b):\n    return a + b\n"
T = ["assert True"]


def _gone(result):
    """The private directory is deleted and no process of the run is left."""
    assert not Path(result.sandbox_dir).exists()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                assert result.sandbox_dir not in (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                pass


def test_correct_code_passes():
    r = run_code_tests(ADD, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "add", timeout_s=3)
    assert (r.status, r.passed, r.failed, r.reason) == ("pass", 2, 0, "ok")
    assert r.network_isolation in ("netns", "socket_block")
    assert r.duration > 0
    _gone(r)


def test_wrong_code_fails_with_the_failing_test():
    r = run_code_tests("def add(a, b):\n    return a - b\n", ["assert add(2, 0) == 2", "assert add(1, 2) == 3"],
                       "add", timeout_s=3)
    assert (r.status, r.passed, r.failed) == ("fail", 1, 1)
    assert r.reason.startswith("tests_failed: 1/2") and "AssertionError" in r.reason
    assert r.tests[1]["ok"] is False


def test_missing_entry_point_and_syntax_error():
    assert run_code_tests(ADD, ["assert sub(1, 1) == 0"], "sub", timeout_s=3).reason.startswith("entry_point_missing")
    r = run_code_tests("def add(a, b) return a", ["assert add(1, 1) == 2"], "add", timeout_s=3)
    assert r.status == "fail" and "SyntaxError" in r.reason


def test_network_connect_is_stopped():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        r = run_code_tests(code, T, None, timeout_s=3)
        assert r.status == "fail" and r.reason.startswith("code_error")
        if r.network_isolation == "netns":
            assert "Network is unreachable" in r.reason
        else:
            assert "SandboxViolation" in r.reason
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached the host
    finally:
        listener.close()


def test_fork_bomb_is_stopped():
    r = run_code_tests("import os\nwhile True:\n    os.fork()\n", T, None, timeout_s=3)
    assert r.status == "fail" and "SandboxViolation: os.fork is disabled" in r.reason
    _gone(r)


def test_forks_without_the_guard_are_bounded_and_cleaned_up():
    # Bounded on purpose: as root the kernel does not apply RLIMIT_NPROC, so this must not be a real bomb.
    code = ("import os, time\nn = 0\nfor i in range(40):\n    try:\n        pid = os.fork()\n"
            "    except OSError as e:\n        raise RuntimeError(f'fork refused after {n}: {e}')\n"
            "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\n")
    r = run_code_tests(code, T, None, timeout_s=3, guard=False, max_processes=8)
    if r.privileges.startswith("uid:") or os.geteuid() != 0:
        assert r.status == "fail" and "fork refused" in r.reason  # RLIMIT_NPROC
    else:
        assert r.status == "pass"  # root: only the guard stops forks (see the test above) ...
    _gone(r)  # ... and every forked child is killed when the run ends


def test_infinite_loop_times_out():
    r = run_code_tests("while True:\n    pass\n", T, None, timeout_s=1)
    assert r.status == "timeout" and r.reason.startswith("timeout")
    assert r.duration < 10


def test_alarm_ignoring_loop_is_still_stopped():
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    r = run_code_tests(code, T, None, timeout_s=1)
    assert r.status == "timeout" and ("SIGXCPU" in r.reason or "wall clock" in r.reason)


def test_huge_allocation_is_stopped():
    r = run_code_tests("x = bytearray(10 * 1024 ** 3)\n", T, None, timeout_s=3, memory_mb=256)
    assert r.status == "fail" and "MemoryError" in r.reason


def test_write_outside_the_directory_is_stopped(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # world-writable, like /tmp: only the guard protects it
    target = open_dir / "pwned.txt"
    r = run_code_tests(f"open({str(target)!r}, 'w').write('x')\n", T, None, timeout_s=3)
    assert r.status == "fail" and "SandboxViolation: writing outside the sandbox" in r.reason
    assert not target.exists()
    # inside its own directory the code may write
    ok = run_code_tests("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n", T, None,
                        timeout_s=3)
    assert ok.status == "pass", ok.reason


def test_big_file_is_stopped_by_fsize():
    r = run_code_tests("open('big', 'wb').write(b'x' * (8 << 20))\n", T, None, timeout_s=3, max_file_mb=1)
    assert r.status == "fail" and "File too large" in r.reason


@pytest.mark.parametrize("code,needle", [
    ("import os\nos.system('echo hi')\n", "os.system is disabled"),
    ("import subprocess\nsubprocess.run(['true'])\n", "subprocess.run is disabled"),
    ("import shutil\nshutil.rmtree('/tmp')\n", "shutil.rmtree is disabled"),
    ("import os, signal\nos.kill(1, signal.SIGTERM)\n", "os.kill is disabled"),
    ("import ctypes\n", "import of ctypes halted"),
])
def test_dangerous_calls_are_blocked(code, needle):
    r = run_code_tests(code, T, None, timeout_s=3)
    assert r.status == "fail" and needle in r.reason


def test_deep_recursion_is_stopped():
    r = run_code_tests("def f(n):\n    return f(n + 1)\nf(0)\n", T, None, timeout_s=3)
    assert r.status == "fail" and "RecursionError" in r.reason


def test_infra_error_is_not_a_fail():
    r = run_code_tests(ADD, ["assert add(1, 1) == 2"], "add", timeout_s=3, python="/nonexistent/python")
    assert r.status == "infra_error" and "harness" in r.reason


def test_empty_tests_are_refused():
    with pytest.raises(ValueError):
        run_code_tests(ADD, [], "add")


@pytest.mark.parametrize("text,expected", [
    ("Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", "def add(a, b):\n    return a + b"),
    ("```python\nimport math\n```\n```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a + b"),
    ("```\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a + b"),
    ("def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a + b"),
    ("Sorry, I cannot write that.", None),
])
def test_extract_code(text, expected):
    assert extract_code(text, "add") == expected


# the `verified` asset ----------------------------------------------------------------------------------------
def _row(cat, i, response, reference=None, tests=None, entry_point=None, seed="s1", instruction="q"):
    return {"generation_id": f"g{cat}{i}", "example_id": f"g{cat}{i}", "seed_id": seed, "parent_ids": "[]",
            "category": cat, "method": "response", "messages": "[]", "system_prompt": "", "instruction": instruction,
            "response": response, "teacher_model": "fake", "params": "{}", "call_key": f"k{i}", "sample_index": i,
            "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0, "finish_reason": "stop",
            "difficulty": "easy", "reference": reference, "tests": json.dumps(tests or []),
            "entry_point": entry_point, "source": "seed", "evol_chain": "[]", "created_at": "2026-01-01",
            "judge_score": 5.0, "judge_scores": "{}", "judge_rationale": "", "judge_status": "ok",
            "keep": True, "verdict": "kept", "reason": "ok", "evidence": "{}"}


FRAMES = {
    "math": [_row("math", 0, "Therefore, the answer is: 29", "29"),
             _row("math", 1, "Therefore, the answer is: 30", "29"),
             _row("math", 2, "so 8. Therefore, the answer is: 8", None, seed="s2", instruction="syn"),
             _row("math", 3, "Therefore, the answer is: 8.0", None, seed="s2", instruction="syn"),
             _row("math", 4, "Therefore, the answer is: 9", None, seed="s2", instruction="syn"),
             _row("math", 5, "Therefore, the answer is: 3", None, seed="s3", instruction="lonely"),
             {**_row("math", 6, "dropped upstream", "1"), "keep": False, "verdict": "dropped"}],
    "code": [_row("code", 0, "```python\ndef add(a, b):\n    return a + b\n```", tests=["assert add(1, 2) == 3"],
                  entry_point="add"),
             _row("code", 1, "```python\ndef add(a, b):\n    return a * b\n```", tests=["assert add(1, 2) == 3"],
                  entry_point="add"),
             _row("code", 2, "```python\ndef add(a, b):\n    while True: pass\n```",
                  tests=["assert add(1, 2) == 3"], entry_point="add"),
             _row("code", 3, "```python\ndef add(a, b):\n    return a + b\n```", tests=[], entry_point="add")],
    "classify": [_row("classify", 0, "billing", "billing"), _row("classify", 1, "Label: shipping", "billing")],
}


@pytest.fixture
def verify_defs(monkeypatch):
    from distill_assets.filters.verify import verified
    from distill_assets.partitions import CATEGORY
    from distill_assets.tasks import load_tasks

    base = load_tasks()
    fast = base.model_copy(update={"categories": [
        c.model_copy(update={"filters": c.filters.model_copy(update={"verify_timeout_s": 1.0})})
        for c in base.categories]})
    monkeypatch.setattr("distill_assets.filters.verify.load_tasks", lambda: fast)

    @dg.asset(name="judged", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def judged_stand_in(context) -> pd.DataFrame:
        return pd.DataFrame(FRAMES[context.partition_key])

    return [judged_stand_in, verified]



@pytest.mark.parametrize("cat,expected", [
    ("math", {"g_0": ("pass", "kept", "ok"), "g_1": ("fail", "dropped", "verify_mismatch"),
              "g_2": ("pass", "kept", "ok"), "g_3": ("pass", "kept", "ok"),
              "g_4": ("fail", "dropped", "verify_no_majority"),
              "g_5": ("unverifiable", "kept", "verify_single_sample")}),
    ("code", {"g_0": ("pass", "kept", "ok"), "g_1": ("fail", "dropped", "verify_tests_failed"),
              "g_2": ("fail", "dropped", "verify_timeout"), "g_3": ("unverifiable", "kept", "verify_no_tests")}),
    ("classify", {"g_0": ("pass", "kept", "ok"), "g_1": ("fail", "dropped", "verify_mismatch")}),
])
def test_materialize_verified(verify_defs, duck_resources, store, cat, expected):
    res = dg.materialize(verify_defs, resources=duck_resources, partition_key=cat)
    assert res.success
    out = res.output_for_node("verified")
    got = {r.example_id.replace(cat, "_"): (r.verification_status, r.verdict, r.reason) for r in out.itertuples()}
    assert got == expected
    lineage = store.query_df("SELECT example_id, verdict, reason, evidence FROM lineage WHERE stage = 'verified' "
                             "AND category = ?", [cat])
    assert len(lineage) == len(expected)
    ev = json.loads(lineage.set_index("example_id").loc[f"g{cat}0", "evidence"])
    assert ev["verification_status"] == "pass"
    if cat == "code":
        assert ev["network_isolation"] in ("netns", "socket_block") and ev["passed"] == 1
    else:
        assert ev["extracted"] and ev["reference"]
