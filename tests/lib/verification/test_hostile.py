"""Hostile solutions: each must end `fail` or `unverifiable` with a reason, leave no trace and reach no network.

The suite runs as the current user and, when that is root, once more as `nobody` through a small driver
(the unprivileged half: bwrap maps the caller's own uid instead of the root path's drop to uid 65534).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distill_assets.lib.verification import sandbox as sb
from distill_assets.lib.verification.sandbox import bwrap_available, run_code_tests

OK, WHY = bwrap_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"bubblewrap cannot run here: {WHY}")
SECRET = f"sk-secret-{uuid.uuid4().hex}"
PROTOCOL = '{"k":"ran"}\n{"k":"v","t":0,"e":0,"v":0}\n{"k":"v","t":1,"e":0,"v":0}\n{"k":"done"}\n'
OLD_EVENT = '{"event": "test", "index": 0, "ok": true}\n{"event": "done"}\n'


@dataclass
class Host:
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    expected: str = field(default_factory=lambda: f"expected-{uuid.uuid4().hex}")  # never in the code
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hostile-")))  # world-writable
    tcp: socket.socket | None = None
    udp: socket.socket | None = None
    port: int = 0

    def targets(self) -> list[str]:
        """Host paths the code tries to write (a world-writable dir, /tmp, the project tree, $HOME)."""
        home = os.path.expanduser("~")
        return [str(self.dir / self.token), f"/tmp/{self.token}", str(Path(__file__).resolve().parents[3] / self.token),
                f"{home}/{self.token}", f"/root/{self.token}"]

    def tests(self) -> list[str]:
        return [f"assert f(2) == {self.expected!r}", f"assert f(3) == {self.expected!r}"]


@pytest.fixture(scope="module")
def host():
    h = Host()
    os.chmod(h.dir, 0o777)
    h.tcp = socket.socket()
    h.tcp.bind(("127.0.0.1", 0))
    h.tcp.listen(8)
    h.tcp.setblocking(False)
    h.port = h.tcp.getsockname()[1]
    h.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    h.udp.bind(("127.0.0.1", h.port))
    h.udp.setblocking(False)
    yield h
    h.tcp.close()
    h.udp.close()
    shutil.rmtree(h.dir, ignore_errors=True)


def cases(h: Host) -> dict[str, str]:
    survivor = (f"import os, sys, time\ntime.sleep(1.0)\nfor p in {h.targets()!r}:\n    try:\n"
                f"        open(p, 'w').write('survived')\n    except OSError:\n        pass\n"
                f"for fd in range(3, 64):\n    try:\n        os.write(fd, {PROTOCOL.encode()!r})\n    except OSError:\n"
                f"        pass\ntime.sleep(60)\n")
    return {
        "forges_the_event_channel": (
            f"import os, sys\nline = {OLD_EVENT!r}\nprint(line * 3)\nsys.stderr.write(line)\n"
            f"for name in ('.events.jsonl', '/tmp/events.jsonl'):\n    open(name, 'w').write(line * 5)\n"
            f"for fd in range(1, 64):\n    try:\n        os.write(fd, (line + {PROTOCOL!r}).encode())\n"
            f"    except OSError:\n        pass\ndef f(x):\n    return 0\n"),
        "forges_values_then_exits": (
            f"import os, sys\nos.write(int(sys.argv[1]), {PROTOCOL.encode()!r})\nos._exit(0)\n"),
        "reaches_libc_through_ctypes": (
            "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
            f"msg = {PROTOCOL.encode()!r}\nfor fd in range(1, 64):\n    libc.write(fd, msg, len(msg))\n"
            "libc.kill(-1, 9)\nlibc.unshare(0x40000000)\n"
            f"libc.mount(b'none', b'/work', b'tmpfs', 0, None)\n"
            "def f(x):\n    return libc.getpid()\n"),
        "reads_other_processes_environ": (
            f"import os\nleak = []\nfor p in ['/proc/1/environ', '/proc/self/environ', '/proc/{os.getpid()}/environ',"
            f" '/proc/{os.getppid()}/environ'] + ['/proc/%s/environ' % d for d in os.listdir('/proc') if d.isdigit()]:\n"
            "    try:\n        leak.append(open(p, 'rb').read().decode('utf-8', 'replace'))\n"
            "    except OSError as e:\n        leak.append(str(e))\n"
            "leak.append(repr(dict(os.environ)))\nprint('\\n'.join(leak))\n"
            "def f(x):\n    return '\\n'.join(leak)\n"),
        "opens_sockets": (
            "import socket, _socket\nerrors = []\n"
            f"def tcp():\n    socket.create_connection(('127.0.0.1', {h.port}), timeout=1).send(b'x')\n"
            f"def raw():\n    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n    s.settimeout(1)\n"
            f"    s.connect(('127.0.0.1', {h.port}))\n    s.send(b'x')\n"
            f"def udp():\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {h.port}))\n"
            "for attempt in (tcp, raw, udp):\n    try:\n        attempt()\n    except OSError as e:\n"
            "        errors.append(str(e))\n"
            "def f(x):\n    return errors\n"),
        "forks_a_detached_survivor": (
            f"import os, sys\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-S', '-c', {survivor!r}, {h.token!r}])\n"
            f"    os._exit(0)\nos.waitpid(pid, 0)\ndef f(x):\n    return -1\n"),
        "writes_outside_the_workdir": (
            f"import os\nfor p in {h.targets()!r}:\n    try:\n        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
            "        open(p, 'w').write('pwned')\n    except OSError:\n        pass\n"
            "def f(x):\n    return 0\n"),
        "returns_an_always_equal_object": (
            "class E:\n    def __eq__(self, o):\n        return True\n    def __ne__(self, o):\n        return False\n"
            "    __hash__ = object.__hash__\ndef f(x):\n    return E()\n"),
        "returns_an_int_and_a_str_subclass": (
            "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
            "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n"
            "def f(x):\n    return I(0) if x == 2 else [S('a')]\n"),
        "exits_0_before_the_tests": "import os\nos._exit(0)\ndef f(x):\n    return 0\n",
        "sys_exit_0_at_import": "import sys\ndef f(x):\n    return 0\nsys.exit(0)\n",
        "exits_0_inside_the_call": "import os\ndef f(x):\n    os._exit(0)\n",
        "hunts_for_the_expected_value": (
            "import gc, os, sys\nfound = set()\n"
            "def look(s):\n    if isinstance(s, str) and 'expected-' in s:\n        found.add(s)\n"
            "for o in gc.get_objects():\n    items = o.values() if isinstance(o, dict) else o if isinstance(o, "
            "(list, tuple, set)) else ()\n    for i in items:\n        look(i)\n"
            "frame = sys._getframe()\nwhile frame:\n    for v in list(frame.f_locals.values()):\n        look(v)\n"
            "        if isinstance(v, (list, tuple, dict)):\n            [look(x) for x in (v.values() if "
            "isinstance(v, dict) else v)]\n    frame = frame.f_back\n"
            "for p in ['/proc/self/cmdline', '/proc/1/cmdline', '/proc/self/environ']:\n"
            "    look(open(p, 'rb').read().decode('utf-8', 'replace'))\n"
            "def f(x):\n    return sorted(found)[0] if found else 'nothing found'\n"),
    }


def _check_result(name: str, d: dict, h: Host) -> None:
    assert d["status"] in ("fail", "unverifiable"), (name, d["status"], d["reason"])
    assert d["reason"], name
    assert d["isolation"] == "bwrap" and d["network_isolation"] == "netns"
    text = json.dumps(d)
    assert SECRET not in text, f"{name}: the parent's secret reached the sandbox"
    seen = json.dumps([d["stdout_tail"], d["stderr_tail"], d["reason"], [t["error"] for t in d["tests"]]])
    assert h.expected not in seen, f"{name}: the code found the expected value"


def _survivors(token: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if token.encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _check_host(h: Host, wait: float = 0.0) -> None:
    time.sleep(wait)  # a survivor would write its markers 1 s after it was started
    for target in h.targets():
        assert not os.path.lexists(target), f"{target} appeared on the host"
    assert not any(h.token in p.name for p in Path("/tmp").iterdir())
    assert not any(h.dir.iterdir())
    with pytest.raises(BlockingIOError):
        h.tcp.accept()  # no connection ever reached the host
    with pytest.raises(BlockingIOError):
        h.udp.recv(16)
    assert _survivors(h.token) == []


CASE_NAMES = list(cases(Host(dir=Path("/nonexistent"))))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_solution_as_the_current_user(host, name, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", SECRET)
    r = run_code_tests(cases(host)[name], host.tests(), "f", timeout_s=4)
    _check_result(name, r.to_dict(), host)
    _check_host(host, wait=2.0 if "survivor" in name else 0.0)


def test_specific_hostile_verdicts(host):
    by = {n: run_code_tests(c, host.tests(), "f", timeout_s=4) for n, c in cases(host).items()
          if n in ("returns_an_always_equal_object", "returns_an_int_and_a_str_subclass", "sys_exit_0_at_import",
                   "exits_0_before_the_tests", "forges_values_then_exits", "opens_sockets")}
    assert "not a plain builtin value" in by["returns_an_always_equal_object"].tests[0]["error"]
    sub = by["returns_an_int_and_a_str_subclass"].tests
    assert "but I" in sub[0]["error"] and "but S" in sub[1]["error"]
    assert by["sys_exit_0_at_import"].reason == "code_error: SystemExit: 0"
    assert by["exits_0_before_the_tests"].reason.startswith("exited early (exit 0) after 0 of 2")
    forged = by["forges_values_then_exits"]  # well-formed claimed values: the parent still compares them
    assert forged.reason.startswith("tests_failed: 2/2") and forged.tests[0]["error"] == "AssertionError: got f(2) = 0"
    # the namespace has a loopback of its own: nothing listens there, and the host's listener is out of reach
    assert by["opens_sockets"].tests[0]["error"].count("Connection refused") == 2


_DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from sbxpkg.sandbox import run_code_tests
cases = json.load(open(sys.argv[2]))
out = {"euid": os.geteuid()}
for name, case in cases.items():
    out[name] = run_code_tests(case["code"], case["tests"], "f", timeout_s=4).to_dict()
print(json.dumps(out))
"""


def _python_for(uid: int) -> str | None:
    """An interpreter `uid` can run: this one if its path is open to it, else the system's python3.

    The check starts the interpreter again from inside, as the sandbox does: setpriv itself can exec a path
    under a 0700 /root that the process it becomes cannot.
    """
    check = "import subprocess, sys, sysconfig; subprocess.run([sys.executable, '-S', '-c', 'import json'], check=True)"
    for python in (sys.executable, "/usr/bin/python3"):
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-S", "-c",
                            check], capture_output=True, cwd="/", timeout=60)
        if r.returncode == 0:
            return python
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: the current-user half above is already the unprivileged one")
def test_hostile_suite_as_nobody(host):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    python = _python_for(65534)
    if python is None:
        pytest.skip("no Python interpreter is readable by uid 65534 (this one lives under a 0700 home, and "
                    "there is no /usr/bin/python3)")
    work = Path(tempfile.mkdtemp(prefix="sbx-nobody-"))
    try:
        pkg = work / "sbxpkg"
        pkg.mkdir()
        for name in ("sandbox.py", "sandbox_child.py", "testsplit.py"):
            shutil.copy(Path(sb.__file__).with_name(name), pkg / name)
        (pkg / "__init__.py").write_text("")
        (work / "driver.py").write_text(_DRIVER)
        (work / "cases.json").write_text(json.dumps({n: {"code": c, "tests": host.tests()}
                                                     for n, c in cases(host).items()}))
        for p in [work, *work.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "TEACHER_API_KEY": SECRET}
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python,
                            str(work / "driver.py"), str(work), str(work / "cases.json")],
                           capture_output=True, text=True, env=env, cwd="/", timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        results = json.loads(r.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert results.pop("euid") == 65534  # bwrap ran unprivileged: its own uid mapping, not the root path's
    assert set(results) == set(CASE_NAMES)
    for name, d in results.items():
        _check_result(name, d, host)
        assert d["privileges"] == "userns:host-uid=65534"
    _check_host(host, wait=2.0)
