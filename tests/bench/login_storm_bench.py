#!/usr/bin/env python3
"""Login storm (issue 5): N users log in through `suction proxy` at once, each login queueing a
background migration of that user's small legacy mailbox.

Run by hand (root: the test bed starts Dovecot), from the repository root, after building the
daemon (`ninja -C build -j1 suction`); the default run (200 users, 3 repetitions) takes about
a minute on 2 cores:

    python3 tests/bench/login_storm_bench.py [--users 200] [--reps 3] [--out FILE] [--keep]

What it starts (all on 127.0.0.0/8; all stopped and the /tmp/suction-lsb-* work directory
removed at the end, also on failure, Ctrl-C or SIGTERM):
  * the test bed (tests/testbed) with --users extra users user001.. (password pw-userNNN), not
    seeded; each extra user's legacy mailbox gets a small deterministic mailbox by APPEND
    (10-20 messages of 1-20 KB over 2-3 folders: INBOX, INBOX.Notes, sometimes INBOX.Lists);
  * a counting TCP forwarder (tests/integration/netfault.py) in front of legacy, in a child
    process of its own (so that relaying the migration's bytes does not take this process's
    GIL from the login threads); suction's [legacy] points at it: legacy connections are
    counted at legacy's door (peak at once, accepted in all);
  * per phase, a fresh `suction proxy` (own state db and status socket; [sync] and [legacy]
    caps at their defaults unless --set: max_concurrent_users=4, connections_per_user=2,
    [legacy] max_connections=16; log level info).

Per repetition, three phases, each with every user's home on the new server emptied first (so
that each phase's logins are first logins on the new server), in an order that rotates:
  on      the storm against the proxy, migration on: the time until {"cmd":"status"} says
          users_done == N (polled every 0.1 s), peak forwarder connections, peak users_running,
          the proxy's VmHWM at the end and VmRSS sampled every 50 ms, CPU of every process;
          afterwards every user's new mailbox is checked: STATUS MESSAGES per folder equals
          legacy's, and for --verify-sample users every message's sha256 equals legacy's;
  off     the same storm against a fresh proxy whose scheduler was paused ({"cmd":"pause"})
          before it: logins are accepted and queued, nothing runs (checked: users_queued == N,
          the forwarder saw no connection);
  direct  the same storm straight at the new Dovecot (no proxy).

The storm: N threads wait on a barrier, then each (from its own source address 127.0.x.y, so
that the proxy's per-address limit does not apply, as with N real clients) runs imaplib:
connect, greeting, LOGIN, LOGOUT. Login latency = connect + greeting + LOGIN + tagged OK (the
definition of proxy_bench.py's table 3); LOGIN alone (command to tagged OK) is reported too.
The client is Python threads on the same 2 cores as everything else: its own scheduling delay
is in every number, on every path alike.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import imaplib
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from benchlib import dovecot_version, empty_dir, pct, proc_times as _times  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, HERE)

HOST = "127.0.0.1"
DEFAULT_BINARY = os.path.join(ROOT, "build", "proxy", "cli", "suction")
LEGACY_FOLDERS = ["INBOX", "INBOX.Notes", "INBOX.Lists"]


def new_name(legacy: str) -> str:
    return legacy[len("INBOX."):] if legacy.startswith("INBOX.") else legacy


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[storm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The forwarder child: `login_storm_bench.py --forwarder-child PORT` (netfault.Forwarder in
# front of 127.0.0.1:PORT). Prints "PORT n", then answers each stdin line with one JSON line of
# counts; exits at stdin EOF (or after --max-seconds).


def forwarder_child(target_port: int, max_seconds: int) -> int:
    from netfault import Forwarder
    # Ctrl-C reaches the whole process group: the parent stops this child by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(max_seconds)
    fwd = Forwarder((HOST, target_port))
    print(f"PORT {fwd.port}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "reset":
            fwd.reset()
        print(json.dumps({"accepted": fwd.accepted, "active": fwd.active, "peak": fwd.peak}),
              flush=True)
    fwd.close()
    return 0


class ForwarderProc:
    def __init__(self, target_port: int, max_seconds: int):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--forwarder-child",
                                      str(target_port), "--max-seconds", str(max_seconds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lock = threading.Lock()
        line = self._readline(15)
        if not line.startswith("PORT "):
            self.stop()
            raise BenchError(f"forwarder did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def _readline(self, timeout: float) -> str:
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not out:
            raise BenchError("forwarder child did not answer")
        return out[0]

    def ask(self, cmd: str = "stats") -> dict:
        with self._lock:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return json.loads(self._readline(10))

    def stop(self) -> None:
        p = self.proc
        with contextlib.suppress(OSError):
            p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# ----------------------------------------------------------------------------------------------
# /proc


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree_cpu(pid: int, depth: int = 0) -> float:
    """CPU seconds of pid, its reaped children and its live descendants (Dovecot's master and
    its services: a process that exits between two calls is counted once, in cutime)."""
    if depth > 4:
        return 0.0
    return _times(pid) + sum(tree_cpu(c, depth + 1) for c in _children(pid))


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------------------------
# The proxy


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v)


class Proxy:
    def __init__(self, binary: str, d: str, tb, legacy_port: int, sets: dict[str, dict]):
        os.makedirs(d, exist_ok=True)
        self.dir = d
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.sock_path = os.path.join(d, "status.sock")
        bed_tls = os.path.dirname(tb.ca_file)
        cfg = {
            "listen": {"imap": f"{HOST}:{self.port}", "imaps": "",
                       "tls_cert": os.path.join(bed_tls, "cert.pem"),
                       "tls_key": os.path.join(bed_tls, "key.pem")},
            "new": {"host": HOST, "port": tb.new.imap_port, "tls": "none"},
            "legacy": {"host": HOST, "port": legacy_port, "tls": "none"},
            "limits": {"shutdown_grace": 0},
            "sync": {"state_db": os.path.join(d, "state.db")},
            "status": {"socket": self.sock_path},
            "log": {"level": "info"},
        }
        for sec, kv in sets.items():
            cfg.setdefault(sec, {}).update(kv)
        self.config = cfg
        self.config_path = os.path.join(d, "suction.toml")
        with open(self.config_path, "w") as f:
            for sec, kv in cfg.items():
                f.write(f"[{sec}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items()) + "\n")
        self.log_path = os.path.join(d, "suction.log")
        logf = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen([binary, "proxy", "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        finally:
            logf.close()
        self.pid = self.proc.pid
        try:
            self._wait_ready(15.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            if self.proc.poll() is not None:
                raise BenchError(f"proxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            text = self.log()
            if "listening imap=" in text and os.path.exists(self.sock_path):
                with contextlib.suppress(OSError, ValueError):
                    if "migration" in self.ask({"cmd": "status"}):
                        return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise BenchError(f"proxy not ready within {timeout}s:\n{self.log_tail()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def ask(self, request: dict, timeout: float = 5.0) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.sock_path)
            s.sendall((json.dumps(request) + "\n").encode())
            buf = b""
            for _ in range(100000):
                if buf.endswith(b"\n"):
                    break
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def stop(self) -> int | None:
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log(f"proxy {p.pid} ignored SIGTERM for 10 s: SIGKILL")
                p.kill()
                p.wait(5)
        return p.returncode


# ----------------------------------------------------------------------------------------------
# Seeding and checking mailboxes


def user_plan(user: str, seed: int) -> dict[str, list[tuple[bytes, str | None, str]]]:
    """The user's legacy mailbox: {legacy folder: [(message, flags, internaldate)]}."""
    rnd = random.Random(f"{seed}:{user}")
    nfolders = rnd.choice((2, 3))
    folders = LEGACY_FOLDERS[:nfolders]
    count = rnd.randint(10, 20)
    plan: dict[str, list] = {f: [] for f in folders}
    words = [w.encode() for w in ("mail", "migration", "suction", "legacy", "server", "the",
                                  "of", "report", "meeting", "invoice", "holiday", "project")]
    for i in range(count):
        folder = folders[0] if i < 4 else rnd.choice(folders)  # INBOX gets a few for sure
        size = rnd.randint(1024, 20 * 1024)
        head = (f"From: sender{rnd.randint(1, 99)}@example.org\r\nTo: {user}@example.org\r\n"
                f"Subject: message {i} for {user}\r\nDate: Mon, {1 + i % 28:02d} Apr 2024 09:{i % 60:02d}:00 +0000\r\n"
                f"Message-ID: <{user}-{i}@storm.example.org>\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
        body = bytearray()
        line = bytearray()
        while len(head) + len(body) < size:
            line += rnd.choice(words) + b" "
            if len(line) > 70:
                body += line + b"\r\n"
                line = bytearray()
        msg = head + bytes(body)
        flags = rnd.choice((None, "(\\Seen)", "(\\Seen \\Flagged)", "(\\Answered \\Seen)"))
        date = '"%02d-Apr-2024 09:%02d:00 +0000"' % (1 + i % 28, i % 60)
        plan[folder].append((msg, flags, date))
    return plan


class SrcIMAP4(imaplib.IMAP4):
    """imaplib from a chosen loopback source address."""

    def __init__(self, host: str, port: int, source: str, timeout: float):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


def connect(port: int, user: str, password: str, timeout: float = 30.0) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(HOST, port, timeout=timeout)
    try:
        typ, data = imap.login(user, password)
        if typ != "OK":
            raise BenchError(f"login {user}: {typ} {data}")
    except BaseException:
        with contextlib.suppress(Exception):
            imap.shutdown()
        raise
    return imap


def parallel(fn, items: list, threads: int, timeout: float) -> list:
    """fn(item) over items with `threads` threads; the results in order; the first error raised."""
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    it = iter(range(len(items)))
    lock = threading.Lock()

    def worker():
        while not errors:
            with lock:
                i = next(it, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                return
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in ts):
        raise BenchError(f"parallel work not done within {timeout}s")
    return results


def seed_user(tb, user: str, seed: int) -> dict[str, int]:
    plan = user_plan(user, seed)
    imap = connect(tb.legacy.imap_port, user, tb.users[user])
    try:
        for folder, msgs in plan.items():
            if folder != "INBOX":
                typ, data = imap.create(folder)
                if typ != "OK":
                    raise BenchError(f"CREATE {folder} for {user}: {data}")
                imap.subscribe(folder)
            for msg, flags, date in msgs:
                typ, data = imap.append(folder, flags, date, msg)
                if typ != "OK":
                    raise BenchError(f"APPEND {user} {folder}: {data}")
        imap.logout()
    except BaseException:
        with contextlib.suppress(Exception):
            imap.shutdown()
        raise
    return {f: len(m) for f, m in plan.items()}


def folder_counts(port: int, user: str, password: str, folders: list[str]) -> dict[str, int | None]:
    imap = connect(port, user, password)
    try:
        out = {}
        for f in folders:
            typ, data = imap.status(f, "(MESSAGES)")
            if typ != "OK":
                out[f] = None
                continue
            text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
            out[f] = int(text.rsplit("MESSAGES", 1)[1].strip(" )"))
        imap.logout()
        return out
    except BaseException:
        with contextlib.suppress(Exception):
            imap.shutdown()
        raise


def folder_hashes(port: int, user: str, password: str, folder: str) -> list[str]:
    imap = connect(port, user, password)
    try:
        typ, data = imap.select(folder, readonly=True)
        if typ != "OK":
            raise BenchError(f"SELECT {folder} for {user}: {data}")
        out = []
        if int(data[0]) > 0:
            typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
            for item in data:
                if isinstance(item, tuple):
                    out.append(hashlib.sha256(item[1]).hexdigest())
        imap.logout()
        return sorted(out)
    except BaseException:
        with contextlib.suppress(Exception):
            imap.shutdown()
        raise


def empty_new_homes(tb, users: list[str]) -> None:
    """Every user's home on the new server emptied (no imap process of theirs is left)."""
    home_root = tb.new.home
    for u in users:
        h = os.path.join(home_root, u)
        if os.path.isdir(h):
            empty_dir(h)


def mail_processes(master: int) -> int:
    """Live imap (mail) processes under a Dovecot master."""
    n = 0
    for c in _children(master):
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if b"/imap" in argv0 and b"imap-login" not in argv0:
            n += 1
    return n


def wait_no_mail_processes(tb, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if mail_processes(tb.new.pid) == 0 and mail_processes(tb.legacy.pid) == 0:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise BenchError(f"imap processes still running after {timeout}s")


# ----------------------------------------------------------------------------------------------
# The storm


def storm(port: int, users: list[str], passwords: dict[str, str], timeout: float) -> dict:
    """Every user at once: connect, greeting, LOGIN, LOGOUT, each from its own source address."""
    n = len(users)
    res: list[dict | None] = [None] * n
    barrier = threading.Barrier(n + 1)

    def one(i: int) -> None:
        user = users[i]
        src = f"127.0.{1 + i // 250}.{1 + i % 250}"
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            res[i] = {"error": "barrier broken"}
            return
        t0 = time.perf_counter()
        imap = None
        try:
            imap = SrcIMAP4(HOST, port, src, timeout)
            t1 = time.perf_counter()
            typ, data = imap.login(user, passwords[user])
            t2 = time.perf_counter()
            if typ != "OK":
                raise BenchError(f"{typ} {data}")
            imap.logout()
            t3 = time.perf_counter()
            res[i] = {"t0": t0, "greeting": t1, "login": t2, "logout": t3}
        except BaseException as e:  # noqa: BLE001 - counted and reported
            res[i] = {"error": f"{user}: {type(e).__name__}: {e}"}
            if imap is not None:
                with contextlib.suppress(Exception):
                    imap.shutdown()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait(60)
    start = time.perf_counter()
    deadline = time.monotonic() + timeout + 30
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise BenchError(f"storm threads still running after {timeout + 30}s")
    ok = [r for r in res if r and "error" not in r]
    errors = [r["error"] for r in res if r is None or "error" in r] if len(ok) < n else []
    full = [(r["login"] - r["t0"]) * 1000 for r in ok]
    login_only = [(r["login"] - r["greeting"]) * 1000 for r in ok]
    greeting = [(r["greeting"] - r["t0"]) * 1000 for r in ok]
    return {"start": start, "full_ms": full, "login_ms": login_only, "greeting_ms": greeting,
            "last_login_s": max((r["login"] for r in ok), default=start) - start,
            "last_logout_s": max((r["logout"] for r in ok), default=start) - start,
            "ok": len(ok), "errors": errors}


class Sampler:
    """Every `interval` s until stopped: the proxy's VmRSS, the forwarder's counts (peak is kept
    by the forwarder itself) and the status socket's users_running (every 0.1 s)."""

    def __init__(self, proxy: Proxy | None, interval: float = 0.05):
        self.proxy = proxy
        self.interval = interval
        self.rss_max = 0
        self.rss_samples = 0
        self.running_max = 0
        self.legacy_reserved_max = 0
        self.status_errors = 0
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        for _ in range(10_000_000):
            if self._stop.is_set():
                return
            if self.proxy is not None:
                with contextlib.suppress(OSError, BenchError):
                    self.rss_max = max(self.rss_max, proc_status(self.proxy.pid, "VmRSS"))
                    self.rss_samples += 1
                if n % 2 == 0:
                    try:
                        m = self.proxy.ask({"cmd": "status"})["migration"]
                        self.running_max = max(self.running_max, m["users_running"])
                        self.legacy_reserved_max = max(self.legacy_reserved_max, m["legacy_connections"])
                    except (OSError, ValueError, KeyError):
                        self.status_errors += 1
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self.t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.t.join(10)


def cpu_snapshot(tb, proxy: Proxy | None, fwd: ForwarderProc) -> dict[str, float]:
    return {"client": self_cpu(), "proxy": _times(proxy.pid, False) if proxy else 0.0,
            "forwarder": _times(fwd.pid, False), "legacy": tree_cpu(tb.legacy.pid),
            "new": tree_cpu(tb.new.pid)}


def cpu_delta(a: dict, b: dict) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


def parse_migration_lines(text: str) -> list[float]:
    out = []
    for line in text.splitlines():
        if " migration user=" in line and " result=ok " in line:
            for tok in line.split():
                if tok.startswith("duration=") and tok.endswith("s"):
                    with contextlib.suppress(ValueError):
                        out.append(float(tok[len("duration="):-1]))
    return out


def run_phase(kind: str, e, rep: int) -> dict:
    tb, users, args = e.tb, e.users, e.args
    wait_no_mail_processes(tb)
    empty_new_homes(tb, users)
    os.sync()
    proxy = None
    r: dict = {"kind": kind}
    try:
        if kind != "direct":
            proxy = Proxy(args.binary, os.path.join(e.workdir, f"proxy-{kind}-{rep}"), tb, e.fwd.port,
                          e.sets)
            if kind == "off":
                if proxy.ask({"cmd": "pause"}) != {"ok": True}:
                    raise BenchError("pause refused")
            r["rss_start_kib"] = proc_status(proxy.pid, "VmRSS")
        e.fwd.ask("reset")
        port = proxy.port if proxy else tb.new.imap_port
        time.sleep(0.5)  # let the start-up settle
        cpu0 = cpu_snapshot(tb, proxy, e.fwd)
        with Sampler(proxy) as smp:
            s = storm(port, users, tb.users, args.login_timeout)
            r.update(s)
            if s["errors"]:
                log(f"{kind}: {len(s['errors'])} logins failed, e.g. {s['errors'][:3]}")
            if kind == "on":
                last = {}
                deadline = time.monotonic() + args.done_timeout
                for _ in range(int(args.done_timeout / 0.1) + 1):
                    last = proxy.ask({"cmd": "status"})["migration"]
                    if last["users_done"] + last["users_failed"] >= len(users) or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                r["done_s"] = time.perf_counter() - s["start"]
                r["status_end"] = last
                if last["users_done"] != len(users):
                    log(f"on: not all done within {args.done_timeout}s: {last}")
                    r["done_s"] = float("nan")
        cpu1 = cpu_snapshot(tb, proxy, e.fwd)
        r["wall_s"] = time.perf_counter() - s["start"]
        r["cpu"] = cpu_delta(cpu0, cpu1)
        r["fwd"] = e.fwd.ask()
        if proxy:
            r["rss_max_kib"] = max(smp.rss_max, proc_status(proxy.pid, "VmRSS"))
            r["rss_samples"] = smp.rss_samples
            r["hwm_kib"] = proc_status(proxy.pid, "VmHWM")
            r["running_max"] = smp.running_max
            r["reserved_max"] = smp.legacy_reserved_max
            st = proxy.ask({"cmd": "status"})
            r["status_final"] = st
            if kind == "off":
                m = st["migration"]
                r["off_check"] = (m["users_queued"] == len(users) and m["users_running"] == 0
                                  and m["users_done"] == 0 and r["fwd"]["accepted"] == 0)
            r["migration_durations"] = parse_migration_lines(proxy.log())
            failures = [ln for ln in proxy.log().splitlines()
                        if " migration user=" in ln and " result=ok " not in ln]
            r["migration_failures"] = failures[:5]
            r["migration_failure_count"] = len(failures)
        if kind == "on":
            r["verify"] = verify(e)
    finally:
        if proxy is not None:
            rc = proxy.stop()
            r["proxy_exit"] = rc
            if rc not in (0, None):
                log(f"proxy {kind} exited with {rc}:\n{proxy.log_tail()}")
    r["dovecot_limit_warnings"] = dovecot_limit_warnings(e)
    return r


def dovecot_limit_warnings(e) -> dict[str, int]:
    """New 'process_limit reached' / 'client_limit reached' lines in each Dovecot log since
    the last call."""
    out = {}
    for role in ("legacy", "new"):
        path = getattr(e.tb, role).log_path
        with open(path, "rb") as f:
            f.seek(e.log_offsets.get(role, 0))
            data = f.read()
            e.log_offsets[role] = f.tell()
        out[role] = sum(1 for ln in data.splitlines() if b"limit" in ln and b"reached" in ln)
    return out


def verify(e) -> dict:
    """Every user: STATUS MESSAGES per folder, new == legacy (== the plan); a sample: sha256."""
    tb = e.tb

    def check(user: str) -> str | None:
        expected = e.expected[user]
        legacy = folder_counts(tb.legacy.imap_port, user, tb.users[user], list(expected))
        new = folder_counts(tb.new.imap_port, user, tb.users[user], [new_name(f) for f in expected])
        for f, n in expected.items():
            if legacy[f] != n or new[new_name(f)] != n:
                return f"{user} {f}: plan {n}, legacy {legacy[f]}, new {new[new_name(f)]}"
        return None

    bad = [x for x in parallel(check, e.users, 4, 600) if x]
    sample = random.Random(e.args.seed).sample(e.users, min(e.args.verify_sample, len(e.users)))
    hashed = 0

    def hashes(user: str) -> tuple[str | None, int]:
        n = 0
        for f in e.expected[user]:
            a = folder_hashes(tb.legacy.imap_port, user, tb.users[user], f)
            b = folder_hashes(tb.new.imap_port, user, tb.users[user], new_name(f))
            if a != b:
                return f"{user} {f}: sha256 differ ({len(a)} legacy, {len(b)} new)", n
            n += len(a)
        return None, n
    for err, n in parallel(hashes, sample, 4, 600):
        hashed += n
        if err:
            bad.append(err)
    return {"users": len(e.users), "bad": bad, "sample_users": len(sample), "sample_messages": hashed}


# ----------------------------------------------------------------------------------------------
# Report


def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def report(e, reps: list[dict[str, dict]]) -> str:
    n = len(e.users)
    out = []
    emit = out.append
    kinds = ["direct", "off", "on"]
    names = {"direct": "direct (new Dovecot)", "off": "proxy, migration off (paused)",
             "on": "proxy, migration on"}
    emit(f"1. Login latency, {n} users at once (connect + greeting + LOGIN + tagged OK), ms; "
         f"median over {len(reps)} reps (per rep: p50/p99 over the {n} logins)")
    rows = []
    for k in kinds:
        p50 = [pct(r[k]["full_ms"], 50) for r in reps]
        p99 = [pct(r[k]["full_ms"], 99) for r in reps]
        mx = [max(r[k]["full_ms"] or [float("nan")]) for r in reps]
        g50 = [pct(r[k]["greeting_ms"], 50) for r in reps]
        l50 = [pct(r[k]["login_ms"], 50) for r in reps]
        l99 = [pct(r[k]["login_ms"], 99) for r in reps]
        last = [r[k]["last_login_s"] for r in reps]
        okc = sum(r[k]["ok"] for r in reps)
        rows.append([names[k], f"{okc}/{n * len(reps)}", f"{med(p50):.1f}", f"{med(p99):.1f}",
                     f"{med(mx):.1f}", f"{med(g50):.1f}", f"{med(l50):.1f}", f"{med(l99):.1f}",
                     f"{med(last):.2f}"])
    emit(fmt_table(["path", "logins ok", "p50", "p99", "max", "greeting p50", "LOGIN p50",
                    "LOGIN p99", "all logged in s"], rows))
    emit("greeting: connect to greeting received; LOGIN: the LOGIN command alone (sent after the "
         "greeting) to its tagged OK. 'all logged in s': from the barrier to the last tagged OK.")
    emit("p50 / p99 ms by rep (phase order rotates: rep 1 direct-off-on, rep 2 on-direct-off, "
         "rep 3 off-on-direct, ...):")
    for k in kinds:
        emit(f"  {k:<7}" + "  ".join(f"{pct(r[k]['full_ms'], 50):6.1f} /{pct(r[k]['full_ms'], 99):6.1f}"
                                     for r in reps))
    emit("")

    def ratio(a: str, b: str, p: float, key: str = "full_ms") -> tuple[float, float]:
        per = [pct(r[a][key], p) / pct(r[b][key], p) for r in reps]
        return med(per), (med([pct(r[a][key], p) for r in reps]) / med([pct(r[b][key], p) for r in reps]))
    emit("2. Ratios (paired = median of the per-rep ratios; of medians = ratio of the medians above)")
    rows = []
    for a, b, label in (("on", "off", "on / off"), ("off", "direct", "off / direct"),
                        ("on", "direct", "on / direct")):
        p50p, p50m = ratio(a, b, 50)
        p99p, p99m = ratio(a, b, 99)
        rows.append([label, f"{p50p:.2f}x", f"{p50m:.2f}x", f"{p99p:.2f}x", f"{p99m:.2f}x"])
    emit(fmt_table(["", "p50 paired", "p50 of medians", "p99 paired", "p99 of medians"], rows))
    emit("")

    emit(f"3. Migration on: {n} users, {e.total_messages} messages, {e.total_bytes / 1e6:.1f} MB "
         f"on legacy ({e.mailbox_desc}); per rep")
    rows = []
    for i, r in enumerate(reps):
        on = r["on"]
        d = on.get("migration_durations") or []
        st = on["status_end"]
        v = on["verify"]
        rows.append([str(i + 1), f"{on['done_s']:.1f}", f"{on['last_login_s']:.2f}",
                     f"{st['users_done']}/{n}", str(st["users_failed"]),
                     f"{n / on['done_s']:.1f}" if on["done_s"] == on["done_s"] else "-",
                     f"{pct(d, 50):.2f}" if d else "-", f"{max(d):.2f}" if d else "-",
                     f"{sum(d) / on['done_s']:.2f}" if d and on["done_s"] == on["done_s"] else "-",
                     str(on["fwd"]["peak"]), str(on["fwd"]["accepted"]), str(on["running_max"]),
                     str(on["reserved_max"]),
                     f"{on['rss_start_kib']:,}", f"{on['rss_max_kib']:,}", f"{on['hwm_kib']:,}",
                     "ok" if not v["bad"] else f"{len(v['bad'])} BAD"])
    emit(fmt_table(["rep", "all done s", "logins s", "done", "failed", "users/s", "job p50 s",
                    "job max s", "avg jobs", "legacy peak", "legacy conns", "running peak",
                    "reserved peak", "RSS start", "RSS peak", "VmHWM", "check"], rows))
    emit("all done s: from the barrier (first login) until status says users_done == N (polled every "
         "0.1 s). job: one migration run's duration (its log line). avg jobs = sum of job durations / "
         "all done s (how many ran at once on average). legacy peak/conns: connections at once / in "
         "all at the forwarder in front of legacy. reserved peak: the status socket's "
         "legacy_connections (the scheduler's reservations). RSS in KiB (VmRSS sampled every 50 ms; "
         "VmHWM at the end).")
    v = reps[-1]["on"]["verify"]
    emit(f"check (every rep): STATUS MESSAGES of every folder of all {v['users']} users equal on both "
         f"servers and the plan; sha256 of every message of {v['sample_users']} sampled users "
         f"({v['sample_messages']} messages) equal.")
    for i, r in enumerate(reps):
        if r["on"]["verify"]["bad"]:
            emit(f"  rep {i + 1} BAD: {r['on']['verify']['bad'][:5]}")
        if r["on"].get("migration_failure_count"):
            emit(f"  rep {i + 1}: {r['on']['migration_failure_count']} failed runs, e.g. "
                 f"{r['on']['migration_failures'][:2]}")
    emit("")

    emit("4. Proxy memory and CPU per phase (median over reps); CPU seconds from the barrier to the "
         "end of the phase (on: all done)")
    rows = []
    for k in kinds:
        c = {key: med([r[k]["cpu"][key] for r in reps]) for key in reps[0][k]["cpu"]}
        wall = med([r[k]["wall_s"] for r in reps])
        tot = sum(c.values())
        rows.append([names[k], f"{wall:.2f}",
                     f"{med([r[k]['hwm_kib'] for r in reps]):,.0f}" if k != "direct" else "-",
                     f"{c['client']:.2f}", f"{c['proxy']:.2f}", f"{c['forwarder']:.2f}",
                     f"{c['legacy']:.2f}", f"{c['new']:.2f}", f"{tot:.2f}",
                     f"{100 * tot / (wall * (os.cpu_count() or 1)):.0f} %"])
    emit(fmt_table(["phase", "wall s", "VmHWM KiB", "client", "proxy", "forwarder", "legacy",
                    "new", "total", "of all cores"], rows))
    emit("client: this Python process (the login threads, the status polling, the checks are outside); "
         "forwarder: the counting relay in front of legacy (its own process); legacy/new: each "
         "Dovecot's master, services and (reaped) children.")
    emit("")
    offs = [r["off"].get("off_check") for r in reps]
    emit(f"migration off check (status: users_queued == {n}, none running or done; forwarder: no "
         f"connection): {'yes' if all(offs) else 'NO ' + str(offs)}")
    warn = {k: sum(r[k]["dovecot_limit_warnings"]["new"] + r[k]["dovecot_limit_warnings"]["legacy"]
                   for r in reps) for k in kinds}
    emit(f"Dovecot 'limit reached' log lines per phase (all reps): {warn}")
    errs = {k: sum(len(r[k]["errors"]) for r in reps) for k in kinds}
    emit(f"failed logins per phase (all reps): {errs}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="login storm through suction proxy (see the docstring)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--verify-sample", type=int, default=20, help="users whose every message is hashed")
    ap.add_argument("--login-timeout", type=float, default=120.0, help="per connection (socket timeout)")
    ap.add_argument("--done-timeout", type=float, default=600.0, help="until all migrations are done")
    ap.add_argument("--max-seconds", type=int, default=3600, help="whole-run deadline")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a suction config key for the proxies, e.g. sync.max_concurrent_users=8 "
                         "(value: TOML int/bool or a string)")
    ap.add_argument("--binary", default=DEFAULT_BINARY)
    ap.add_argument("--out", help="also write the report (markdown, with the command) here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--forwarder-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.forwarder_child:
        return forwarder_child(args.forwarder_child, args.max_seconds)
    if not os.access(args.binary, os.X_OK):
        ap.error(f"{args.binary} missing: ninja -C build -j1 suction")
    if os.geteuid() != 0:
        ap.error("needs root (the Dovecot test bed)")
    if not 1 <= args.users <= 999:
        ap.error("--users: 1..999 (the bed's user names have three digits)")
    sets: dict[str, dict] = {}
    for s in args.set:
        key, _, val = s.partition("=")
        sec, _, k = key.partition(".")
        if not (sec and k and val):
            ap.error(f"--set {s!r}: SECTION.KEY=VALUE")
        v: object = val
        if val in ("true", "false"):
            v = val == "true"
        else:
            with contextlib.suppress(ValueError):
                v = int(val)
        sets.setdefault(sec, {})[k] = v

    from testbed import Testbed, extra_user_names

    def on_alarm(signum, frame):
        raise TimeoutError(f"whole run exceeded --max-seconds={args.max_seconds}")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.alarm(args.max_seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))

    workdir = tempfile.mkdtemp(prefix="suction-lsb-", dir="/tmp")  # short socket paths
    tb = None
    fwd = None
    ok = False
    try:
        # A copy: a rebuild during the run must not swap the binary between phases.
        binary = os.path.join(workdir, "suction")
        shutil.copy2(args.binary, binary)
        with open(binary, "rb") as f:
            bin_sha = hashlib.sha256(f.read()).hexdigest()[:12]
        bin_info = (f"binary {os.path.relpath(args.binary, ROOT)} built "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(os.stat(args.binary).st_mtime))}, "
                    f"sha256 {bin_sha}")
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "imap", "config", "sync", "proxy"], capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
        if dirty:
            bin_info += f"; the sources had uncommitted changes: {', '.join(dirty)}"
        args.binary = binary
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        t = time.monotonic()
        log(f"work dir {workdir}; starting the test bed with {args.users} extra users")
        tb = Testbed(os.path.join(workdir, "bed"), seed=False, large_mb=0, extra_users=args.users)
        tb.start()
        users = list(extra_user_names(args.users))
        log(f"seeding {len(users)} legacy mailboxes by APPEND")
        counts = parallel(lambda u: seed_user(tb, u, args.seed), users, 4, 1800)
        expected = dict(zip(users, counts))
        total_messages = sum(sum(c.values()) for c in counts)
        total_bytes = sum(len(m) for u in users for msgs in user_plan(u, args.seed).values() for m, _, _ in msgs)
        log(f"seeded {total_messages} messages, {total_bytes / 1e6:.1f} MB in {time.monotonic() - t:.1f}s")
        fwd = ForwarderProc(tb.legacy.imap_port, args.max_seconds + 60)
        per_user = [sum(c.values()) for c in counts]
        three = sum(1 for c in counts if len(c) == 3)
        desc = (f"{min(per_user)}-{max(per_user)} messages per user (median "
                f"{statistics.median(per_user):g}), 1-20 KB each, {len(users) - three} users with 2 folders "
                f"(INBOX, INBOX.Notes), {three} with 3 (+ INBOX.Lists)")
        e = argparse.Namespace(tb=tb, users=users, args=args, workdir=workdir, fwd=fwd, sets=sets,
                               expected=expected, total_messages=total_messages, total_bytes=total_bytes,
                               log_offsets={}, mailbox_desc=desc)
        dovecot_limit_warnings(e)  # from here on
        # A warm-up storm (not reported): Dovecot's and the page cache's first-time costs.
        log("warm-up: one direct storm")
        run_phase("direct", e, 0)
        reps = []
        orders = [["direct", "off", "on"], ["on", "direct", "off"], ["off", "on", "direct"]]
        for rep in range(1, args.reps + 1):
            r = {}
            for kind in orders[(rep - 1) % 3]:
                log(f"rep {rep}/{args.reps}: {kind}")
                r[kind] = run_phase(kind, e, rep)
                x = r[kind]
                extra = f", all done {x['done_s']:.1f}s, legacy peak {x['fwd']['peak']}" if kind == "on" else ""
                log(f"  {kind}: {x['ok']}/{len(users)} ok, p50 {pct(x['full_ms'], 50):.1f} ms, "
                    f"p99 {pct(x['full_ms'], 99):.1f} ms{extra}")
            reps.append(r)
        sets_text = " ".join(f"{s}.{k}={v}" for s, kv in sets.items() for k, v in kv.items())
        head = (f"login storm: commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"nproc {os.cpu_count()}, {args.users} users, {args.reps} reps, Python "
                f"{sys.version.split()[0]}, {dovecot_version()}\n{bin_info}\n"
                f"suction config: defaults ([sync] max_concurrent_users=4, connections_per_user=2, "
                f"[legacy] max_connections=16, [limits] max_connections_per_ip=50)"
                + (f" with {sets_text}" if sets_text else "") + "; log level info")
        text = head + "\n\n" + report(e, reps)
        print(text, flush=True)
        if args.out:
            cmd = "python3 tests/bench/login_storm_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
            with open(args.out, "w") as f:
                f.write(f"Command: `{cmd}`\n\n```\n{text}\n```\n")
        bad = any(r["on"]["verify"]["bad"] for r in reps)
        ok = True
        return 1 if bad else 0
    finally:
        signal.alarm(0)
        if fwd is not None:
            fwd.stop()
        if tb is not None:
            try:
                tb.stop()
            except Exception as ex:  # noqa: BLE001
                log(f"stopping the test bed: {ex}")
        if args.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if not ok:
                log("work dir removed; --keep keeps it (the proxies' configs and logs, the bed)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything it started is stopped")
        sys.exit(130)
