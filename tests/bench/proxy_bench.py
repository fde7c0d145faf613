#!/usr/bin/env python3
"""suction proxy benchmarks: suction against the server it fronts and against nginx's mail proxy,
in one run, side by side.

Run by hand (root: the test bed starts Dovecot), from the repository root, after building the
daemon (`ninja -C build -j1 suction`); a full run takes about two minutes on 2 cores:

    python3 tests/bench/proxy_bench.py [--sessions 5000] [--noops 2000] [--fetch-mb 10]
        [--fetch-reps 15] [--logins 200] [--strace-noops 500]
        [--only noop,pinned,fetch,login,syscalls,sessions] [--binary PATH] [--baseline-binary PATH]

What it starts (all on 127.0.0.1; all stopped at the end, also on failure, Ctrl-C or SIGTERM):
  * the real-server test bed (tests/testbed): Dovecot "new" is the direct reference;
  * `suction proxy` in front of Dovecot (plaintext listener and implicit-TLS listener), and with
    --baseline-binary a second one, "suction (before)", so a before/after pair is one run (both
    binaries are copied into the work directory first: a rebuild during the run changes nothing);
  * nginx's mail proxy (optional peer: Debian nginx-light + libnginx-mod-mail; see
    nginx_peer.py), one master + one worker, in front of Dovecot with its default 4k
    proxy_buffer ("nginx"), with `proxy_buffer 64k` ("nginx 64k") and with TLS on the listener;
  * `socat TCP-LISTEN:...,fork TCP:127.0.0.1:<dovecot>` (optional peer): a naive relay;
  * tests/bench/fake_backend.py: a cheap asyncio IMAP server, for thousands of idle sessions
    and as the client-ceiling reference that streams the FETCH literal as fast as it can, with
    each relay in front of it as well;
  * `strace -f -c -p <relay>` (optional) for the syscall counts, one relay at a time;
  * for the session-memory test, a fresh relay per row in front of the fake backend
    (RLIMIT_NOFILE raised towards 65536, as far as the hard limit).

What it measures (one table each; ratios are to "direct" over the same transport, same run):
  1. NOOP round trip, p50/p99, on one logged-in connection per path (raw socket), and the CPU
     time per NOOP of client, relay and Dovecot. 1b: the same with client, relays and Dovecot
     pinned to one core (the relay's own CPU cost without cross-core wake-ups).
  2. UID FETCH BODY.PEEK[] of one 10 MB message, MB/s (10^6 bytes/s), median of the reps, and
     each process's CPU while it runs; the relay's CPU milliseconds per FETCH.
  3. Login latency: connect + greeting (+ TLS handshake) + LOGIN + tagged OK, p50/p99.
  4. Syscalls per relayed NOOP: strace -c on the relay during --strace-noops NOOPs on one
     connection (its own phase: strace slows the process), total and the top five.
  5. Idle logged-in sessions (fake backend): relay VmRSS per session at N (goal measure) and the
     slope from N/2 to N (or 2N where the descriptor limit allows), plaintext and TLS
     client->relay; 100 sampled sessions, then every session, must still answer NOOP.
  Summary: one row per measure, one column per path, with suction's ratio to the best nginx.
Paths are interleaved round by round so that machine noise hits all of them alike, each round in
a seeded order of its own (no path always pays for the slot after another); each path has
several connections, logged in in a shuffled order, so no path keeps the Dovecot imap process of
one login slot (they differ in speed); and every relay runs
in a session of its own, as systemd starts a service (with kernel.sched_autogroup_enabled each
session is one scheduling group: no relay shares one with this client). A login through
suction starts that user's migration run (the engine, on its own thread): before tables 1, 1b, 2
and 4 time anything, those runs are waited out (status socket), so their CPU time and syscalls
are not counted as the relay's.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed"))
sys.path.insert(0, HERE)
from testbed import Testbed  # noqa: E402
from fake_backend import make_payload  # noqa: E402
from benchlib import dovecot_version, pct, platform_cpu, strace_counts  # noqa: E402
import nginx_peer  # noqa: E402
from nginx_peer import MailServer  # noqa: E402

HOST = "127.0.0.1"
SOCK_TIMEOUT = 30.0
USER = "alice"
SUCTION = "suction"
BEFORE = "suction (before)"
NGINX = "nginx"
NGINX64 = "nginx 64k"
SOCAT = "socat"
REF_NAME = "reference (fake server, direct)"


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 15.0, greeting: bool = True,
              tls: ssl.SSLContext | None = None) -> None:
    """Until `port` accepts a connection (and sends a greeting line)."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / 0.05) + 1):
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process {proc.args[0]} exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection((HOST, port), timeout=2.0) as s:
                if tls is not None:
                    s = tls.wrap_socket(s, server_hostname="localhost")
                if greeting:
                    s.settimeout(2.0)
                    if not s.recv(256).startswith(b"* OK"):
                        raise BenchError(f"port {port}: no OK greeting")
                return
        except OSError as e:
            last = e
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise BenchError(f"port {port} did not open within {timeout}s: {last}")


def raise_nofile(limit: int = 65536) -> None:
    """For a child (preexec_fn) or ourselves: RLIMIT_NOFILE up to `limit` (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(hard, limit)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE (containers): as far as the hard limit goes
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))


def proc_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise BenchError(f"no open-files limit for pid {pid}")


class Children:
    """Every process this benchmark starts; stop_all() ends them by pid (group when they fork)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, bool]] = []

    def start(self, name: str, argv: list[str], *, new_group: bool = False, nofile: int | None = None,
              stdout=subprocess.DEVNULL, stderr=None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=new_group,
                             preexec_fn=(lambda: raise_nofile(nofile)) if nofile else None)
        self.procs.append((name, p, new_group))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10.0) -> None:
        for name, q, group in list(self.procs):
            if q is p:
                self._stop_one(name, q, group, timeout)
                self.procs.remove((name, q, group))

    @staticmethod
    def _stop_one(name: str, p: subprocess.Popen, group: bool, timeout: float) -> None:
        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(p.pid, sig)  # the group this benchmark created for it (socat's forks)
                else:
                    p.send_signal(sig)
        if p.stdin:
            with contextlib.suppress(OSError):
                p.stdin.close()
        if p.poll() is None:
            send(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) ignored SIGTERM for {timeout}s: SIGKILL")
                send(signal.SIGKILL)
                p.wait(5)
        elif group:
            send(signal.SIGTERM)  # forked children may outlive the parent

    def stop_all(self) -> None:
        for name, p, group in reversed(self.procs):
            try:
                self._stop_one(name, p, group, 10.0)
            except Exception as e:  # keep stopping the others
                log(f"stopping {name}: {e}")
        self.procs.clear()


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def tasks(pid: int) -> list[int]:
    """The thread ids of `pid` (none once it is gone)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def cpu_ns(pid: int) -> int:
    """CPU time of all threads of `pid` in nanoseconds (schedstat: finer than the 10 ms of /proc/PID/stat)."""
    total = 0
    for tid in tasks(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def descendants(root: int) -> list[int]:
    """Every process below `root` (one /proc scan)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    for _ in range(100000):
        if not todo:
            break
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def proc_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def file_tail(path: str, n: int = 20) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return b"".join(f.readlines()[-n:]).decode("utf-8", "replace")
    return ""


def copy_binary(src: str, workdir: str, name: str) -> tuple[str, str]:
    """Copies a suction binary into the work directory (another engineer may rebuild `src`
    during the run); returns (the copy, 'sha256:' + 12 hex digits)."""
    os.makedirs(os.path.join(workdir, "bin"), exist_ok=True)
    dst = os.path.join(workdir, "bin", name)
    shutil.copy2(src, dst)
    with open(dst, "rb") as f:
        return dst, "sha256:" + hashlib.sha256(f.read()).hexdigest()[:12]


def proxy_config(path: str, *, imap_port: int, imaps_port: int, backend_port: int, legacy_port: int,
                 cert: str, key: str, workdir: str, max_conn: int, threads: int | None = None) -> None:
    # [proxy] threads only when asked: a binary from before it would refuse the section.
    proxy_section = f"\n[proxy]\nthreads = {threads}\n" if threads else ""
    text = f"""# written by tests/bench/proxy_bench.py{proxy_section}
[listen]
imap = "{HOST}:{imap_port}"
imaps = "{HOST}:{imaps_port}"
tls_cert = "{cert}"
tls_key = "{key}"

[new]
host = "{HOST}"
port = {backend_port}
tls = "none"
forward_client_info = true

[legacy]
host = "{HOST}"
port = {legacy_port}
tls = "none"

[limits]
preauth_idle = 300
relay_idle = 3600
max_connections = {max_conn}
max_connections_per_ip = {max_conn}
shutdown_grace = 0

[sync]
state_db = "{workdir}/state.db"

[status]
socket = "{workdir}/status.sock"

[log]
level = "warn"
"""
    with open(path, "w") as f:
        f.write(text)


class Proxy:
    """One `suction proxy` (plaintext and implicit-TLS listeners) in front of one backend."""

    def __init__(self, children: Children, binary: str, workdir: str, name: str, backend_port: int,
                 legacy_port: int, cert: str, key: str, ca_ctx: ssl.SSLContext, max_conn: int = 1000,
                 nofile: int = 65536, threads: int | None = None):
        self.name = name
        self.imap_port = free_port()
        self.imaps_port = free_port()
        d = os.path.join(workdir, name)
        os.makedirs(d, exist_ok=True)
        self.config = os.path.join(d, "suction.toml")
        self.status_socket = os.path.join(d, "status.sock")
        self.log_path = os.path.join(d, "suction.log")
        proxy_config(self.config, imap_port=self.imap_port, imaps_port=self.imaps_port,
                     backend_port=backend_port, legacy_port=legacy_port, cert=cert, key=key, workdir=d,
                     max_conn=max_conn, threads=threads)
        self.logf = open(self.log_path, "wb")
        self.children = children
        # A session of its own, as nginx, socat and Dovecot have here and as systemd gives every
        # service: with kernel.sched_autogroup_enabled each session is a scheduling group, and
        # in this process's group suction would share one group's CPU share with the client.
        self.proc = children.start(name, [binary, "proxy", "--config", self.config], nofile=nofile,
                                   stderr=self.logf, new_group=True)
        try:
            wait_port(self.imap_port, self.proc)
            wait_port(self.imaps_port, self.proc, tls=ca_ctx)
        except BenchError:
            log(f"{name} log:\n{self.log_tail()}")
            raise
        self.pid = self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        self.logf.flush()
        return file_tail(self.log_path, n)

    def migration_counts(self) -> tuple[int, int]:
        """(users queued, users running), from the status socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(self.status_socket)
            s.sendall(b'{"cmd":"status"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        m = json.loads(buf)["migration"]
        return m["users_queued"], m["users_running"]

    def migrations_idle(self, timeout: float = 60.0) -> None:
        """Until no migration is queued or running, seen twice 100 ms apart (a login queues its
        user's run just after its OK)."""
        quiet = 0
        for _ in range(int(timeout / 0.1)):
            quiet = quiet + 1 if self.migration_counts() == (0, 0) else 0
            if quiet == 2:
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name}: migrations still running after {timeout:.0f}s")

    def stop(self) -> None:
        self.children.stop(self.proc)
        self.logf.close()


class Nginx:
    """One nginx instance (a master and one worker, in a process group of its own) serving the
    mail servers `servers`; `pid` is the worker, the process that relays (and answers auth_http)."""

    def __init__(self, children: Children, workdir: str, name: str, servers: list[MailServer], *,
                 cert: str, key: str, ca_ctx: ssl.SSLContext, capabilities: str, max_conn: int = 1024,
                 nofile: int = 65536):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.ports = {s.label: s.port for s in servers}
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_peer.config(self.dir, free_port(), servers, cert=cert, key=key,
                                      capabilities=capabilities, worker_connections=max_conn))
        self.log_path = os.path.join(self.dir, "error.log")
        self.children = children
        self.proc = children.start(name, ["nginx", "-e", self.log_path, "-p", self.dir + "/", "-c", conf],
                                   new_group=True, nofile=nofile)
        try:
            for s in servers:
                wait_port(s.port, self.proc, tls=ca_ctx if s.tls else None)
            self.pid = self._worker()
        except BenchError:
            log(f"{name} error log:\n{file_tail(self.log_path)}")
            raise

    def _worker(self, timeout: float = 10.0) -> int:
        for _ in range(int(timeout / 0.05)):
            kids = proc_children(self.proc.pid)
            if len(kids) == 1:
                return kids[0]
            time.sleep(0.05)
        raise BenchError(f"{self.name}: not exactly one worker under master {self.proc.pid}")

    def stop(self) -> None:
        self.children.stop(self.proc)


@dataclass
class Relay:
    """One relay in front of Dovecot as the tables show it: its plaintext port, its TLS port (None:
    no TLS rows), the pids whose CPU time is the relay's, and the same relay in front of the fake
    backend (the FETCH ceiling; None: no such row)."""
    name: str
    port: int
    tls_port: int | None
    pids: Callable[[], list[int]]
    fake_port: int | None = None
    fake_pids: Callable[[], list[int]] | None = None
    # suction: waits until the migrations that logins started are over (see settle()).
    settle: Callable[[], None] | None = None


# ----------------------------------------------------------------------------------------------
# A raw-socket IMAP client (blocking): the client must not be the bottleneck.


class Raw:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = SOCK_TIMEOUT):
        s = socket.create_connection((HOST, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
        self.s = s
        self.buf = bytearray()
        self.n = 0
        self.greeting = self.read_line()
        if not self.greeting.startswith(b"* OK"):
            raise BenchError(f"port {port}: bad greeting {self.greeting[:80]!r}")

    def read_line(self) -> bytes:
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                return line
            chunk = self.s.recv(65536)
            if not chunk:
                raise BenchError("connection closed")
            self.buf += chunk
        raise BenchError("line too long")

    def command(self, text: str) -> tuple[bytes, bytes]:
        """Sends `tag text`, returns (untagged data, tagged line)."""
        self.n += 1
        tag = b"t%d" % self.n
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        return self.read_tagged(tag)

    def read_tagged(self, tag: bytes) -> tuple[bytes, bytes]:
        """Until the line `tag ...` (used for short answers: NOOP, LOGIN, SELECT)."""
        start = tag + b" "
        data = []
        for _ in range(100000):
            line = self.read_line()
            if line.startswith(start):
                return b"".join(data), line
            data.append(line)
        raise BenchError("no tagged answer")

    def login(self, user: str, password: str) -> bytes:
        _, tagged = self.command(f'LOGIN "{user}" "{password}"')
        if b" OK" not in tagged[:12]:
            raise BenchError(f"LOGIN failed: {tagged!r}")
        return tagged

    def noop_ns(self) -> int:
        self.n += 1
        tag = b"t%d" % self.n
        line = tag + b" NOOP\r\n"
        want = b"\r\n" + tag + b" OK"
        t0 = time.perf_counter_ns()
        self.s.sendall(line)
        buf = b"\r\n"
        for _ in range(10000):
            chunk = self.s.recv(4096)
            if not chunk:
                raise BenchError("closed during NOOP")
            buf += chunk
            i = buf.find(want)
            if i >= 0 and buf.endswith(b"\r\n"):
                return time.perf_counter_ns() - t0
        raise BenchError("no NOOP answer")

    def fetch(self, uid: int, big: memoryview) -> tuple[int, int, int]:
        """UID FETCH uid BODY.PEEK[]: reads every byte into `big` (wrapping), returns
        (literal size, total bytes read, nanoseconds from sending to the tagged OK)."""
        self.n += 1
        tag = b"t%d" % self.n
        t0 = time.perf_counter_ns()
        self.s.sendall(tag + b" UID FETCH %d BODY.PEEK[]\r\n" % uid)
        total = 0
        head = bytearray(self.buf)
        self.buf.clear()
        literal = -1
        for _ in range(1000):  # the header line: "* n FETCH (UID u BODY[] {N}\r\n"
            m = re.search(rb"\{(\d+)\}\r\n", head)
            if m:
                literal = int(m.group(1))
                rest = head[m.end():]
                break
            chunk = self.s.recv(65536)
            if not chunk:
                raise BenchError("closed during FETCH")
            total += len(chunk)
            head += chunk
        if literal < 0:
            raise BenchError(f"no literal in FETCH answer: {bytes(head[:200])!r}")
        remaining = literal - len(rest)
        tail = bytearray(rest[literal:]) if remaining < 0 else bytearray()
        size = len(big)
        off = 0
        recv_into = self.s.recv_into
        calls = 0
        while remaining > 0:
            if off >= size:
                off = 0
            n = recv_into(big[off:], size - off)
            if n == 0:
                raise BenchError("closed during FETCH literal")
            calls += 1
            if calls > 10_000_000:
                raise BenchError("FETCH read loop bound exceeded")
            total += n
            if n > remaining:
                tail += big[off + remaining:off + n]
            remaining -= n
            off += n
        want = tag + b" OK"
        for _ in range(10000):
            i = tail.find(b"\r\n" + tag + b" ")
            if i >= 0 and tail.find(b"\r\n", i + 2) >= 0:
                line = bytes(tail[i + 2:tail.find(b"\r\n", i + 2)])
                if not line.startswith(want):
                    raise BenchError(f"FETCH failed: {line!r}")
                dt = time.perf_counter_ns() - t0
                self.buf = bytearray(tail[tail.find(b"\r\n", i + 2) + 2:])
                return literal, total, dt
            chunk = self.s.recv(65536)
            if not chunk:
                raise BenchError("closed after FETCH literal")
            total += len(chunk)
            tail += chunk
        raise BenchError("no tagged FETCH answer")

    def close(self) -> None:
        with contextlib.suppress(OSError, BenchError):
            self.s.settimeout(2.0)
            self.command("LOGOUT")
        with contextlib.suppress(OSError):
            self.s.close()


# ----------------------------------------------------------------------------------------------
# 1. NOOP round trip


# Logged-in connections per path. Dovecot gives each login an imap process of its own, and
# those processes differ in speed: in three runs with two FETCH connections for suction and
# two for nginx 64k, a relay's two connections differed by as much as the relays did, and the
# second login's was the slowest of six in two runs. In path order, suction was always the
# second login. So each path gets several, logged in in an order drawn anew every run
# (LOGIN_SEED, printed in the header), and the rounds take turns over them.
CONNS_PER_PATH = 3
LOGIN_SEED = random.SystemRandom().randrange(1 << 32)


def login_order(items: list, per_path: int = CONNS_PER_PATH) -> list:
    """Each item per_path times, in this run's shuffled order."""
    return random.Random(LOGIN_SEED).sample(items * per_path, len(items) * per_path)


def open_logged_in(paths: list[tuple[str, int, ssl.SSLContext | None]], password: str) -> dict[str, list[Raw]]:
    """CONNS_PER_PATH logged-in connections per path, in login_order (all closed again if one
    fails)."""
    conns: dict[str, list[Raw]] = {name: [] for name, _, _ in paths}
    try:
        for name, port, tls in login_order(paths):
            c = Raw(port, tls)
            conns[name].append(c)
            c.login(USER, password)
        return conns
    except BaseException:
        close_all(conns)
        raise


def close_all(conns: dict[str, list[Raw]]) -> None:
    for cs in conns.values():
        for c in cs:
            c.close()


def round_order(names, r: int) -> list:
    """The paths of round r in an order of their own (seeded: the same every run). In one fixed
    order the path that always runs right after `direct` measured 5-15 % slower than the same
    binary one place later (suction beside itself, swapped, two runs each)."""
    return random.Random(r).sample(list(names), len(names))


def noop_rounds(conns: dict[str, list[Raw]], count: int, cpu_roles: dict[str, dict[str, Callable]],
                rounds: int = 8, warmup: int = 50) -> tuple[dict[str, list[float]], dict[str, dict[str, int]]]:
    """Round trips in microseconds per path (in order: rounds of count/rounds), and CPU
    nanoseconds per path and role, counted around each path's own batch only. Round r uses
    connection r of the path's (modulo their number)."""
    for cs in conns.values():
        for c in cs:
            for _ in range(warmup):
                c.noop_ns()
    out: dict[str, list[float]] = {name: [] for name in conns}
    cpu: dict[str, dict[str, int]] = {name: {} for name in conns}
    per_round = max(1, count // rounds)
    for r in range(rounds):
        for name in round_order(conns, r):
            c = conns[name][r % len(conns[name])]
            roles = {role: f() for role, f in cpu_roles.get(name, {}).items()}
            cpu0 = {role: sum(cpu_ns(p) for p in pids) for role, pids in roles.items()}
            out[name] += [c.noop_ns() / 1000.0 for _ in range(per_round)]
            for role, pids in roles.items():
                cpu[name][role] = cpu[name].get(role, 0) + sum(cpu_ns(p) for p in pids) - cpu0[role]
    return out, cpu


@contextlib.contextmanager
def pinned(pids: list[int], cpu: int = 0):
    """Every thread of `pids` on one CPU for the block, each thread's own mask restored after
    (also on failure): the relay's CPU cost without cross-core wake-ups."""
    saved: dict[int, set[int]] = {}
    try:
        for pid in pids:
            for tid in tasks(pid):
                if tid in saved:  # a pid given twice (nginx's worker serves two relays): keep its first mask
                    continue
                with contextlib.suppress(OSError):  # a thread may end meanwhile
                    saved[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {cpu})
        yield
    finally:
        for tid, mask in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


# ----------------------------------------------------------------------------------------------
# 2. FETCH throughput


def append_message(tb, size: int) -> tuple[int, bytes]:
    """APPENDs one message of `size` bytes to alice's INBOX on the new server; returns its UID."""
    msg = make_payload(size)
    imap = tb.new.connect(USER)
    try:
        typ, data = imap.append("INBOX", None, None, msg)
        if typ != "OK":
            raise BenchError(f"APPEND failed: {data!r}")
        m = re.search(rb"APPENDUID \d+ (\d+)", data[-1] if data else b"")
        if not m:
            raise BenchError(f"no APPENDUID in {data!r}")
        return int(m.group(1)), msg
    finally:
        imap.logout()


def bench_fetch(paths: list[tuple[str, int, ssl.SSLContext | None, str, int]], reps: int,
                expect_size: int, cpu_roles: dict[str, dict[str, Callable]],
                settle: Callable[[], None]) -> dict[str, dict]:
    """paths: (name, port, tls, password, uid). cpu_roles[name][role]() -> the pids whose CPU time
    counts for that role (client, relay, server) while `name` fetches."""
    big = memoryview(bytearray(16 << 20))
    conns: dict[str, list[tuple[Raw, int]]] = {name: [] for name, *_ in paths}
    res: dict[str, dict] = {}
    try:
        for name, port, tls, password, uid in login_order(paths):
            c = Raw(port, tls, timeout=60.0)
            conns[name].append((c, uid))
            c.login(USER, password)
            _, tagged = c.command("EXAMINE INBOX")
            if b" OK" not in tagged[:12]:
                raise BenchError(f"{name}: EXAMINE failed {tagged!r}")
            size, total, _ = c.fetch(uid, big)  # warm-up (page cache, buffers)
            if size != expect_size:
                raise BenchError(f"{name}: literal of {size} bytes, expected {expect_size}")
            res[name] = {"mbps": [], "cpu": {}, "wall": 0.0, "bytes": total}
        settle()
        for r in range(reps):
            for name in round_order(conns, r):
                c, uid = conns[name][r % len(conns[name])]
                roles = {role: f() for role, f in cpu_roles.get(name, {}).items()}
                cpu0 = {role: sum(cpu_ns(p) for p in pids) for role, pids in roles.items()}
                size, total, ns = c.fetch(uid, big)
                cpu1 = {role: sum(cpu_ns(p) for p in pids) for role, pids in roles.items()}
                res[name]["mbps"].append(size / (ns / 1e9) / 1e6)
                for role in roles:
                    res[name]["cpu"][role] = res[name]["cpu"].get(role, 0) + cpu1[role] - cpu0[role]
                res[name]["wall"] += ns / 1e9
        return res
    finally:
        for cs in conns.values():
            for c, _ in cs:
                c.close()


# ----------------------------------------------------------------------------------------------
# 3. Login latency


def bench_login(paths: list[tuple[str, int, ssl.SSLContext | None]], password: str, count: int,
                warmup: int = 5) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name, _, _ in paths}

    def once(port: int, tls) -> float:
        t0 = time.perf_counter_ns()
        c = Raw(port, tls)
        c.login(USER, password)
        dt = (time.perf_counter_ns() - t0) / 1e6
        c.close()
        return dt

    for name, port, tls in paths:
        for _ in range(warmup):
            once(port, tls)
    for i in range(count):
        for name, port, tls in round_order(paths, i):
            out[name].append(once(port, tls))
    return out


# ----------------------------------------------------------------------------------------------
# 4. Syscalls per relayed command (strace)


def wait_traced(pids: list[int], tracer: subprocess.Popen, timeout: float = 10.0) -> None:
    """Until every thread of `pids` is traced by `tracer` (/proc TracerPid): NOOPs sent
    earlier would not be counted."""
    for _ in range(int(timeout / 0.01)):
        if tracer.poll() is not None:
            raise BenchError(f"strace exited with {tracer.returncode} (ptrace not permitted here?)")
        tids = [(pid, tid) for pid in pids for tid in tasks(pid)]
        if tids and all(tracer_of(pid, tid) == tracer.pid for pid, tid in tids):
            return
        time.sleep(0.01)
    raise BenchError(f"strace did not attach to {pids} within {timeout}s")


def tracer_of(pid: int, tid: int) -> int:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def strace_noops(e: SimpleNamespace, name: str, port: int, tls: ssl.SSLContext | None,
                 relay_pids: Callable[[], list[int]], count: int) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} of the relay (all threads, -f) during `count` NOOPs on one
    logged-in connection, after a warm-up outside the trace."""
    c = Raw(port, tls)
    try:
        c.login(USER, e.password)
        settle(e)
        pids = relay_pids()  # after the login: socat forks a child per connection
        for _ in range(50):
            c.noop_ns()
        out = os.path.join(e.workdir, "strace-" + re.sub(r"[^a-z0-9]+", "-", name.lower()) + ".txt")
        argv = ["strace", "-f", "-c", "-o", out] + [a for pid in pids for a in ("-p", str(pid))]
        tracer = e.children.start(f"strace {name}", argv, stderr=subprocess.DEVNULL)
        try:
            wait_traced(pids, tracer)
            for _ in range(count):
                c.noop_ns()
        finally:
            e.children.stop(tracer)  # SIGTERM: strace detaches and writes its summary
        with open(out) as f:
            return strace_counts(f.read())
    finally:
        c.close()


# ----------------------------------------------------------------------------------------------
# 5. Idle sessions and memory (asyncio client against a relay in front of the fake backend)


class Sessions:
    def __init__(self) -> None:
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, port: int, n: int, tls: ssl.SSLContext | None, concurrency: int = 100,
                   timeout: float = 300.0) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int):
            async with sem:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port, ssl=tls, server_hostname="localhost" if tls else None,
                                            limit=4096), 30)
                try:
                    g = await asyncio.wait_for(r.readline(), 30)
                    if not g.startswith(b"* OK"):
                        raise BenchError(f"bad greeting {g!r}")
                    w.write(b"a LOGIN user%d secret\r\n" % i)
                    for _ in range(20):
                        line = await asyncio.wait_for(r.readline(), 30)
                        if line.startswith(b"a "):
                            if not line.startswith(b"a OK"):
                                raise BenchError(f"LOGIN refused: {line!r}")
                            return r, w
                        if not line:
                            raise BenchError("closed during LOGIN")
                    raise BenchError("no LOGIN answer")
                except BaseException:
                    w.close()
                    raise

        base = len(self.conns)
        results = await asyncio.wait_for(
            asyncio.gather(*(one(base + i) for i in range(n)), return_exceptions=True), timeout)
        errors = [r for r in results if isinstance(r, BaseException)]
        self.conns += [r for r in results if not isinstance(r, BaseException)]
        if errors:
            raise BenchError(f"{len(errors)} of {n} sessions failed, first: {errors[0]!r}")

    async def noop(self, indices: list[int], concurrency: int = 200, timeout: float = 120.0) -> int:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> bool:
            r, w = self.conns[i]
            async with sem:
                w.write(b"n%d NOOP\r\n" % i)
                for _ in range(20):
                    line = await asyncio.wait_for(r.readline(), 30)
                    if line.startswith(b"n%d " % i):
                        return line.startswith(b"n%d OK" % i)
                    if not line:
                        return False
                return False

        results = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in indices), return_exceptions=True), timeout)
        return sum(1 for r in results if r is True)

    async def close(self, timeout: float = 20.0) -> None:
        for r, w in self.conns:
            w.close()
        waits = [w.wait_closed() for r, w in self.conns]
        self.conns.clear()
        with contextlib.suppress(Exception):  # bounded: what is not closed by then is aborted with the loop
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), timeout)


async def settle_rss(pid: int, seconds: float = 1.5) -> int:
    """RSS once it stops moving (bounded): the relay may still be finishing logins."""
    last = proc_rss_kib(pid)
    for _ in range(int(seconds / 0.25)):
        await asyncio.sleep(0.25)
        cur = proc_rss_kib(pid)
        if cur == last:
            break
        last = cur
    return proc_rss_kib(pid)


async def bench_sessions(port: int, rss_pid: int, steps: list[int], tls: ssl.SSLContext | None) -> dict:
    """Opens sessions to `port` up to each count in `steps` (ascending), reading the VmRSS of
    `rss_pid` (the relaying process) at each; NOOPs a sample of 100 after the first step and
    every session after the last."""
    s = Sessions()
    res: dict = {"rss": {}}
    try:
        warm = Sessions()  # first-use costs (TLS library, allocator arenas) are not per session
        await warm.open(port, 20, tls)
        await warm.noop(list(range(20)))
        await warm.close()
        await asyncio.sleep(1.0)
        res["base"] = await settle_rss(rss_pid)
        for i, target in enumerate(steps):
            t0 = time.monotonic()
            await s.open(port, target - len(s.conns), tls)
            res.setdefault("open_s", time.monotonic() - t0)
            res["rss"][target] = await settle_rss(rss_pid)
            if i == 0:
                sample = random.Random(20261124).sample(range(target), min(100, target))
                res["sample_ok"] = await s.noop(sample)
                res["sample"] = len(sample)
        res["all_ok"] = await s.noop(list(range(len(s.conns))))
        res["all"] = len(s.conns)
        res["rss_after_noop"] = await settle_rss(rss_pid)
        return res
    finally:
        await s.close()


# ----------------------------------------------------------------------------------------------
# The benchmarks as run by main(): each prints its table, records its figures for the summary
# (e.results[measure][path]) and returns its goal lines.


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def record(e: SimpleNamespace, measure: str, path: str, value: float, vs_direct: float | None = None) -> None:
    e.results.setdefault(measure, {})[path] = (value, vs_direct)


def dovecot_paths(e: SimpleNamespace, tls: bool = True) -> list[tuple[str, int, ssl.SSLContext | None]]:
    """direct and every relay in front of Dovecot, then (tls) the same over TLS client->relay."""
    paths = [("direct", e.dove, None)] + [(r.name, r.port, None) for r in e.relays]
    if tls:
        paths += [("direct TLS", e.tb.new.imaps_port, e.ca)]
        paths += [(f"{r.name} TLS", r.tls_port, e.ca) for r in e.relays if r.tls_port]
    return paths


def relay_of(e: SimpleNamespace, path: str) -> Relay | None:
    for r in e.relays:
        if path in (r.name, f"{r.name} TLS"):
            return r
    return None


def cpu_roles(e: SimpleNamespace) -> dict[str, dict[str, Callable]]:
    """Whose CPU time counts, per path: client (this process), relay, server."""
    me = lambda: [os.getpid()]  # noqa: E731
    dovecot = lambda: descendants(e.tb.new.pid)  # noqa: E731  (only the imap process in use is busy)
    fake = lambda: [e.fake_proc.pid]  # noqa: E731
    roles = {REF_NAME: {"client": me, "server": fake},
             "direct": {"client": me, "server": dovecot},
             "direct TLS": {"client": me, "server": dovecot}}
    for r in e.relays:
        roles[r.name] = roles[f"{r.name} TLS"] = {"client": me, "relay": r.pids, "server": dovecot}
        if r.fake_port:
            roles[f"{r.name} -> fake server"] = {"client": me, "relay": r.fake_pids, "server": fake}
    return roles


def noop_table(noop: dict[str, list[float]], cpu: dict[str, dict[str, int]],
               paths: list[tuple[str, int, ssl.SSLContext | None]]) -> str:
    rows = []
    for name, _, tls in paths:
        ref = noop["direct TLS" if tls else "direct"]
        v = noop[name]

        def per(role: str) -> str:
            x = cpu[name].get(role)
            return "-" if x is None else f"{x / 1000.0 / len(v):.1f}"
        rows.append([name, len(v), f"{pct(v, 50):.1f}", f"{pct(v, 99):.1f}", f"{statistics.mean(v):.1f}",
                     f"{pct(v, 50) / pct(ref, 50):.2f}x", f"{pct(v, 99) / pct(ref, 99):.2f}x",
                     per("client"), per("relay"), per("server")])
    return fmt_table(["path", "NOOPs", "p50 us", "p99 us", "mean us", "p50 ratio", "p99 ratio",
                      "client CPU us", "relay CPU us", "server CPU us"], rows)


def by_round(noop: dict[str, list[float]], rounds: int) -> list[str]:
    width = max(len(name) for name in noop)
    out = []
    for name, v in noop.items():
        k = max(1, len(v) // rounds)
        out.append(f"  {name:<{width}} " + " ".join(f"{pct(v[i:i + k], 50):6.1f}" for i in range(0, k * rounds, k)))
    return out


def paired_rounds(noop: dict[str, list[float]], rounds: int) -> list[str]:
    """suction's p50 against each relay's, round by round: a round is one stretch of this shared
    machine, so the per-round ratio leaves out what the machine did between rounds. Equal relays
    are faster in about half the rounds each."""
    def p50s(v: list[float]) -> list[float]:
        k = max(1, len(v) // rounds)
        return [pct(v[i:i + k], 50) for i in range(0, k * rounds, k)]
    ours = p50s(noop[SUCTION])
    out = []
    for name in noop:
        if name == SUCTION or name.endswith("TLS") or name == "direct":
            continue
        ratios = [a / b for a, b in zip(ours, p50s(noop[name]))]
        at_or_below = sum(1 for x in ratios if x <= 1.0)
        out.append(f"  suction / {name}: median per-round p50 ratio {statistics.median(ratios):.2f}x, "
                   f"suction at or below in {at_or_below} of {len(ratios)} rounds")
    return ["p50 paired by round (plaintext):"] + out if out else []


def run_noop(e: SimpleNamespace) -> list[str]:
    log("1. NOOP round trips")
    paths = dovecot_paths(e)
    rounds = 16
    conns = open_logged_in(paths, e.password)
    try:
        settle(e)
        noop, cpu = noop_rounds(conns, e.args.noops, cpu_roles(e), rounds=rounds)
    finally:
        close_all(conns)
    for name, _, tls in paths[:len(e.relays) + 1]:  # plaintext: the summary's rows
        v = noop[name]
        d = noop["direct"]
        record(e, "noop_p50", name, pct(v, 50), pct(v, 50) / pct(d, 50))
        record(e, "noop_p99", name, pct(v, 99), pct(v, 99) / pct(d, 99))
        if "relay" in cpu[name]:
            record(e, "cpu_noop", name, cpu[name]["relay"] / 1000.0 / len(v))
    e.emit()
    e.emit("1. NOOP round trip on one logged-in connection per path (Dovecot, no mailbox selected), microseconds")
    e.emit(noop_table(noop, cpu, paths))
    e.emit("CPU us: CPU time per NOOP of this process (client), the relay (suction; nginx's worker; socat's "
           "child), Dovecot (server).")
    e.emit(f"p50 us by round ({rounds} interleaved rounds, each in its own order; the scheduler may move "
           "processes between cores):")
    for line in by_round(noop, rounds):
        e.emit(line)
    e.emit("'<relay> TLS' is TLS client->relay and plaintext relay->Dovecot; 'direct TLS' is Dovecot's imaps.")
    for line in paired_rounds(noop, rounds):
        e.emit(line)
    r = pct(noop[SUCTION], 50) / pct(noop["direct"], 50)
    return [f"NOOP p50 <= 1.3x direct (plaintext): {r:.2f}x -> {verdict(r <= 1.3)}"]


def run_pinned(e: SimpleNamespace) -> list[str]:
    """The NOOP round trip again, plaintext only, with this process, every relay and Dovecot's
    processes pinned to CPU 0 (the issue's "pinned to one core" figure)."""
    if (os.cpu_count() or 1) < 2:
        log("1b. skipped: one CPU, table 1 is already pinned")
        return []
    log("1b. NOOP round trips, everything on CPU 0")
    paths = dovecot_paths(e, tls=False)
    rounds = 8
    conns = open_logged_in(paths, e.password)
    try:
        settle(e)
        pids = [os.getpid()] + descendants(e.tb.new.pid) + [p for r in e.relays for p in r.pids()]
        with pinned(pids, cpu=0):
            noop, cpu = noop_rounds(conns, max(rounds, e.args.noops // 2), cpu_roles(e), rounds=rounds)
    finally:
        close_all(conns)
    for name, _, _ in paths:
        if "relay" in cpu[name]:
            record(e, "cpu_noop_pinned", name, cpu[name]["relay"] / 1000.0 / len(noop[name]))
    e.emit()
    e.emit("1b. The same, plaintext, with this client, every relay and Dovecot pinned to CPU 0 "
           "(sched_setaffinity per thread, restored after), microseconds")
    e.emit(noop_table(noop, cpu, paths))
    e.emit(f"p50 us by round ({rounds} interleaved rounds):")
    for line in by_round(noop, rounds):
        e.emit(line)
    return []


def run_fetch(e: SimpleNamespace) -> list[str]:
    log(f"2. FETCH of a {e.fetch_bytes:,} byte message")
    uid, _ = append_message(e.tb, e.fetch_bytes)
    fpaths = [(REF_NAME, e.fake_port, None, "x", 1)]
    fpaths += [(name, port, tls, e.password, uid) for name, port, tls in dovecot_paths(e, tls=False)]
    fpaths += [(f"{r.name} -> fake server", r.fake_port, None, "x", 1) for r in e.relays if r.fake_port]
    fpaths += [(name, port, tls, e.password, uid) for name, port, tls in dovecot_paths(e) if tls]
    fetch = bench_fetch(fpaths, e.args.fetch_reps, e.fetch_bytes, cpu_roles(e), lambda: settle(e))
    rows = []
    for name, _, tls, _, _ in fpaths:
        ref = "direct TLS" if tls else (REF_NAME if "fake" in name else "direct")
        r = fetch[name]
        med = statistics.median(r["mbps"])
        refmed = statistics.median(fetch[ref]["mbps"])

        def share(role: str) -> str:
            v = r["cpu"].get(role)
            return "-" if v is None else f"{100.0 * v / 1e9 / r['wall']:.0f} %"
        relay_ms = r["cpu"].get("relay")
        relay_ms = None if relay_ms is None else relay_ms / 1e6 / len(r["mbps"])
        rows.append([name, len(r["mbps"]), f"{med:.0f}", f"{min(r['mbps']):.0f}", f"{max(r['mbps']):.0f}",
                     f"{med / refmed:.2f}x" if name != ref else "1.00x",
                     share("client"), share("relay"), share("server"),
                     "-" if relay_ms is None else f"{relay_ms:.2f}"])
        if not tls and "fake" not in name:
            record(e, "fetch_mbps", name, med, med / refmed)
            if relay_ms is not None:
                record(e, "cpu_fetch", name, relay_ms)
    e.emit()
    e.emit(f"2. UID FETCH BODY.PEEK[] of one {e.fetch_bytes:,} byte message, MB/s = 10^6 bytes/s "
           f"(raw socket, recv_into a 16 MB buffer)")
    e.emit(fmt_table(["path", "reps", "median MB/s", "min", "max", "ratio", "client CPU", "relay CPU",
                      "server CPU", "relay CPU ms/FETCH"], rows))
    e.emit("ratio: to 'direct' of the same transport; '<relay> -> fake server' to the reference row.")
    e.emit("CPU: each process's CPU time / wall time of the timed FETCHes (100 % = one core, of 2 here); "
           "relay CPU ms/FETCH: the relay's CPU time per FETCH.")
    e.emit("'<relay> TLS' is TLS client->relay, plaintext relay->Dovecot; 'direct TLS' makes Dovecot encrypt.")
    r = statistics.median(fetch[SUCTION]["mbps"]) / statistics.median(fetch["direct"]["mbps"])
    return [f"FETCH >= 0.9x direct (plaintext): {r:.2f}x -> {verdict(r >= 0.9)}"]


def run_login(e: SimpleNamespace) -> list[str]:
    log("3. login latency")
    paths = dovecot_paths(e)
    login = bench_login(paths, e.password, e.args.logins)
    rows = []
    for name, _, tls in paths:
        ref = login["direct TLS" if tls else "direct"]
        v = login[name]
        rows.append([name, len(v), f"{pct(v, 50):.2f}", f"{pct(v, 99):.2f}",
                     f"{pct(v, 50) / pct(ref, 50):.2f}x", f"{pct(v, 99) / pct(ref, 99):.2f}x",
                     f"{pct(v, 50) - pct(ref, 50):+.2f}"])
        if not tls:
            added = pct(v, 50) if name == "direct" else pct(v, 50) - pct(ref, 50)
            record(e, "login_added", name, added, pct(v, 50) / pct(ref, 50))
    e.emit()
    e.emit("3. Login latency: connect + greeting (+ TLS handshake) + LOGIN + tagged OK, milliseconds")
    e.emit(fmt_table(["path", "logins", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio", "p50 added ms"], rows))
    if e.has_nginx:
        e.emit("nginx: its own greeting and LOGIN, an auth_http request to a static location in its own http "
               "block, then LOGIN to Dovecot with literals (3 round trips); suction: ID + LOGIN to Dovecot.")
        e.emit("nginx TLS: its greeting waits for the client's delayed ACK (Linux: about 40 ms): before login "
               "nginx writes the TLS 1.3 session ticket, then the greeting, with Nagle on (seen with strace).")
    d = pct(login["direct"], 50)
    s = pct(login[SUCTION], 50)
    return [f"login p50 (no goal): {s / d:.2f}x direct, {s - d:+.2f} ms"]


def run_syscalls(e: SimpleNamespace) -> list[str]:
    if not shutil.which("strace"):
        log("4. skipped: strace not installed (apt-get install -y strace)")
        return []
    n = e.args.strace_noops
    log(f"4. syscalls per relayed NOOP (strace, {n} NOOPs per relay)")
    rows = []
    for name, port, tls in dovecot_paths(e):
        relay = relay_of(e, name)
        if relay is None:
            continue
        counts = strace_noops(e, name, port, tls, relay.pids, n)
        total = sum(c for c, _ in counts.values())
        errors = sum(err for _, err in counts.values())
        top = sorted(counts.items(), key=lambda kv: -kv[1][0])[:5]
        rows.append([name, n, f"{total / n:.2f}", f"{errors / n:.2f}",
                     ", ".join(f"{k} {c / n:.2f}" for k, (c, _) in top)])
        if not tls:
            record(e, "syscalls", name, total / n)
    e.emit()
    e.emit(f"4. Syscalls per relayed NOOP: strace -f -c -p <relay> during {n} NOOPs on one logged-in "
           f"connection (after 50 untraced), its own phase")
    e.emit(fmt_table(["path", "NOOPs", "syscalls/NOOP", "errors/NOOP", "top 5 (calls per NOOP)"], rows))
    e.emit("All threads of the relay are traced (suction's status and scheduler threads too; the migration "
           "run the login started is waited out first); errors are mostly EAGAIN.")
    return []


def session_steps(n: int, limit: int, notes: list[str]) -> list[int]:
    """N/2 and N, and 2N when the relays' RLIMIT_NOFILE holds it: two descriptors per session in
    the relay (client, backend), one here, and nginx's transient auth_http connections."""
    own = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if 2 * (2 * n) + 500 <= limit and 2 * n + 100 <= own:
        return [n // 2, n, 2 * n]
    notes.append(f"2N = {2 * n} not run: RLIMIT_NOFILE is {limit} (the hard limit here; "
                 f"no CAP_SYS_RESOURCE to raise it), 2 descriptors per session.")
    return [n // 2, n]


@dataclass
class SessionRelay:
    """A fresh relay for one row of the session table: where clients connect, whose RSS counts."""
    port: int
    rss_pid: int
    stop: Callable[[], None]


def session_relays(e: SimpleNamespace, max_conn: int,
                   worker_connections: int) -> list[tuple[str, bool, Callable[[], SessionRelay]]]:
    """(row name, TLS client->relay, starter) for every relay that fronts the fake backend here."""
    out: list[tuple[str, bool, Callable[[], SessionRelay]]] = []

    def suction(binary: str, tag: str, tls: bool) -> Callable[[], SessionRelay]:
        def start() -> SessionRelay:
            p = Proxy(e.children, binary, e.workdir, f"{tag}-sessions-{'tls' if tls else 'plain'}", e.fake_port,
                      e.tb.legacy.imap_port, e.cert, e.key, e.ca, max_conn=max_conn, nofile=e.args.proxy_nofile)
            return SessionRelay(p.imaps_port if tls else p.imap_port, p.pid, p.stop)
        return start

    def nginx(label: str, buffer: str, tls: bool) -> Callable[[], SessionRelay]:
        def start() -> SessionRelay:
            server = MailServer(label, free_port(), e.fake_port, buffer=buffer, tls=tls)
            slug = re.sub(r"[^a-z0-9]+", "-", label.lower())
            n = Nginx(e.children, e.workdir, f"{slug}-sessions", [server], cert=e.cert, key=e.key, ca_ctx=e.ca,
                      capabilities=e.capabilities, max_conn=worker_connections, nofile=e.args.proxy_nofile)
            return SessionRelay(server.port, n.pid, n.stop)
        return start

    binaries = [(SUCTION, e.binary, "suction")] + ([(BEFORE, e.baseline, "before")] if e.baseline else [])
    for tls in (False, True):
        for name, binary, tag in binaries:
            out.append((f"{name} TLS" if tls else name, tls, suction(binary, tag, tls)))
        if e.has_nginx:
            out.append((f"{NGINX} TLS" if tls else NGINX, tls, nginx(f"{NGINX} TLS" if tls else NGINX, "", tls)))
            if not tls:
                out.append((NGINX64, False, nginx(NGINX64, "64k", False)))
    return out


def session_row(name: str, r: dict) -> list[str]:
    steps = r["steps"]
    half, full = steps[0], steps[1]
    per_n = (r["rss"][full] - r["base"]) / full
    marginal = (r["rss"][steps[-1]] - r["rss"][half]) / (steps[-1] - half)
    fixed = r["rss"][full] - r["base"] - marginal * full
    return ([name, f"{r['base']:,}"] + [f"{r['rss'][k]:,}" for k in steps] + ["-"] * (3 - len(steps)) +
            [f"{per_n:.1f}", f"{marginal:.1f}", f"{fixed:,.0f}", f"{r['rss_after_noop']:,}",
             f"{r['sample_ok']}/{r['sample']}", f"{r['all_ok']}/{r['all']}"])


def run_sessions(e: SimpleNamespace) -> list[str]:
    n = e.args.sessions
    notes: list[str] = []
    limit = min(e.args.proxy_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    steps = session_steps(n, limit, notes)
    max_conn = min(limit - 50, 2 * steps[-1] + 500)
    # nginx ran out of connection slots at 10,500 for 5,000 sessions ("worker_connections are not
    # enough, reusing connections": it then drops auth_http connections) although it held only
    # ~10,000 descriptors; an operator would size it generously, so the bench does.
    worker_connections = min(limit - 50, 4 * steps[-1] + 1000)
    sess: dict[str, dict] = {}
    for name, tls, start in session_relays(e, max_conn, worker_connections):
        relay = start()
        try:
            have = proc_nofile(relay.rss_pid)
            if 2 * steps[-1] + 100 > have:
                raise BenchError(f"{name}: RLIMIT_NOFILE {have} cannot hold {steps[-1]} sessions")
            log(f"5. {name}: {' then '.join(map(str, steps))} idle sessions (RLIMIT_NOFILE {have})")
            sess[name] = run_async(bench_sessions(relay.port, relay.rss_pid, steps, e.ca if tls else None), 600.0)
            sess[name]["steps"] = steps
        finally:
            relay.stop()
    for name, r in sess.items():
        kib = (r["rss"][n] - r["base"]) / n
        base = name[:-4] if name.endswith(" TLS") else name
        record(e, "mem_tls" if name.endswith(" TLS") else "mem_plain", base, kib)
    e.emit()
    e.emit(f"5. Idle logged-in sessions through each relay (fake backend), the relaying process's VmRSS "
           f"in KiB, N = {n:,}")
    e.emit(fmt_table(["client->relay", "RSS base", "RSS N/2", "RSS N", "RSS 2N", "KiB/sess at N",
                      "marginal KiB/sess", "fixed KiB", "RSS after NOOPs", "NOOP sample", "NOOP all"],
                     [session_row(name, r) for name, r in sess.items()]))
    e.emit("KiB/sess at N = (RSS N - RSS base) / N, the goal's measure; marginal = slope of RSS from N/2 to "
           "the last step; fixed = (RSS N - RSS base) - N x marginal. A fresh relay per row; base = after 20 "
           "warm-up sessions came and went. NOOP sample: 100 random sessions at N/2; NOOP all: every open "
           "session at the end, then 'RSS after NOOPs'. nginx: its worker's RSS (the master holds no "
           f"session); its base includes the connection table it allocates at start ({worker_connections:,} "
           "worker_connections).")
    for note in notes:
        e.emit(note)
    plain = (sess[SUCTION]["rss"][n] - sess[SUCTION]["base"]) / n
    tlsk = (sess[f"{SUCTION} TLS"]["rss"][n] - sess[f"{SUCTION} TLS"]["base"]) / n
    all_ok = all(r["sample_ok"] == r["sample"] and r["all_ok"] == r["all"] for r in sess.values())
    return [f"<= 32 KiB per idle plaintext session at N={n}: {plain:.1f} KiB -> {verdict(plain <= 32)}",
            f"<= 32 KiB per idle TLS session at N={n} (issue 11; was 96): {tlsk:.1f} KiB -> {verdict(tlsk <= 32)}",
            f"every session answers NOOP afterwards: {'yes' if all_ok else 'NO'}"]


# name -> benchmark, in the order they run (--only picks a subset)
STEPS = {"noop": run_noop, "pinned": run_pinned, "fetch": run_fetch, "login": run_login,
         "syscalls": run_syscalls, "sessions": run_sessions}


def run_async(coro, timeout: float):
    """asyncio.run with a deadline, where SIGINT/SIGTERM/SIGALRM cancel the work instead of raising
    in the middle of the event loop (which can leave it unable to finish its cleanup)."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in sigs:
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    saved = {sig: signal.getsignal(sig) for sig in sigs}
    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt("interrupted") from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------
# Report


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def measures(e: SimpleNamespace) -> list[tuple[str, str, str, bool]]:
    """(key, row label, number format, lower is better), in the issue's order."""
    mb = e.fetch_bytes / 1e6
    n = e.args.sessions
    return [("cpu_noop", "relay CPU per NOOP round trip, us", ".1f", True),
            ("cpu_noop_pinned", "  same, all pinned to one core, us", ".1f", True),
            ("syscalls", "syscalls per relayed NOOP (strace)", ".1f", True),
            ("noop_p50", "NOOP p50, us", ".1f", True),
            ("noop_p99", "NOOP p99, us", ".1f", True),
            ("cpu_fetch", f"relay CPU per {mb:g} MB FETCH, ms", ".2f", True),
            ("fetch_mbps", f"{mb:g} MB FETCH, median MB/s", ".0f", False),
            ("login_added", "login p50 added to direct, ms (direct: p50)", "+.2f", True),
            ("mem_plain", f"KiB per idle plaintext session at {n:,}", ".1f", True),
            ("mem_tls", f"KiB per idle TLS session at {n:,}", ".1f", True)]


def summary_row(e: SimpleNamespace, label: str, fmt: str, lower: bool, vals: dict, cols: list[str]) -> list[str]:
    def cell(path: str) -> str:
        if path not in vals:
            return "-"
        v, vs_direct = vals[path]
        text = f"{v:.2f}" if path == "direct" and fmt.startswith("+") else f"{v:{fmt}}"
        return text + (f" ({vs_direct:.2f}x)" if vs_direct is not None and path != "direct" else "")
    nginx = [vals[p] for p in (NGINX, NGINX64) if p in vals]
    best = (min if lower else max)(nginx, key=lambda v: v[0]) if nginx else None
    ours = vals.get(SUCTION)
    if best is None or ours is None:
        return [label] + [cell(p) for p in cols] + ["-", "-", "-"]
    ok = ours[0] <= best[0] if lower else ours[0] >= best[0]
    if fmt.startswith("+"):  # an added time: compare the totals (their ratios to direct)
        ratio = f"{ours[1] / best[1]:.2f}x"
    else:
        ratio = "-" if best[0] == 0 else f"{ours[0] / best[0]:.2f}x"
    return [label] + [cell(p) for p in cols] + [f"{best[0]:{fmt}}", ratio, verdict(ok)]


def emit_summary(e: SimpleNamespace) -> list[str]:
    """One row per measure, one column per path; suction against the best nginx figure (the
    issue's goal: at or below it in every row)."""
    cols = [p for p in ["direct"] + [r.name for r in e.relays] if any(p in v for v in e.results.values())]
    rows = [summary_row(e, label, fmt, lower, e.results[key], cols)
            for key, label, fmt, lower in measures(e) if key in e.results]
    if not rows:
        return []
    e.emit()
    e.emit("Summary: suction against nginx's mail proxy, same run (plaintext unless the row says TLS; "
           "in brackets: ratio to direct)")
    e.emit(fmt_table(["measure"] + cols + ["best nginx", "suction / best nginx", "at or below best nginx"], rows))
    return [f"{row[0].strip()}: suction {row[cols.index(SUCTION) + 1]} vs best nginx {row[-3]} -> {row[-1]}"
            for row in rows if SUCTION in cols and row[-1] != "-"]


# ----------------------------------------------------------------------------------------------
# Setup


def start_socat(children: Children, dove: int) -> tuple[int | None, subprocess.Popen | None]:
    if not shutil.which("socat"):
        log("socat not installed: no naive-relay column (apt-get install -y socat)")
        return None, None
    port = free_port()
    proc = children.start("socat", ["socat", f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork", f"TCP:{HOST}:{dove}"],
                          new_group=True)
    wait_port(port, proc)
    return port, proc


def start_fake(children: Children, fetch_bytes: int, max_seconds: int) -> tuple[subprocess.Popen, int]:
    proc = children.start("fake_backend", [sys.executable, os.path.join(HERE, "fake_backend.py"),
                                           "--fetch-bytes", str(fetch_bytes), "--watch-stdin",
                                           "--max-seconds", str(max_seconds + 60)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, nofile=65536)
    line = proc.stdout.readline().decode()
    if not line.startswith("LISTENING "):
        raise BenchError(f"fake backend did not start: {line!r}")
    return proc, int(line.split()[1])


def suction_relay(e: SimpleNamespace, name: str, binary: str, tag: str, threads: int | None = None) -> Relay:
    """suction in front of Dovecot and a second one in front of the fake backend."""
    dov = Proxy(e.children, binary, e.workdir, f"{tag}-dovecot", e.dove, e.tb.legacy.imap_port, e.cert, e.key, e.ca,
                threads=threads)
    fake = Proxy(e.children, binary, e.workdir, f"{tag}-fake", e.fake_port, e.tb.legacy.imap_port, e.cert, e.key,
                 e.ca, threads=threads)
    def settle() -> None:
        dov.migrations_idle()
        fake.migrations_idle()
    return Relay(name, dov.imap_port, dov.imaps_port, lambda: [dov.pid], fake.imap_port, lambda: [fake.pid],
                 settle)


def settle(e: SimpleNamespace) -> None:
    """Before a timed phase, after its logins: every login through suction starts (or queues)
    that user's migration run, whose CPU time and syscalls would count as the relay's. The relay
    is what these tables compare, so the runs are waited out (the status socket) first."""
    for r in e.relays:
        if r.settle:
            r.settle()


def nginx_relays(e: SimpleNamespace) -> list[Relay]:
    """One nginx instance (one worker relays every path, one path at a time) with the default
    4k proxy_buffer and with 64k, each in front of Dovecot and of the fake backend, and TLS on a
    4k listener."""
    servers = {key: MailServer(label, free_port(), backend, buffer=buf, tls=tls)
               for key, label, backend, buf, tls in [
                   ("4k", NGINX, e.dove, "", False),
                   ("64k", NGINX64, e.dove, "64k", False),
                   ("tls", f"{NGINX} TLS", e.dove, "", True),
                   ("4k fake", f"{NGINX} -> fake server", e.fake_port, "", False),
                   ("64k fake", f"{NGINX64} -> fake server", e.fake_port, "64k", False)]}
    n = Nginx(e.children, e.workdir, "nginx-dovecot", list(servers.values()), cert=e.cert, key=e.key, ca_ctx=e.ca,
              capabilities=e.capabilities)
    worker = lambda: [n.pid]  # noqa: E731
    return [Relay(NGINX, servers["4k"].port, servers["tls"].port, worker, servers["4k fake"].port, worker),
            Relay(NGINX64, servers["64k"].port, None, worker, servers["64k fake"].port, worker)]


def dovecot_capabilities(port: int) -> str:
    """The new server's pre-login capabilities, for nginx's imap_capabilities."""
    c = Raw(port)
    try:
        return nginx_peer.capabilities_like(c.greeting)
    finally:
        c.close()


def tool_version(tool: str, flag: str) -> str:
    """"socat 1.7.4.4" from `socat -V`, "strace 6.1" from `strace -V`; "no socat" when missing."""
    if not shutil.which(tool):
        return f"no {tool}"
    try:
        out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return tool
    m = re.search(r"version (\S+)", out)
    return f"{tool} {m.group(1)}" if m else tool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="suction proxy benchmarks (see the module docstring)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "proxy", "cli", "suction"))
    ap.add_argument("--baseline-binary", default=None,
                    help="a second suction binary, shown as 'suction (before)' beside --binary")
    ap.add_argument("--sessions", type=int, default=5000, help="N idle sessions (also measured at N/2, and 2N if RLIMIT_NOFILE allows)")
    ap.add_argument("--noops", type=int, default=2000)
    ap.add_argument("--strace-noops", type=int, default=500, help="NOOPs per relay under strace")
    ap.add_argument("--fetch-mb", type=float, default=10.0, help="message size, MB (10^6 bytes)")
    ap.add_argument("--fetch-reps", type=int, default=15)
    ap.add_argument("--logins", type=int, default=200)
    ap.add_argument("--max-seconds", type=int, default=1200, help="whole-run deadline")
    ap.add_argument("--proxy-nofile", type=int, default=65536,
                    help="RLIMIT_NOFILE asked for each relay (capped by the hard limit without CAP_SYS_RESOURCE)")
    ap.add_argument("--threads", type=int, default=None,
                    help="[proxy] threads of suction (default: the binary's own default)")
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="[proxy] threads of the baseline binary (e.g. the same binary with 1 thread)")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out even where it is installed")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    for b in [args.binary] + ([args.baseline_binary] if args.baseline_binary else []):
        if not os.access(b, os.X_OK):
            ap.error(f"{b} missing: ninja -C build -j1 suction")
    if os.geteuid() != 0:
        ap.error("needs root (the Dovecot test bed)")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in STEPS]
    if unknown:
        ap.error(f"--only: unknown {unknown}")
    args.only = only
    return args


def setup(args: argparse.Namespace, workdir: str, children: Children, tb: Testbed) -> SimpleNamespace:
    """Everything the benchmarks use: the relays in front of Dovecot and the fake backend, with
    nginx and socat where they are installed (said in the log where not)."""
    e = SimpleNamespace(args=args, tb=tb, children=children, workdir=workdir, results={},
                        fetch_bytes=int(args.fetch_mb * 1e6), emit=lambda text="": print(text, flush=True))
    e.ca = ssl.create_default_context(cafile=tb.ca_file)
    e.cert = os.path.join(os.path.dirname(tb.ca_file), "cert.pem")
    e.key = os.path.join(os.path.dirname(tb.ca_file), "key.pem")
    e.password = tb.users[USER]
    e.dove = tb.new.imap_port
    e.binary, e.binary_sha = copy_binary(args.binary, workdir, "suction")
    e.baseline, e.baseline_sha = (copy_binary(args.baseline_binary, workdir, "suction-before")
                                  if args.baseline_binary else (None, None))
    e.fake_proc, e.fake_port = start_fake(children, e.fetch_bytes, args.max_seconds)
    e.relays = [suction_relay(e, SUCTION, e.binary, "suction", e.args.threads)]
    if e.baseline:
        e.relays.append(suction_relay(e, BEFORE, e.baseline, "before", e.args.baseline_threads))
    why = "--no-nginx" if args.no_nginx else nginx_peer.missing()
    e.has_nginx = why is None
    e.capabilities = dovecot_capabilities(e.dove)
    if e.has_nginx:
        e.relays += nginx_relays(e)
    else:
        log(f"no nginx columns: {why}")
    socat_port, e.socat_proc = start_socat(children, e.dove)
    if socat_port:
        e.relays.append(Relay(SOCAT, socat_port, None, lambda: proc_children(e.socat_proc.pid)))
    return e


def emit_header(e: SimpleNamespace, commit: str) -> None:
    info = (f"{os.cpu_count()} cores ({platform_cpu()}), Python {sys.version.split()[0]}, {dovecot_version()}, "
            f"{nginx_peer.version() if e.has_nginx else 'no nginx'}, {tool_version('socat', '-V')}, {tool_version('strace', '-V')}")
    e.emit(f"suction proxy benchmarks: tree at commit {commit}, {time.strftime('%Y-%m-%d')}, {info}")
    threads = lambda n: f", [proxy] threads = {n}" if n else ""  # noqa: E731
    e.emit(f"{SUCTION}: {e.args.binary} ({e.binary_sha}{threads(e.args.threads)})")
    if e.baseline:
        e.emit(f"{BEFORE}: {e.args.baseline_binary} ({e.baseline_sha}{threads(e.args.baseline_threads)})")
    e.emit("All traffic on 127.0.0.1; paths interleaved round by round; ratios are to 'direct' of the same "
           "transport. Relays: " + ", ".join(r.name for r in e.relays) + ".")
    e.emit(f"NOOP and FETCH: {CONNS_PER_PATH} logged-in connections per path (each its own Dovecot imap "
           f"process), logged in in a shuffled order (seed {LOGIN_SEED}), taking turns by round.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_alarm(signum, frame):
        raise TimeoutError(f"whole run exceeded --max-seconds={args.max_seconds}")
    signal.signal(signal.SIGALRM, on_alarm)
    # Ctrl-C or kill: unwind through the finally below so that everything started is stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.alarm(args.max_seconds)
    raise_nofile(65536)

    workdir = tempfile.mkdtemp(prefix="suction-pb-", dir="/tmp")  # short socket paths
    children = Children()
    tb = None
    ok = False
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        log(f"work dir {workdir}; starting the test bed")
        tb = Testbed(os.path.join(workdir, "bed"), seed=False, large_mb=0)
        tb.start()
        e = setup(args, workdir, children, tb)
        emit_header(e, commit)
        goals: list[str] = []
        for name, step in STEPS.items():
            if name in args.only:
                goals += step(e)
        goals += emit_summary(e)
        e.emit()
        e.emit("Goals:")
        for g in goals:
            e.emit(f"  {g}")
        ok = True
        return 0
    except BaseException:
        for p in [x for x in children.procs if x[0].startswith(("suction", "before", "nginx"))]:
            log(f"{p[0]} (pid {p[1].pid}) exit={p[1].poll()}")
        raise
    finally:
        signal.alarm(0)
        children.stop_all()
        if tb is not None:
            try:
                tb.stop()
            except Exception as e:
                log(f"stopping the test bed: {e}")
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {workdir}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything it started is stopped")
        sys.exit(130)
