"""Run untrusted Python (teacher-written code) against assert-line tests in a contained subprocess.

Layers, each recorded in the result so a verdict says what it ran under:

1. a separate process in its own session, killed (whole process group, and every process of its uid) after
   a wall timeout;
2. kernel limits: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_NPROC (processes), RLIMIT_FSIZE (file size),
   RLIMIT_NOFILE, no core dumps;
3. no network: a fresh network namespace (`unshare(CLONE_NEWNET)`: no interfaces but a down loopback), or,
   where the kernel refuses, a blocked `socket` module (`network_isolation` says which);
4. as root, where the interpreter still imports after dropping privileges: a throw-away uid per run (so
   RLIMIT_NPROC counts only this run's processes and the kernel denies writes to other users' files); always a
   private temporary working directory, deleted afterwards. (The kernel never applies RLIMIT_NPROC to root:
   where the uid cannot be dropped, e.g. a Python under a 0700 /root, forks are stopped by the guard only,
   and `privileges` says "unchanged".)
5. a human-eval style reliability guard: os.system, os.kill, fork, exec, subprocess, shutil.rmtree, file
   removal, and writes outside the working directory raise `SandboxViolation`.

This is NOT a security boundary by itself: the guard is plain Python (ctypes and C extensions are blocked
from import, but a determined payload can find a way around it), the filesystem stays readable, and /tmp-like
world-writable paths are protected only by the guard. It is containment for honest-but-buggy model output.
Run hostile code in a VM or gVisor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

Status = Literal["pass", "fail", "infra_error", "timeout"]
TAIL = 2000
START_GRACE_S = 5.0  # interpreter start-up on a loaded machine, on top of the code's own budget
_UID_BASE = 620000  # throw-away uids: no passwd entry, no files anywhere
_uid_lock = threading.Lock()
_uid_counter = 0


@dataclass
class SandboxResult:
    status: Status
    passed: int = 0
    failed: int = 0
    reason: str = ""
    stderr_tail: str = ""
    network_isolation: Literal["netns", "socket_block", "none"] = "none"
    duration: float = 0.0
    total: int = 0
    stdout_tail: str = ""
    privileges: str = "unchanged"  # "uid:<n>" when run under a throw-away uid
    sandbox_dir: str = ""  # the private directory (deleted when the run ends)
    returncode: int | None = None
    tests: list[dict] = field(default_factory=list)  # [{index, test, ok, error}]
    limits: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return asdict(self)


# The child: everything it needs is imported before limits and the guard go up.
_BOOTSTRAP = r'''
import builtins, ctypes, io, json, os, resource, shutil, signal, socket, subprocess, sys, time, traceback
payload = json.load(open(sys.argv[1], encoding="utf-8"))
events = open(payload["events"], "a", encoding="utf-8")
workdir = payload["workdir"]

def emit(**kw):
    events.write(json.dumps(kw) + "\n")
    events.flush()

class SandboxViolation(Exception):
    pass

class SandboxTimeout(BaseException):
    pass

# 1. network
isolation = "socket_block"
try:
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
    if libc.unshare(CLONE_NEWNET) == 0:
        isolation = "netns"
    elif payload["uid"] is None and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        isolation = "netns"
except Exception:
    pass
if isolation != "netns":
    def _no_net(*a, **k):
        raise SandboxViolation("network access is disabled in the sandbox")
    class _BlockedSocket(socket.socket):
        def __init__(self, *a, **k):
            _no_net()
    socket.socket = _BlockedSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, _no_net)
    sys.modules["_socket"] = None

# 2. kernel limits
lim = payload["limits"]
def setlim(res, value):
    try:
        resource.setrlimit(res, (value, value))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(res)
        resource.setrlimit(res, (min(value, hard) if hard != resource.RLIM_INFINITY else value, hard))
setlim(resource.RLIMIT_CORE, 0)
setlim(resource.RLIMIT_NOFILE, lim["nofile"])
setlim(resource.RLIMIT_FSIZE, lim["fsize_bytes"])
setlim(resource.RLIMIT_NPROC, lim["nproc"])
resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
setlim(resource.RLIMIT_AS, lim["as_bytes"])

# 3. privileges
if payload["uid"] is not None:
    os.setgroups([])
    os.setgid(payload["uid"])
    os.setuid(payload["uid"])
os.chdir(workdir)

# 4. reliability guard (after human-eval's execution.py)
def _blocked(name):
    def f(*a, **k):
        raise SandboxViolation(f"{name} is disabled in the sandbox")
    return f
_real_open, _real_os_open = builtins.open, os.open
_root = os.path.realpath(workdir)
def _inside(path):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:
        return True  # an fd
    return p == _root or p.startswith(_root + os.sep)
def _guarded_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+") and not isinstance(file, int) and not _inside(file):
        raise SandboxViolation(f"writing outside the sandbox directory is disabled: {file}")
    return _real_open(file, mode, *a, **k)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guarded_os_open(path, flags, *a, **k):
    if flags & _WRITE_FLAGS and not _inside(path):
        raise SandboxViolation(f"writing outside the sandbox directory is disabled: {path}")
    return _real_os_open(path, flags, *a, **k)
builtins.open = io.open = _guarded_open
os.open = _guarded_os_open
for name in ("system", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv", "remove", "removedirs", "rmdir",
             "unlink", "rename", "renames", "replace", "truncate", "fchdir", "chdir", "chroot", "setuid", "setgid",
             "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid", "setsid", "setpgid",
             "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "link", "symlink", "popen", "posix_spawn",
             "posix_spawnp", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
             "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
             "register_at_fork", "sched_setaffinity"):
    if hasattr(os, name):
        setattr(os, name, _blocked("os." + name))
for name in ("rmtree", "move", "chown", "copytree", "make_archive"):
    setattr(shutil, name, _blocked("shutil." + name))
for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    setattr(subprocess, name, _blocked("subprocess." + name))
builtins.exit = builtins.quit = _blocked("exit")
builtins.help = _blocked("help")
for mod in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "pty", "resource", "psutil",
            "ipdb", "joblib", "tkinter", "faulthandler"):
    sys.modules[mod] = None

# 5. run
_exit = os._exit
def _on_alarm(signum, frame):
    raise SandboxTimeout()
signal.signal(signal.SIGALRM, _on_alarm)
emit(event="started", isolation=isolation, uid=payload["uid"])
ns = {"__name__": "__sandbox__", "__builtins__": builtins}
def describe(e):
    return f"{type(e).__name__}: {str(e)[:300]}"
signal.setitimer(signal.ITIMER_REAL, payload["timeout_s"])
try:
    try:
        exec(compile(payload["code"], "<solution>", "exec"), ns)
    except SandboxTimeout:
        emit(event="timeout", where="code")
        _exit(0)
    except BaseException as e:
        emit(event="code_error", error=describe(e), kind=type(e).__name__)
        _exit(0)
    ep = payload["entry_point"]
    if ep and not callable(ns.get(ep)):
        emit(event="entry_point_missing", entry_point=ep)
        _exit(0)
    for i, test in enumerate(payload["tests"]):
        try:
            exec(compile(test, f"<test {i}>", "exec"), ns)
        except SandboxTimeout:
            emit(event="timeout", where=f"test {i}")
            _exit(0)
        except BaseException as e:
            emit(event="test", index=i, ok=False, error=describe(e), kind=type(e).__name__)
        else:
            emit(event="test", index=i, ok=True)
    signal.setitimer(signal.ITIMER_REAL, 0)
    emit(event="done")
except SandboxTimeout:
    emit(event="timeout", where="harness")
_exit(0)
'''


@lru_cache(maxsize=4)
def _throwaway_uid_usable(python: str) -> bool:
    """Can the interpreter and its stdlib run under an unprivileged uid? (Not if they live in a 0700 home.)"""
    if os.geteuid() != 0:
        return False
    try:
        # drop after start-up, as the bootstrap does: the stdlib must still import afterwards
        probe = (f"import os; os.setgroups([]); os.setgid({_UID_BASE}); os.setuid({_UID_BASE}); "
                 "import fractions, decimal, statistics, heapq")
        r = subprocess.run([python, "-I", "-c", probe], cwd="/", capture_output=True, timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _next_uid() -> int:
    global _uid_counter
    with _uid_lock:
        _uid_counter = (_uid_counter + 1) % 50000
        return _UID_BASE + 1 + (os.getpid() * 7919 + _uid_counter) % 50000


def _kill_uid(uid: int) -> None:
    """SIGKILL every process still running as the run's throw-away uid (escaped the process group)."""
    for _ in range(3):
        found = False
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                status = (pid_dir / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("Uid:"):
                    if int(line.split()[1]) == uid:
                        found = True
                        try:
                            os.kill(int(pid_dir.name), signal.SIGKILL)
                        except OSError:
                            pass
                    break
        if not found:
            return
        time.sleep(0.05)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_code_tests(code: str, tests: list[str], entry_point: str | None, timeout_s: float = 5.0,
                   memory_mb: int = 512, *, max_processes: int = 16, max_file_mb: int = 16,
                   guard: bool = True, python: str | None = None) -> SandboxResult:
    """Execute `code`, then each assert line of `tests`, in a contained subprocess (see the module docstring).

    `timeout_s` bounds the code plus its tests (an in-process alarm, then a wall-clock kill as backstop).
    status: pass (all tests passed) | fail (a test failed, the code raised, or it crashed) | timeout |
    infra_error (the sandbox itself could not run: never the code's fault, never a pass or a fail).
    `guard=False` leaves out the Python-level guard, to test the kernel layers on their own.
    """
    if not tests:
        raise ValueError("run_code_tests needs at least one test")
    python = python or sys.executable
    t0 = time.monotonic()
    limits = {
        "timeout_s": timeout_s, "cpu_s": int(math.ceil(timeout_s)) + 1, "as_bytes": int(memory_mb) << 20,
        "memory_mb": memory_mb, "nproc": max_processes, "fsize_bytes": int(max_file_mb) << 20, "nofile": 256,
    }
    uid = _next_uid() if _throwaway_uid_usable(python) else None
    base = Path(tempfile.mkdtemp(prefix="distill-sbx-"))
    result = SandboxResult(status="infra_error", total=len(tests), limits=limits,
                           privileges=f"uid:{uid}" if uid is not None else "unchanged", sandbox_dir=str(base))
    proc = None
    try:
        workdir = base / "work"
        workdir.mkdir()
        events = workdir / ".events.jsonl"
        events.touch()
        bootstrap = base / "bootstrap.py"
        source = _BOOTSTRAP if guard else _strip_guard(_BOOTSTRAP)
        bootstrap.write_text(source, encoding="utf-8")
        payload = base / "payload.json"
        payload.write_text(json.dumps({
            "code": code, "tests": list(tests), "entry_point": entry_point, "timeout_s": float(timeout_s),
            "limits": limits, "uid": uid, "workdir": str(workdir), "events": str(events),
        }), encoding="utf-8")
        os.chmod(base, 0o755)
        for p in (bootstrap, payload):
            os.chmod(p, 0o644)
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(events, uid, uid)
        os.chmod(workdir, 0o700)
        stdout_path, stderr_path = base / "stdout", base / "stderr"
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        wall = float(timeout_s) + START_GRACE_S
        killed_by_wall = False
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen([python, "-I", "-B", str(bootstrap), str(payload)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, cwd=str(workdir), env=env, start_new_session=True,
                                    close_fds=True)
            try:
                proc.wait(timeout=wall)
            except subprocess.TimeoutExpired:
                killed_by_wall = True
        _kill_group(proc)
        if uid is not None:
            _kill_uid(uid)
        result.returncode = proc.returncode
        result.stdout_tail = _tail(stdout_path)
        result.stderr_tail = _tail(stderr_path)
        _interpret(result, _read_events(events), proc.returncode, killed_by_wall, wall, tests)
    except Exception as e:  # the harness failed, not the code
        result.status, result.reason = "infra_error", f"sandbox harness error: {type(e).__name__}: {e}"[:500]
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        shutil.rmtree(base, ignore_errors=True)
        result.duration = round(time.monotonic() - t0, 4)
    return result


def _strip_guard(source: str) -> str:
    start = source.index("# 4.")
    end = source.index("# 5. run")
    return source[:start] + source[end:]


def _live_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group (forked children included) and wait until it is gone."""
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if not _live_members(proc.pid) or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _read_events(path: Path) -> list[dict]:
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a kill or the file-size limit
    return out


def _interpret(r: SandboxResult, events: list[dict], rc: int | None, killed_by_wall: bool, wall: float,
               tests: list[str]) -> None:
    started = next((e for e in events if e.get("event") == "started"), None)
    test_events = [e for e in events if e.get("event") == "test"]
    r.tests = [{"index": e["index"], "test": tests[e["index"]][:200], "ok": e["ok"], "error": e.get("error")}
               for e in test_events]
    r.passed = sum(1 for e in test_events if e["ok"])
    r.failed = len(tests) - r.passed
    if started is None:
        r.status = "infra_error"
        r.reason = (f"sandbox did not start within {wall:.1f}s" if killed_by_wall
                    else f"sandbox did not start (exit {rc}): {r.stderr_tail[-300:].strip()}")
        return
    r.network_isolation = started.get("isolation", "none")
    kinds = {e.get("event") for e in events}
    if "timeout" in kinds:
        where = next(e.get("where") for e in events if e.get("event") == "timeout")
        r.status, r.reason = "timeout", f"timeout: exceeded {r.limits['timeout_s']}s in {where}"
        return
    if killed_by_wall:
        r.status, r.reason = "timeout", f"timeout: killed after {wall:.1f}s wall clock (alarm ignored or blocked)"
        return
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        if sig == "SIGXCPU":
            r.status, r.reason = "timeout", f"timeout: CPU limit {r.limits['cpu_s']}s (SIGXCPU)"
        else:
            r.status = "fail"
            r.reason = f"crashed: {sig}" + (" (stack overflow or memory)" if sig in ("SIGSEGV", "SIGKILL") else "")
        return
    if "code_error" in kinds:
        e = next(e for e in events if e.get("event") == "code_error")
        r.status, r.reason = "fail", f"code_error: {e.get('error')}"
        r.failed = len(tests)
        return
    if "entry_point_missing" in kinds:
        e = next(e for e in events if e.get("event") == "entry_point_missing")
        r.status, r.reason = "fail", f"entry_point_missing: {e.get('entry_point')!r} is not defined"
        return
    if "done" not in kinds:
        r.status = "fail"
        r.reason = f"exited early (exit {rc}) after {len(test_events)}/{len(tests)} test(s)"
        return
    if r.failed == 0:
        r.status, r.reason = "pass", "ok"
        return
    first = next(e for e in r.tests if not e["ok"])
    r.status = "fail"
    r.reason = f"tests_failed: {r.failed}/{len(tests)}; first: {first['error']}"
