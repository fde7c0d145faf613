"""`suction sync` killed with SIGKILL mid-copy, then run again (issue 4 item 6), and its memory
while it copies a 50 MB message (issue 4 item 8), against a private Dovecot test bed.

Crash safety: with `[sync] batch_messages = 1` every APPEND is its own batch, recorded alone
in the state db, so a kill point is one message. The new server is reached through a Relay
(a TCP forwarder here that follows the IMAP stream) that stops the run at an exact point:
before the next APPEND (after 7, 30, 60, 100 APPENDs), or with the new server's answer to
the n-th APPEND held back (after 1, 3, 10, 50, 75, 120, 140, 145: the copy is stored, never
recorded, so the re-run must reconcile it), or 8 MiB into the APPEND literal of a 40 MB
message streamed FETCH -> APPEND (batch_bytes = 65536). One case kills without the relay,
whenever a poller sees the state db (read-only, every 0.5 ms) reach 5, 40, 90, 130 recorded
messages, so the kill lands at any instant. Kills repeat within one migration, one and four
folders at once ([sync] connections_per_user). After each kill: the new server had some but
not all messages (exactly the target with the relay), the state db shows the run "running";
the next run marks it "interrupted", exits 0, copies exactly what was missing and reconciles
exactly the unrecorded copies, and the new mailbox equals legacy (per folder, the multiset of
sha256(BODY[]), flags minus \\Recent, INTERNALDATE instant: nothing missing, nothing twice),
legacy unchanged (UIDVALIDITY, UIDs, flags, counts).

Bounded memory: `suction sync` copying a mailbox with a 50 MB message (default batch_bytes,
16 MiB, so the message is streamed) peaks under 64 MiB RSS (ru_maxrss from wait4 in a small
wrapper process, and VmHWM), and the message arrives byte-identical.

Users: alice (the bed's corpus plus INBOX.Bulk and recent INBOX mail, seeded here) for the
kill points, bob (a 40 MB message between small ones) for kills during a large message, carol
(a 50 MB message) for the memory test. Each case starts from a fresh state db and an emptied
new mailbox; the tests of this module run one after the other on the module's own bed.
Legacy is written only here, by imaplib, before any run."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import unittest
from collections import Counter

from proxyfixture import bed, qmailbox, start_bed, tmp_root
from syncfixture import SUCTION_BIN, folders, legacy_state, messages, run_sync, write_config

BULK_FOLDER = "INBOX.Bulk"
BULK_COUNT = 90
RECENT_COUNT = 12
LARGE_KILL_MB = 40    # bob's large message: killed while it streams
LARGE_MEM_MB = 50     # carol's large message: the memory test
RSS_LIMIT = 64 << 20
RUN_TIMEOUT = 120     # one `suction sync` run, seconds
KILL_SLACK = 3        # polled kills: recorded appends past the target when SIGKILL lands,
                      # at most, per connection

_LEGACY: dict[str, dict] = {}     # user -> legacy_state() after seeding
_EXPECT: dict[str, dict] = {}     # user -> {legacy folder: Counter of (sha, flags, instant)}
_TOTAL: dict[str, int] = {}       # user -> messages on legacy
_CASE = [0]
_LOG: list[str] = []


def note(msg: str) -> None:
    _LOG.append(msg)
    print(f"  [sync.crash] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Seeding legacy (before any run; suction never writes legacy)

def _msg(headers: list[tuple[str, str]], body: str) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    body = body.replace("\r\n", "\n").replace("\n", "\r\n")
    if not body.endswith("\r\n"):
        body += "\r\n"
    return (head + "\r\n" + body).encode("utf-8")


def _date(at: _dt.datetime) -> tuple[str, str]:
    """(INTERNALDATE for APPEND, RFC 5322 Date header)."""
    return at.strftime("%d-%b-%Y %H:%M:%S %z"), at.strftime("%a, %d %b %Y %H:%M:%S %z")


def bulk_messages(n: int, seed: int, recent: bool = False) -> list[tuple[bytes, list[str], str]]:
    """n deterministic messages (data, flags, internaldate) with the cases that make crash
    reconciliation hard: no Message-ID, exact duplicates (same bytes, flags, date), a pair
    with one signature but different bytes, sizes above 64 KiB (streamed with
    batch_bytes = 65536), \\Deleted, keywords, several time zones."""
    rng = random.Random(seed)
    words = ("alpha beta gamma delta invoice meeting budget review deadline offsite agenda "
             "minutes release draft quarterly report lorem ipsum dolor sit amet").split()
    zones = [_dt.timezone.utc, _dt.timezone(_dt.timedelta(hours=2)),
             _dt.timezone(_dt.timedelta(hours=-7)), _dt.timezone(_dt.timedelta(hours=5, minutes=45))]
    flag_sets = [[], ["\\Seen"], ["\\Seen", "\\Answered"], ["\\Flagged"],
                 ["\\Seen", "$Label1", "ProjectX"], ["\\Draft"], ["\\Seen", "\\Deleted"],
                 ["$Forwarded", "\\Seen"]]
    out: list[tuple[bytes, list[str], str]] = []
    i = 0
    while len(out) < n:
        i += 1
        if recent:   # within [sync] recent_first_days (14 by default) of now
            at = (_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
                  - _dt.timedelta(days=rng.randint(0, 9), seconds=rng.randint(0, 86399))
                  ).astimezone(rng.choice(zones))
        else:
            at = _dt.datetime(rng.randint(2003, 2024), rng.randint(1, 12), rng.randint(1, 28),
                              rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                              tzinfo=rng.choice(zones))
        idate, hdate = _date(at)
        flags = flag_sets[i % len(flag_sets)]
        hdrs = [("From", f"Sender {i} <s{i}@example.org>"), ("To", "alice@example.org"),
                ("Subject", f"bulk {i}: " + " ".join(rng.choice(words) for _ in range(4))),
                ("Date", hdate)]
        if i % 10 != 3:
            hdrs.append(("Message-ID", f"<bulk{i}.{seed}@crash.example.org>"))
        size = rng.choice([200, 800, 3000, 12000]) if i % 25 else 100_000  # a few > 64 KiB
        body = " ".join(rng.choice(words) for _ in range(size // 6))
        body = "\n".join(body[k:k + 72] for k in range(0, len(body), 72)) + "\n"
        data = _msg(hdrs, body)
        out.append((data, flags, idate))
        if i % 30 == 7 and len(out) < n:           # an exact duplicate: same bytes, flags, date
            out.append((data, flags, idate))
        if i % 30 == 17 and len(out) + 1 < n:      # same signature, different bytes
            twin = bytearray(data)
            twin[-3] = ord("X") if twin[-3] != ord("X") else ord("Y")
            out.append((bytes(twin), flags, idate))
    return out[:n]


def large_message(mb: int, seed: int, subject: str) -> bytes:
    raw = random.Random(seed).randbytes(int(mb * 1024 * 1024 * 57 / 78))
    enc = base64.b64encode(raw).decode("ascii")
    b64 = "\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))
    at = _dt.datetime(2021, 6, 1, 12, 0, 0, tzinfo=_dt.timezone.utc)
    body = ("--=_big\nContent-Type: text/plain\n\nAttached.\n\n--=_big\n"
            "Content-Type: application/octet-stream; name=\"big.bin\"\n"
            "Content-Transfer-Encoding: base64\n\n" + b64 + "\n--=_big--\n")
    return _msg([("From", "Big <big@example.org>"), ("To", "x@example.org"),
                 ("Subject", subject), ("Date", _date(at)[1]),
                 ("Message-ID", f"<{subject.replace(' ', '.')}@crash.example.org>"),
                 ("MIME-Version", "1.0"),
                 ("Content-Type", 'multipart/mixed; boundary="=_big"')], body)


def append_all(user: str, folder: str, msgs: list[tuple[bytes, list[str], str]],
               create: bool) -> None:
    imap = bed().legacy.connect(user, timeout=60)
    try:
        if create:
            typ, data = imap.create(qmailbox(folder))
            assert typ == "OK", data
        for data, flags, idate in msgs:
            typ, resp = imap.append(qmailbox(folder), "(" + " ".join(flags) + ")" if flags else None,
                                    '"' + idate + '"', data)
            assert typ == "OK", resp
        imap.logout()
    except BaseException:
        imap.shutdown()
        raise


def snapshot_legacy(user: str) -> None:
    imap = bed().legacy.connect(user, timeout=60)
    try:
        _LEGACY[user] = legacy_state(imap)
        exp = {}
        for f in folders(imap):
            if any(a.lower() == "\\noselect" for a in f["attrs"]):
                continue
            exp[f["name"]] = Counter(m[:3] for m in messages(imap, f["name"]))
        _EXPECT[user] = exp
        _TOTAL[user] = sum(sum(c.values()) for c in exp.values())
    finally:
        imap.logout()


def setUpModule():
    t0 = time.monotonic()
    start_bed(seed=True, large_mb=0)              # alice: the bed's corpus (~49 messages)
    append_all("alice", BULK_FOLDER, bulk_messages(BULK_COUNT, 4242), create=True)
    # Recent mail in INBOX: copied first, newest first (recent_first_days), so a kill there
    # leaves copies above the checkpoint's settled UIDs.
    append_all("alice", "INBOX", bulk_messages(RECENT_COUNT, 4343, recent=True), create=False)
    small = bulk_messages(6, 77)
    append_all("bob", "INBOX", small[:3] + [(large_message(LARGE_KILL_MB, 1, "bob large"),
                                             ["\\Seen"], "02-Mar-2020 08:00:00 +0100")]
               + small[3:], create=False)
    small = bulk_messages(4, 99)
    append_all("carol", "INBOX", small[:2] + [(large_message(LARGE_MEM_MB, 2, "carol large"),
                                               ["\\Flagged"], "03-Apr-2022 09:30:00 -0400")]
               + small[2:], create=False)
    for user in ("alice", "bob", "carol"):
        snapshot_legacy(user)
    assert _TOTAL["alice"] > 120, _TOTAL
    note(f"bed seeded in {time.monotonic() - t0:.1f}s: legacy messages {_TOTAL}")


# ----------------------------------------------------------------------------------------------
# The new server

def new_counts(user: str) -> dict[str, int]:
    """Messages per selectable folder of the user's new mailbox (STATUS)."""
    imap = bed().new.connect(user)
    try:
        out = {}
        for f in folders(imap):
            if any(a.lower() in ("\\noselect", "\\nonexistent") for a in f["attrs"]):
                continue
            typ, data = imap.status(qmailbox(f["name"]), "(MESSAGES)")
            assert typ == "OK", data
            out[f["name"]] = int(data[0].decode().rsplit("MESSAGES", 1)[1].strip(" )"))
        return out
    finally:
        imap.logout()


def reset_new(user: str) -> None:
    """Empties the user's new mailbox: every folder deleted (deepest first), what cannot be
    deleted (INBOX, the auto special-use folders) expunged."""
    imap = bed().new.connect(user, timeout=60)
    try:
        names = [f["name"] for f in folders(imap)]
        for name in sorted(names, key=lambda n: (-n.count("/"), n)):
            if name == "INBOX":
                continue
            imap.delete(qmailbox(name))   # may refuse (auto folders): expunged below
        for f in folders(imap):
            if any(a.lower() in ("\\noselect", "\\nonexistent") for a in f["attrs"]):
                continue
            typ, data = imap.select(qmailbox(f["name"]))
            assert typ == "OK", data
            if int(data[0]) > 0:
                typ, data = imap.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
                assert typ == "OK", data
                typ, data = imap.expunge()
                assert typ == "OK", data
            imap.close()
    finally:
        imap.logout()
    left = {k: v for k, v in new_counts(user).items() if v}
    assert not left, f"new mailbox of {user} not empty after reset: {left}"


# ----------------------------------------------------------------------------------------------
# One `suction sync` run in the background, and its progress

class SyncProc:
    """`suction sync --json` in the background (stdout, stderr to files); with rusage_path,
    run by _WRAPPER, which writes the exit code and peak RSS there."""

    def __init__(self, config: str, user: str, tag: str, rusage_path: str | None = None):
        d = os.path.dirname(config)
        self.out_path = os.path.join(d, f"{tag}.stdout")
        self.err_path = os.path.join(d, f"{tag}.stderr")
        argv = [SUCTION_BIN, "sync", "--config", config, "--user", user, "--password-stdin",
                "--json"]
        if rusage_path:
            argv = [sys.executable, "-I", "-S", "-c", _WRAPPER, str(RUN_TIMEOUT), rusage_path] + argv
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
        try:
            self.p.stdin.write((bed().users[user] + "\n").encode())
            self.p.stdin.close()
        except BrokenPipeError:
            pass

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def output(self) -> str:
        out = []
        for path in (self.out_path, self.err_path):
            with open(path, "rb") as f:
                out.append(f.read().decode("utf-8", "replace")[-3000:])
        return "\n".join(out)


class Progress:
    """The state db's recorded messages of one user, read-only (WAL: no checkpoint by us)."""

    def __init__(self, db: str, user: str):
        self.db, self.user, self.con = db, user, None

    def recorded(self) -> int | None:
        try:
            if self.con is None:
                if not os.path.exists(self.db + "-shm"):
                    return None
                self.con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.05)
            return self.con.execute("SELECT count(*) FROM messages WHERE user = ?",
                                    (self.user,)).fetchone()[0]
        except sqlite3.Error:
            if self.con is not None:
                self.con.close()
                self.con = None
            return None

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


def runs(db: str, user: str) -> list[tuple[int, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT id, result FROM runs WHERE user = ? ORDER BY id",
                           (user,)).fetchall()
    finally:
        con.close()


class Relay:
    """A TCP relay in front of the new server that follows the IMAP stream (lines and
    literals, both ways) and can stop it at a precise point, so a kill lands exactly there:

    - arm_append(n, "before"): forwards n APPEND commands, then holds every further APPEND
      line (nothing of message n+1 reaches the new server);
    - arm_append(n, "response"): forwards n APPENDs and holds the tagged answer to the n-th
      (the new server stored it, suction never hears so: it cannot record it), and every
      further APPEND line;
    - arm_literal(hold_at): forwards hold_at bytes of the first literal of at least 1 MiB,
      then holds it (a large APPEND in flight: the new server has part of the message).

    `stalled` is set when something is held; drop() closes the held connections without the
    rest. Bounded: every socket has a timeout, every thread is a daemon, close() ends all."""

    _LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
    _APPEND = re.compile(rb"(\S+) APPEND ", re.I)

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        self._mode = ""          # "", "before", "response", "literal"
        self._limit = 0          # APPENDs to forward, or literal bytes
        self.appends = 0         # APPEND commands forwarded since arm_append
        self._held_tag = b""
        self.literal_size = 0    # size of the literal held (arm_literal)
        threading.Thread(target=self._accept, daemon=True).start()

    def _arm(self, mode: str, limit: int) -> None:
        with self._lock:
            self.stalled.clear()
            self._release.clear()
            self._mode, self._limit, self.appends, self._held_tag = mode, limit, 0, b""

    def arm_append(self, n: int, mode: str) -> None:
        assert mode in ("before", "response") and n >= 1
        self._arm(mode, n)

    def arm_literal(self, hold_at: int) -> None:
        self._arm("literal", hold_at)

    def drop(self) -> None:
        with self._lock:
            self._mode = ""
        self._release.set()

    def close(self) -> None:
        self._closed = True
        self.drop()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks + [self.srv]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=10)
            except OSError:
                c.close()
                continue
            for x in (c, s):
                x.settimeout(60)
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks += [c, s]
            threading.Thread(target=self._pump, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, False), daemon=True).start()

    def _hold(self) -> None:
        self.stalled.set()
        self._release.wait(60)
        raise ConnectionAbortedError("held, then dropped")

    def _line_held(self, line: bytes, to_server: bool) -> bool:
        """Called with each complete line before it is forwarded; True: hold it."""
        with self._lock:
            if self._mode not in ("before", "response"):
                return False
            if to_server:
                m = self._APPEND.match(line)
                if not m:
                    return False
                if self.appends >= self._limit:
                    return True
                self.appends += 1
                if self._mode == "response" and self.appends == self._limit:
                    self._held_tag = m.group(1) + b" "
                return False
            return bool(self._held_tag) and line.startswith(self._held_tag)

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        line = b""
        left = 0          # bytes of the current literal still to come
        done = 0          # bytes of the current literal forwarded
        size = 0
        try:
            while True:
                data = src.recv(1 << 18)
                if not data:
                    break
                pos = 0
                out = bytearray()     # forwarded in one send per chunk read
                while pos < len(data):
                    if left:
                        take = min(left, len(data) - pos)
                        if (to_server and self._mode == "literal" and size >= 1 << 20
                                and done < self._limit <= done + take):
                            dst.sendall(out + data[pos:pos + self._limit - done])
                            self.literal_size = size
                            self._hold()
                        out += data[pos:pos + take]
                        left -= take
                        done += take
                        pos += take
                        continue
                    i = data.find(b"\r\n", pos)
                    if i < 0:               # a partial line: forwarded once complete
                        line += data[pos:]
                        break
                    line += data[pos:i + 2]
                    pos = i + 2
                    if self._line_held(line, to_server):
                        dst.sendall(out)
                        self._hold()
                    out += line
                    m = self._LITERAL.search(line[-40:])
                    if m:
                        left = size = int(m.group(1))
                        done = 0
                    line = b""
                if out:
                    dst.sendall(out)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.close()
                except OSError:
                    pass


# Runs argv[3:] (timeout argv[1] s) and writes to argv[2] its exit code, its ru_maxrss (wait4)
# and the highest VmHWM seen while polling /proc every 2 ms. A fresh small process
# (python3 -I -S, posix_spawn): on Linux a child's ru_maxrss includes the RSS of the parent it
# was (v)forked from, so measured from this big test process it would count ours; from here
# the floor is this wrapper's ~9 MiB. VmHWM is suction's own (its mm starts at exec).
_WRAPPER = """
import os, sys, time
argv = sys.argv[3:]
pid = os.posix_spawn(argv[0], argv, os.environ)
deadline = time.monotonic() + float(sys.argv[1])
hwm = 0
while True:
    p, st, ru = os.wait4(pid, os.WNOHANG)
    if p == pid:
        break
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
    except OSError:
        pass
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        p, st, ru = os.wait4(pid, 0)
        break
    time.sleep(0.002)
with open(sys.argv[2], "w") as f:
    f.write('{"rc": %d, "maxrss_kib": %d, "vmhwm_kib": %d}'
            % (os.waitstatus_to_exitcode(st), ru.ru_maxrss, hwm))
"""


# ----------------------------------------------------------------------------------------------

class SyncCrash(unittest.TestCase):
    maxDiff = 4000

    def setUp(self):
        self.procs: list[SyncProc] = []
        self.addCleanup(self._kill_all)

    def _kill_all(self):
        for sp in self.procs:
            try:
                sp.kill()
            except Exception:  # noqa: BLE001 -- cleanup must not hide the test's failure
                pass

    def fresh_case(self, user: str, overrides: dict) -> tuple[str, str]:
        """A config with a fresh state db, and the user's new mailbox emptied."""
        reset_new(user)
        _CASE[0] += 1
        db = os.path.join(tmp_root(), f"crash{_CASE[0]}", "state.db")
        return write_config(overrides, state_db=db), db

    def start(self, config: str, user: str) -> SyncProc:
        sp = SyncProc(config, user, f"run{len(self.procs) + 1}")
        self.procs.append(sp)
        try:   # the poller, not suction, wins a contended CPU: the kill lands near its point
            os.setpriority(os.PRIO_PROCESS, sp.p.pid, 10)
        except OSError:
            pass
        return sp

    # --- kill points
    def kill_when(self, sp: SyncProc, progress: Progress, cond, what: str,
                  timeout: float = 60) -> int:
        """Polls until cond(recorded) is true, then SIGKILL; returns the recorded count read
        just before the kill. Fails if the run ends first."""
        deadline = time.monotonic() + timeout
        reached = None
        for _ in range(int(timeout / 0.0005) + 10):
            n = progress.recorded()
            if n is not None and cond(n):
                sp.p.send_signal(signal.SIGKILL)
                reached = n
                break
            if sp.p.poll() is not None:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.0005)
        sp.kill()
        progress.close()
        if reached is None:
            self.fail(f"{what}: the run was not killed (exit {sp.p.returncode}, recorded "
                      f"{progress.recorded()})\n{sp.output()}")
        self.assertEqual(sp.p.returncode, -signal.SIGKILL, what)
        return reached

    def after_kill(self, db: str, user: str, what: str) -> tuple[int, int]:
        """(recorded in the state db, messages on the new server) as a kill left them; the
        run was mid-copy: some but not all messages on the new server."""
        on_new = sum(new_counts(user).values())
        progress = Progress(db, user)
        frozen = progress.recorded()
        progress.close()
        note(f"{user}: {what}: {on_new} of {_TOTAL[user]} on the new server, {frozen} recorded")
        self.assertEqual(runs(db, user)[-1][1], "running", what)   # as the kill left it
        self.assertIsNotNone(frozen, what)
        self.assertGreaterEqual(on_new, frozen, f"{what}: recorded messages missing on new")
        self.assertGreater(on_new, 0, f"{what}: the run was not mid-copy")
        self.assertLess(on_new, _TOTAL[user], f"{what}: the run was not mid-copy")
        return frozen, on_new

    def kill_at_append(self, config: str, db: str, relay: Relay, user: str, target: int,
                       mode: str, base: int) -> tuple[int, int]:
        """Kills the run with exactly `target` messages on the new server (`base` there
        before the run): "before" the next APPEND is sent (once the state db recorded all
        it will), or with the answer to the last APPEND held ("response": stored on the new
        server, never recorded)."""
        what = f"kill after {target} appends ({mode})"
        relay.arm_append(target - base, mode)
        sp = self.start(config, user)
        progress = Progress(db, user)
        want = target if mode == "before" else target - 1

        def settled(n: int) -> bool:
            # Held, and the state db has recorded what it can (bounded below: the db may
            # record less, e.g. only settled UIDs; the kill then comes after 2 s).
            if not relay.stalled.is_set():
                return False
            settled.since = settled.since or time.monotonic()
            return n >= want or time.monotonic() - settled.since > 2
        settled.since = 0.0
        reached = self.kill_when(sp, progress, settled, what)
        relay.drop()
        self.assertEqual(relay.appends, target - base, what)
        frozen, on_new = self.after_kill(db, user, what)
        self.assertEqual(on_new, target, f"{what}: APPENDs done when killed")
        self.assertLessEqual(frozen, want, what)
        note(f"{user}: {what}: recorded {reached} at the kill")
        return frozen, on_new

    def kill_after_recorded(self, config: str, db: str, user: str, target: int,
                            slack: int) -> tuple[int, int]:
        """Kills the run at whatever instant the poller sees `target` recorded appends."""
        what = f"kill at {target} recorded appends"
        sp = self.start(config, user)
        reached = self.kill_when(sp, Progress(db, user), lambda n: n >= target, what)
        frozen, on_new = self.after_kill(db, user, what)
        note(f"{user}: {what}: recorded {reached} at the kill")
        self.assertGreaterEqual(reached, target, what)
        self.assertLessEqual(reached, target + slack, f"{what}: killed too late")
        self.assertGreaterEqual(frozen, reached, what)
        return frozen, on_new

    # --- the end state
    def finish(self, config: str, db: str, user: str, killed: int,
               last: tuple[int, int]) -> dict:
        """Runs to completion; checks the killed runs are "interrupted", then exactness.
        last: (recorded, on the new server) as the last kill left them: the run appends
        what was missing and records (reconciles) the unrecorded copies, nothing else."""
        t0 = time.monotonic()
        p = run_sync(config, user, extra=["--json"], timeout=RUN_TIMEOUT)
        out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out)
        rep = json.loads(p.stdout)
        self.assertEqual(rep["outcome"], "ok", out)
        self.assertEqual(rep["messages_failed"], 0, out)
        self.assertEqual(rep["folders_copied"], rep["folders_planned"], out)
        reconciled = sum(f["reconciled"] for f in rep["folders"])
        note(f"{user}: finishing run {time.monotonic() - t0:.2f}s, copied "
             f"{rep['messages_copied']}, reconciled {reconciled}")
        recorded, on_new = last
        self.assertEqual(rep["messages_copied"], _TOTAL[user] - on_new, out)
        self.assertEqual(reconciled, on_new - recorded, out)
        history = runs(db, user)
        self.assertEqual(len(history), killed + 1, history)
        self.assertEqual([r for _, r in history], ["interrupted"] * killed + ["done"], history)
        self.assertExact(user, rep)
        return rep

    def assertExact(self, user: str, rep: dict) -> None:
        mapping = {f["legacy"]: f["new"] for f in rep["folders"] if f["selectable"]}
        want: dict[str, Counter] = {}
        for legacy, counter in _EXPECT[user].items():
            self.assertIn(legacy, mapping, f"{user}: legacy folder {legacy} not planned")
            want.setdefault(mapping[legacy], Counter()).update(counter)
        imap = bed().new.connect(user, timeout=60)
        try:
            got: dict[str, Counter] = {}
            for f in folders(imap):
                if any(a.lower() in ("\\noselect", "\\nonexistent") for a in f["attrs"]):
                    continue
                c = Counter(m[:3] for m in messages(imap, f["name"]))
                if c or f["name"] in want:
                    got[f["name"]] = c
        finally:
            imap.logout()
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name, Counter()), got.get(name, Counter())
            if w != g:
                self.fail(f"{user}: new folder {name!r} differs from legacy: missing "
                          f"{dict(w - g)}, extra (duplicates or strays) {dict(g - w)}")
        self.assertEqual(sum(sum(c.values()) for c in got.values()), _TOTAL[user])
        imap = bed().legacy.connect(user, timeout=60)
        try:
            self.assertEqual(legacy_state(imap), _LEGACY[user], f"{user}: legacy changed")
        finally:
            imap.logout()

    # ---- the tests
    def crash_case(self, points: list[tuple[int, str]], connections: int | None = None) -> None:
        """alice's migration killed at each point (APPENDs done on the new server, counted
        from the start of the migration, and the relay mode), then finished.
        connections: [sync] connections_per_user (None: the default)."""
        user = "alice"
        tb = bed()
        relay = Relay(tb.new.host, tb.new.imap_port)
        self.addCleanup(relay.close)
        sync = {"batch_messages": 1, "batch_bytes": 65536}
        if connections is not None:
            # Every pair used even for alice's 150 messages (parallel_threshold 0).
            sync["connections_per_user"] = connections
            sync["parallel_threshold"] = 0
        config, db = self.fresh_case(user, {"sync": sync, "new": {"port": relay.port}})
        last = (0, 0)
        for target, mode in points:
            # The relay counts this run's APPENDs; the previous runs left last[1] copies.
            last = self.kill_at_append(config, db, relay, user, target, mode, base=last[1])
            self.assertEqual(last[1], target)
        self.finish(config, db, user, killed=len(points), last=last)

    def test_kill_after_1_append(self):
        self.crash_case([(1, "response")])

    def test_kill_after_7_appends(self):
        self.crash_case([(7, "before")])

    def test_kill_after_50_appends(self):
        self.crash_case([(50, "response")])

    def test_kill_after_100_appends(self):
        self.crash_case([(100, "before")])

    def test_kill_after_140_appends_unrecorded(self):
        self.crash_case([(140, "response")], connections=1)

    def test_kill_repeatedly_then_finish(self):
        # Kill, re-run and kill at later points, then finish: each re-run first reconciles
        # what the previous one left unrecorded. One folder at a time.
        self.crash_case([(3, "response"), (30, "before"), (75, "response"),
                         (120, "response")], connections=1)

    def test_kill_repeatedly_four_connections(self):
        # Four folders at once: a kill leaves several folders half-copied.
        self.crash_case([(10, "response"), (60, "before"), (145, "response")], connections=4)

    def test_kill_at_polled_instants(self):
        """No relay: SIGKILL whenever the poller sees the state db reach a count, so the
        kill lands at any instant (mid-transaction, between APPEND and record, ...)."""
        user = "alice"
        config, db = self.fresh_case(user, {"sync": {"batch_messages": 1, "batch_bytes": 65536}})
        last = (0, 0)
        for target in (5, 40, 90, 130):
            last = self.kill_after_recorded(config, db, user, target, slack=KILL_SLACK * 2)
        self.finish(config, db, user, killed=4, last=last)

    def test_kill_during_large_message(self):
        """Two kills while bob's 40 MB message streams FETCH -> APPEND (it is bigger than
        batch_bytes): the first copy of it, then the re-run's; then a run that finishes.
        The new server is reached through a Relay that holds the message's APPEND literal
        after 8 MiB, so each kill lands with the APPEND in flight on the new server."""
        user = "bob"
        tb = bed()
        relay = Relay(tb.new.host, tb.new.imap_port)
        self.addCleanup(relay.close)
        config, db = self.fresh_case(user, {"sync": {"batch_messages": 1, "batch_bytes": 65536},
                                            "new": {"port": relay.port}})
        before_large = 3
        for attempt in (1, 2):
            what = f"kill {attempt} during the {LARGE_KILL_MB} MB message"
            relay.arm_literal(8 << 20)
            sp = self.start(config, user)
            reached = self.kill_when(sp, Progress(db, user),
                                     lambda n: relay.stalled.is_set(), what)
            relay.drop()
            self.assertGreater(relay.literal_size, LARGE_KILL_MB << 20, what)
            self.assertEqual(reached, before_large, what)
            counts = new_counts(user)
            note(f"{user}: {what}: recorded {reached}, new INBOX {counts.get('INBOX')}, "
                 f"8 MiB of the {relay.literal_size}-byte APPEND literal sent")
            self.assertEqual(runs(db, user)[-1][1], "running")
            # Killed mid-stream: the large APPEND never completed, the small ones before it did.
            self.assertEqual(counts.get("INBOX"), before_large, what)
        self.finish(config, db, user, killed=2, last=(before_large, before_large))

    def test_memory_bounded_with_50mb_message(self):
        """The whole process stays under 64 MiB RSS copying carol's 50 MB message with the
        default batch_bytes (16 MiB): the message is streamed, never held."""
        user = "carol"
        config, db = self.fresh_case(user, {})
        rusage_path = os.path.join(os.path.dirname(config), "rusage.json")
        t0 = time.monotonic()
        sp = SyncProc(config, user, "mem", rusage_path=rusage_path)
        self.procs.append(sp)
        try:
            sp.p.wait(RUN_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            self.fail(f"suction sync did not finish in {RUN_TIMEOUT}s\n{sp.output()}")
        self.assertEqual(sp.p.returncode, 0, sp.output())
        with open(rusage_path) as f:
            usage = json.load(f)
        self.assertEqual(usage["rc"], 0, sp.output())
        peak = usage["maxrss_kib"] * 1024   # KiB on Linux
        hwm = usage["vmhwm_kib"] * 1024
        note(f"{user}: copied in {time.monotonic() - t0:.2f}s, peak RSS (ru_maxrss) "
             f"{peak / (1 << 20):.1f} MiB, suction's own VmHWM {hwm / (1 << 20):.1f} MiB")
        self.assertLess(peak, RSS_LIMIT, f"peak RSS {peak} bytes")
        self.assertLess(hwm, RSS_LIMIT, f"VmHWM {hwm} bytes")
        with open(sp.out_path, "rb") as f:
            rep = json.loads(f.read())
        self.assertEqual(rep["messages_copied"], _TOTAL[user])
        self.assertGreater(rep["bytes"], LARGE_MEM_MB << 20)
        self.assertEqual(runs(db, user), [(1, "done")])
        self.assertExact(user, rep)   # sha256 of every message, the 50 MB one included


if __name__ == "__main__":
    unittest.main()
