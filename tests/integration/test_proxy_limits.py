"""The proxy's own answers when things go wrong: the backend is down, and the pre-auth limits
(line length, literal size, bad commands, idle, connections per address, failed logins)."""

import socket
import threading
import re
import time
import unittest

import proxyfixture as pf


def setUpModule():
    pf.start_bed()


class BackendDownTests(unittest.TestCase):
    def test_login_unavailable_when_backend_port_closed(self):
        tb = pf.bed()
        closed = pf.free_ports(1)[0]  # nothing listens there
        proxy = pf.Proxy(tb, {"new": {"port": closed, "connect_timeout": 2}})
        self.addCleanup(proxy.stop)
        proxy.start()
        proxy.wait_log(rf"backend probe failed backend=127\.0\.0\.1:{closed}")
        with proxy.raw() as c:
            for attempt, tag in enumerate(("a", "b")):
                started = time.monotonic()
                tagged = c.command(tag, "LOGIN alice wonderland", timeout=10)
                elapsed = time.monotonic() - started
                self.assertTrue(tagged.startswith(tag.encode() + b" NO [UNAVAILABLE]"), tagged)
                self.assertLess(elapsed, 2 + 1.5, "slower than connect_timeout")
                # Still usable (and an unavailable backend is no failed login: no BYE after 3).
                self.assertTrue(c.command("n%d" % attempt, "NOOP").startswith(b"n%d OK" % attempt))
        m = proxy.wait_log(r"[^\n]*login unavailable[^\n]*")
        self.assertIn(f"backend=127.0.0.1:{closed}", m.group(0))
        self.assertIn("user=alice", m.group(0))
        self.assertNotIn("wonderland", proxy.log())

    def test_login_unavailable_when_backend_does_not_answer(self):
        """A backend that accepts but never greets: NO [UNAVAILABLE] after connect_timeout."""
        tb = pf.bed()
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        proxy = pf.Proxy(tb, {"new": {"port": port, "connect_timeout": 2}})
        self.addCleanup(proxy.stop)
        proxy.start(wait_probe=False)
        with proxy.raw() as c:
            started = time.monotonic()
            tagged = c.command("a", "LOGIN alice wonderland", timeout=10)
            elapsed = time.monotonic() - started
            self.assertTrue(tagged.startswith(b"a NO [UNAVAILABLE]"), tagged)
            self.assertGreater(elapsed, 1.5)
            self.assertLess(elapsed, 2 + 2.0)
            self.assertTrue(c.command("b", "NOOP").startswith(b"b OK"))
        m = proxy.wait_log(r"[^\n]*login unavailable[^\n]*")
        self.assertIn(f"backend=127.0.0.1:{port}", m.group(0))


class TempfailBackend:
    """A backend whose every LOGIN gets NO [UNAVAILABLE] (Dovecot's auth service down)."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.srv.settimeout(0.2)
        for _ in range(3000):  # bounded: 10 minutes at most
            if self.stop:
                return
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    @staticmethod
    def session(conn):
        with conn:
            conn.settimeout(10)
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")
            buf = b""
            for _ in range(100):
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    tag, _, rest = line.partition(b" ")
                    if rest.upper().startswith(b"LOGIN"):
                        conn.sendall(tag + b" NO [UNAVAILABLE] Temporary authentication failure.\r\n")
                    elif rest.upper().startswith(b"CAPABILITY"):
                        conn.sendall(b"* CAPABILITY IMAP4rev1 LITERAL+\r\n" + tag + b" OK done\r\n")
                    else:
                        conn.sendall(tag + b" BAD no\r\n")

    def close(self):
        self.stop = True
        self.srv.close()


class BackendTempfailTests(unittest.TestCase):
    def test_backend_unavailable_answer_is_passed_on_and_not_counted(self):
        backend = TempfailBackend()
        self.addCleanup(backend.close)
        proxy = pf.Proxy(pf.bed(), {"new": {"port": backend.port}, "limits": {"login_attempts": 3}})
        self.addCleanup(proxy.stop)
        proxy.start()
        with proxy.raw() as c:
            for i in range(5):  # more than login_attempts: none of them counts
                tagged = c.command(f"t{i}", "LOGIN alice wonderland")
                self.assertEqual(tagged, b"t%d NO [UNAVAILABLE] Temporary authentication failure.\r\n" % i)
            self.assertTrue(c.command("n", "NOOP").startswith(b"n OK"))
        proxy.wait_log(r"login unavailable user=alice [^\n]*reason=\"\[UNAVAILABLE\] Temporary")
        self.assertNotIn("login failed", proxy.log())
        self.assertNotIn("too many failed logins", proxy.log())


class RelayIdleTests(unittest.TestCase):
    """Plaintext relays are swept by their relay loop, TLS ones (Asio relays) by the daemon's
    sweep, which runs only while such relays exist: both kinds, and the sweep started again."""

    def test_idle_logged_in_session_is_closed_and_a_busy_one_is_not(self):
        self.check_idle("none")

    def test_idle_tls_session_is_closed_and_a_busy_one_is_not_twice(self):
        self.check_idle("implicit", rounds=2)

    def check_idle(self, tls, rounds=1):
        tb = pf.bed()
        proxy = pf.Proxy(tb, {"limits": {"relay_idle": 1}})
        self.addCleanup(proxy.stop)
        proxy.start()
        for _ in range(rounds):
            self.idle_round(tb, proxy, tls)
        self.assertEqual(len(re.findall(r"session closed user=alice [^\n]*reason=\"idle\"", proxy.log())),
                         rounds, proxy.log())
        self.assertEqual(len(re.findall(r"session closed user=alice [^\n]*reason=\"client closed\"",
                                        proxy.log())), rounds, proxy.log())

    def idle_round(self, tb, proxy, tls):
        password = tb.users["alice"]
        after = len(proxy.log())
        with proxy.raw(tls=tls) as idle, proxy.raw(tls=tls) as busy:
            for c in (idle, busy):
                self.assertTrue(c.command("a", f"LOGIN alice {pf.quote(password)}").startswith(b"a OK"))
            started = time.monotonic()
            for i in range(8):  # 8 x 0.3 s: well past relay_idle for the idle one
                self.assertTrue(busy.command(f"n{i}", "NOOP").startswith(b"n%d OK" % i))
                time.sleep(0.3)
            rest = idle.wait_closed(3)
            self.assertLess(time.monotonic() - started, 5)
            self.assertNotIn(b"OK", rest)
            self.assertTrue(busy.command("z", "NOOP").startswith(b"z OK"))
        proxy.wait_log(r"session closed user=alice [^\n]*reason=\"idle\"", after=after)
        proxy.wait_log(r"session closed user=alice [^\n]*reason=\"client closed\"", after=after)


class PreauthLimitTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proxy = pf.Proxy(pf.bed(), {"limits": {
            "max_line": 1024, "max_literal": 1024, "max_bad_commands": 3, "login_attempts": 3,
            "preauth_idle": 2, "max_connections_per_ip": 3}})
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def setUp(self):
        self.log_at = len(self.proxy.log())

    def wait_log(self, pattern, timeout=5.0):
        return self.proxy.wait_log(pattern, timeout, after=self.log_at)

    def test_line_too_long(self):
        with self.proxy.raw() as c:
            port = c.sock.getsockname()[1]
            # Under the limit is fine.
            self.assertTrue(c.command("a", "ID (" + '"k" "' + "v" * 900 + '")').startswith(b"a OK"))
            c.send(b"b NOOP " + b"x" * 2048 + b"\r\n")
            rest = c.wait_closed(5)
            self.assertEqual(rest, b"* BYE Too long command line.\r\n")
        self.wait_log(rf"preauth limit client=127\.0\.0\.1:{port} reason=\"line too long\"")
        # The limit line is the session's last word: nothing claims the client logged out.
        self.assertNotRegex(self.proxy.log(),
                            rf"client=127\.0\.0\.1:{port} reason=\"logout\"")

    def test_line_too_long_without_crlf(self):
        with self.proxy.raw() as c:
            port = c.sock.getsockname()[1]
            c.send(b"a LOGIN " + b"y" * 4096)  # never ends the line
            rest = c.wait_closed(5)
            self.assertEqual(rest, b"* BYE Too long command line.\r\n")
        self.wait_log(rf"preauth limit client=127\.0\.0\.1:{port} reason=\"line too long\"")

    def test_literal_too_large(self):
        with self.proxy.raw() as c:
            c.send(b"a LOGIN alice {100000}\r\n")
            line = c.readline()
            self.assertEqual(line, b"a NO [TOOBIG] Literal too large.\r\n")
            # The connection goes on: the literal was never sent, the next command is read.
            self.assertTrue(c.command("b", "NOOP").startswith(b"b OK"))
            self.assertTrue(c.command("c", "LOGIN alice wonderland").startswith(b"c OK"))

    def test_literal_too_large_logged(self):
        """The refused literal leaves a trace in the log (like every other limit)."""
        with self.proxy.raw() as c:
            port = c.sock.getsockname()[1]
            c.send(b"a LOGIN alice {100000}\r\n")
            self.assertEqual(c.readline(), b"a NO [TOOBIG] Literal too large.\r\n")
            self.assertTrue(c.command("b", "NOOP").startswith(b"b OK"))
        self.wait_log(rf"(?i)client=127\.0\.0\.1:{port}\b[^\n]*(literal|toobig)"
                      rf"|(literal|toobig)[^\n]*client=127\.0\.0\.1:{port}\b", timeout=2)

    def test_literal_at_limit_accepted(self):
        with self.proxy.raw() as c:
            c.send(b"a ID (\"k\" {1000}\r\n")
            self.assertTrue(c.readline().startswith(b"+"))
            c.send(b"z" * 1000 + b")\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)

    def test_too_many_bad_commands(self):
        with self.proxy.raw() as c:
            self.assertTrue(c.command("a", "FROBNICATE").startswith(b"a BAD"))
            self.assertTrue(c.command("b", "SELECT INBOX").startswith(b"b BAD"))
            c.send(b"c XYZZY\r\n")
            rest = c.wait_closed(5)
            self.assertEqual(rest, b"* BYE Too many invalid IMAP commands.\r\n")
        self.wait_log(r"preauth limit client=127\.0\.0\.1:\d+ reason=\"too many invalid commands\"")

    def test_preauth_idle(self):
        with self.proxy.raw() as c:
            started = time.monotonic()
            rest = c.wait_closed(2 + 3)
            elapsed = time.monotonic() - started
            self.assertGreater(elapsed, 1.5)
            self.assertFalse(rest.startswith(b"a "), rest)
        self.wait_log(r"session closed before login client=127\.0\.0\.1:\d+ reason=\"idle "
                      r"timeout\"")

    def test_activity_resets_idle(self):
        with self.proxy.raw() as c:
            started = time.monotonic()
            for i in range(2):  # 2 x 1.3 s > preauth_idle
                time.sleep(1.3)
                self.assertTrue(c.command(f"n{i}", "NOOP").startswith(b"n%d OK" % i))
            self.assertGreater(time.monotonic() - started, 2.5)

    def test_max_connections_per_ip(self):
        source = "127.0.0.5"  # an address of its own: other tests' connections don't count
        clients = []
        try:
            for _ in range(3):
                clients.append(self.proxy.raw(source=source))
            with pf.RawClient.connect("127.0.0.1", self.proxy.imap_port, source=source) as fourth:
                port = fourth.sock.getsockname()[1]
                rest = fourth.wait_closed(5)
                self.assertEqual(rest, b"* BYE Too many connections.\r\n")
            self.wait_log(rf"connection refused client=127\.0\.0\.5:{port} reason=\"too many "
                          r"connections from this address\"")
            # Another address is not affected, and the three still work.
            with self.proxy.raw(source="127.0.0.6") as other:
                self.assertTrue(other.command("a", "NOOP").startswith(b"a OK"))
            for i, c in enumerate(clients):
                self.assertTrue(c.command(f"t{i}", "NOOP").startswith(b"t%d OK" % i))
            # One leaves: a new one is welcome again.
            clients.pop().close()
            self.wait_log(r"session closed before login client=127\.0\.0\.5")
            clients.append(self.proxy.raw(source=source))
        finally:
            for c in clients:
                c.close()

    def test_too_many_failed_logins(self):
        with self.proxy.raw() as c:
            for tag in ("a", "b"):
                tagged = c.command(tag, "LOGIN alice wrong-password")
                self.assertTrue(tagged.startswith(tag.encode() + b" NO [AUTHENTICATIONFAILED]"),
                                tagged)
            c.send(b"c LOGIN alice still-wrong\r\n")
            rest = c.wait_closed(10)
            lines = rest.splitlines(keepends=True)
            self.assertEqual(len(lines), 2, rest)
            self.assertTrue(lines[0].startswith(b"c NO [AUTHENTICATIONFAILED]"), rest)
            self.assertEqual(lines[1], b"* BYE Too many failed login attempts.\r\n")
        self.wait_log(r"preauth limit client=127\.0\.0\.1:\d+ reason=\"too many failed logins\"")


if __name__ == "__main__":
    unittest.main()
