"""A throwaway PostgreSQL server from the Debian binaries, for tests and benchmarks only.

`with PostgresServer() as pg:` runs initdb in a fresh temp dir, starts `postgres` on a free loopback port
(its unix socket lives in the same temp dir, so nothing touches /var/run/postgresql), creates one database
and hands out `pg.dsn` in libpq keyword form. On exit it stops the server and deletes the temp dir.

Postgres refuses to run as root, so under root the server runs as the `postgres` OS user (the Debian package
creates it; `nobody` otherwise) via `setpriv`, with the temp dir owned by that user. `setpriv --pdeathsig`
makes the server die with the thread that started it (so start it from a thread that outlives its use, e.g.
the main one), and a crashed test run leaves no postmaster behind.
Durability is off (fsync, synchronous_commit, full_page_writes): the data dies with the test anyway.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

APT_HINT = "install the PostgreSQL server with `apt-get install -y postgresql`"
_NEEDED = ("initdb", "postgres", "pg_isready", "createdb", "psql")


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding every binary we need, else the one on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for cand in candidates:
        if all(os.access(os.path.join(cand, b), os.X_OK) for b in _NEEDED):
            return Path(cand)
    return None


def postgres_available() -> tuple[bool, str]:
    """(True, bin dir) when a server can be started here, else (False, why) for a test skip reason."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return False, f"PostgreSQL binaries ({', '.join(_NEEDED)}) not found under /usr/lib/postgresql/*/bin " \
                      f"or on PATH; {APT_HINT}"
    if os.geteuid() == 0 and _server_user() is None:
        return False, "running as root and neither a `postgres` nor a `nobody` OS user exists to run the server"
    return True, str(bin_dir)


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.name.split(".")[0])
    except ValueError:
        return -1


def _server_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A private Postgres cluster; use as a context manager. `dsn` is valid between enter and exit."""

    def __init__(self, dbname: str = "lake", user: str = "lake", max_connections: int = 200,
                 start_timeout_s: float = 30.0, bin_dir: str | Path | None = None):
        self.dbname, self.user = dbname, user
        self.max_connections = max_connections
        self.start_timeout_s = start_timeout_s
        found = Path(bin_dir) if bin_dir else find_bin_dir()
        if found is None or not (found / "initdb").exists():
            raise RuntimeError(f"PostgreSQL server binaries not found ({bin_dir or '/usr/lib/postgresql/*/bin'}); "
                               f"{APT_HINT}")
        self.bin_dir = found
        self.host = "127.0.0.1"
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._os_user: pwd.struct_passwd | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgfake-"))
        if os.geteuid() == 0:
            self._os_user = _server_user()
            if self._os_user is None:
                raise RuntimeError("running as root and no `postgres`/`nobody` OS user exists to run PostgreSQL")
            os.chown(self.root, self._os_user.pw_uid, self._os_user.pw_gid)
        self._run([self._bin("initdb"), "-D", str(self.data_dir), "-U", self.user, "-A", "trust",
                   "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"])
        for attempt in range(3):  # the free port can be taken between probing and binding: pick another
            self.port = _free_port()
            if self._launch():
                break
            if attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start in {self.start_timeout_s:.0f}s; log:\n{self.log_text()}")
        self._run([self._bin("createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, self.dbname])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # "immediate" shutdown: no shutdown checkpoint (slow on a busy box) for data about to be deleted
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    # -- what tests use ----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root

    @property
    def dsn(self) -> str:
        """libpq keyword form, as DuckDB's postgres extension and psql accept it."""
        if self._proc is None:
            raise RuntimeError("PostgresServer.dsn read outside `with PostgresServer() as pg:`")
        return f"dbname={self.dbname} host={self.host} port={self.port} user={self.user}"

    def new_database(self, name: str) -> str:
        """Create another database on this server (one per test keeps lakes apart); returns its dsn."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r} must be letters, digits and underscores")
        self._run([self._bin("createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, name])
        return f"dbname={name} host={self.host} port={self.port} user={self.user}"

    def psql(self, sql: str, dbname: str | None = None) -> str:
        """Run `sql` with psql on the test database; unaligned, tuples-only output (for assertions)."""
        out = self._run([self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname or self.dbname, "-c", sql])
        return out.strip()

    def log_text(self) -> str:
        log = self.root / "server.log" if self.root else None
        return log.read_text(errors="replace")[-4000:] if log and log.exists() else "(no log)"

    # -- internals ---------------------------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self._os_user is None:
            return argv
        return ["setpriv", "--reuid", str(self._os_user.pw_uid), "--regid", str(self._os_user.pw_gid),
                "--init-groups", "--pdeathsig", "TERM", "--", *argv]

    def _run(self, argv: list[str]) -> str:
        res = subprocess.run(self._as_server_user(argv), capture_output=True, text=True, timeout=60,
                             cwd=self.root, env={**os.environ, "LC_ALL": "C"})
        if res.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed (rc={res.returncode}): {res.stderr.strip()[-2000:]}")
        return res.stdout

    def _launch(self) -> bool:
        assert self.root is not None
        settings = {"listen_addresses": self.host, "port": str(self.port), "unix_socket_directories": str(self.root),
                    "max_connections": str(self.max_connections), "fsync": "off", "synchronous_commit": "off",
                    "full_page_writes": "off", "shared_buffers": "32MB", "log_min_messages": "warning"}
        argv = [self._bin("postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = open(self.root / "server.log", "ab")
        try:
            self._proc = subprocess.Popen(self._as_server_user(argv), stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.root, env={**os.environ, "LC_ALL": "C"})
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:  # exited: most likely the port was taken
                self._proc = None
                return False
            ready = subprocess.run([self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                                   capture_output=True, timeout=10)
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        self._kill()
        return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
