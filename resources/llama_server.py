"""The embedded teacher: a llama.cpp OpenAI-compatible server on a free loopback port, managed for the caller.

Teacher and judge in one process share one server per model file (reference counted).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_ALIAS = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Server:
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    refs: int = 0


_servers: dict[tuple, _Server] = {}
_lock = threading.Lock()


def _wait_ready(server: _Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"the embedded llama.cpp server exited with code {server.proc.returncode}; "
                f"log tail:\n{_tail(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(server.base_url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    server.proc.kill()
    raise TimeoutError(f"the embedded llama.cpp server was not ready in {timeout_s:.0f}s; log:\n{_tail(server.log_path)}")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def acquire(model_path: Path, *, n_ctx: int = 2048, n_threads: int | None = None, startup_timeout_s: float = 180) -> str:
    """Start (or reuse) a server for `model_path`; returns its OpenAI base URL (…/v1)."""
    key = (str(model_path), n_ctx, n_threads)
    with _lock:
        server = _servers.get(key)
        if server is None or server.proc.poll() is not None:
            port = free_port()
            log = Path(tempfile.mkstemp(prefix="distill-llama-", suffix=".log")[1])
            cmd = [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model_path), "--model_alias", EMBEDDED_ALIAS,
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(n_ctx), "--n_threads", str(n_threads or max(1, os.cpu_count() or 1)),
                "--verbose", "False",
            ]
            with open(log, "wb") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=False)
            server = _Server(proc=proc, base_url=f"http://127.0.0.1:{port}/v1", log_path=log)
            _wait_ready(server, startup_timeout_s)
            _servers[key] = server
        server.refs += 1
        return server.base_url


def release(base_url: str) -> None:
    with _lock:
        for key, server in list(_servers.items()):
            if server.base_url == base_url:
                server.refs -= 1
                if server.refs <= 0:
                    server.proc.terminate()
                    try:
                        server.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        server.proc.kill()
                    del _servers[key]
                    server.log_path.unlink(missing_ok=True)
                return
