"""Run untrusted Python (teacher-written code) against assert-line tests under bubblewrap.

Each verification is one `bwrap` run: new user, pid, net, ipc, uts, cgroup and mount namespaces; a root with
only the interpreter, its standard library (site-packages hidden) and the system shared libraries, read-only;
private tmpfs `/tmp` and `/work`; its own `/proc`, a minimal `/dev`, an empty environment, `--die-with-parent
--new-session`. The child sets RLIMIT_CPU/AS/NPROC/FSIZE/NOFILE before any code runs; RLIMIT_NPROC counts per
user namespace, so concurrent runs neither share a budget nor see (let alone kill) each other. The kernel never
applies RLIMIT_NPROC to host uid 0, so as root the namespace maps its uid 65534 to host uid 65534 and the child
drops to it first. A wall timeout SIGKILLs bwrap, and with it the namespace's init and everything in it.

Verdicts are the parent's: testsplit.py cuts each test into expressions (evaluated in the sandbox after the
code ran) and a check with the expected values (evaluated here on the plain values that come back). The
child never sees an expected value; what it writes can at most claim values, never a verdict.

`isolation="guard"` is the weak mode for hosts without user namespaces: the same protocol in a plain
subprocess with a Python-level guard (sandbox_child._guard). That guard is NOT a security boundary; the
result records `isolation` so the lineage says which one a row ran under.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import math
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from .testsplit import SplitTest, read_results, split_test, verdict

Status = Literal["pass", "fail", "infra_error", "timeout", "unverifiable"]
Isolation = Literal["bwrap", "guard"]
TAIL = 2000
START_GRACE_S = 5.0  # bwrap + interpreter start-up on a loaded machine, on top of the code's own budget
RESULT_CAP = 16 << 20  # bytes of result lines the parent keeps; more is a broken protocol
VALUE_CAP = 1 << 20  # one encoded value
SANDBOX_UID = 65534  # the uid inside the namespace (and, as root, the host uid it maps to)
_CHILD = (Path(__file__).with_name("sandbox_child.py")).read_text(encoding="utf-8")
_PY_FLAGS = ["-S", "-I", "-B", "-X", "utf8"]  # no site, no env, no bytecode writes: fast and minimal


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here; the message names the cause and the fix."""


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
    privileges: str = "unchanged"  # bwrap: "userns:host-uid=<n>"
    sandbox_dir: str = ""  # bwrap: a tmpfs that never exists on the host; guard: a temp dir, deleted
    returncode: int | None = None
    tests: list[dict] = field(default_factory=list)  # [{index, test, ok, status, error}]
    limits: dict = field(default_factory=dict)
    isolation: Isolation = "bwrap"
    unverifiable: int = 0  # tests that could not be split into call + expected value (never a pass)

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return asdict(self)


_PROBE = r"""
import json, os, site, sys, sysconfig
v = sysconfig.get_config_vars()
lib = os.path.join(v["LIBDIR"], v["INSTSONAME"]) if v.get("Py_ENABLE_SHARED") else None
print(json.dumps({"exe": os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable),
                  "stdlib": sysconfig.get_path("stdlib"), "dynload": v.get("DESTSHARED"),
                  "libpython": lib if lib and os.path.exists(lib) else None, "sites": site.getsitepackages()}))
"""


@lru_cache(maxsize=8)
def _interpreter(python: str) -> dict:
    """Where the interpreter's binary, stdlib and shared libpython live (asked once per interpreter)."""
    r = subprocess.run([python, *_PY_FLAGS, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"}, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"interpreter {python} failed to start: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout)


@lru_cache(maxsize=1)
def _bwrap_binary() -> tuple[str | None, frozenset]:
    """bwrap's path and which of the options we use that are newer than 0.5 it knows."""
    path = shutil.which("bwrap")
    if path is None:
        return None, frozenset()
    helptext = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30).stdout
    return path, frozenset(o for o in ("--chmod", "--size", "--disable-userns") if o in helptext)


def bwrap_available(python: str | None = None) -> tuple[bool, str]:
    """(True, "bubblewrap <version>") if a real sandboxed run works here, else (False, the cause and the fix)."""
    return _bwrap_probe(python or sys.executable)


_USERNS_FIX = ("enable user namespaces: `sysctl -w kernel.unprivileged_userns_clone=1` (Debian/Ubuntu kernels) or "
               "`sysctl -w user.max_user_namespaces=15000`; Ubuntu 24.04+ also needs "
               "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`; a Docker container needs "
               "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined`")


@lru_cache(maxsize=8)
def _bwrap_probe(python: str) -> tuple[bool, str]:
    path, features = _bwrap_binary()
    if path is None:
        return False, "bubblewrap is not installed: apt-get install -y bubblewrap (or dnf install bubblewrap)"
    if "--chmod" not in features:
        return False, "this bubblewrap is older than 0.5 (no --chmod): install a newer one (Debian 12 ships 0.8)"
    r = run_code_tests("def f():\n    return 1\n", ["assert f() == 1"], "f", timeout_s=10, python=python, _probe=True)
    if r.status == "pass":
        return True, subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    err = (r.stderr_tail or r.reason).strip()[-400:]
    if "bwrap:" in err and any(s in err for s in ("Operation not permitted", "Permission denied", "No permissions",
                                                  "uid map", "namespace")):
        return False, f"bubblewrap cannot create user namespaces here ({err}): {_USERNS_FIX}"
    return False, f"bubblewrap does not run a sandboxed Python here: {err}"


def _limits(timeout_s: float, memory_mb: int, max_processes: int, max_file_mb: int) -> dict:
    return {"timeout_s": float(timeout_s), "cpu_s": int(math.ceil(timeout_s)) + 1, "memory_mb": int(memory_mb),
            "as_bytes": int(memory_mb) << 20, "nproc": int(max_processes), "fsize_bytes": int(max_file_mb) << 20,
            "nofile": 256, "tmpfs_bytes": max(16, 2 * int(max_file_mb)) << 20,
            "wall_s": float(timeout_s) + START_GRACE_S}


def _bwrap_args(bwrap: str, features: frozenset, interp: dict, limits: dict, as_root: bool,
                fds: dict) -> list[str]:
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "TMPDIR", "/tmp",
            "--hostname", "sandbox"]
    if as_root:  # the parent writes the uid/gid maps; the child drops to SANDBOX_UID itself (see the docstring)
        args += ["--userns-block-fd", str(fds["block"]), "--info-fd", str(fds["info"]),
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)] + ["--disable-userns"] * (
            "--disable-userns" in features)
    for d in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/lib32", "/usr/lib32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind", interp["exe"], interp["exe"],
             "--ro-bind", interp["stdlib"], interp["stdlib"]]
    if interp["dynload"] and os.path.isdir(interp["dynload"]):
        args += ["--ro-bind", interp["dynload"], interp["dynload"]]
    args += ["--ro-bind", os.path.realpath(interp["libpython"]), interp["libpython"]] * bool(interp["libpython"])
    for site in interp["sites"]:  # an installed package is not part of the standard library
        if os.path.isdir(site) and any(site.startswith(d + "/") for d in ("/usr/lib", "/lib", interp["stdlib"])):
            args += ["--tmpfs", site]
    # bwrap copies the modes of the directories it creates on the way (a 0700 /root): open them for the uid
    # the child drops to. Only directories bwrap made in its own tmpfs root, never a bind of a host directory.
    bound = [args[i + 2] for i, a in enumerate(args) if a in ("--ro-bind", "--symlink", "--ro-bind-try")]
    made = {str(p) for b in bound for p in Path(b).parents if str(p) != "/"}
    for d in sorted(made):
        if not any(d == b or d.startswith(b + "/") for b in bound):
            args += ["--chmod", "0755", d]
    size = ["--size", str(limits["tmpfs_bytes"])] * ("--size" in features)  # tmpfs is RAM: bound it (0.6+)
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp", *size, "--tmpfs", "/work",
             "--chmod", "1777", "/tmp", "--chmod", "0777", "/work", "--chdir", "/work"]
    return args + ["--", interp["exe"], *_PY_FLAGS, "-c", _CHILD, str(fds["result"])]


def run_code_tests(code: str, tests: list[str], entry_point: str | None, timeout_s: float = 5.0,
                   memory_mb: int = 512, *, max_processes: int = 16, max_file_mb: int = 16,
                   isolation: Isolation = "bwrap", python: str | None = None, _probe: bool = False) -> SandboxResult:
    """Execute `code`, then the call side of each assert line of `tests`, in a sandbox (module docstring).

    status: pass (every test verified and passed) | fail (a test failed, the code raised or crashed, or it
    broke the result protocol) | timeout | unverifiable (a test could not be split, none failed) |
    infra_error (the sandbox itself could not run: never a pass or a fail). Raises SandboxUnavailable when
    bubblewrap cannot run; isolation="guard" accepts the weak mode explicitly.
    """
    if not tests:
        raise ValueError("run_code_tests needs at least one test")
    if isolation not in ("bwrap", "guard"):
        raise ValueError(f"isolation must be 'bwrap' or 'guard', not {isolation!r}")
    t0 = time.monotonic()
    python = python or sys.executable
    limits = _limits(timeout_s, memory_mb, max_processes, max_file_mb)
    splits = [split_test(t) for t in tests]
    result = SandboxResult(status="infra_error", total=len(tests), limits=limits, isolation=isolation)
    try:
        interp = _interpreter(python)
    except Exception as e:  # a missing or broken interpreter: neither bubblewrap's fault nor the code's
        result.reason, result.duration = f"sandbox harness error: {type(e).__name__}: {e}"[:500], 0.0
        return result
    if isolation == "bwrap" and not _probe:
        ok, why = bwrap_available(python)
        if not ok:
            raise SandboxUnavailable(why)
    if not any(s.splittable for s in splits):
        _judge(result, splits, {})  # nothing the parent could check: do not even run it
        result.reason = "unverifiable: no test could be split into a call and a literal expected value; first: " \
            + splits[0].reason
        result.duration = round(time.monotonic() - t0, 4)
        return result
    workdir = None
    try:
        payload = {"code": code, "entry_point": entry_point, "tests": [list(s.exprs) for s in splits],
                   "timeout_s": float(timeout_s), "limits": limits, "value_cap": VALUE_CAP}
        if isolation == "bwrap":
            path, features = _bwrap_binary()
            as_root = os.geteuid() == 0
            payload.update(workdir="/work", drop_uid=SANDBOX_UID if as_root else None)
            result.network_isolation, result.sandbox_dir = "netns", "tmpfs:/work"
            result.privileges = f"userns:host-uid={SANDBOX_UID if as_root else os.geteuid()}"
            run = _spawn(lambda fds: _bwrap_args(path, features, interp, limits, as_root, fds), payload,
                         limits["wall_s"], as_root=as_root, cwd="/")
        else:
            workdir = tempfile.mkdtemp(prefix="distill-sbx-")
            payload.update(workdir=workdir, guard=True)
            result.network_isolation, result.sandbox_dir = "socket_block", workdir
            run = _spawn(lambda fds: [interp["exe"], *_PY_FLAGS, "-c", _CHILD, str(fds["result"])], payload,
                         limits["wall_s"], as_root=False, cwd=workdir, new_session=True)
        result.returncode = run["rc"]
        result.stdout_tail, result.stderr_tail = run["stdout"], run["stderr"]
        _interpret(result, splits, run)
    except Exception as e:  # the harness failed, not the code
        result.status, result.reason = "infra_error", f"sandbox harness error: {type(e).__name__}: {e}"[:500]
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        result.duration = round(time.monotonic() - t0, 4)
    return result


def _spawn(build, payload: dict, wall: float, *, as_root: bool, cwd: str, new_session: bool = False) -> dict:
    """Start the child, feed it its payload, collect its result lines and output tails, kill it at `wall`."""
    mine: list[int] = []  # our fds, all closed at the end

    def pipe() -> tuple[int, int]:
        mine.extend(os.pipe())
        return mine[-2], mine[-1]

    def close(*fds: int) -> None:
        for fd in fds:
            os.close(fd)
            mine.remove(fd)

    try:
        stdin = os.memfd_create("payload")
        mine.append(stdin)
        os.write(stdin, marshal.dumps(payload))  # the child reads it before importing anything slow
        os.lseek(stdin, 0, os.SEEK_SET)
        (res_r, res_w), (out_r, out_w), (err_r, err_w) = pipe(), pipe(), pipe()
        fds = {"result": res_w}
        if as_root:
            (fds["block"], block_w), (info_r, fds["info"]) = pipe(), pipe()
        proc = subprocess.Popen(build(fds), stdin=stdin, stdout=out_w, stderr=err_w, pass_fds=list(fds.values()),
                                cwd=cwd, env={"PATH": "/usr/bin:/bin"}, start_new_session=new_session)
        close(stdin, out_w, err_w, *fds.values())
        streams = {res_r: "result", out_r: "stdout", err_r: "stderr"}
        deadline = time.monotonic() + wall
        try:
            if as_root:
                try:
                    _map_userns(info_r, block_w, deadline)
                except RuntimeError as e:
                    err = _collect(streams, time.monotonic() + 5)["stderr"][-300:].decode(errors="replace")
                    raise RuntimeError(f"{e}: {err.strip()}") from None
            got = _collect(streams, deadline)
            if got["killed"]:
                _kill(proc, new_session)
                more = _collect(streams, time.monotonic() + 5)  # the namespace is going: read to the end
                got.update({k: got[k] + more[k] for k in ("result", "stdout", "stderr")})
            if new_session:  # survivors in the guard mode's group; before the reap, so the pgid is still ours
                _kill(proc, new_session)
            try:  # all pipes closed, yet it may still run: then the wall clock still applies
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(proc, new_session)
                rc, got["killed"] = proc.wait(timeout=10), True
        finally:
            if proc.poll() is None:
                _kill(proc, new_session)
                proc.wait(timeout=10)
        return {"rc": rc, "killed": got["killed"], "lines": got["result"][:RESULT_CAP], "wall": wall,
                "overflow": len(got["result"]) > RESULT_CAP, "stdout": got["stdout"][-TAIL:].decode(errors="replace"),
                "stderr": got["stderr"][-TAIL:].decode(errors="replace")}
    finally:
        for fd in mine:
            os.close(fd)


def _map_userns(info_r: int, block_w: int, deadline: float) -> None:
    """As root: map the sandbox's uid 65534 (and uid 0, which bwrap needs for its own set-up) and let it go."""
    info, poll = b"", select.poll()  # poll, not select: fd numbers above 1024 are fine
    poll.register(info_r, select.POLLIN)
    while not info.rstrip().endswith(b"}"):  # bwrap writes one JSON object, then waits on block_w
        ready = poll.poll(max(0.0, deadline - time.monotonic()) * 1000)
        chunk = os.read(info_r, 65536) if ready else b""
        if not chunk:
            raise RuntimeError(f"bwrap did not report its sandbox pid (got {info[:200]!r})")
        info += chunk
    pid = json.loads(info)["child-pid"]
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n")
    os.write(block_w, b"1")


def _collect(fds: dict[int, str], deadline: float) -> dict:
    """Read every pipe until all are closed (the namespace is gone) or `deadline` passes."""
    out: dict = {name: bytearray() for name in fds.values()}
    sel = selectors.DefaultSelector()
    for fd in fds:
        sel.register(fd, selectors.EVENT_READ)
    killed = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                killed = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = out[fds[key.fd]]
                buf += chunk
                if fds[key.fd] != "result" and len(buf) > 4 * TAIL:
                    del buf[:-TAIL]  # keep the tail of stdout/stderr only
                elif len(buf) > RESULT_CAP + 1:
                    del buf[RESULT_CAP + 1:]
    finally:
        sel.close()
    return {**{k: bytes(v) for k, v in out.items()}, "killed": killed}


def _kill(proc: subprocess.Popen, group: bool) -> None:
    """SIGKILL the guard's process group, or bwrap: its death kills the namespace's init (--die-with-parent)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()


def _judge(r: SandboxResult, splits: list[SplitTest], values: dict) -> None:
    r.tests, r.status, r.reason = verdict(splits, values)
    counts = {k: sum(t["status"] == k for t in r.tests) for k in ("pass", "fail", "unverifiable")}
    r.passed, r.failed, r.unverifiable = counts["pass"], counts["fail"], counts["unverifiable"]


def _interpret(r: SandboxResult, splits: list[SplitTest], run: dict) -> None:
    """The parent's verdict. Lines from the child can only ever make it worse, never a pass by themselves."""
    events, values, broken = read_results(run["lines"], run["killed"] or run["overflow"], splits)
    rc, wall = run["rc"], run["wall"]
    if not events:  # the child never got to run the code: the sandbox's failure, never the code's
        r.status = "infra_error"
        r.reason = (f"sandbox did not start within {wall:.1f}s" if run["killed"] else
                    "sandbox could not drop privileges" if rc == 70 else
                    f"sandbox did not start (exit {rc}): {r.stderr_tail[-300:].strip()}")
        return
    _judge(r, splits, values)
    if run["overflow"]:
        broken = broken or f"more than {RESULT_CAP} bytes of results"
    ev = {e["k"]: e for e in events}
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else None  # bwrap exits 128 + the child's signal
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    expected = sum(len(s.exprs) for s in splits)
    verdicts = [
        ("timeout" in ev, "timeout", f"timeout: exceeded {r.limits['timeout_s']}s in {ev.get('timeout', {}).get('where')}"),
        (run["killed"], "timeout", f"timeout: killed after {wall:.1f}s wall clock (alarm ignored or blocked)"),
        (name == "SIGXCPU", "timeout", f"timeout: CPU limit {r.limits['cpu_s']}s (SIGXCPU)"),
        ("code_error" in ev, "fail", f"code_error: {ev.get('code_error', {}).get('error')}"),
        ("entry_point_missing" in ev, "fail",
         f"entry_point_missing: {ev.get('entry_point_missing', {}).get('entry_point')!r} is not defined"),
        (sig is not None, "fail", f"crashed: {name}" + (" (stack overflow or memory)" * (name in ("SIGSEGV", "SIGKILL")))),
        ("done" not in ev or rc != 0, "fail", f"exited early (exit {rc}) after {len(values)} of {expected} value(s)"),
    ]
    for hit, status, reason in verdicts:
        if hit:
            r.status, r.reason = status, reason
            break
    if broken and r.status != "timeout":
        keep = r.status == "fail" and not r.reason.startswith("tests_failed")
        r.status, r.reason = "fail", (r.reason + "; " if keep else "") + f"result channel tampered: {broken}"
