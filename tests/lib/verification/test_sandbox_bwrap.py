"""The bubblewrap sandbox: honest code, limits, timeouts, concurrency, the guard mode and a missing bwrap."""

import os
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distill_assets.lib.verification import sandbox as sb
from distill_assets.lib.verification.sandbox import SandboxUnavailable, bwrap_available, run_code_tests

ADD = "def add(a, b):\n    return a + b\n"
OK, WHY = bwrap_available()
needs_bwrap = pytest.mark.skipif(not OK, reason=f"bubblewrap cannot run here: {WHY}")


def _processes_with(token: str) -> list[int]:
    """Host pids whose command line carries `token` (the sandbox's processes never see the host /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _spawns(token: str, body: str) -> str:
    """Code that starts a child process carrying `token` in its argv (so the host can look for it) running `body`."""
    return (f"import os, sys\nif os.fork() == 0:\n    os.execv(sys.executable, [sys.executable, '-S', '-c', {body!r}, "
            f"{token!r}])\n")


@needs_bwrap
def test_honest_code_passes_and_records_its_isolation():
    r = run_code_tests(ADD, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "add", timeout_s=3)
    assert (r.status, r.passed, r.failed, r.unverifiable, r.reason) == ("pass", 2, 0, 0, "ok")
    assert r.ok and r.isolation == "bwrap" and r.network_isolation == "netns"
    assert r.privileges == f"userns:host-uid={sb.SANDBOX_UID if os.geteuid() == 0 else os.geteuid()}"
    assert r.to_dict()["isolation"] == "bwrap" and r.limits["nproc"] == 16 and r.duration > 0


@needs_bwrap
def test_honest_failing_code_fails_with_per_test_detail():
    r = run_code_tests("def add(a, b):\n    return a - b\n", ["assert add(2, 0) == 2", "assert add(1, 2) == 3"],
                       "add", timeout_s=3)
    assert (r.status, r.passed, r.failed) == ("fail", 1, 1)
    assert r.reason == "tests_failed: 1/2; first: AssertionError: got add(1, 2) = -1"
    assert [t["status"] for t in r.tests] == ["pass", "fail"]
    assert r.tests[1] == {"index": 1, "test": "assert add(1, 2) == 3", "ok": False, "status": "fail",
                          "error": "AssertionError: got add(1, 2) = -1"}


@needs_bwrap
def test_code_errors_entry_points_and_printing():
    assert run_code_tests(ADD, ["assert sub(1, 1) == 0"], "sub", timeout_s=3).reason.startswith("entry_point_missing")
    r = run_code_tests("def add(a, b) return a", ["assert add(1, 1) == 2"], "add", timeout_s=3)
    assert r.status == "fail" and r.reason.startswith("code_error: SyntaxError")
    r = run_code_tests("print('hello')\nimport sys\nprint('err', file=sys.stderr)\n" + ADD, ["assert add(1, 1) == 2"],
                       "add", timeout_s=3)
    assert r.status == "pass" and r.stdout_tail == "hello\n" and r.stderr_tail == "err\n"
    r = run_code_tests("def f(x):\n    return 1 / x\n", ["assert f(0) == 1"], "f", timeout_s=3)
    assert r.status == "fail" and "ZeroDivisionError: division by zero" in r.reason


@needs_bwrap
def test_the_stdlib_is_there_and_nothing_else():
    code = ("import collections, fractions, heapq, itertools, json, re\n"
            "def probe(name):\n    try:\n        __import__(name)\n        return True\n"
            "    except ImportError:\n        return False\n")
    tests = ["assert probe('decimal') is True", "assert probe('pytest') is False", "assert probe('dagster') is False",
             "assert probe('distill_assets') is False", "assert __import__('os').path.exists('/work/main') is False",
             "assert set(dict(__import__('os').environ)) <= {'HOME', 'LC_CTYPE', 'PATH', 'PWD', 'TMPDIR'}"]
    r = run_code_tests(code, tests, "probe", timeout_s=5)
    assert r.status == "pass", r.tests


@needs_bwrap
def test_the_bootstrap_leaves_nothing_behind_and_the_namespace_is_private():
    code = ("import os, socket, sys\nmain = sorted(n for n in vars(sys.modules['__main__']) if not n.startswith('__'))\n"
            "loaded = sorted(sys.modules)\n"
            "def f():\n    return main\n")
    tests = ["assert f() == []", "assert 'ctypes' not in loaded and '_ctypes' not in loaded",
             "assert len([d for d in os.listdir('/proc') if d.isdigit()]) <= 3",  # init, this process, maybe ls
             "assert socket.gethostname() == 'sandbox'", "assert os.getuid() == 65534",
             "assert open('/proc/self/status').read().split('CapEff:')[1].split()[0] == '0000000000000000'"]
    r = run_code_tests(code, tests, "f", timeout_s=5)
    assert r.status == "pass", r.tests


@needs_bwrap
def test_unsplittable_tests_are_unverifiable_never_pass():
    r = run_code_tests(ADD, ["assert add(1, 2) == 3", "assert add(1, 2) == add(2, 1)"], "add", timeout_s=3)
    assert (r.status, r.passed, r.failed, r.unverifiable) == ("unverifiable", 1, 0, 1)
    assert r.tests[1]["status"] == "unverifiable" and "two computed values" in r.tests[1]["error"]
    r = run_code_tests(ADD, ["assert add(1, 2) == add(2, 1)", "assert True"], "add", timeout_s=3)
    assert r.status == "unverifiable" and r.reason.startswith("unverifiable: no test could be split")
    assert r.returncode is None  # nothing to check: the code was not even run
    r = run_code_tests("def add(a, b):\n    return 0\n", ["assert add(1, 2) == 3", "assert add(1, 2) == add(2, 1)"],
                       "add", timeout_s=3)
    assert r.status == "fail"  # a failing test outweighs an unverifiable one


@needs_bwrap
def test_infinite_loop_times_out_and_the_namespace_is_killed():
    token = uuid.uuid4().hex
    code = _spawns(token, "import time\ntime.sleep(60)") + "while True:\n    pass\n"
    r = run_code_tests(code, ["assert f(1) == 1"], "f", timeout_s=1)
    assert r.status == "timeout" and r.reason == "timeout: exceeded 1.0s in code"
    assert r.duration < 8
    assert _processes_with(token) == []


@needs_bwrap
def test_a_blocked_alarm_is_killed_by_the_wall_clock_with_everything_in_it():
    token = uuid.uuid4().hex
    code = (_spawns(token, "import time\ntime.sleep(60)") + "import signal, time\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\ntime.sleep(120)\n")
    t0 = time.monotonic()
    r = run_code_tests(code, ["assert f(1) == 1"], "f", timeout_s=1)
    assert r.status == "timeout" and "wall clock" in r.reason
    assert time.monotonic() - t0 < 1 + sb.START_GRACE_S + 5
    assert _processes_with(token) == []


@needs_bwrap
@pytest.mark.parametrize("isolation", ["bwrap", "guard"])
def test_closing_every_channel_and_lingering_is_a_timeout_not_an_infra_error(isolation):
    code = "import os, signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nos.closerange(0, 4096)\ntime.sleep(60)\n"
    r = run_code_tests(code, ["assert f(1) == 1"], "f", timeout_s=1, isolation=isolation)
    assert r.status in ("timeout", "fail"), r.reason  # never infra_error: that would quarantine, not drop


@needs_bwrap
def test_cpu_limit_stops_a_loop_that_ignores_the_alarm():
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    r = run_code_tests(code, ["assert f(1) == 1"], "f", timeout_s=1)
    assert r.status == "timeout" and ("SIGXCPU" in r.reason or "wall clock" in r.reason)


@needs_bwrap
@pytest.mark.parametrize("code", ["x = bytearray(10 * 1024 ** 3)\n",
                                  "chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))\n"])
def test_memory_bomb_fails(code):
    r = run_code_tests(code, ["assert f(1) == 1"], "f", timeout_s=5, memory_mb=256)
    assert r.status == "fail" and "MemoryError" in r.reason


@needs_bwrap
def test_fork_bomb_is_contained():
    token = uuid.uuid4().hex
    bomb = "import os\nwhile True:\n    os.fork()\n"
    code = _spawns(token, bomb) + bomb
    t0 = time.monotonic()
    r = run_code_tests(code, ["assert f(1) == 1"], "f", timeout_s=3, max_processes=8)
    assert r.status in ("fail", "timeout") and r.reason
    assert "Resource temporarily unavailable" in r.reason or r.status == "timeout"
    assert time.monotonic() - t0 < 15
    assert _processes_with(token) == []


@needs_bwrap
def test_big_files_and_deep_recursion_fail():
    r = run_code_tests("open('big', 'wb').write(b'x' * (8 << 20))\n", ["assert f(1) == 1"], "f", timeout_s=3,
                       max_file_mb=1)
    assert r.status == "fail" and "File too large" in r.reason
    fill = "for i in range(40):\n    open(f'/tmp/{i}', 'wb').write(b'x' * ((1 << 20) - 1))\n"  # tmpfs is RAM: bounded
    r = run_code_tests(fill, ["assert f(1) == 1"], "f", timeout_s=5, max_file_mb=1)
    assert r.status == "fail" and "No space left on device" in r.reason
    r = run_code_tests("def f(n):\n    return f(n + 1)\n", ["assert f(0) == 1"], "f", timeout_s=3)
    assert r.status == "fail" and "RecursionError" in r.tests[0]["error"]


@needs_bwrap
def test_writes_inside_the_private_workdir_work():
    code = ("import os\nopen('scratch.txt', 'w').write('x')\nopen('/tmp/t.txt', 'w').write('y')\n"
            "def f():\n    return open('scratch.txt').read() + open('/tmp/t.txt').read() + os.getcwd()\n")
    r = run_code_tests(code, ["assert f() == 'xy/work'"], "f", timeout_s=3)
    assert r.status == "pass", r.reason


@needs_bwrap
def test_eight_concurrent_runs_get_their_own_verdicts_and_do_not_kill_each_other():
    # half of them try to kill everything they can reach and to exhaust their process budget
    hostile = ("import os, signal, time\nfor _ in range(20):\n    try:\n        if os.fork() == 0:\n"
               "            time.sleep(30)\n            os._exit(0)\n    except OSError:\n        break\n"
               "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n")

    def one(i: int):
        code = (hostile if i % 2 else "") + f"def f(x):\n    return x * {i}\n"
        expected = i * 7 if i % 4 != 3 else -1  # every fourth run is honestly wrong
        return run_code_tests(code, [f"assert f(7) == {expected}"], "f", timeout_s=5)

    barrier = threading.Barrier(8)

    def start(i):
        barrier.wait()
        return one(i)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(start, range(8)))
    assert [r.status for r in results] == ["fail" if i % 4 == 3 else "pass" for i in range(8)], \
        [(r.status, r.reason) for r in results]


def test_guard_mode_is_recorded_and_still_judged_by_the_parent(tmp_path):
    r = run_code_tests(ADD, ["assert add(1, 2) == 3"], "add", timeout_s=3, isolation="guard")
    assert (r.status, r.isolation, r.network_isolation) == ("pass", "guard", "socket_block")
    assert not Path(r.sandbox_dir).exists()
    eq = "class E:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return E()\n"
    r = run_code_tests(eq, ["assert add(1, 2) == 3"], "add", timeout_s=3, isolation="guard")
    assert r.status == "fail" and "not a plain builtin value" in r.reason
    target = tmp_path / "open"
    target.mkdir()
    os.chmod(target, 0o777)
    r = run_code_tests(f"open({str(target / 'x')!r}, 'w').write('x')\n", ["assert f(1) == 1"], "f", timeout_s=3,
                       isolation="guard")
    assert r.status == "fail" and "writing outside the sandbox directory" in r.reason
    assert not (target / "x").exists()
    r = run_code_tests("import os\nos.fork()\n", ["assert f(1) == 1"], "f", timeout_s=3, isolation="guard")
    assert r.status == "fail" and "os.fork is disabled" in r.reason


def test_a_broken_interpreter_is_an_infra_error_never_a_fail():
    for isolation in ("bwrap", "guard"):
        r = run_code_tests(ADD, ["assert add(1, 1) == 2"], "add", isolation=isolation, python="/nonexistent/python")
        assert r.status == "infra_error" and "harness" in r.reason and "/nonexistent/python" in r.reason


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        run_code_tests(ADD, [], "add")
    with pytest.raises(ValueError, match="isolation"):
        run_code_tests(ADD, ["assert add(1, 2) == 3"], "add", isolation="none")


@pytest.fixture
def fresh_probe():
    sb._bwrap_binary.cache_clear()
    sb._bwrap_probe.cache_clear()
    yield
    sb._bwrap_binary.cache_clear()
    sb._bwrap_probe.cache_clear()


def test_too_old_bubblewrap_raises_with_the_fix(tmp_path, monkeypatch, fresh_probe):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'usage: bwrap [OPTIONS...] COMMAND'\n")  # 0.4's --help has no --chmod
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert bwrap_available() == (False, "this bubblewrap is older than 0.5 (no --chmod): install a newer one "
                                        "(Debian 12 ships 0.8)")


def test_missing_bubblewrap_raises_with_the_fix(tmp_path, monkeypatch, fresh_probe):
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, why = bwrap_available()
    assert not ok and "apt-get install -y bubblewrap" in why
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        run_code_tests(ADD, ["assert add(1, 2) == 3"], "add")
    assert run_code_tests(ADD, ["assert add(1, 2) == 3"], "add", isolation="guard").status == "pass"


def test_disabled_user_namespaces_raise_with_the_fix(tmp_path, monkeypatch, fresh_probe):
    fake = tmp_path / "bwrap"  # what bwrap prints where the kernel refuses unprivileged user namespaces
    fake.write_text("#!/bin/sh\n[ \"$1\" = --help ] && echo '--chmod --size' && exit 0\n"
                    "echo 'bwrap: No permissions to creating new "
                    "namespace, likely because the kernel does not allow non-privileged user namespaces.' >&2\n"
                    "exit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    ok, why = bwrap_available()
    assert not ok and "kernel.unprivileged_userns_clone=1" in why and "No permissions" in why
    with pytest.raises(SandboxUnavailable, match="user namespaces"):
        run_code_tests(ADD, ["assert add(1, 2) == 3"], "add")
