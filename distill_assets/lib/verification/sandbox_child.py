# ruff: noqa: PLC0415 - imports live inside _main so that the code finds nothing in __main__
"""The sandbox's child process: `python -S -I -B -X utf8 -c <this source> FD`, inside bubblewrap (or the guard).

It reads its payload (code, entry point, per test the expressions to evaluate, limits) from stdin, sets the
rlimits, runs the code, then evaluates each expression and writes the *values* as JSON lines to FD. It never
receives an expected value and never says whether a test passed: the parent does that (see testsplit.py).
Values go through a strict encoder that accepts exact builtin types only (an int subclass or an object whose
`__eq__` always says True is refused). The code runs in this same process, so it could write to FD itself;
that only lets it claim values, which is no better than computing them, and breaking the protocol fails the run.

Everything lives inside `_main` and `__main__` is emptied first, so the code finds no handles in `__main__`.
Stdlib only; the project tree is not visible in the sandbox.
"""


def _main():  # noqa: C901 - one linear script, kept in one function on purpose (see the module docstring)
    # `signal`, `json` and `types` would pull in enum/re (~50 ms a run): the C modules and a small encoder do
    import _signal as signal
    import builtins
    import marshal
    import os
    import resource
    import sys

    guard = _guard
    g = globals()
    for name in [n for n in g if not n.startswith("__")]:
        del g[name]
    fd = int(sys.argv[1])
    os.closerange(3, fd)
    os.closerange(fd + 1, 65536)
    payload = marshal.loads(sys.stdin.buffer.read())  # written by the parent before any code ran
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    escapes = {c: f"\\u{c:04x}" for c in [*range(32), *range(0xD800, 0xE000), 127]}
    escapes.update({ord('"'): '\\"', ord("\\"): "\\\\"})

    def jstr(x):
        return '"' + x.translate(escapes) + '"'

    def emit(k, **kw):
        data = ('{"k":' + jstr(k) + "".join(f',"{n}":{v}' for n, v in kw.items()) + "}\n").encode()
        # the timeout alarm must not cut a line in half: it is delivered once the line is out
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})

    lim = payload["limits"]

    def setlim(res, soft, hard=None):
        hard = soft if hard is None else hard
        cur_soft, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))

    setlim(resource.RLIMIT_CORE, 0)
    setlim(resource.RLIMIT_NOFILE, lim["nofile"])
    setlim(resource.RLIMIT_FSIZE, lim["fsize_bytes"])
    setlim(resource.RLIMIT_NPROC, lim["nproc"])
    setlim(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)
    setlim(resource.RLIMIT_AS, lim["as_bytes"])
    drop = payload.get("drop_uid")
    if drop is not None:  # root outside: leave the mapped root for an uid that RLIMIT_NPROC applies to
        os.setgroups([])
        os.setresgid(drop, drop, drop)
        os.setresuid(drop, drop, drop)
        if os.getuid() != drop or os.geteuid() != drop:
            os._exit(70)
    os.chdir(payload["workdir"])
    if payload.get("guard"):
        guard(payload["workdir"])

    class SandboxTimeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise SandboxTimeout()

    def describe(e):
        try:
            return f"{type(e).__name__}: {str(e)[:300]}"
        except BaseException:
            return type(e).__name__

    tags = {tuple: "t", set: "s", frozenset: "f"}

    def enc(x, depth, budget):
        """JSON for exact builtin values only; tuples, sets, dicts and bytes tagged ({"t": [...]}, ...)."""
        t = type(x)
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("result too large")
        if x is None:
            return "null"
        if t is bool:
            return "true" if x else "false"
        if t is int:
            return int.__repr__(x)
        if t is float:
            return "NaN" if x != x else "Infinity" if x == 1e999 else "-Infinity" if x == -1e999 else float.__repr__(x)
        if t is str:
            return jstr(x)
        if depth > 64:
            raise ValueError("result nested too deeply")
        if t is list:
            return "[" + ",".join([enc(v, depth + 1, budget) for v in x]) + "]"
        if t in tags:
            return '{"' + tags[t] + '":[' + ",".join([enc(v, depth + 1, budget) for v in x]) + "]}"
        if t is dict:
            pairs = ["[" + enc(k, depth + 1, budget) + "," + enc(v, depth + 1, budget) + "]" for k, v in x.items()]
            return '{"d":[' + ",".join(pairs) + "]}"
        if t is bytes:
            return '{"b":"' + x.hex() + '"}'
        raise TypeError(f"the result is not a plain builtin value (int, float, str, bool, None, list, tuple, "
                        f"dict, set, bytes) but {type.__dict__['__name__'].__get__(t)!s:.80}")

    out = sys.stdout
    mod = type(sys)("__sandbox__")
    sys.modules["__sandbox__"] = mod
    ns = mod.__dict__
    ns["__builtins__"] = builtins
    code = payload.pop("code")
    tests = payload.pop("tests")
    emit("started")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, payload["timeout_s"])
    where = "code"
    try:
        try:
            exec(compile(code, "<solution>", "exec"), ns)
        except SandboxTimeout:
            raise
        except BaseException as e:  # SystemExit at import included: the code did not run to its end
            emit("code_error", error=jstr(describe(e)))
            return out
        del code
        emit("ran")
        ep = payload["entry_point"]
        if ep and not callable(ns.get(ep)):
            emit("entry_point_missing", entry_point=jstr(ep))
            return out
        for t, exprs in enumerate(tests):
            where = f"test {t}"
            for e, expr in enumerate(exprs):
                try:
                    value = eval(compile(expr, f"<test {t}>", "eval"), ns)
                    line = enc(value, 0, [200_000])
                    if len(line) > payload["value_cap"]:
                        raise ValueError("result too large")
                except SandboxTimeout:
                    raise
                except BaseException as err:
                    emit("v", t=t, e=e, x=jstr(describe(err)))
                else:
                    emit("v", t=t, e=e, v=line)
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit("done")
    except SandboxTimeout:
        emit("timeout", where=jstr(where))
    return out


def _guard(workdir):
    """The weak mode (`isolation="guard"`): a Python-level guard, NOT a security boundary.

    It blocks the obvious (network, fork/exec, kill, deleting, writing outside `workdir`, ctypes) for
    honest-but-buggy code where bubblewrap cannot run. Anything determined gets around it.
    """
    import builtins
    import io
    import os
    import shutil
    import socket
    import subprocess
    import sys

    def blocked(name):
        def f(*a, **k):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return f

    class _NoSocket(socket.socket):
        def __init__(self, *a, **k):
            raise PermissionError("network access is disabled in the sandbox")

    socket.socket = _NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        setattr(socket, name, blocked("socket." + name))
    root = os.path.realpath(workdir)

    def inside(path):
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return True  # an fd
        return p == root or p.startswith(root + os.sep)

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and not isinstance(file, int) and not inside(file):
            raise PermissionError(f"writing outside the sandbox directory is disabled: {file}")
        return real_open(file, mode, *a, **k)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def guarded_os_open(path, flags, *a, **k):
        if flags & write_flags and not inside(path):
            raise PermissionError(f"writing outside the sandbox directory is disabled: {path}")
        return real_os_open(path, flags, *a, **k)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name in ("system", "kill", "killpg", "fork", "forkpty", "remove", "removedirs", "rmdir", "unlink",
                 "rename", "renames", "replace", "truncate", "chdir", "fchdir", "chroot", "setsid", "setpgid",
                 "chmod", "chown", "link", "symlink", "popen", "posix_spawn", "posix_spawnp", "execv", "execve",
                 "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp",
                 "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "register_at_fork"):
        if hasattr(os, name):
            setattr(os, name, blocked("os." + name))
    for name in ("rmtree", "move", "chown", "copytree"):
        setattr(shutil, name, blocked("shutil." + name))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, blocked("subprocess." + name))
    for mod in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_socket", "pty", "faulthandler"):
        sys.modules[mod] = None


if __name__ == "__main__":
    _out = _main()
    for _f in (_out, __import__("sys").stderr):
        try:  # os._exit skips the code's atexit hooks (they could write after "done") but keeps its prints
            _f.flush()
        except BaseException:
            pass
    __import__("os")._exit(0)
