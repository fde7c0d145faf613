"""`suction status` (issue 5), the client alone, against a fake daemon: a thread serving a Unix
socket in a temp dir with canned JSON lines, recording every request. The summary and the user
table (states, progress bars by bytes / messages / folders), --json (one JSON document),
--user (a user's runs), the steering commands, and the failures: an unknown user, no daemon, a
daemon that does not answer, a permission refused, a config error, bad arguments.

The real daemon end to end is tested with the scheduler. Python 3 standard library only.
  SUCTION_BIN   the suction binary (default: <source>/build/proxy/cli/suction)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

SOURCE_DIR = os.environ.get("SUCTION_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUCTION_BIN = os.environ.get("SUCTION_BIN") or os.path.join(SOURCE_DIR, "build", "proxy", "cli", "suction")

# Canned answers, as the daemon would send them (times are unix seconds; TZ=UTC below).
STATUS_LINE = ('{"proxy":{"uptime_s":90061,"active_sessions":3,"logins_ok":7,"logins_failed":1,'
               '"backend_errors":2},"migration":{"paused":true,"draining":false,"users_queued":1,'
               '"users_running":3,"users_done":1,"users_failed":1,"users_interrupted":0,'
               '"messages_copied":1234,"bytes_copied":1610612736}}')


def user_obj(name, state, progress, started=None, finished=None, error=None):
    return {"user": name, "state": state, "progress": progress, "started_at": started,
            "finished_at": finished, "last_error": error}


def progress(fd, ft, mc, mt, bc, bt):
    return {"folders_done": fd, "folders_total": ft, "messages_copied": mc, "messages_total": mt,
            "bytes_copied": bc, "bytes_total": bt}


USERS = [
    # by bytes: 350 MiB of 1000 MiB -> 35 %
    user_obj("alice", "running", progress(1, 4, 350, 1000, 350 << 20, 1000 << 20), 1700000000),
    # no byte total yet: by messages, 1 of 4 -> 25 %
    user_obj("dave", "running", progress(0, 2, 1, 4, 0, 0), 1700000100),
    # only folders known: 1 of 3 -> 33 %
    user_obj("erin", "running", progress(1, 3, 0, 0, 0, 0), 1700000200),
    user_obj("bob", "done", progress(3, 3, 20, 20, 4096, 4096), 1699990000, 1699990500),
    user_obj("carol", "failed", progress(0, 5, 0, 0, 0, 0), 1699980000, 1699980010,
             "legacy login refused: [AUTHENTICATIONFAILED] Authentication failed."),
    user_obj("frank", "pending", None),
]
USERS_LINE = json.dumps({"users": USERS}, separators=(", ", ": "))

ALICE = dict(USERS[0], runs=[
    {"id": 3, "started_at": 1700000000, "finished_at": None, "result": "running",
     "messages_copied": 350, "bytes_copied": 350 << 20, "messages_failed": 0, "error": None},
    {"id": 2, "started_at": 1699900000, "finished_at": 1699900060, "result": "failed",
     "messages_copied": 12, "bytes_copied": 2048, "messages_failed": 2, "error": "connection lost"},
    {"id": 1, "started_at": 1699800000, "finished_at": 1699800600, "result": "done",
     "messages_copied": 100, "bytes_copied": 5 << 30, "messages_failed": 0, "error": None},
])
ALICE_LINE = json.dumps(ALICE, separators=(",", ":"))
OK_LINE = '{"ok":true}'


def canned(request: dict) -> str | None:
    """The fake daemon's answer to one request (None: say nothing)."""
    cmd, user = request.get("cmd"), request.get("user")
    if cmd == "status":
        return STATUS_LINE
    if cmd == "users":
        return USERS_LINE
    if cmd == "user":
        # The daemon never echoes the name it was asked for.
        return ALICE_LINE if user == "alice" else json.dumps({"error": "unknown user"})
    if cmd == "resync":
        return OK_LINE if user == "alice" else json.dumps({"error": f"no credentials for {user}"})
    if cmd in ("pause", "resume", "drain"):
        return OK_LINE
    return json.dumps({"error": "unknown cmd"})


class FakeDaemon:
    """A status socket in a thread: answers each request line with `respond(request)` and records
    the requests. Every wait is bounded; stop() ends the thread and removes the socket."""

    def __init__(self, path: str, respond=canned, mode: int = 0o600):
        self.path = path
        self.respond = respond
        self.requests: list[dict] = []
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, mode)
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            with conn:
                self._serve_one(conn)

    def _serve_one(self, conn: socket.socket):
        conn.settimeout(0.1)
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                request = json.loads(line)
                self.requests.append(request)
                answer = self.respond(request)
                if answer is not None:
                    try:
                        conn.sendall(answer.encode() + b"\n")
                    except OSError:  # the client gave up (a test of exactly that)
                        return

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def run_status(*args: str, timeout: float = 20, binary: str = SUCTION_BIN,
               **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, TZ="UTC")
    return subprocess.run([binary, "status", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


def setUpModule():
    if not os.access(SUCTION_BIN, os.X_OK):
        raise unittest.SkipTest(f"no suction binary at {SUCTION_BIN} (set SUCTION_BIN or build the suction target)")


class StatusCli(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="suction-st-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.sock = os.path.join(self.dir, "status.sock")
        self.daemon: FakeDaemon | None = None

    def tearDown(self):
        if self.daemon:
            self.daemon.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, respond=canned, mode=0o600) -> FakeDaemon:
        self.daemon = FakeDaemon(self.sock, respond, mode)
        return self.daemon

    def ok(self, *args: str) -> str:
        p = run_status(*args)
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        self.assertEqual(p.stderr, "")
        return p.stdout

    def row(self, out: str, user: str) -> str:
        rows = [line for line in out.splitlines() if line.split()[:1] == [user]]
        self.assertEqual(len(rows), 1, out)
        return rows[0]

    # ---- the summary and the table
    def test_summary_and_user_table(self):
        d = self.start()
        out = self.ok("--socket", self.sock)
        self.assertEqual(d.requests, [{"cmd": "status"}, {"cmd": "users"}])
        self.assertEqual(d.connections, 1)
        self.assertIn("up 1d 01:01:01, 3 active sessions, logins 7 ok / 1 failed, 2 backend errors", out)
        self.assertIn("users 1 queued, 3 running, 1 done, 1 failed, 0 interrupted; "
                      "1234 messages, 1.5 GiB copied [paused]", out)
        self.assertNotIn("[draining]", out)
        header = [line for line in out.splitlines() if line.startswith("USER")]
        self.assertEqual(header[0].split(), ["USER", "STATE", "PROGRESS", "MESSAGES", "BYTES", "LAST-ERROR"])
        # Running users get a bar: by bytes, else by messages, else by folders.
        alice = self.row(out, "alice")
        self.assertIn("running", alice)
        self.assertIn("[#######.............]  35%", alice)
        self.assertIn("350/1000", alice)
        self.assertIn("350.0 MiB/1000.0 MiB", alice)
        self.assertIn("[#####...............]  25%", self.row(out, "dave"))
        self.assertIn("[######..............]  33%", self.row(out, "erin"))
        bob = self.row(out, "bob")
        self.assertIn("done", bob)
        self.assertNotIn("[", bob)
        self.assertIn("4.0 KiB/4.0 KiB", bob)
        carol = self.row(out, "carol")
        self.assertIn("failed", carol)
        self.assertTrue(carol.endswith("legacy login refused: [AUTHENTICATIONFAILED] Authentication failed."),
                        carol)
        self.assertEqual(self.row(out, "frank").split(), ["frank", "pending", "-", "-", "-", "-"])
        # Columns line up: every row's STATE starts where the header's does.
        col = header[0].index("STATE")
        for user in ("alice", "dave", "bob", "carol", "frank"):
            self.assertEqual(self.row(out, user)[col - 2:col], "  ", user)

    def test_json_prints_one_document(self):
        """One JSON document on one line, so `jq` needs no -s."""
        self.start()
        out = self.ok("--socket", self.sock, "--json")
        self.assertEqual(out.count("\n"), 1, out)
        self.assertEqual(json.loads(out), dict(json.loads(STATUS_LINE), users=USERS))
        out = self.ok("--socket", self.sock, "--json", "--user", "alice")
        self.assertEqual(out.count("\n"), 1, out)
        self.assertEqual(json.loads(out), dict(json.loads(STATUS_LINE), user=ALICE))

    def test_user_detail_with_runs(self):
        d = self.start()
        out = self.ok("--socket", self.sock, "--user", "alice")
        self.assertEqual(d.requests, [{"cmd": "status"}, {"cmd": "user", "user": "alice"}])
        self.assertIn("[#######.............]  35%", out)
        self.assertIn("started:    2023-11-14 22:13:20", out)
        self.assertIn("finished:   -", out)
        header = [line for line in out.splitlines() if line.startswith("ID")]
        self.assertEqual(header[0].split(), ["ID", "STARTED", "FINISHED", "RESULT", "MESSAGES", "BYTES", "ERROR"])
        runs = [line for line in out.splitlines() if line[:1].isdigit()]
        self.assertEqual([r.split()[0] for r in runs], ["3", "2", "1"])  # newest first, as sent
        self.assertIn("2023-11-14 22:13:20  -", runs[0])
        self.assertIn("running", runs[0])
        self.assertIn("2023-11-13 18:26:40  2023-11-13 18:27:40  failed", runs[1])
        self.assertIn("12 (2 failed)", runs[1])
        self.assertTrue(runs[1].endswith("connection lost"), runs[1])
        self.assertIn("5.0 GiB", runs[2])

    def test_unknown_user_is_exit_1(self):
        self.start()
        p = run_status("--socket", self.sock, "--user", "bob")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, "suction status: unknown user bob\n")
        self.assertEqual(p.stdout, "")
        # --json still prints one document, with the daemon's error, and still fails.
        p = run_status("--socket", self.sock, "--user", "bob", "--json")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(json.loads(p.stdout), dict(json.loads(STATUS_LINE), error="unknown user"))

    # ---- steering
    def test_resync_pause_resume_drain(self):
        d = self.start()
        self.assertEqual(self.ok("--socket", self.sock, "--resync", "alice"), "ok\n")
        self.assertEqual(self.ok("--socket", self.sock, "--pause"), "ok\n")
        self.assertEqual(self.ok("--socket", self.sock, "--resume"), "ok\n")
        self.assertEqual(json.loads(self.ok("--socket", self.sock, "--drain", "--json")), {"ok": True})
        self.assertEqual(d.requests, [{"cmd": "resync", "user": "alice"}, {"cmd": "pause"}, {"cmd": "resume"},
                                      {"cmd": "drain"}])
        p = run_status("--socket", self.sock, "--resync", "zed")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, "suction status: no credentials for zed\n")

    # ---- where the socket is
    def test_config_gives_the_socket(self):
        d = self.start()
        cfg = os.path.join(self.dir, "suction.toml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write('[listen]\nimaps = ""\n[new]\nhost = "127.0.0.1"\n[legacy]\nhost = "127.0.0.1"\n'
                    f'[status]\nsocket = "{self.sock}"\n')
        out = self.ok("--config", cfg)
        self.assertIn("alice", out)
        self.assertEqual(len(d.requests), 2)

    def test_config_error_is_exit_2(self):
        cfg = os.path.join(self.dir, "bad.toml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write('[status]\nsockett = "/tmp/x"\n')
        p = run_status("--config", cfg)
        self.assertEqual(p.returncode, 2)
        self.assertTrue(p.stderr.startswith("suction: " + cfg), p.stderr)
        self.assertIn("sockett", p.stderr)
        p = run_status("--config", os.path.join(self.dir, "missing.toml"))
        self.assertEqual(p.returncode, 2)
        self.assertTrue(p.stderr.startswith("suction: "), p.stderr)

    # ---- no daemon, or one that does not behave
    def test_no_daemon_is_exit_1_naming_the_path(self):
        p = run_status("--socket", self.sock)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, "")
        self.assertEqual(p.stderr, f"suction status: cannot connect to {self.sock}: No such file or directory "
                                   "(is `suction proxy` running?)\n")
        # A socket file left behind by a daemon that died: connection refused.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.sock)
        s.close()
        p = run_status("--socket", self.sock)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"cannot connect to {self.sock}: Connection refused (is `suction proxy` running?)", p.stderr)

    def test_default_socket_path(self):
        default = "/run/suction/status.sock"
        if os.path.exists(default):
            self.skipTest(f"{default} exists on this machine")
        p = run_status()
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"cannot connect to {default}: ", p.stderr)

    def test_permission_denied_says_so(self):
        self.start(mode=0o600)
        if os.geteuid() == 0:
            # root passes any mode: ask as nobody, with a copy of the binary in the 0755 temp
            # dir (nobody may not reach the checkout's, e.g. in root's 0700 home).
            def drop():
                os.setgid(65534)
                os.setgroups([])
                os.setuid(65534)
            binary = os.path.join(self.dir, "suction")
            shutil.copy2(SUCTION_BIN, binary)
            p = run_status("--socket", self.sock, preexec_fn=drop, binary=binary)
        else:
            os.chmod(self.sock, 0)
            p = run_status("--socket", self.sock)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"cannot connect to {self.sock}: Permission denied", p.stderr)
        self.assertIn("group", p.stderr)

    def test_silent_daemon_times_out_in_5_s(self):
        self.start(respond=lambda request: None)
        t0 = time.monotonic()
        p = run_status("--socket", self.sock)
        took = time.monotonic() - t0
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, f"suction status: no answer from {self.sock} within 5 s (is the daemon stuck?)\n")
        self.assertGreater(took, 4.5)
        self.assertLess(took, 8)

    def test_half_an_answer_then_silence_also_times_out(self):
        # The deadline covers the whole exchange, not each read.
        self.start(respond=lambda r: STATUS_LINE if r["cmd"] == "status" else None)
        p = run_status("--socket", self.sock)
        self.assertEqual(p.returncode, 1)
        self.assertIn("within 5 s", p.stderr)

    def test_garbage_answer_is_exit_1(self):
        self.start(respond=lambda request: "hello, I am not JSON")
        p = run_status("--socket", self.sock)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"{self.sock} answered something that is not a JSON object", p.stderr)

    # ---- the command line
    def test_bad_arguments_are_exit_2(self):
        for args in (["--pause", "--drain"], ["--user", "alice", "--resync", "alice"], ["--resume", "--user", "x"],
                     ["--socket", self.sock, "--config", "x.toml"], ["--no-such-option"], ["--user"],
                     ["extra-positional"]):
            with self.subTest(args=args):
                p = run_status(*args)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertNotEqual(p.stderr, "")


if __name__ == "__main__":
    unittest.main()
