"""Exactly once under any crash (issue 9): a dead run's MULTIAPPEND that the new server commits
LATE, after the next run began, must neither be lost nor left as a second copy.

Why it happens: `suction sync` killed with a MULTIAPPEND in flight leaves its bytes in the new
server's socket buffer; the server goes on reading them and may commit the batch after the next
run has SELECTed the folder, even after that run appended the same messages again. Before the
append journal, that batch landed below the next run's APPENDUID range or above everything it
recorded, where nothing looked: 200-600 extra copies after four kills (issue 9).

Deterministic (LateRelay, a TCP relay in front of the new server that follows the IMAP stream):
the killed run's second MULTIAPPEND (100 messages) is held whole in the relay, never reaching
the server while suction lives; after the kill the relay hands it to the server
- "select": when the next run SELECTs the folder, before the SELECT's answer reaches it;
- "append": when the next run's first APPEND is answered, before the answer reaches it;
- "after": once the next run has finished (then a third run must clean up).
The relay waits for the server's OK to the late batch each time, so it really landed there.
A message the user put into the new folder meanwhile must survive; the end state must equal
legacy (sha256 of every message, flags, INTERNALDATE, per folder, none twice), legacy untouched.

Kills at wall-clock instants: a Courier-shaped mailbox of 4,000 messages in 15 folders plus a
20 MiB message (tests/bench/gen_corpus.py, written straight into the legacy maildir), `suction
sync` killed 20 times at seeded instants between 0.05 and 0.6 s after start (a fresh run each
time, default batches of 100), then runs to completion: exact, legacy untouched.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import unittest
from collections import Counter

from proxyfixture import Proxy, bed, qmailbox, start_bed, tmp_root
from syncfixture import SUCTION_BIN, folders, legacy_state, messages, run_sync, write_config
from test_migration_e2e import ask, login, wait_state
from test_sync_crash import SyncProc, append_all, bulk_messages, new_counts, reset_new, runs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import gen_corpus  # noqa: E402

LATE_USER, LATE_LEGACY, LATE_NEW = "alice", "INBOX.Late", "Late"
LATE_COUNT = 250                  # three MULTIAPPEND batches of 100
KILL_USER = "bob"
KILL_MESSAGES, KILL_FOLDERS, KILL_LARGE_MB = 4000, 15, 20  # 20 kills must fit in one migration
KILL_CYCLES = 20
KILL_DELAYS = (0.03, 0.25)        # seconds after the start, uniform; [sync] connections_per_user
                                  # = 1 so that 20 kills fit in one migration of the corpus
RUN_TIMEOUT = 180
_EXPECT: dict[str, dict[str, Counter]] = {}   # user -> {legacy folder: Counter}
_LEGACY: dict[str, dict] = {}


def note(msg: str) -> None:
    print(f"  [sync.exactly_once] {msg}", file=sys.stderr, flush=True)


def snapshot(user: str) -> None:
    imap = bed().legacy.connect(user, timeout=120)
    try:
        _LEGACY[user] = legacy_state(imap)
        _EXPECT[user] = {f["name"]: Counter(m[:3] for m in messages(imap, f["name"]))
                         for f in folders(imap)
                         if not any(a.lower() == "\\noselect" for a in f["attrs"])}
    finally:
        imap.logout()


def setUpModule():
    t0 = time.monotonic()
    tb = start_bed(seed=False)
    append_all(LATE_USER, LATE_LEGACY, bulk_messages(LATE_COUNT, 9090), create=True)
    gen_corpus.generate(os.path.join(tb.legacy.home, KILL_USER, "Maildir"), KILL_MESSAGES,
                        KILL_FOLDERS, KILL_LARGE_MB, seed=9, owner="dovecot", samples=0)
    for user in (LATE_USER, KILL_USER):
        snapshot(user)
    note(f"bed seeded in {time.monotonic() - t0:.1f}s: "
         + ", ".join(f"{u} {sum(sum(c.values()) for c in e.values())} messages in {len(e)} folders"
                     for u, e in _EXPECT.items()))


# ----------------------------------------------------------------------------------------------

class LateRelay:
    """A relay in front of the new server that follows the IMAP stream both ways (lines and
    literals). arm(n): the n-th APPEND to the watched folder after arming is held whole (the
    command line and all its LITERAL+ bytes), never forwarded while its client lives; `held`
    is set then. release_on(trigger): the held bytes go to the server, on the held connection's
    own server socket (the dead client's connection, as the kernel would have it), when another
    connection's SELECT of the folder ("select") or its first APPEND to it ("append") is
    answered, before that answer is forwarded; the relay waits for the server's answer to the
    late batch first (`late_answer`). release_now() does it at once. Bounded: socket timeouts,
    daemon threads, close() ends everything."""

    _LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")

    def __init__(self, host: str, port: int, folder: str):
        self.target = (host, port)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        fq = re.escape(folder.encode())
        self._select = re.compile(rb'(\S+) SELECT "?' + fq + rb'"?\r\n$', re.I)
        self._append = re.compile(rb'(\S+) APPEND "?' + fq + rb'"? ', re.I)
        self.held = threading.Event()
        self.late_done = threading.Event()
        self.late_answer = b""
        self.trigger_seen = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._hold_nth = 0
        self._appends = 0
        self._trigger = ""
        self._held: tuple | None = None    # (server socket, bytes, tag)
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, nth: int) -> None:
        with self._lock:
            self._hold_nth, self._appends = nth, 0

    def release_on(self, trigger: str) -> None:
        assert trigger in ("select", "append")
        with self._lock:
            self._trigger = trigger

    def release_now(self) -> None:
        with self._lock:
            held, self._held = self._held, None
        assert held, "nothing held"
        srv, data, tag = held
        srv.sendall(data)
        assert self.late_done.wait(60), "the new server never answered the late batch"

    def close(self) -> None:
        self._closed = True
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
                x.settimeout(120)
            with self._lock:
                self._socks += [c, s]
            conn = {"c": c, "s": s, "holding": False, "held_tag": b"", "trigger_tag": b""}
            threading.Thread(target=self._up, args=(conn,), daemon=True).start()
            threading.Thread(target=self._down, args=(conn,), daemon=True).start()

    def _items(self, sock: socket.socket):
        """Yields ("line", bytes) and ("literal", bytes) pieces of the stream as they come."""
        buf = b""
        left = 0
        while True:
            try:
                data = sock.recv(1 << 18)
            except OSError:
                return
            if not data:
                return
            buf += data
            while buf:
                if left:
                    take = buf[:left]
                    buf = buf[len(take):]
                    left -= len(take)
                    yield "literal", take
                    continue
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                line, buf = buf[:i + 2], buf[i + 2:]
                m = self._LITERAL.search(line[-40:])
                if m:
                    left = int(m.group(1))
                yield "line", line

    def _up(self, conn: dict) -> None:
        c, s = conn["c"], conn["s"]
        capture = None
        for kind, data in self._items(c):
            if capture is not None:       # inside the held APPEND: until its last line
                capture += data
                if kind == "line" and not self._LITERAL.search(data[-40:]):
                    with self._lock:
                        self._held = (s, bytes(capture), conn["held_tag"])
                    self.held.set()
                    capture = None
                    conn["holding"] = True
                continue
            if conn["holding"]:
                continue                  # nothing after the held command reaches the server
            if kind == "line":
                m = self._append.match(data)
                with self._lock:
                    if m:
                        self._appends += 1
                        if self._hold_nth and self._appends == self._hold_nth:
                            self._hold_nth = 0
                            conn["held_tag"] = m.group(1) + b" "
                            capture = bytearray(data)
                            continue
                        if self._trigger == "append" and self._held:
                            conn["trigger_tag"] = m.group(1) + b" "
                    sm = self._select.match(data)
                    if sm and self._trigger == "select" and self._held:
                        conn["trigger_tag"] = sm.group(1) + b" "
            try:
                s.sendall(data)
            except OSError:
                break
        if not conn["holding"]:           # the held connection's server side stays open
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _down(self, conn: dict) -> None:
        c, s = conn["c"], conn["s"]
        client_gone = False
        for kind, data in self._items(s):
            if kind == "line":
                if conn["held_tag"] and data.startswith(conn["held_tag"]):
                    self.late_answer = data
                    self.late_done.set()
                if conn["trigger_tag"] and data.startswith(conn["trigger_tag"]):
                    conn["trigger_tag"] = b""
                    with self._lock:
                        self._trigger = ""
                    self.trigger_seen.set()
                    self.release_now()
            if client_gone:
                continue                  # a dead client: read the server on, drop it
            try:
                c.sendall(data)
            except OSError:
                client_gone = True
        for x in (c, s):
            try:
                x.close()
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------

class ExactlyOnce(unittest.TestCase):
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

    def fresh_config(self, user: str, overrides: dict) -> tuple[str, str]:
        reset_new(user)
        d = os.path.join(tmp_root(), f"once-{self.id().rsplit('.', 1)[-1]}")
        db = os.path.join(d, "state.db")
        return write_config(overrides, state_db=db), db

    def run_to_end(self, config: str, user: str) -> dict:
        p = run_sync(config, user, extra=["--json"], timeout=RUN_TIMEOUT)
        out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out[-4000:])
        rep = json.loads(p.stdout)
        self.assertEqual(rep["outcome"], "ok", out[-4000:])
        return rep

    def assertExact(self, user: str, rep: dict, own: dict[str, Counter] | None = None) -> None:
        """The new mailbox holds legacy's messages once each (plus the user's own), per folder;
        legacy is unchanged."""
        mapping = {f["legacy"]: f["new"] for f in rep["folders"] if f["selectable"]}
        want: dict[str, Counter] = {}
        for legacy, counter in _EXPECT[user].items():
            want.setdefault(mapping[legacy], Counter()).update(counter)
        for name, c in (own or {}).items():
            want.setdefault(name, Counter()).update(c)
        imap = bed().new.connect(user, timeout=120)
        try:
            got = {}
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
                self.fail(f"{user}: new folder {name!r} differs: missing {sum((w - g).values())}, "
                          f"extra (second copies or strays) {sum((g - w).values())}")
        imap = bed().legacy.connect(user, timeout=120)
        try:
            self.assertEqual(legacy_state(imap), _LEGACY[user], f"{user}: legacy changed")
        finally:
            imap.logout()

    # --- the late batch, deterministically
    def users_own_message(self) -> Counter:
        """Appends a message of the user's own to the new folder, directly; returns it."""
        data = (b"From: Friend <f@example.org>\r\nTo: alice@example.org\r\nSubject: mine\r\n"
                b"Message-ID: <own.1@example.org>\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\r\n"
                b"Delivered to the new server during the migration.\r\n")
        imap = bed().new.connect(LATE_USER)
        try:
            typ, resp = imap.append(qmailbox(LATE_NEW), "(\\Seen)", '"01-Jun-2026 10:00:00 +0000"',
                                    data)
            self.assertEqual(typ, "OK", resp)
            got = [m for m in messages(imap, LATE_NEW) if m[1] == ("\\Seen",)]
        finally:
            imap.logout()
        import hashlib
        sha = hashlib.sha256(data).hexdigest()
        mine = [m for m in got if m[0] == sha]
        self.assertEqual(len(mine), 1)
        return Counter([mine[0][:3]])

    def killed_with_batch_in_flight(self, config: str, db: str, relay: LateRelay) -> None:
        """Run 1: the first batch lands, the second is held in the relay; then SIGKILL."""
        relay.arm(2)
        sp = SyncProc(config, LATE_USER, "run1")
        self.procs.append(sp)
        self.assertTrue(relay.held.wait(60), "the second MULTIAPPEND never came\n" + sp.output())
        sp.kill()
        self.assertEqual(sp.p.returncode, -signal.SIGKILL)
        self.assertEqual(runs(db, LATE_USER)[-1][1], "running")
        self.assertEqual(new_counts(LATE_USER).get(LATE_NEW), 100, "first batch only")

    def late_case(self, trigger: str) -> None:
        tb = bed()
        relay = LateRelay(tb.new.host, tb.new.imap_port, LATE_NEW)
        self.addCleanup(relay.close)
        config, db = self.fresh_config(LATE_USER, {"new": {"port": relay.port},
                                                   "sync": {"connections_per_user": 1}})
        self.killed_with_batch_in_flight(config, db, relay)
        # With the user's own message there, the next run looks above its last recorded UID
        # at once; without it ("select"), it finds the late batch only in the gap of its
        # next APPENDUID range.
        own = {LATE_NEW: self.users_own_message()} if trigger != "select" else {}
        if trigger == "after":
            rep2 = self.run_to_end(config, LATE_USER)
            self.assertEqual(rep2["messages_copied"], LATE_COUNT - 100)
            relay.release_now()
            self.assertTrue(relay.late_answer.split(b" ")[1:2] == [b"OK"], relay.late_answer)
            # The late batch is there twice now: the next run must find and remove it.
            self.assertEqual(new_counts(LATE_USER)[LATE_NEW], LATE_COUNT + 1 + 100)
            self.assertEqual(sum(f.get("removed", 0) for f in rep2["folders"]), 0)
            rep = self.run_to_end(config, LATE_USER)
            self.assertEqual(rep["messages_copied"], 0)
            removed = sum(f.get("removed", 0) for f in rep2["folders"] + rep["folders"])
        else:
            relay.release_on(trigger)
            rep = self.run_to_end(config, LATE_USER)
            self.assertTrue(relay.trigger_seen.is_set(), "the next run never reached the trigger")
            self.assertTrue(relay.late_answer.split(b" ")[1:2] == [b"OK"], relay.late_answer)
            removed = sum(f.get("removed", 0) for f in rep["folders"])
            # The late batch landed after the SELECT; this run copied those messages again.
            self.assertEqual(rep["messages_copied"], LATE_COUNT - 100)
        note(f"late batch released at {trigger!r}: {relay.late_answer!r}, removed {removed}")
        self.assertExact(LATE_USER, rep, own)
        self.assertEqual(removed, 100)
        self.assertEqual([r for _, r in runs(db, LATE_USER)][0], "interrupted")

    def test_late_batch_lands_after_next_run_selected(self):
        self.late_case("select")

    def test_late_batch_lands_after_next_run_appended(self):
        self.late_case("append")

    def test_late_batch_lands_after_next_run_finished(self):
        self.late_case("after")

    def test_daemon_killed_with_batch_in_flight_then_login_again(self):
        """The same through the daemon: migrate at login, SIGKILL the daemon with its second
        MULTIAPPEND held in the relay, restart it on the same state db; the dead daemon's batch
        lands when the new daemon's job SELECTs the folder; the user logs in again: exact."""
        tb = bed()
        relay = LateRelay(tb.new.host, tb.new.imap_port, LATE_NEW)
        self.addCleanup(relay.close)
        reset_new(LATE_USER)
        overrides = {"new": {"port": relay.port}, "sync": {"connections_per_user": 1}}
        relay.arm(2)
        with Proxy(overrides=overrides) as p:
            login(p, LATE_USER)
            self.assertTrue(relay.held.wait(60), "the second MULTIAPPEND never came\n"
                            + p.log_tail())
            p.proc.kill()
            p.proc.wait(10)
            state_db, sock = p.config["sync"]["state_db"], p.config["status"]["socket"]
        self.assertEqual(new_counts(LATE_USER).get(LATE_NEW), 100, "first batch only")
        relay.release_on("select")
        overrides["sync"]["state_db"] = state_db
        overrides["status"] = {"socket": sock}
        with Proxy(overrides=overrides) as p2:
            self.assertEqual(ask(p2, {"cmd": "user", "user": LATE_USER})["state"], "interrupted")
            login(p2, LATE_USER)
            u = wait_state(p2, LATE_USER, ("done",), 90, runs=2)
            self.assertTrue(relay.trigger_seen.is_set(), p2.log_tail())
            self.assertTrue(relay.late_answer.split(b" ")[1:2] == [b"OK"], relay.late_answer)
            p2.wait_log(rf"migration user=\"?{LATE_USER}\"? result=ok .* removed=100 ")
        note(f"daemon: late batch {relay.late_answer!r}; runs {[r['result'] for r in u['runs']]}")
        rep = {"folders": [{"legacy": "INBOX", "new": "INBOX", "selectable": True},
                           {"legacy": LATE_LEGACY, "new": LATE_NEW, "selectable": True}]}
        self.assertExact(LATE_USER, rep)

    # --- kills at wall-clock instants
    def test_twenty_kills_at_instants_then_exact(self):
        user = KILL_USER
        config, db = self.fresh_config(user, {"sync": {"connections_per_user": 1}})
        rng = random.Random(20261203)
        t0 = time.monotonic()
        delays = []
        for cycle in range(KILL_CYCLES):
            delays.append(rng.uniform(*KILL_DELAYS))
            sp = SyncProc(config, user, f"kill{cycle}")
            self.procs.append(sp)
            time.sleep(delays[-1])
            sp.kill()
            if sp.p.returncode == 0:
                break                     # finished before the kill
        killed = sum(1 for _, r in runs(db, user) if r in ("interrupted", "running"))
        on_new = sum(new_counts(user).values())
        note(f"{user}: {killed} runs killed in {time.monotonic() - t0:.1f}s (after "
             f"{', '.join(f'{d:.2f}' for d in delays)} s), {on_new} messages on the new server")
        self.assertEqual(killed, KILL_CYCLES, f"a run finished before its kill: {runs(db, user)}")
        rep = self.run_to_end(config, user)
        # A batch of the last killed run may land after this run copied its folder: the
        # next run removes it (and must copy nothing).
        rep2 = self.run_to_end(config, user)
        self.assertEqual(rep2["messages_copied"], 0)
        note(f"{user}: finishing run copied {rep['messages_copied']}, reconciled "
             f"{sum(f['reconciled'] for f in rep['folders'])}, removed "
             f"{sum(f.get('removed', 0) for f in rep['folders'])}; next run removed "
             f"{sum(f.get('removed', 0) for f in rep2['folders'])}")
        self.assertExact(user, rep2)


if __name__ == "__main__":
    unittest.main()
