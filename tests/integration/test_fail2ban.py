"""deploy/fail2ban/ against logs the proxy really wrote: fail2ban's own fail2ban-regex (Debian
12's fail2ban 1.0.2) with the shipped filter must match every failed login and pre-auth limit
hit, and only ever take the real client address out of them, whatever the user names say.

One source address (127.0.0.9) logs in with hostile user names (forged "client=" fields, quotes
and backslashes, CR/LF, NEL, U+2028, bytes that are not UTF-8, whole forged log lines, long
names; by LOGIN, AUTHENTICATE PLAIN and AUTHENTICATE LOGIN) and hits the pre-auth limits; names
of 8 to 65 KB are refused by the proxy itself (over 512 bytes) and logged as failed logins too;
a successful login comes from 127.0.0.1. Then fail2ban-regex runs over the proxy's log:
  - the file form (stderr to a file, the jail's logpath alternative),
  - the journal form (backend = systemd): fail2ban-regex's own systemd-journal code path with a
    stand-in journal reader serving the same lines as journald entries of suction.service (the
    machine has no journald to write to),
  - the careless regex `login failed .*? client=<HOST>`,
  - hand-written lines that must not match (connection refused, login unavailable, login ok, ...)
    and lines in the bracketed IPv6 and IPv4-mapped forms,
and, when ::1 works, a proxy listening on [::1] writes real `client=[::1]:PORT` lines. The jail
(and its commented log-file alternative) is read by `fail2ban-client -d` over a copy of
Debian's /etc/fail2ban: the commands the fail2ban server would get, nothing started.

Skipped when fail2ban-regex is not installed (deploy/install-deps.sh installs it). Every wait is
bounded; all traffic stays on loopback; fail2ban-regex runs with --usedns=no (no DNS lookups).
"""

import ast
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import unittest

import proxyfixture as pf

F2B_REGEX = shutil.which("fail2ban-regex")
F2B_DIR = os.path.join(pf.SOURCE_DIR, "deploy", "fail2ban")
FILTER = os.path.join(F2B_DIR, "filter.d", "suction.conf")
JAIL = os.path.join(F2B_DIR, "jail.d", "suction.conf")


def filter_file() -> str:
    """The shipped filter, copied under the test's temp root: fail2ban-regex takes an argument
    whose path holds a space (a checkout in "/root/my checkout") for a regex, not a file."""
    path = os.path.join(pf.tmp_root(), "suction-filter.conf")
    if not os.path.exists(path):
        shutil.copy(FILTER, path)
    return path
ATTACKER = "127.0.0.9"      # every failure comes from here
BYSTANDER = "127.0.0.1"     # a successful login comes from here
FORGED = "6.6.6.6"          # what the user names claim
LOGIN_ATTEMPTS = 3
BAD_COMMANDS = 3
MAX_LITERAL = 8192
MAX_LINE = 65536
F2B_TIMEOUT = 120           # seconds for one fail2ban-regex run
# spdlog's pattern in proxy/cli/main.cpp: "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) (trace|debug|info|warning|error|"
                      r"critical) (.*)$")


def setUpModule():
    if F2B_REGEX is None:
        raise unittest.SkipTest("fail2ban-regex is not installed (Debian: apt-get install "
                                "fail2ban; deploy/install-deps.sh installs it)")
    pf.start_bed()


# ----------------------------------------------------------------------------------------------
# fail2ban-regex

def f2b_python() -> str:
    """The interpreter fail2ban-regex runs with (its #! line): the one that has fail2ban."""
    with open(F2B_REGEX, "rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    if first.startswith("#!"):
        parts = first[2:].split()
        if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
            return shutil.which(parts[1]) or parts[1]
        if parts:
            return parts[0]
    return "/usr/bin/python3"


def run_f2b(*args: str, argv0: list[str] | None = None) -> str:
    """Runs fail2ban-regex (never resolving names, reading logs as UTF-8); returns stdout."""
    cmd = (argv0 or [F2B_REGEX]) + ["-e", "utf-8", "--usedns=no", *args]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=F2B_TIMEOUT,
                       env=dict(os.environ, LC_ALL="C.UTF-8"))
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:6])} ... exited {p.returncode}\nstdout:\n{out[-4000:]}"
                             f"\nstderr:\n{p.stderr.decode('utf-8', 'replace')[-4000:]}")
    return out


def f2b_ips(log: str, regex: str, *extra: str) -> list[str]:
    """The address of every match, in order (fail2ban-regex --out ip: one line per match)."""
    out = run_f2b("--out", "ip", *extra, log, regex)
    return [line.strip() for line in out.splitlines() if line.strip()]


def f2b_report(log: str, regex: str, *extra: str) -> tuple[dict, list[str]]:
    """fail2ban-regex's summary counts and its matched lines (--print-all-matched)."""
    out = run_f2b("--print-all-matched", "--print-no-missed", *extra, log, regex)
    m = re.search(r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out, re.M)
    if not m:
        raise AssertionError("no summary in fail2ban-regex's output:\n" + out[-4000:])
    counts = dict(zip(("lines", "ignored", "matched", "missed"), map(int, m.groups())))
    matched = []
    section = re.search(r"^\|- Matched line\(s\):\n(.*?)^`-", out, re.M | re.S)
    if section:
        matched = [line[3:] for line in section.group(1).splitlines() if line.startswith("|  ")]
    return counts, matched


# ----------------------------------------------------------------------------------------------
# The proxy's log, read independently of fail2ban

_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^\s"\\=]+)'


def log_events(text: str) -> list[tuple[str, str, str]]:
    """(time, level, message) per line; every line must have spdlog's shape. str.splitlines
    also breaks at VT, FF, FS, GS, RS, NEL, U+2028 and U+2029: a raw one in a value would show
    here as a line without a time stamp."""
    events = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            raise AssertionError(f"a log line without spdlog's time and level: {line[:300]!r}")
        events.append(m.groups())
    return events


def client_of(message: str) -> str | None:
    """The address in the client= field of a message, taking every value as log_value wrote it
    (so a "client=" inside a value is never taken)."""
    m = re.match(r"^[a-z ]+?((?: [a-z_]+=" + _VALUE + r")*)(?: \(.*\))?$", message)
    if not m:
        raise AssertionError(f"a log message that is not key=value: {message[:300]!r}")
    for k, v in re.findall(r" ([a-z_]+)=(" + _VALUE + ")", m.group(1)):
        if k == "client":
            host = v.rsplit(":", 1)[0]
            return host[1:-1] if host.startswith("[") else host
    return None


# ----------------------------------------------------------------------------------------------
# The attacker: failed logins and limit hits from one address, each one counted as it is made

def imap_quoted(raw: bytes) -> bytes:
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class Attacker:
    def __init__(self, test: unittest.TestCase, proxy: pf.Proxy, source: str = ATTACKER,
                 connect=None):
        self.t = test
        self.proxy = proxy
        self.source = source
        self.connect = connect or (lambda: proxy.raw(source=source))
        self.c: pf.RawClient | None = None
        self.fails_here = 0
        self.n = 0
        self.logins_failed = 0    # "login failed" lines to expect
        self.limits = 0           # "preauth limit" lines to expect
        self.unavailable = 0      # "login unavailable" lines to expect (not failures)

    @property
    def failures(self) -> int:
        return self.logins_failed + self.limits

    def conn(self) -> pf.RawClient:
        if self.c is None:
            self.c = self.connect()
            self.fails_here = 0
        return self.c

    def tag(self) -> str:
        self.n += 1
        return f"h{self.n}"

    def closed(self, expect_bye: bytes) -> None:
        rest = self.c.wait_closed(10)
        self.t.assertIn(expect_bye, rest)
        self.c.close()
        self.c = None
        self.limits += 1

    def answered(self, tag: str, tagged: bytes, expect: str) -> None:
        """expect "refused": the new server refused the login: one "login failed" line; the
        connection's last one also a "too many failed logins". expect "unavailable": the new
        server hung up on it (Dovecot: "Input buffer full" on an over-long name): one "login
        unavailable" line, no failure, the connection goes on."""
        if expect == "unavailable":
            self.t.assertTrue(tagged.startswith(tag.encode() + b" NO [UNAVAILABLE]"), tagged)
            self.unavailable += 1
            return
        self.t.assertTrue(tagged.startswith(tag.encode() + b" NO "), tagged)
        self.t.assertNotIn(b"[UNAVAILABLE]", tagged)
        self.logins_failed += 1
        self.fails_here += 1
        if self.fails_here == LOGIN_ATTEMPTS:
            self.closed(b"* BYE Too many failed login attempts.")

    def wait_continuation(self) -> None:
        line = self.c.readline()
        self.t.assertTrue(line.startswith(b"+"), line)

    # --- the ways to fail a login
    def login_quoted(self, user: bytes, password: bytes = b"wrong",
                     expect: str = "refused") -> None:
        c, tag = self.conn(), self.tag()
        self.answered(tag, c.command(tag, b"LOGIN " + imap_quoted(user) + b" " +
                                     imap_quoted(password)), expect)

    def login_literal(self, user: bytes, password: bytes = b"wrong", sync: bool = True,
                      expect: str = "refused") -> None:
        """User name and password as literals: synchronizing ({N}, waits for "+") or not
        ({N+}, LITERAL+: everything in one go)."""
        c, tag = self.conn(), self.tag()
        if sync:
            c.send(tag.encode() + b" LOGIN {%d}\r\n" % len(user))
            self.wait_continuation()
            c.send(user + b" {%d}\r\n" % len(password))
            self.wait_continuation()
            c.send(password + b"\r\n")
        else:
            c.send(tag.encode() + b" LOGIN {%d+}\r\n" % len(user) + user +
                   b" {%d+}\r\n" % len(password) + password + b"\r\n")
        self.answered(tag, c.read_tagged(tag)[1], expect)

    def authenticate_plain(self, authcid: bytes, password: bytes = b"wrong",
                           initial_response: bool = False) -> None:
        c, tag = self.conn(), self.tag()
        payload = base64.b64encode(b"\0" + authcid + b"\0" + password)
        if initial_response:
            c.send(tag.encode() + b" AUTHENTICATE PLAIN " + payload + b"\r\n")
        else:
            c.send(tag.encode() + b" AUTHENTICATE PLAIN\r\n")
            self.wait_continuation()
            c.send(payload + b"\r\n")
        self.answered(tag, c.read_tagged(tag)[1], "refused")

    def authenticate_login(self, user: bytes, password: bytes = b"wrong") -> None:
        c, tag = self.conn(), self.tag()
        c.send(tag.encode() + b" AUTHENTICATE LOGIN\r\n")
        self.wait_continuation()
        c.send(base64.b64encode(user) + b"\r\n")
        self.wait_continuation()
        c.send(base64.b64encode(password) + b"\r\n")
        self.answered(tag, c.read_tagged(tag)[1], "refused")

    def finish_connection(self) -> None:
        """Ends the current connection with LOGOUT (no limit line)."""
        if self.c is not None:
            tag = self.tag()
            self.t.assertTrue(self.c.command(tag, "LOGOUT").startswith(tag.encode() + b" OK"))
            self.c.close()
            self.c = None

    # --- the pre-auth limits
    def bad_commands(self, junk: bytes) -> None:
        self.finish_connection()
        c = self.conn()
        for i in range(BAD_COMMANDS - 1):
            tag = self.tag()
            self.t.assertTrue(c.command(tag, b"FROB " + junk).startswith(tag.encode() + b" BAD"))
        c.send(self.tag().encode() + b" XYZZY " + junk + b"\r\n")
        self.closed(b"* BYE Too many invalid IMAP commands.")

    def line_too_long(self) -> None:
        self.finish_connection()
        c = self.conn()
        # Just over the limit and no CRLF: the proxy has read every byte when it closes (unread
        # bytes would make the close a reset that can swallow the BYE).
        head = b"x NOOP client=" + FORGED.encode() + b" "
        c.send(head + b"y" * (MAX_LINE + 10 - len(head)))
        self.closed(b"* BYE Too long command line.")

    def literal_too_large(self) -> None:
        """A synchronizing literal over the limit: NO [TOOBIG], the connection goes on."""
        c, tag = self.conn(), self.tag()
        c.send(tag.encode() + b" LOGIN {%d}\r\n" % (MAX_LITERAL + 1))
        self.t.assertEqual(c.readline(), tag.encode() + b" NO [TOOBIG] Literal too large.\r\n")
        self.limits += 1

    def literal_too_large_nonsync(self) -> None:
        """A non-synchronizing one: its bytes are on the way, so the connection ends."""
        self.finish_connection()
        c = self.conn()
        c.send(b"x LOGIN {%d+}\r\n" % (MAX_LITERAL + 1))
        self.closed(b"* BYE Too long argument.")


# Hostile user names; each one's bytes as the client sends them.
HOSTILE_QUOTED = [
    b"x client=6.6.6.6 result=ok",
    b'a"b\\c client=6.6.6.6:1 \\" client=6.6.6.6:2 "',
    b"u client=[::6]:1 backend=[::6]:143 client=[2001:db8::6]:1",
    b"client=6.6.6.6:1",
    b"login failed user=x client=6.6.6.6:1 backend=b mech=\"LOGIN\"",
    b"\x1b[31mwarning\x1b[0m preauth limit client=6.6.6.6:1",        # ANSI escapes
    b"2026-12-03T10:07:32.123 info login failed user=x client=6.6.6.6:1",
    b"client=6.6.6.6 " * 60,      # 900 bytes: long, but within what Dovecot's imap-login takes
    b"=" * 900,                   # 3.6 KB once escaped
]
# Longer than Dovecot's imap-login input buffer (about 1 KB here; 2 KB names already fail), and
# over the proxy's 512-byte limit for user names: refused by the proxy, counted, logged as
# "login failed" with the name cut to 64 bytes.
OVERLONG_QUOTED = [
    (b"client=6.6.6.6 " * 4000)[:MAX_LINE - 200],  # a 65 KB name, a 72 KB log line
    b"=" * 16000,                                  # 64 KB once escaped
]
FORGED_LINE = (b"2026-12-03T10:07:32.123 info login failed user=x client=6.6.6.6:1 backend=b:143 "
               b"mech=\"LOGIN\" reason=x duration=1ms session=0000000000000001")
HOSTILE_LITERAL = [
    (b"line1\r\nclient=6.6.6.6 \r\n" + FORGED_LINE + b"\r\n", False),  # CR/LF, LITERAL+
    (b"x\n" + FORGED_LINE + b"\n", True),                               # bare LF
    (b"x\r" + FORGED_LINE, True),                                       # bare CR
    (("n\u0085client=6.6.6.6:1 \u2028" + FORGED_LINE.decode() + "\u2029x").encode(), True),
    (b"\xff\xfe\x85 client=6.6.6.6:1 \xc0\xaf\xc2" + FORGED_LINE, True),  # not UTF-8
    (b"\x0b\x0c\x1c\x1d\x1e\x7f client=6.6.6.6:1", True),               # VT FF FS GS RS DEL
    (b"\\x3d client\\x3d6.6.6.6:1 \\\" client=6.6.6.6:1", True),        # escapes spelled out
]
OVERLONG_LITERAL = [
    ((b"client=" + FORGED.encode() + b"\r\n") * 600)[:MAX_LITERAL],  # 8 KB, the proxy's limit
]
HOSTILE_PLAIN = [
    (b"p client=6.6.6.6:1 \r\n" + FORGED_LINE, True),
    (b"q\" client=[::6]:1 \\", False),
]
HOSTILE_SASL_LOGIN = [
    b"l\r\nclient=6.6.6.6:1 " + FORGED_LINE,
]


class Fail2banTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="f2b-", dir=pf.tmp_root())
        cls.proxy = pf.Proxy(pf.bed(), {
            "limits": {"max_line": MAX_LINE, "max_literal": MAX_LITERAL,
                       "max_bad_commands": BAD_COMMANDS, "login_attempts": LOGIN_ATTEMPTS},
            # trace: every pre-auth command is logged too (tag= command=), more lines that
            # must not match.
            "log": {"level": "trace"}})
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()
        cls.attack()
        cls.proxy.stop()
        cls.log_path = os.path.join(cls.tmp, "suction.log")
        shutil.copyfile(cls.proxy.log_path, cls.log_path)
        with open(cls.log_path, "rb") as f:
            cls.log_text = f.read().decode("utf-8")   # every byte was escaped: valid UTF-8
        cls.events = log_events(cls.log_text)

    @classmethod
    def attack(cls):
        t = unittest.TestCase()  # for its assertions
        a = Attacker(t, cls.proxy)
        for user in HOSTILE_QUOTED:
            a.login_quoted(user)
        for user, sync in HOSTILE_LITERAL:
            a.login_literal(user, sync=sync)
        for user, ir in HOSTILE_PLAIN:
            a.authenticate_plain(user, initial_response=ir)
        for user in HOSTILE_SASL_LOGIN:
            a.authenticate_login(user)
        a.login_quoted(b"alice", b"not wonderland")  # a real user, a wrong password
        # Refused by the proxy itself (over 512 bytes: Dovecot would hang up on them, which
        # looked like an outage and counted nothing): failed logins like any other.
        for user in OVERLONG_QUOTED:
            a.login_quoted(user)
        for user in OVERLONG_LITERAL:
            a.login_literal(user)
        a.literal_too_large()
        a.bad_commands(b"client=6.6.6.6:1 \x1b[0m")
        a.line_too_long()
        a.literal_too_large_nonsync()
        a.finish_connection()
        cls.attacker = a
        # A real login from another address: a "login ok" line that must not match.
        with cls.proxy.raw(source=BYSTANDER) as c:
            tagged = c.command("a", "LOGIN alice wonderland")
            t.assertTrue(tagged.startswith(b"a OK"), tagged)
            c.command("b", "LOGOUT")
        cls.proxy.wait_log(r"login ok user=alice client=127\.0\.0\.1:")
        # Every limit line is written before the connection closes; the last login failed
        # line before its answer: all in the log by now. Bounded anyway:
        pf.wait_until(lambda: cls.proxy.log().count(" login failed ") >= a.logins_failed, 5)

    # --- the log itself
    def test_log_is_what_the_filter_expects(self):
        """The lines the filter is written for, read here with Python: one per failure, each
        with the attacker's address, and no raw forged field anywhere."""
        a = self.attacker
        failed = [e for e in self.events if e[2].startswith("login failed ")]
        limits = [e for e in self.events if e[2].startswith("preauth limit ")]
        self.assertEqual(len(failed), a.logins_failed, "one login failed line per refused login")
        self.assertEqual(len(limits), a.limits, "one preauth limit line per limit hit")
        unavailable = [e for e in self.events if e[2].startswith("login unavailable ")]
        self.assertEqual(len(unavailable), a.unavailable)
        for _, level, msg in failed:
            self.assertEqual(level, "info", msg[:200])
            self.assertEqual(client_of(msg), ATTACKER, msg[:300])
        for _, level, msg in limits:
            self.assertEqual(level, "warning", msg[:200])
            self.assertEqual(client_of(msg), ATTACKER, msg[:300])
        # Every line starts with spdlog's time stamp and level (log_events checked that), and
        # no raw "client=" anywhere names a forged address: '=' in a value is written \x3d.
        for forged in ("client=" + FORGED, "client=[::6]", "client=[2001:db8::6]"):
            self.assertNotIn(forged, self.log_text)
        self.assertIn("login ok user=alice client=127.0.0.1:", self.log_text)

    # --- the shipped filter, the file form
    def test_filter_matches_every_failure_and_only_the_attacker(self):
        a = self.attacker
        ips = f2b_ips(self.log_path, filter_file())
        self.assertEqual(len(ips), a.failures,
                         f"{a.logins_failed} failed logins + {a.limits} limit hits")
        self.assertEqual(set(ips), {ATTACKER})

        counts, matched = f2b_report(self.log_path, filter_file())
        self.assertEqual(counts["matched"], a.failures, counts)
        self.assertEqual(counts["lines"], len(self.events), counts)
        expected = [f"{ts} {lvl} {msg}" for ts, lvl, msg in self.events
                    if msg.startswith(("login failed ", "preauth limit "))]
        self.assertEqual(matched, expected, "fail2ban-regex matched other lines than these")
        self.assertFalse([m for m in matched if "login ok" in m.split(" user=")[0]])

    def test_every_date_is_found_at_the_line_start(self):
        """datepattern finds spdlog's time stamp on every line (none in a user name)."""
        out = run_f2b("--print-no-missed", self.log_path, filter_file())
        m = re.search(r"^Date template hits:\n(.*?)^`-", out, re.M | re.S)
        self.assertIsNotNone(m, out[-3000:])
        hits = re.findall(r"^\|\s+\[(\d+)\] (.*)$", m.group(1), re.M)
        self.assertEqual(len(hits), 1, m.group(1))
        self.assertEqual(int(hits[0][0]), len(self.events), m.group(1))
        self.assertIn("^Year-Month-DayT24hour:Minute:Second", hits[0][1])

    # --- the careless regex from the issue
    def test_careless_regex_takes_the_real_address_too(self):
        """'=' inside values is written \\x3d: even `login failed .*? client=<HOST>` finds no
        " client=" before the real one."""
        ips = f2b_ips(self.log_path, r"login failed .*? client=<HOST>",
                      "--datepattern", r"^%Y-%m-%dT%H:%M:%S\.%f")
        self.assertEqual(len(ips), self.attacker.logins_failed)
        self.assertEqual(set(ips), {ATTACKER})

    # --- the shipped filter under backend = systemd
    def test_filter_through_the_journal_code_path(self):
        """fail2ban-regex's systemd-journal path (FilterSystemd.formatJournalEntry: "HOST
        IDENT[PID]: MESSAGE", the journal's time, the filter's journalmatch) with a stand-in
        journal serving this log as suction.service's entries, plus entries of another unit
        that the journalmatch must leave out."""
        a = self.attacker
        entries = [{"MESSAGE": f"{ts} {lvl} {msg}", "_SYSTEMD_UNIT": "suction.service",
                    "SYSLOG_IDENTIFIER": "suction", "_PID": "4242", "_HOSTNAME": "mx1"}
                   for ts, lvl, msg in self.events]
        # Another unit writing suction's words with another address: not ours to count.
        entries.append({"MESSAGE": "2026-12-03T10:07:32.123 info login failed user=x "
                                   "client=192.0.2.66:1 backend=b:143 mech=\"LOGIN\" reason=x "
                                   "duration=1ms session=0000000000000001",
                        "_SYSTEMD_UNIT": "other.service", "SYSLOG_IDENTIFIER": "other",
                        "_PID": "1", "_HOSTNAME": "mx1"})
        ips = self.journal_ips(entries)
        self.assertEqual(len(ips), a.failures)
        self.assertEqual(set(ips), {ATTACKER})

    def journal_ips(self, entries: list[dict]) -> list[str]:
        path = os.path.join(self.tmp, "journal.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(entries, f)
        script = os.path.join(self.tmp, "f2b_journal.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(JOURNAL_SHIM)
        out = run_f2b("--out", "ip", "systemd-journal", filter_file(),
                      argv0=[f2b_python(), script, path])
        return [line.strip() for line in out.splitlines() if line.strip()]

    # --- hand-written lines
    def test_hand_written_lines(self):
        must_not = [
            'warning connection refused client=192.0.2.1:40000 reason="too many connections '
            'from this address" session=0a0b0c0d0e000001 (more from this address in the next '
            '60s are counted, not logged one by one)',
            'warning connection refused client=192.0.2.1 reason="too many connections from this '
            'address" count=17 interval=60s',
            'error login unavailable user=alice client=192.0.2.2:40000 backend=10.0.0.5:143 '
            'reason="connect: Connection refused" duration=3ms session=0a0b0c0d0e000002',
            'error login unavailable user="x client\\x3d6.6.6.6" client=192.0.2.2:40000 '
            'backend=10.0.0.5:143 reason="login: end of file" duration=3ms '
            'session=0a0b0c0d0e000002',
            'info login ok user=alice client=192.0.2.3:40000 backend=10.0.0.5:143 mech="LOGIN" '
            'tls=yes duration=9ms session=0a0b0c0d0e000003',
            'info login ok user="login failed" client=192.0.2.3:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" tls=yes duration=9ms session=0a0b0c0d0e000003',
            'info session closed user=alice client=192.0.2.3:40000 backend=10.0.0.5:143 '
            'reason="client closed" in=10 out=20 duration=100ms session=0a0b0c0d0e000003',
            'info session closed before login client=192.0.2.4:40000 reason="idle timeout" '
            'duration=60000ms session=0a0b0c0d0e000004',
            'debug preauth bad command client=192.0.2.4:40000 reason="unknown command" '
            'session=0a0b0c0d0e000004',
            'trace preauth command client=192.0.2.4:40000 tag=a command=LOGIN '
            'session=0a0b0c0d0e000004',
            'info tls handshake failed client=192.0.2.5:40000 reason="wrong version number" '
            'session=0a0b0c0d0e000005',
            # The new server's own trouble is no verdict on the client's password: Dovecot's
            # NO [UNAVAILABLE] / [SERVERBUG] texts as suction logs them (the code left out),
            # and with the code, should it ever be logged.
            'info login failed user=alice client=192.0.2.6:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" reason="Temporary authentication failure. [mx1:2026-12-03 10:07:32]" '
            'duration=12ms session=0a0b0c0d0e000006',
            'info login failed user=alice client=192.0.2.6:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" reason="Account is temporarily unavailable." duration=12ms '
            'session=0a0b0c0d0e000006',
            'info login failed user=alice client=192.0.2.6:40000 backend=10.0.0.5:143 '
            'mech="AUTHENTICATE PLAIN" reason="Internal error occurred. Refer to server log for '
            'more information. [2026-12-03 10:07:32]" duration=12ms session=0a0b0c0d0e000006',
            'info login failed user=alice client=192.0.2.6:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" reason="[UNAVAILABLE] Temporary authentication failure." '
            'duration=12ms session=0a0b0c0d0e000006',
            'info login failed user=alice client=192.0.2.6:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" reason="[SERVERBUG] Internal error occurred." duration=12ms '
            'session=0a0b0c0d0e000006',
            # A limit the filter does not know, a level that is not the proxy's.
            'warning preauth limit client=192.0.2.7:40000 reason="something new" '
            'session=0a0b0c0d0e000007',
            'error login failed user=alice client=192.0.2.7:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" reason="x" duration=12ms session=0a0b0c0d0e000007',
            # A value with a raw space or quote is not log_value's: not the proxy's line.
            'info login failed user=a b client=192.0.2.8:40000 backend=10.0.0.5:143 '
            'mech="LOGIN" reason="x" duration=12ms session=0a0b0c0d0e000008',
            'info login failed user="a" client=6.6.6.6:1 x" client=192.0.2.8:40000 '
            'backend=10.0.0.5:143 mech="LOGIN" reason="x" duration=12ms session=0a0b0c0d0e000008',
            'info login failed user=x client=unknown backend=10.0.0.5:143 mech="LOGIN" '
            'reason="x" duration=12ms session=0a0b0c0d0e000008',
            'info migration user=alice result=login_failed client=192.0.2.9 legacy=old:993 '
            'new=127.0.0.1:143 attempt=1',
        ]
        must = [  # (line, address fail2ban must take out of it)
            ('info login failed user=alice client=[2001:db8::7]:40000 backend=10.0.0.5:143 '
             'mech="LOGIN" reason="[AUTHENTICATIONFAILED] Authentication failed." duration=1ms '
             'session=0a0b0c0d0e000009', "2001:db8::7"),
            ('warning preauth limit client=[2001:db8::8]:40000 reason="too many failed logins" '
             'session=0a0b0c0d0e000009', "2001:db8::8"),
            ('info login failed user="u client\\x3d[::6]:1" client=[::ffff:192.0.2.10]:40000 '
             'backend=[2001:db8::1]:143 mech="AUTHENTICATE PLAIN" reason="x" duration=1ms '
             'session=0a0b0c0d0e00000a', "192.0.2.10"),
            ('warning preauth limit client=[fe80::1:2:3:4]:40000 reason="line too long" '
             'session=0a0b0c0d0e00000a', "fe80::1:2:3:4"),
            ('info login failed user=bob client=192.0.2.11:40000 backend=mail.example.net:143 '
             'mech="AUTHENTICATE LOGIN" reason=NO duration=0ms session=0a0b0c0d0e00000b',
             "192.0.2.11"),
            # [auth] verify = "legacy": the password checked on legacy.
            ('info login failed user=bob client=192.0.2.13:40000 backend=mail.example.net:143 '
             'mech="LOGIN" checked_by=legacy reason="legacy old:993: [AUTHENTICATIONFAILED] '
             'Authentication failed." duration=2001ms session=0a0b0c0d0e00000c', "192.0.2.13"),
            # A user name that spells the words of the new server's own trouble changes nothing.
            ('info login failed user="Temporary authentication failure. [UNAVAILABLE]" '
             'client=192.0.2.12:40000 backend=10.0.0.5:143 mech="LOGIN" '
             'reason="Authentication failed." duration=1ms session=0a0b0c0d0e00000c',
             "192.0.2.12"),
        ]
        stamp = "2026-12-03T10:07:32.123 "
        bad = os.path.join(self.tmp, "must_not.log")
        with open(bad, "w", encoding="utf-8") as f:
            f.write("".join(stamp + line + "\n" for line in must_not))
        counts, matched = f2b_report(bad, filter_file())
        self.assertEqual(counts["lines"], len(must_not), counts)
        self.assertEqual(matched, [], "lines that must not match did")
        good = os.path.join(self.tmp, "must.log")
        with open(good, "w", encoding="utf-8") as f:
            f.write("".join(stamp + line + "\n" for line, _ in must))
        self.assertEqual(f2b_ips(good, filter_file()), [ip for _, ip in must])

    # --- the jail
    def test_jail_reads_the_journal_of_suction_service(self):
        """fail2ban-client -d (the configuration as the server would get it, nothing started)
        over Debian's /etc/fail2ban with only this jail and filter added."""
        with open(JAIL, encoding="utf-8") as f:
            jail = f.read()
        cmds = self.f2b_client_dump(jail)
        self.assertIn(["add", "suction", "systemd"], cmds)
        self.assertIn(["set", "suction", "addjournalmatch", "_SYSTEMD_UNIT=suction.service"], cmds)
        self.assertIn(["set", "suction", "maxlines", 1], cmds)
        self.assertIn(["set", "suction", "logencoding", "utf-8"], cmds)
        failregex = [c[3] for c in cmds if c[:3] == ["multi-set", "suction", "addfailregex"]]
        self.assertEqual(len(failregex), 1)
        self.assertEqual(len(failregex[0]), 2)
        action = [c for c in cmds if c[:2] == ["multi-set", "suction"] and c[2] == "action"]
        self.assertTrue(action, "no ban action")
        self.assertIn(["port", "143,993"], action[0][4])
        # suction.service leaves stderr to the journal: what journalmatch reads.
        with open(os.path.join(pf.SOURCE_DIR, "deploy", "suction.service"), encoding="utf-8") as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/local/bin/suction proxy", unit)
        self.assertNotRegex(unit, r"(?m)^Standard(Error|Output)=")

    def test_jail_file_alternative(self):
        """The commented log-file alternative, switched on, is a valid jail too."""
        with open(JAIL, encoding="utf-8") as f:
            jail = f.read()
        log = os.path.join(self.tmp, "alt.log")
        open(log, "w").close()
        for pattern, repl in ((r"(?m)^(backend = systemd|journalmatch = .*)$", r"# \1"),
                              (r"(?m)^# (backend = auto)$", r"\1"),
                              (r"(?m)^# logpath = .*$", "logpath = " + log)):
            jail, n = re.subn(pattern, repl, jail)
            self.assertGreater(n, 0, pattern)
        cmds = self.f2b_client_dump(jail)
        self.assertIn(["add", "suction", "auto"], cmds)
        self.assertTrue([c for c in cmds if c[:4] == ["set", "suction", "addlogpath", log]], cmds)
        self.assertIn(["set", "suction", "datepattern", r"^%Y-%m-%dT%H:%M:%S\.%f"], cmds)

    def f2b_client_dump(self, jail_text: str) -> list:
        client = shutil.which("fail2ban-client")
        if client is None or not os.path.isfile("/etc/fail2ban/jail.conf"):
            self.skipTest("no fail2ban-client or /etc/fail2ban/jail.conf")
        conf = tempfile.mkdtemp(prefix="conf-", dir=self.tmp)
        shutil.copytree("/etc/fail2ban", conf, dirs_exist_ok=True)
        for name in os.listdir(os.path.join(conf, "jail.d")):  # Debian's sshd jail: not ours
            os.unlink(os.path.join(conf, "jail.d", name))
        shutil.copy(FILTER, os.path.join(conf, "filter.d", "suction.conf"))
        with open(os.path.join(conf, "jail.d", "suction.conf"), "w", encoding="utf-8") as f:
            f.write(jail_text)
        p = subprocess.run([client, "-c", conf, "-d"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=F2B_TIMEOUT,
                           env=dict(os.environ, LC_ALL="C.UTF-8"))
        out = p.stdout.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out[-3000:] + p.stderr.decode("utf-8", "replace"))
        cmds = [ast.literal_eval(line) for line in out.splitlines() if line.startswith("[")]
        self.assertIn(["start", "suction"], cmds, out[-3000:])
        return cmds


# Runs fail2ban-regex in fail2ban's own interpreter with a stand-in `systemd.journal` module,
# so its systemd-journal code path (FilterSystemd, journal matches, formatJournalEntry, the
# journal's time stamps) runs over entries read from a JSON file (argv[1]).
JOURNAL_SHIM = textwrap.dedent('''\
    import datetime, json, sys, types

    ENTRIES = json.load(open(sys.argv.pop(1), encoding="utf-8"))


    class Reader:
        def __init__(self, **kwargs):
            self.groups, self.current, self.pos = [], [], 0

        def add_match(self, *matches):
            self.current.extend(matches)

        def add_disjunction(self):
            if self.current:
                self.groups.append(self.current)
            self.current = []

        def flush_matches(self):
            self.groups, self.current = [], []

        def _wanted(self, e):
            groups = self.groups + ([self.current] if self.current else [])
            return not groups or any(all(e.get(m.split("=", 1)[0]) == m.split("=", 1)[1]
                                         for m in g) for g in groups)

        def get_next(self, skip=1):
            while self.pos < len(ENTRIES):
                e = dict(ENTRIES[self.pos])
                self.pos += 1
                if self._wanted(e):
                    e["__REALTIME_TIMESTAMP"] = datetime.datetime.now()
                    return e
            return {}

        def seek_realtime(self, t):
            pass

        def close(self):
            pass


    journal = types.ModuleType("systemd.journal")
    journal.__version__ = "252"
    journal.Reader = Reader
    systemd = types.ModuleType("systemd")
    systemd.journal = journal
    sys.modules["systemd"] = systemd
    sys.modules["systemd.journal"] = journal

    from fail2ban.client.fail2banregex import exec_command_line
    exec_command_line()
    ''')


class Fail2banIPv6Tests(unittest.TestCase):
    """A proxy listening on [::1]: real client=[::1]:PORT lines, banned as ::1."""

    def test_ipv6_client(self):
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError as e:
            self.skipTest(f"no IPv6 loopback here: {e}")
        port = _free_port6()
        proxy = Proxy6(pf.bed(), {"listen": {"imap": f"[::1]:{port}", "imaps": ""},
                                  "limits": {"login_attempts": LOGIN_ATTEMPTS,
                                             "max_bad_commands": BAD_COMMANDS}})
        proxy.imap_port = port
        self.addCleanup(proxy.stop)
        proxy.start()

        def connect():
            c = pf.RawClient.connect("::1", port, timeout=10)
            c.greeting = c.readline()
            self.assertTrue(c.greeting.startswith(b"* OK"), c.greeting)
            return c
        a = Attacker(self, proxy, source="::1", connect=connect)
        a.login_quoted(b"x client=6.6.6.6:1")
        a.login_literal(b"y\r\nclient=[::6]:1")
        a.bad_commands(b"client=[::6]:1")
        a.finish_connection()
        proxy.stop()
        log = os.path.join(tempfile.mkdtemp(prefix="f2b6-", dir=pf.tmp_root()), "suction.log")
        shutil.copyfile(proxy.log_path, log)
        with open(log, encoding="utf-8") as f:
            self.assertRegex(f.read(), r"login failed user=\S+ client=\[::1\]:\d+ ")
        ips = f2b_ips(log, filter_file())
        self.assertEqual(len(ips), a.failures)
        self.assertEqual(set(ips), {"::1"})


def _free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


class Proxy6(pf.Proxy):
    """The fixture's proxy, probed on ::1 (the fixture probes 127.0.0.1)."""

    def _wait_accepts(self, port, timeout):
        def probe():
            try:
                with socket.create_connection(("::1", port), timeout=1):
                    return True
            except OSError:
                return False
        if not pf.wait_until(probe, timeout, 0.1):
            raise pf.ProxyError(f"proxy does not accept on [::1]:{port} within {timeout}s\n"
                                + self.log_tail())


if __name__ == "__main__":
    unittest.main()
