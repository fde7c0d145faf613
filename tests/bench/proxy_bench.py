#!/usr/bin/env python3
"""suction proxy benchmarks: the proxy against the server it fronts, in one run, side by side.

Run by hand (root: the test bed starts Dovecot), from the repository root, after building the
daemon (`ninja -C build -j1 suction`); a full run takes about a minute:

    python3 tests/bench/proxy_bench.py [--sessions 5000] [--noops 2000] [--fetch-mb 10]
        [--fetch-reps 15] [--logins 200] [--only noop,fetch,login,sessions] [--binary PATH]

What it starts (all on 127.0.0.1; all stopped at the end, also on failure, Ctrl-C or SIGTERM):
  * the real-server test bed (tests/testbed): Dovecot "new" is the direct reference;
  * `suction proxy` in front of Dovecot (plaintext listener and implicit-TLS listener);
  * `socat TCP-LISTEN:...,fork TCP:127.0.0.1:<dovecot>` if socat is installed: a naive relay;
  * tests/bench/fake_backend.py: a cheap asyncio IMAP server, for thousands of idle sessions
    and as the client-ceiling reference that streams the FETCH literal as fast as it can,
    with a second `suction proxy` in front of it;
  * for the session-memory test, a fresh `suction proxy` in front of the fake backend, once for
    plaintext and once for TLS (RLIMIT_NOFILE raised towards 65536, as far as the hard limit).

What it measures (one table each; ratios are to "direct" over the same transport, same run):
  1. NOOP round trip, p50/p99, on one logged-in connection per path (raw socket), and the CPU
     time per NOOP of client, relay and Dovecot.
  2. UID FETCH BODY.PEEK[] of one 10 MB message, MB/s (10^6 bytes/s), median of the reps, and
     each process's CPU while it runs.
  3. Login latency: connect + greeting (+ TLS handshake) + LOGIN + tagged OK, p50/p99.
  4. Idle logged-in sessions (fake backend): proxy VmRSS per session at N (goal measure) and the
     slope from N/2 to N (or 2N where the descriptor limit allows), plaintext and TLS
     client->proxy; 100 sampled sessions, then every session, must still answer NOOP.
Paths are interleaved round by round so that machine noise hits all of them alike.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed"))
sys.path.insert(0, HERE)
from testbed import Testbed  # noqa: E402
from fake_backend import make_payload  # noqa: E402
from benchlib import dovecot_version, pct, platform_cpu  # noqa: E402

HOST = "127.0.0.1"
SOCK_TIMEOUT = 30.0
USER = "alice"


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


def cpu_ns(pid: int) -> int:
    """CPU time of all threads of `pid` in nanoseconds (schedstat: finer than the 10 ms of /proc/PID/stat)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
    except OSError:
        pass
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


def proxy_config(path: str, *, imap_port: int, imaps_port: int, backend_port: int, legacy_port: int,
                 cert: str, key: str, workdir: str, max_conn: int) -> None:
    text = f"""# written by tests/bench/proxy_bench.py
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
    def __init__(self, children: Children, binary: str, workdir: str, name: str, backend_port: int,
                 legacy_port: int, cert: str, key: str, ca_ctx: ssl.SSLContext, max_conn: int = 1000,
                 nofile: int = 65536):
        self.name = name
        self.imap_port = free_port()
        self.imaps_port = free_port()
        d = os.path.join(workdir, name)
        os.makedirs(d, exist_ok=True)
        self.config = os.path.join(d, "suction.toml")
        self.log_path = os.path.join(d, "suction.log")
        proxy_config(self.config, imap_port=self.imap_port, imaps_port=self.imaps_port,
                     backend_port=backend_port, legacy_port=legacy_port, cert=cert, key=key, workdir=d,
                     max_conn=max_conn)
        self.logf = open(self.log_path, "wb")
        self.children = children
        self.proc = children.start(name, [binary, "proxy", "--config", self.config], nofile=nofile,
                                   stderr=self.logf)
        try:
            wait_port(self.imap_port, self.proc)
            wait_port(self.imaps_port, self.proc, tls=ca_ctx)
        except BenchError:
            log(f"{name} log:\n{self.log_tail()}")
            raise
        self.pid = self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        self.logf.flush()
        with open(self.log_path, "rb") as f:
            return b"".join(f.readlines()[-n:]).decode("utf-8", "replace")

    def stop(self) -> None:
        self.children.stop(self.proc)
        self.logf.close()


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


def bench_noop(paths: list[tuple[str, int, ssl.SSLContext | None]], password: str, count: int,
               cpu_roles: dict[str, dict[str, callable]], rounds: int = 8,
               warmup: int = 50) -> tuple[dict[str, list[float]], dict[str, dict[str, int]]]:
    """Round trips in microseconds per path, and CPU nanoseconds per path and role."""
    conns = {}
    try:
        for name, port, tls in paths:
            c = Raw(port, tls)
            c.login(USER, password)
            conns[name] = c
        for c in conns.values():
            for _ in range(warmup):
                c.noop_ns()
        out: dict[str, list[float]] = {name: [] for name in conns}  # in order: rounds of per_round
        cpu: dict[str, dict[str, int]] = {name: {} for name in conns}
        per_round = max(1, count // rounds)
        for r in range(rounds):
            for name, c in conns.items():
                roles = {role: f() for role, f in cpu_roles.get(name, {}).items()}
                cpu0 = {role: sum(cpu_ns(p) for p in pids) for role, pids in roles.items()}
                out[name] += [c.noop_ns() / 1000.0 for _ in range(per_round)]
                for role, pids in roles.items():
                    cpu[name][role] = cpu[name].get(role, 0) + sum(cpu_ns(p) for p in pids) - cpu0[role]
        return out, cpu
    finally:
        for c in conns.values():
            c.close()


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
                expect_size: int, cpu_roles: dict[str, dict[str, callable]]) -> dict[str, dict]:
    """paths: (name, port, tls, password, uid). cpu_roles[name][role]() -> the pids whose CPU time
    counts for that role (client, relay, server) while `name` fetches."""
    big = memoryview(bytearray(16 << 20))
    conns: dict[str, tuple[Raw, int]] = {}
    res: dict[str, dict] = {}
    try:
        for name, port, tls, password, uid in paths:
            c = Raw(port, tls, timeout=60.0)
            c.login(USER, password)
            _, tagged = c.command("EXAMINE INBOX")
            if b" OK" not in tagged[:12]:
                raise BenchError(f"{name}: EXAMINE failed {tagged!r}")
            conns[name] = (c, uid)
            size, total, _ = c.fetch(uid, big)  # warm-up (page cache, buffers)
            if size != expect_size:
                raise BenchError(f"{name}: literal of {size} bytes, expected {expect_size}")
            res[name] = {"mbps": [], "cpu": {}, "wall": 0.0, "bytes": total}
        for r in range(reps):
            for name, (c, uid) in conns.items():
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
        for c, _ in conns.values():
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
        for name, port, tls in paths:
            out[name].append(once(port, tls))
    return out


# ----------------------------------------------------------------------------------------------
# 4. Idle sessions and memory (asyncio client against the proxy in front of the fake backend)


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
    """RSS once it stops moving (bounded): the proxy may still be finishing logins."""
    last = proc_rss_kib(pid)
    for _ in range(int(seconds / 0.25)):
        await asyncio.sleep(0.25)
        cur = proc_rss_kib(pid)
        if cur == last:
            break
        last = cur
    return proc_rss_kib(pid)


async def bench_sessions(proxy: Proxy, steps: list[int], tls: ssl.SSLContext | None) -> dict:
    """Opens sessions up to each count in `steps` (ascending), reading the proxy's RSS at each;
    NOOPs a sample of 100 after the first step and every session after the last."""
    port = proxy.imaps_port if tls else proxy.imap_port
    s = Sessions()
    res: dict = {"rss": {}}
    try:
        warm = Sessions()  # first-use costs (TLS library, allocator arenas) are not per session
        await warm.open(port, 20, tls)
        await warm.noop(list(range(20)))
        await warm.close()
        await asyncio.sleep(1.0)
        res["base"] = await settle_rss(proxy.pid)
        for i, target in enumerate(steps):
            t0 = time.monotonic()
            await s.open(port, target - len(s.conns), tls)
            res.setdefault("open_s", time.monotonic() - t0)
            res["rss"][target] = await settle_rss(proxy.pid)
            if i == 0:
                sample = random.Random(20261124).sample(range(target), min(100, target))
                res["sample_ok"] = await s.noop(sample)
                res["sample"] = len(sample)
        res["all_ok"] = await s.noop(list(range(len(s.conns))))
        res["all"] = len(s.conns)
        res["rss_after_noop"] = await settle_rss(proxy.pid)
        return res
    finally:
        await s.close()


# ----------------------------------------------------------------------------------------------
# The four benchmarks as run by main(): each prints its table and returns its goal lines.


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu_roles(e: SimpleNamespace) -> dict[str, dict[str, callable]]:
    """Whose CPU time counts, per path: client (this process), relay, server."""
    me = lambda: [os.getpid()]  # noqa: E731
    dovecot = lambda: descendants(e.tb.new.pid)  # noqa: E731  (only the imap process in use is busy)
    fake = lambda: [e.fake_proc.pid]  # noqa: E731
    socat = lambda: proc_children(e.socat_proc.pid) if e.socat_proc else []  # noqa: E731
    return {REF_NAME: {"client": me, "server": fake},
            "direct": {"client": me, "server": dovecot},
            "proxy": {"client": me, "relay": lambda: [e.proxy.pid], "server": dovecot},
            "socat": {"client": me, "relay": socat, "server": dovecot},
            "proxy -> fake server": {"client": me, "relay": lambda: [e.proxy_fake.pid], "server": fake},
            "direct TLS": {"client": me, "server": dovecot},
            "proxy TLS": {"client": me, "relay": lambda: [e.proxy.pid], "server": dovecot}}


REF_NAME = "reference (fake server, direct)"


def run_noop(e: SimpleNamespace) -> list[str]:
    log("1. NOOP round trips")
    paths = [("direct", e.dove, None), ("proxy", e.proxy.imap_port, None)]
    if e.socat_port:
        paths.append(("socat", e.socat_port, None))
    paths += [("direct TLS", e.tb.new.imaps_port, e.ca), ("proxy TLS", e.proxy.imaps_port, e.ca)]
    noop, cpu = bench_noop(paths, e.password, e.args.noops, cpu_roles(e))
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
    e.emit()
    e.emit("1. NOOP round trip on one logged-in connection per path (Dovecot, no mailbox selected), microseconds")
    e.emit(fmt_table(["path", "NOOPs", "p50 us", "p99 us", "mean us", "p50 ratio", "p99 ratio",
                      "client CPU us", "relay CPU us", "server CPU us"], rows))
    e.emit("CPU us: CPU time per NOOP of this process (client), the proxy or socat child (relay), Dovecot (server).")
    rounds = 8
    e.emit(f"p50 us by round ({rounds} interleaved rounds; the scheduler may move processes between cores):")
    for name, _, _ in paths:
        v = noop[name]
        k = max(1, len(v) // rounds)
        e.emit(f"  {name:<11}" + " ".join(f"{pct(v[i:i + k], 50):6.1f}" for i in range(0, k * rounds, k)))
    e.emit("'proxy TLS' is TLS client->proxy and plaintext proxy->Dovecot; 'direct TLS' is Dovecot's imaps.")
    r = pct(noop["proxy"], 50) / pct(noop["direct"], 50)
    return [f"NOOP p50 <= 1.3x direct (plaintext): {r:.2f}x -> {verdict(r <= 1.3)}"]


def run_fetch(e: SimpleNamespace) -> list[str]:
    log(f"2. FETCH of a {e.fetch_bytes:,} byte message")
    uid, _ = append_message(e.tb, e.fetch_bytes)
    ref_name = REF_NAME
    fpaths = [(ref_name, e.fake_port, None, "x", 1),
              ("direct", e.dove, None, e.password, uid),
              ("proxy", e.proxy.imap_port, None, e.password, uid)]
    if e.socat_port:
        fpaths.append(("socat", e.socat_port, None, e.password, uid))
    fpaths += [("proxy -> fake server", e.proxy_fake.imap_port, None, "x", 1),
               ("direct TLS", e.tb.new.imaps_port, e.ca, e.password, uid),
               ("proxy TLS", e.proxy.imaps_port, e.ca, e.password, uid)]
    cpu = cpu_roles(e)
    fetch = bench_fetch(fpaths, e.args.fetch_reps, e.fetch_bytes, cpu)
    rows = []
    for name, _, tls, _, _ in fpaths:
        ref = "direct TLS" if tls else (ref_name if "fake" in name else "direct")
        r = fetch[name]
        med = statistics.median(r["mbps"])
        refmed = statistics.median(fetch[ref]["mbps"])

        def share(role: str) -> str:
            v = r["cpu"].get(role)
            return "-" if v is None else f"{100.0 * v / 1e9 / r['wall']:.0f} %"
        rows.append([name, len(r["mbps"]), f"{med:.0f}", f"{min(r['mbps']):.0f}", f"{max(r['mbps']):.0f}",
                     f"{med / refmed:.2f}x" if name != ref else "1.00x",
                     share("client"), share("relay"), share("server")])
    e.emit()
    e.emit(f"2. UID FETCH BODY.PEEK[] of one {e.fetch_bytes:,} byte message, MB/s = 10^6 bytes/s "
           f"(raw socket, recv_into a 16 MB buffer)")
    e.emit(fmt_table(["path", "reps", "median MB/s", "min", "max", "ratio", "client CPU", "relay CPU",
                      "server CPU"], rows))
    e.emit("ratio: to 'direct' of the same transport; 'proxy -> fake server' to the reference row.")
    e.emit("CPU: each process's CPU time / wall time of the timed FETCHes (100 % = one core, of 2 here).")
    e.emit("'proxy TLS' is TLS client->proxy, plaintext proxy->Dovecot; 'direct TLS' makes Dovecot encrypt.")
    r = statistics.median(fetch["proxy"]["mbps"]) / statistics.median(fetch["direct"]["mbps"])
    return [f"FETCH >= 0.9x direct (plaintext): {r:.2f}x -> {verdict(r >= 0.9)}"]


def run_login(e: SimpleNamespace) -> list[str]:
    log("3. login latency")
    paths = [("direct", e.dove, None), ("proxy", e.proxy.imap_port, None)]
    if e.socat_port:
        paths.append(("socat", e.socat_port, None))
    paths += [("direct TLS", e.tb.new.imaps_port, e.ca), ("proxy TLS", e.proxy.imaps_port, e.ca)]
    login = bench_login(paths, e.password, e.args.logins)
    rows = []
    for name, _, tls in paths:
        ref = login["direct TLS" if tls else "direct"]
        v = login[name]
        rows.append([name, len(v), f"{pct(v, 50):.2f}", f"{pct(v, 99):.2f}",
                     f"{pct(v, 50) / pct(ref, 50):.2f}x", f"{pct(v, 99) / pct(ref, 99):.2f}x",
                     f"{pct(v, 50) - pct(ref, 50):+.2f}"])
    e.emit()
    e.emit("3. Login latency: connect + greeting (+ TLS handshake) + LOGIN + tagged OK, milliseconds")
    e.emit(fmt_table(["path", "logins", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio", "p50 added ms"], rows))
    r = pct(login["proxy"], 50) / pct(login["direct"], 50)
    return [f"login p50 (no goal): {r:.2f}x direct, {pct(login['proxy'], 50) - pct(login['direct'], 50):+.2f} ms"]


def run_sessions(e: SimpleNamespace) -> list[str]:
    n = e.args.sessions
    sess = {}
    notes = []
    for mode in ("plaintext", "TLS"):
        p = Proxy(e.children, e.args.binary, e.workdir, f"proxy-sessions-{mode.lower()}", e.fake_port,
                  e.tb.legacy.imap_port, e.cert, e.key, e.ca, max_conn=2 * n + 100, nofile=e.args.proxy_nofile)
        try:
            limit = proc_nofile(p.pid)
            own = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            # Each session holds two descriptors in the proxy (client, backend) and one here.
            steps = [n // 2, n]
            if 2 * (2 * n) + 100 <= limit and 2 * n + 100 <= own:
                steps.append(2 * n)
            elif mode == "plaintext":
                notes.append(f"2N = {2 * n} not run: the proxy's RLIMIT_NOFILE is {limit} (the hard limit here; "
                             f"no CAP_SYS_RESOURCE to raise it), 2 descriptors per session.")
            if 2 * n + 100 > limit:
                raise BenchError(f"the proxy's RLIMIT_NOFILE {limit} cannot hold {n} sessions")
            log(f"4. {' then '.join(map(str, steps))} idle {mode} sessions (proxy RLIMIT_NOFILE {limit})")
            sess[mode] = run_async(bench_sessions(p, steps, e.ca if mode == "TLS" else None), 600.0)
            sess[mode]["steps"] = steps
        finally:
            p.stop()
    rows = []
    for mode, r in sess.items():
        steps = r["steps"]
        half, full = steps[0], steps[1]
        per_n = (r["rss"][full] - r["base"]) / full
        marginal = (r["rss"][steps[-1]] - r["rss"][half]) / (steps[-1] - half)
        fixed = r["rss"][full] - r["base"] - marginal * full
        rows.append([mode, f"{r['base']:,}"] + [f"{r['rss'][k]:,}" for k in steps] +
                    ["-"] * (3 - len(steps)) +
                    [f"{per_n:.1f}", f"{marginal:.1f}", f"{fixed:,.0f}", f"{r['rss_after_noop']:,}",
                     f"{r['sample_ok']}/{r['sample']}", f"{r['all_ok']}/{r['all']}"])
    e.emit()
    e.emit(f"4. Idle logged-in sessions through the proxy (fake backend), proxy VmRSS in KiB, N = {n:,}")
    e.emit(fmt_table(["client->proxy", "RSS base", "RSS N/2", "RSS N", "RSS 2N", "KiB/sess at N",
                      "marginal KiB/sess", "fixed KiB", "RSS after NOOPs", f"NOOP sample", "NOOP all"], rows))
    e.emit("KiB/sess at N = (RSS N - RSS base) / N, the goal's measure; marginal = slope of RSS from N/2 to "
           "the last step; fixed = (RSS N - RSS base) - N x marginal. A fresh proxy per row; base = after 20 "
           "warm-up sessions came and went. NOOP sample: 100 random sessions at N/2; NOOP all: every open "
           "session at the end, then 'RSS after NOOPs'.")
    for note in notes:
        e.emit(note)
    plain = (sess["plaintext"]["rss"][n] - sess["plaintext"]["base"]) / n
    tlsk = (sess["TLS"]["rss"][n] - sess["TLS"]["base"]) / n
    all_ok = all(r["sample_ok"] == r["sample"] and r["all_ok"] == r["all"] for r in sess.values())
    return [f"<= 32 KiB per idle plaintext session at N={n}: {plain:.1f} KiB -> {verdict(plain <= 32)}",
            f"<= 96 KiB per idle TLS session at N={n}: {tlsk:.1f} KiB -> {verdict(tlsk <= 96)}",
            f"every session answers NOOP afterwards: {'yes' if all_ok else 'NO'}"]


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="suction proxy benchmarks (see the module docstring)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "proxy", "cli", "suction"))
    ap.add_argument("--sessions", type=int, default=5000, help="N idle sessions (also measured at N/2, and 2N if RLIMIT_NOFILE allows)")
    ap.add_argument("--noops", type=int, default=2000)
    ap.add_argument("--fetch-mb", type=float, default=10.0, help="message size, MB (10^6 bytes)")
    ap.add_argument("--fetch-reps", type=int, default=15)
    ap.add_argument("--logins", type=int, default=200)
    ap.add_argument("--max-seconds", type=int, default=900, help="whole-run deadline")
    ap.add_argument("--proxy-nofile", type=int, default=65536,
                    help="RLIMIT_NOFILE asked for the proxy (capped by the hard limit without CAP_SYS_RESOURCE)")
    ap.add_argument("--only", default="noop,fetch,login,sessions",
                    help="comma-separated subset of noop,fetch,login,sessions")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if not os.access(args.binary, os.X_OK):
        ap.error(f"{args.binary} missing: ninja -C build -j1 suction")
    if os.geteuid() != 0:
        ap.error("needs root (the Dovecot test bed)")

    def on_alarm(signum, frame):
        raise TimeoutError(f"whole run exceeded --max-seconds={args.max_seconds}")
    signal.signal(signal.SIGALRM, on_alarm)
    # Ctrl-C or kill: unwind through the finally below so that everything started is stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.alarm(args.max_seconds)
    raise_nofile(65536)

    fetch_bytes = int(args.fetch_mb * 1e6)
    workdir = tempfile.mkdtemp(prefix="spb", dir="/tmp")
    os.chmod(workdir, 0o755)  # the bed's Dovecot users must traverse it
    children = Children()
    tb = None
    def emit(text: str = "") -> None:
        print(text, flush=True)

    ok = False
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        log(f"work dir {workdir}; starting the test bed")
        tb = Testbed(os.path.join(workdir, "bed"), seed=False, large_mb=0)
        tb.start()
        ca = ssl.create_default_context(cafile=tb.ca_file)
        cert = os.path.join(tb.dir, "tls", "cert.pem")
        key = os.path.join(tb.dir, "tls", "key.pem")
        password = tb.users[USER]
        dove = tb.new.imap_port

        proxy = Proxy(children, args.binary, workdir, "proxy-dovecot", dove, tb.legacy.imap_port, cert, key, ca)
        socat_port = None
        socat_proc = None
        if shutil.which("socat"):
            socat_port = free_port()
            socat_proc = children.start("socat", ["socat", f"TCP-LISTEN:{socat_port},bind={HOST},reuseaddr,fork",
                                                  f"TCP:{HOST}:{dove}"], new_group=True)
            wait_port(socat_port, socat_proc)
        else:
            log("socat not installed: no naive-relay column (apt-get install -y socat)")
        fake_proc = children.start("fake_backend", [sys.executable, os.path.join(HERE, "fake_backend.py"),
                                                    "--fetch-bytes", str(fetch_bytes), "--watch-stdin",
                                                    "--max-seconds", str(args.max_seconds + 60)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, nofile=65536)
        line = fake_proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            raise BenchError(f"fake backend did not start: {line!r}")
        fake_port = int(line.split()[1])
        proxy_fake = Proxy(children, args.binary, workdir, "proxy-fake", fake_port, tb.legacy.imap_port, cert,
                           key, ca)

        info = (f"{os.cpu_count()} cores ({platform_cpu()}), Python {sys.version.split()[0]}, "
                f"{dovecot_version()}, {socat_version()}")
        emit(f"suction proxy benchmarks: commit {commit}, {time.strftime('%Y-%m-%d')}, {info}")
        emit("All traffic on 127.0.0.1; paths interleaved round by round; ratios are to 'direct' of the same "
             "transport.")

        env = SimpleNamespace(args=args, tb=tb, ca=ca, password=password, dove=dove, proxy=proxy,
                              socat_port=socat_port, socat_proc=socat_proc, fake_proc=fake_proc,
                              fake_port=fake_port, proxy_fake=proxy_fake, children=children, workdir=workdir,
                              emit=emit, fetch_bytes=fetch_bytes, cert=cert, key=key)
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        steps = {"noop": run_noop, "fetch": run_fetch, "login": run_login, "sessions": run_sessions}
        unknown = [x for x in only if x not in steps]
        if unknown:
            raise BenchError(f"--only: unknown {unknown}")
        goals: list[str] = []
        for name, step in steps.items():
            if name in only:
                goals += step(env)
        emit()
        emit("Goals:")
        for g in goals:
            emit(f"  {g}")
        ok = True
        return 0
    except BaseException:
        for p in [x for x in children.procs if x[0].startswith("proxy")]:
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


def socat_version() -> str:
    if not shutil.which("socat"):
        return "no socat"
    try:
        out = subprocess.run(["socat", "-V"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"socat version (\S+)", out)
        return f"socat {m.group(1)}" if m else "socat"
    except (OSError, subprocess.TimeoutExpired):
        return "socat"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything it started is stopped")
        sys.exit(130)
