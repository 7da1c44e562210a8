"""A real PostgreSQL on loopback for the prediction log's tests: a throwaway cluster (initdb) started with pg_ctl on
a free port of 127.0.0.1, trust authentication, durability off (fsync, synchronous_commit, full_page_writes) since
nothing in it must outlive the session.

PostgreSQL refuses to run as root, and the tests run as root: initdb and pg_ctl run as the `postgres` user
(`runuser`), and the cluster lives in a fresh `tempfile.mkdtemp` folder opened to that user (pytest's tmp folders are
0700 root, which postgres could not traverse). `stop()` and `start()` keep the data folder and the port, so a test
can take the database away under load and bring it back at the same URL.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
SUPERUSER = "postgres"
OS_USER = "postgres"
STOP_TIMEOUT_S = 30
SERVER_SETTINGS = ("-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=50")


def postgres_binaries() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl, or None where PostgreSQL is absent
    (or there is no `postgres` user or `runuser` to run it as)."""
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates = [p for p in candidates if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    if not candidates or shutil.which("runuser") is None or not _user_exists(OS_USER):
        return None
    return max(candidates, key=lambda p: _version_key(p.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One initialised cluster; `start()` it, `url(db)` to reach it, `stop()` (data and port are kept),
    `destroy()` to stop it and remove its folder."""

    def __init__(self, binaries: Path, port: int | None = None) -> None:
        self.binaries = binaries
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="shopclip-pg-"))
        # postgres must traverse this folder to reach its data and socket folders.
        self.folder.chmod(0o755)
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.logfile = self.folder / "postgres.log"
        self.pid: int | None = None
        self._init_cluster()

    def _init_cluster(self) -> None:
        owner = pwd.getpwnam(OS_USER)
        for path in (self.data, self.sockets):
            path.mkdir(mode=0o700)
            os.chown(path, owner.pw_uid, owner.pw_gid)
        self.logfile.touch()
        os.chown(self.logfile, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", SUPERUSER, "--encoding=UTF8", "--no-sync")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def start(self) -> None:
        """Starts the server (again) on the same port and data; returns once it accepts connections."""
        options = f"-p {self.port} -k {self.sockets} {SERVER_SETTINGS}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.logfile), "-w", "-t", "60", "start")
        self.pid = self._postmaster_pid()

    def stop(self) -> None:
        """Fast shutdown (open connections are closed at once), by pg_ctl; by the postmaster's PID if that fails."""
        # A start that failed after the postmaster came up leaves no pid here, but its pid file says.
        self.pid = self.pid or self._postmaster_pid()
        if self.pid is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop")
        except (subprocess.SubprocessError, RuntimeError):
            self._kill()
        self.pid = None

    def destroy(self) -> None:
        """Stops the server and removes its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Creates database `name` (a plain identifier) and returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be letters, digits and underscores: {name!r}")
        self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def _run(self, program: str, *args: str) -> None:
        command = ["runuser", "-u", OS_USER, "--", str(self.binaries / program), *args]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
                                cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(f"{program} exited with {result.returncode}: {result.stderr.strip()[-2000:]}\n"
                               f"server log: {self._log_tail()}")

    def _postmaster_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill(self) -> None:
        # pg_ctl failed: the postmaster is still ours, stop it by its PID so no process outlives the tests.
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@contextmanager
def running_postgres(binaries: Path | None = None) -> Iterator[PostgresServer]:
    """A started PostgreSQL, stopped and removed when the block ends (even when it fails)."""
    found = binaries or postgres_binaries()
    if found is None:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    server = PostgresServer(found)
    try:
        server.start()
        yield server
    finally:
        server.destroy()
