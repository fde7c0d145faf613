"""Dovecot's imaptest compliance suite (a peer's tests, not ours) run twice against the bed's new
server: directly, and through `suction proxy` in front of that same server. Both runs must pass
every test group with no failed command, and the proxy must not make any group be skipped.

The suite is looked for in $SUCTION_IMAPTEST_DIR, else <source>/../shared/peers/imaptest (the
project's shared folder beside the repository); without it the module is skipped, saying where
it looked. Each run logs in as its own extra bed user (empty mailbox, ASCII password) that no
other test uses, since imaptest fills and empties the mailbox; the password is only on
imaptest's command line and never printed. Each run is bounded in time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import unittest

import proxyfixture as pf

IMAPTEST_DIR = os.path.normpath(os.environ.get("SUCTION_IMAPTEST_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(pf.SOURCE_DIR)), "shared", "peers", "imaptest"))
IMAPTEST_BIN = os.path.join(IMAPTEST_DIR, "imaptest")
IMAPTEST_TESTS = os.path.join(IMAPTEST_DIR, "tests")

EXPECTED_GROUPS = 71       # the scripts in tests/ (README.md of the suite)
RUN_TIMEOUT = 120          # seconds per run; a run takes a few seconds (two must fit ctest's 300)
DIRECT_USER, PROXY_USER = "user001", "user002"   # start_bed(extra_users=2)

SUMMARY_RX = re.compile(r"^(\d+) test groups: (\d+) failed, (\d+) skipped", re.M)
COMMANDS_RX = re.compile(r"^([a-z ]+): (\d+)/(\d+) individual commands failed", re.M)
FAILED_CMD_RX = re.compile(r"^\*\*\* Test (\S+) command (\d+)/(\d+)", re.M)


def setUpModule():
    if not os.access(IMAPTEST_BIN, os.X_OK) or not os.path.isdir(IMAPTEST_TESTS):
        raise unittest.SkipTest(
            f"no imaptest suite at {IMAPTEST_DIR} (needs an executable imaptest and tests/; "
            "set SUCTION_IMAPTEST_DIR, or put the project's shared/ folder beside the repository)")
    pf.start_bed(extra_users=2)


class Run:
    """One imaptest run: its exit code, output and what was parsed from it."""

    def __init__(self, label: str, port: int, user: str, password: str):
        self.label = label
        self.port = port
        self.user = user
        self.password = password
        self.returncode: int | None = None
        self.stdout = ""
        self.stderr = ""
        self.seconds = 0.0
        self.timed_out = False
        self.groups = self.failed_groups = self.skipped_groups = None
        self.commands = 0          # individual commands run (base protocol + extensions)
        self.failed_commands = 0   # ... and failed, as imaptest counts them
        self.failed_lines: list[str] = []   # the `*** Test NAME command i/n` lines on stderr

    def redact(self, text: str) -> str:
        return text.replace(self.password, "<password>") if self.password else text

    def run(self, workdir: str) -> "Run":
        os.makedirs(workdir, exist_ok=True)
        argv = [IMAPTEST_BIN, f"host={pf.HOST}",
                f"port={self.port}", f"user={self.user}", f"pass={self.password}",
                f"test={IMAPTEST_TESTS}"]
        started = time.monotonic()
        try:
            p = subprocess.run(argv, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=RUN_TIMEOUT)
            self.returncode, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:   # run() has killed it; its str() shows argv
            self.timed_out = True
            out, err = e.stdout or b"", e.stderr or b""
        self.seconds = time.monotonic() - started
        self.stdout = self.redact(out.decode("utf-8", "replace"))
        self.stderr = self.redact(err.decode("utf-8", "replace"))
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            with open(os.path.join(workdir, f"imaptest.{name}"), "w", encoding="utf-8") as f:
                f.write(text)
        m = SUMMARY_RX.search(self.stdout)
        if m:
            self.groups, self.failed_groups, self.skipped_groups = map(int, m.groups())
        for m in COMMANDS_RX.finditer(self.stdout):
            self.failed_commands += int(m.group(2))
            self.commands += int(m.group(3))
        self.failed_lines = [m.group(0) for m in FAILED_CMD_RX.finditer(self.stderr)]
        return self

    def failed_test_names(self) -> list[str]:
        return sorted({line.split()[2] for line in self.failed_lines})

    def summary(self) -> str:
        if self.timed_out:
            return f"{self.label}: timed out after {RUN_TIMEOUT}s"
        if self.groups is None:
            return f"{self.label}: no summary (exit {self.returncode})"
        s = (f"{self.label}: {self.groups - self.failed_groups}/{self.groups} groups passed, "
             f"{self.skipped_groups} skipped, {self.failed_commands}/{self.commands} commands "
             f"failed, exit {self.returncode}, {self.seconds:.1f}s")
        if self.failed_lines:
            s += " [failed: " + ", ".join(self.failed_test_names()) + "]"
        return s

    def details(self) -> str:
        """What a failure message shows: the summary, stdout, and stderr (the `*** Test` blocks)."""
        text = f"{self.summary()}\n--- imaptest stdout\n{self.stdout.strip()}\n"
        if self.stderr.strip():
            # A failed command is echoed whole (the `id` group's is 31 KB): cut long lines.
            err = "\n".join(line if len(line) <= 300 else f"{line[:300]}... ({len(line)} chars)"
                            for line in self.stderr.strip().splitlines())
            if len(err) > 20000:
                err = err[:20000] + f"\n... ({len(self.stderr)} characters in all)"
            text += f"--- imaptest stderr\n{err}\n"
        if self.groups is None and not self.timed_out:
            text += "--- ldd imaptest (does it start at all?)\n" + _ldd() + "\n"
        return text


def _ldd() -> str:
    try:
        p = subprocess.run(["ldd", IMAPTEST_BIN], capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"ldd failed: {e!r}"


class ImaptestTests(unittest.TestCase):
    def check(self, r: Run, direct: Run | None = None) -> None:
        msg = "\n" + r.details()
        self.assertFalse(r.timed_out, msg)
        self.assertIsNotNone(r.groups, "no '... test groups: N failed' line" + msg)
        self.assertEqual(r.groups, EXPECTED_GROUPS, msg)
        self.assertEqual(r.failed_groups, 0, msg)
        self.assertEqual(r.failed_commands, 0, msg)
        self.assertEqual(r.failed_lines, [], msg)
        self.assertEqual(r.returncode, 0, msg)
        self.assertGreater(r.commands, 0, msg)
        if direct is not None and direct.groups is not None:
            # The proxy hides no capability the server has: nothing more skipped, as many
            # commands run.
            self.assertEqual(r.skipped_groups, direct.skipped_groups,
                             "skipped through the proxy but not directly" + msg)
            self.assertEqual(r.commands, direct.commands,
                             f"{direct.commands} commands run directly" + msg)

    def test_imaptest_direct_and_through_proxy(self):
        tb = pf.bed()
        root = pf.tmp_root()
        direct = Run("direct", tb.new.imap_port, DIRECT_USER, tb.users[DIRECT_USER])
        direct.run(os.path.join(root, "imaptest-direct"))

        proxy = pf.Proxy(tb)
        self.addCleanup(proxy.stop)
        proxy.start()
        through = Run("proxy", proxy.imap_port, PROXY_USER, tb.users[PROXY_USER])
        through.run(os.path.join(root, "imaptest-proxy"))
        proxy.stop()

        print(f"\nimaptest {IMAPTEST_DIR}: {direct.summary()}; {through.summary()}",
              file=sys.stderr, flush=True)

        with self.subTest("direct"):
            self.check(direct)
        with self.subTest("through the proxy"):
            try:
                self.check(through, direct)
            except AssertionError as e:
                raise AssertionError(through.redact(f"{e}\n{proxy.log_tail(60)}")) from None
            # It really went through the proxy.
            self.assertRegex(proxy.log(), rf"login ok user={PROXY_USER} ")


if __name__ == "__main__":
    unittest.main()
