"""A throwaway PostgreSQL server for the tests that run the ledger on PostgreSQL too.

`PostgresServer.start()` runs `initdb` and `pg_ctl start` in a fresh temporary folder: the
cluster, its log and its unix socket live there, and it listens on a free 127.0.0.1 port. It is
built for speed, not durability (fsync off); `create_database()` hands each test a database of
its own (empty, or a copy of a template database), and `stop()` stops the server (`pg_ctl stop`, else its postmaster by PID)
and removes the folder. One server serves a whole test session (`tests/conftest.py`). A test
run killed before it could stop the server (SIGKILL, a timeout) leaves none behind: a small
watcher process stops the postmaster and removes the folder once the test process is gone.

The folder is in memory (/dev/shm) when that has room, where copying a database takes a few
milliseconds instead of a few hundred on a busy disk; else under /tmp.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` system user (the
Debian package creates it) or else `nobody`. The binaries come from the Debian `postgresql`
package (`/usr/lib/postgresql/<version>/bin`; `make system-packages` installs it), or from PATH.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPERUSER = "ledger_admin"  # trusted from 127.0.0.1: tests create databases as it
PASSWORD_USER = "ledger_password"  # must give its password: for the wrong-password test
PASSWORD = "right-password"
START_TIMEOUT = 60.0  # seconds `pg_ctl start` may take on a loaded 2-core machine
# free memory-backed space the cluster lives in when there is this much (each test's database
# is a copy of about 8 MB; a container's default /dev/shm of 64 MB is too small)
IN_MEMORY_ROOM = 2 * 2**30


def find_bindir() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: the newest Debian `postgresql` package's, else
    PATH's; None when PostgreSQL's server binaries are not installed."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in path.parent.parent.name.split(".") if p.isdigit())

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if installed:
        return installed[-1].parent
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _parent_folder() -> str:
    """Where the cluster's folder goes: /dev/shm when it has room, else /tmp (also reachable
    by a server user other than ours, which a private TMPDIR may not be)."""
    with contextlib.suppress(OSError):
        shm = os.statvfs("/dev/shm")
        if shm.f_bavail * shm.f_frsize >= IN_MEMORY_ROOM and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    return "/tmp"


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None (ourselves) unless we are root, whom initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists")


@dataclass
class PostgresServer:
    """A running throwaway cluster: where it lives, its port, and the user it runs as."""

    bindir: Path
    root: Path  # the temporary folder: data/, the log, the unix socket
    port: int
    user: pwd.struct_passwd | None  # None: the server runs as this process's user
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _watcher: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @classmethod
    def start(cls, bindir: Path) -> PostgresServer:
        """initdb + pg_ctl start in a new temporary folder (see the module doc)."""
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix="stakeswarm-pg-", dir=_parent_folder()))
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        server = cls(bindir=bindir, root=root, port=0, user=user)
        try:
            server._initdb()
            for attempt in range(3):  # another process may take the free port before we do
                server.port = _free_port()
                if server._pg_ctl_start(last=attempt == 2):
                    break
            server._watch()
            server._create_password_user()
        except BaseException:
            server.stop()
            raise
        return server

    def _watch(self) -> None:
        """Start the watcher (see the module doc): in a session of its own, so that a signal to
        the test run's process group does not end it before it has cleaned up."""
        pidfile, parent = self.data / "postmaster.pid", os.getpid()
        script = (
            f"while kill -0 {parent} 2>/dev/null; do sleep 1; done; "
            f'kill -QUIT "$(head -n 1 "{pidfile}" 2>/dev/null)" 2>/dev/null; '
            f'sleep 2; rm -rf "{self.root}"'
        )
        self._watcher = subprocess.Popen(
            ["/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the server's user, in its folder; with `check`, a
        failure raises with what the program said."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT + 30,
            env={**os.environ, "LC_ALL": "C"},
            **options,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout}"
            )
        return done

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "--pgdata", str(self.data),
            "--username", SUPERUSER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
        )  # fmt: skip
        # trust on the loopback, but one user that must give its password
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# a throwaway test server: speed over durability\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
                "timezone = 'UTC'\n"
            )

    def _pg_ctl_start(self, *, last: bool) -> bool:
        done = self._run(
            "pg_ctl", "start", "--wait", "--timeout", str(int(START_TIMEOUT)),
            "--pgdata", str(self.data), "--log", str(self.root / "server.log"),
            "--options", f"-p {self.port}",
            check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return True
        if last:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else done.stderr
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {tail}")
        return False

    def _admin(self) -> Any:
        import psycopg  # only where a server runs: the SQLite-only tests need no psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        )

    def _create_password_user(self) -> None:
        with self._admin() as admin:
            admin.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")

    def url(self, database: str, *, user: str = SUPERUSER, password: str | None = None) -> str:
        """The SQLAlchemy URL of `database` on this server, as a user would give it
        (`postgresql://`, no driver named)."""
        login = user if password is None else f"{user}:{password}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def create_database(self, *, owner: str = SUPERUSER, template: str = "template0") -> str:
        """A new database, a copy of `template` (by default empty; cheap: copied file by file,
        no fsync); its URL. A template must have no open connection while it is copied."""
        name = f"ledger_{os.getpid()}_{next(self._names)}"
        with self._admin() as admin:
            admin.execute(
                f'CREATE DATABASE "{name}" OWNER {owner} TEMPLATE "{template}" STRATEGY file_copy'
            )
        return self.url(name)

    def wait_for_lock_waiter(self, timeout: float) -> bool:
        """Wait until some session of this server waits for a lock (a row another transaction
        holds); False after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        with self._admin() as admin:
            while time.monotonic() < deadline:
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).fetchone()
                if waiting is not None and waiting[0] > 0:
                    return True
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop the server (fast shutdown; its postmaster killed by PID if that fails) and
        remove its folder; then the watcher, which has nothing left to do."""
        if (self.data / "postmaster.pid").exists():
            done = self._run(
                "pg_ctl", "stop", "--wait", "--mode", "fast", "--pgdata", str(self.data),
                check=False,
            )  # fmt: skip
            pidfile = self.data / "postmaster.pid"
            if done.returncode != 0 and pidfile.exists():
                with contextlib.suppress(ValueError, OSError):
                    pid = int(pidfile.read_text().split()[0])
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the cluster
                    time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait()
