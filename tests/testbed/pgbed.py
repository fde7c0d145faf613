#!/usr/bin/env python3
"""A private PostgreSQL 15 server for tests (issue 12: the state store's second back end and the
cluster test will need one). Debian's postgresql-15, started by the test itself as its own
cluster: initdb in a fresh temp dir owned by the `postgres` user (PostgreSQL refuses to run as
root), a Unix socket in that dir and a free loopback port, a database and a role for suction,
stopped and removed afterwards. Nothing of the system's own clusters is touched.

    python3 tests/testbed/pgbed.py selftest      # start, connect, query, stop, nothing left
    python3 tests/testbed/pgbed.py run -- CMD...  # CMD with SUCTION_TEST_PG=<its dsn>, then stop

From Python:

    with PgBed() as pg:
        pg.dsn        # "host=/tmp/suction-pg-.../run port=54321 dbname=suction user=suction"
        pg.psql("SELECT 1")
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BIN = "/usr/lib/postgresql/15/bin"
HOST = "127.0.0.1"


class PgBedError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class PgBed:
    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self.dir: str | None = None
        self.port = 0
        self.started = False

    # --- paths
    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def sockdir(self) -> str:
        return os.path.join(self.dir, "run")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "postgres.log")

    @property
    def dsn(self) -> str:
        return f"host={self.sockdir} port={self.port} dbname=suction user=suction"

    @property
    def url(self) -> str:
        return f"postgresql://suction@{HOST}:{self.port}/suction"

    def _as_postgres(self, argv: list[str], check: bool = True, input: str | None = None,
                     timeout: float | None = None) -> subprocess.CompletedProcess:
        pw = pwd.getpwnam("postgres")

        def demote():
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        run_as = demote if os.geteuid() == 0 else None
        r = subprocess.run(argv, capture_output=True, text=True, input=input,
                           timeout=timeout or self.timeout, preexec_fn=run_as,
                           env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
        if check and r.returncode != 0:
            raise PgBedError(f"{' '.join(argv[:2])} failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[-2000:]}")
        return r

    def start(self) -> "PgBed":
        if not os.path.exists(os.path.join(BIN, "initdb")):
            raise PgBedError(f"{BIN}/initdb not found (Debian's postgresql-15; "
                             "deploy/install-deps.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="suction-pg-")
        os.chmod(self.dir, 0o755)   # postgres must reach its data dir inside
        os.makedirs(self.sockdir)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.dir, self.sockdir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        try:
            self._as_postgres([f"{BIN}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                               "-E", "UTF8", "--no-sync"])
            last = None
            for _ in range(3):          # a port may be taken between picking and binding
                self.port = _free_port()
                r = self._as_postgres(
                    [f"{BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "20", "start",
                     "-o", f"-p {self.port} -k {self.sockdir} -c listen_addresses={HOST} "
                           f"-c fsync=off -c full_page_writes=off -c synchronous_commit=off"],
                    check=False)
                if r.returncode == 0:
                    self.started = True
                    break
                last = r
            if not self.started:
                tail = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
                raise PgBedError(f"pg_ctl start failed: {(last.stderr or last.stdout).strip()} "
                                 f"{tail}")
            self.psql("CREATE ROLE suction LOGIN", user="postgres", db="postgres")
            # Its own statement: CREATE DATABASE cannot run in psql -c's transaction.
            self.psql("CREATE DATABASE suction OWNER suction", user="postgres", db="postgres")
            return self
        except BaseException:
            self.stop()
            raise

    def psql(self, sql: str, user: str = "suction", db: str = "suction") -> str:
        r = self._as_postgres(["/usr/bin/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", self.sockdir, "-p", str(self.port), "-U", user, "-d", db,
                               "-c", sql])
        return r.stdout.strip()

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.started:
            self._as_postgres([f"{BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
                              check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> "PgBed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _postmasters_in(d: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if d.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def selftest() -> int:
    t0 = time.monotonic()
    with PgBed() as pg:
        d = pg.dir
        assert pg.psql("SELECT 40 + 2") == "42", "query"
        assert pg.psql("SELECT current_user") == "suction", "role"
        pg.psql("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('x');")
        assert pg.psql("SELECT count(*) FROM t") == "1", "table"
        # Reachable over loopback TCP too (a node of a cluster would use that).
        r = subprocess.run(["/usr/bin/psql", "-X", "-A", "-t", pg.url, "-c", "SELECT 1"],
                           capture_output=True, text=True, timeout=20,
                           env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"})
        assert r.stdout.strip() == "1", f"tcp: {r.stderr}"
        assert _postmasters_in(d), "no server process found"
    assert not os.path.exists(d), "data dir left behind"
    deadline = time.monotonic() + 10
    while _postmasters_in(d) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _postmasters_in(d), "server processes left behind"
    print(f"pgbed selftest: ok in {time.monotonic() - t0:.1f}s (start, role, table, TCP, stop, "
          "nothing left)")
    return 0


def run(cmd: list[str]) -> int:
    """Runs cmd against a private server: the state store's test suite on PostgreSQL."""
    with PgBed() as pg:
        env = dict(os.environ, SUCTION_TEST_PG=pg.dsn)
        try:
            return subprocess.run(cmd, env=env, timeout=600).returncode
        except subprocess.TimeoutExpired:
            print(f"pgbed run: {cmd[0]} did not end within 600 s", file=sys.stderr)
            return 1


def main(argv: list[str]) -> int:
    if len(argv) > 3 and argv[1] == "run" and argv[2] == "--":
        return run(argv[3:])
    if argv[1:] == ["selftest"]:
        try:
            return selftest()
        except (PgBedError, AssertionError) as e:
            print(f"pgbed selftest: FAILED: {e}", file=sys.stderr)
            return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
