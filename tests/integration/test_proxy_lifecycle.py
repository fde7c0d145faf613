"""The proxy as a process: start-up errors (config, ports), --version, SIGTERM with sessions
open (drain with a grace period), SIGHUP (certificate reload)."""

import hashlib
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import unittest

import proxyfixture as pf


def setUpModule():
    pf.start_bed()


def run_suction(*args, timeout=15) -> subprocess.CompletedProcess:
    return subprocess.run([pf.SUCTION_BIN, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def nonempty_lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.strip()]


def line_of(path: str, needle: str) -> int:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.startswith(needle):
                return n
    raise AssertionError(f"{needle!r} not in {path}")


class CommandLineTests(unittest.TestCase):
    def test_version(self):
        r = run_suction("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.strip(), r"^suction \d+\.\d+(\.\d+)?\S*$")

    def check_config_error(self, overrides: dict, needle: str, key_words: list[str]):
        """suction proxy exits non-zero with ONE stderr line naming file, line and key."""
        p = pf.Proxy(pf.bed(), overrides, name="badconf")
        p.write_config()
        if needle:
            line = line_of(p.config_path, needle)
        r = run_suction("proxy", "--config", p.config_path)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        lines = nonempty_lines(r.stderr)
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn(p.config_path, lines[0])
        if needle:
            self.assertRegex(lines[0], rf"{re.escape(p.config_path)}:{line}\b", lines[0])
        for word in key_words:
            self.assertIn(word, lines[0])
        self.assertEqual(r.stdout, "")
        return lines[0]

    def test_wrong_type(self):
        self.check_config_error({"new": {"port": "x"}}, 'port = "x"', ["[new]", "port"])

    def test_out_of_range(self):
        self.check_config_error({"new": {"port": 70000}}, "port = 70000", ["[new]", "port"])

    def test_unknown_key(self):
        self.check_config_error({"limits": {"max_lines": 5}}, "max_lines = 5",
                                ["[limits]", "max_lines"])

    def test_unknown_section(self):
        self.check_config_error({"bogus": {"x": 1}}, "[bogus]", ["bogus"])

    def test_missing_file(self):
        path = os.path.join(pf.tmp_root(), "does-not-exist.toml")
        r = run_suction("proxy", "--config", path)
        self.assertNotEqual(r.returncode, 0)
        lines = nonempty_lines(r.stderr)
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn(path, lines[0])

    def test_missing_certificate_file(self):
        missing = os.path.join(pf.tmp_root(), "no-such-cert.pem")
        line = self.check_config_error({"listen": {"tls_cert": missing}}, "", ["tls_cert"])
        self.assertIn(missing, line)

    def check_port_in_use(self, key: str):
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        p = pf.Proxy(pf.bed(), {"listen": {key: f"127.0.0.1:{port}"}}, name="inuse")
        p.write_config()
        r = run_suction("proxy", "--config", p.config_path)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        lines = nonempty_lines(r.stderr)
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertIn("[listen]", lines[0])
        self.assertIn(f"127.0.0.1:{port}", lines[0])
        self.assertIn(key, lines[0])

    def test_imap_port_in_use(self):
        self.check_port_in_use("imap")

    def test_imaps_port_in_use(self):
        self.check_port_in_use("imaps")


class ShutdownTests(unittest.TestCase):
    GRACE = 3

    def refused(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return False
        except ConnectionRefusedError:
            return True

    def test_sigterm_with_sessions_open(self):
        proxy = pf.Proxy(pf.bed(), {"limits": {"shutdown_grace": self.GRACE}})
        self.addCleanup(proxy.stop)
        proxy.start()
        preauth = proxy.raw()
        self.addCleanup(preauth.close)
        relay = proxy.raw()
        self.addCleanup(relay.close)
        self.assertTrue(relay.command("a", "LOGIN alice wonderland").startswith(b"a OK"))
        self.assertTrue(relay.command("b", "SELECT INBOX").startswith(b"b OK"))

        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        # The pre-auth session is told and closed.
        rest = preauth.wait_closed(3)
        self.assertTrue(rest.startswith(b"* BYE"), rest)
        # The logged-in one keeps working...
        self.assertTrue(relay.command("c", "NOOP", timeout=2).startswith(b"c OK"))
        # ... while nobody new gets in.
        self.assertTrue(pf.wait_until(lambda: self.refused(proxy.imap_port), 2),
                        "the imap listener still accepts after SIGTERM")
        self.assertTrue(self.refused(proxy.imaps_port), "the imaps listener still accepts")
        time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
        self.assertTrue(relay.command("d", "NOOP", timeout=1).startswith(b"d OK"))
        # Closed when the grace period is over.
        relay.wait_closed(self.GRACE + 3)
        closed_after = time.monotonic() - t0
        self.assertGreater(closed_after, self.GRACE - 0.5)
        # The process exits 0 within grace + 5 s.
        try:
            rc = proxy.proc.wait(max(0.1, t0 + self.GRACE + 5 - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail(f"still running {self.GRACE + 5}s after SIGTERM\n" + proxy.log_tail())
        self.assertEqual(rc, 0, proxy.log_tail())
        log = proxy.log()
        self.assertIn("SIGTERM: stopping", log)
        self.assertRegex(log, r"session closed user=alice [^\n]*reason=\"shutdown\"")
        self.assertIn("shutdown complete", log)

    def test_io_threads_share_the_sessions_and_drain_together(self):
        """[proxy] threads = 3: two io threads besides the main one, named; logged-in sessions
        spread over all three (each thread's own run time grows while they work); SIGTERM
        closes them all after the grace period and the process exits 0."""
        proxy = pf.Proxy(pf.bed(), {"proxy": {"threads": 3}, "limits": {"shutdown_grace": 1}})
        self.addCleanup(proxy.stop)
        proxy.start()
        self.assertIn("io threads=3 ", proxy.log())
        tasks = {}
        for tid in os.listdir(f"/proc/{proxy.proc.pid}/task"):
            with open(f"/proc/{proxy.proc.pid}/task/{tid}/comm") as f:
                tasks[f.read().strip()] = tid
        self.assertIn("suction-io-1", tasks)
        self.assertIn("suction-io-2", tasks)

        def run_ns(name: str) -> int:
            with open(f"/proc/{proxy.proc.pid}/task/{tasks[name]}/schedstat") as f:
                return int(f.read().split()[0])
        before = {n: run_ns(n) for n in ("suction-io-1", "suction-io-2")}
        clients = []
        for i in range(6):
            c = proxy.raw()
            self.addCleanup(c.close)
            self.assertTrue(c.command("a", "LOGIN alice wonderland").startswith(b"a OK"))
            self.assertTrue(c.command("b", "SELECT INBOX").startswith(b"b OK"))
            clients.append(c)
        for round_ in range(30):
            for c in clients:
                self.assertTrue(c.command(f"n{round_}", "NOOP").startswith(f"n{round_} OK".encode()))
        for n, t in before.items():
            self.assertGreater(run_ns(n), t, f"{n} relayed nothing: the sessions were not spread")
        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        for c in clients:
            c.wait_closed(5)
        try:
            rc = proxy.proc.wait(max(0.1, t0 + 6 - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail("still running 6 s after SIGTERM\n" + proxy.log_tail())
        self.assertEqual(rc, 0, proxy.log_tail())
        log = proxy.log()
        self.assertEqual(log.count('reason="shutdown"'), 6, proxy.log_tail())
        self.assertIn("shutdown complete", log)

    def test_sigterm_exits_when_last_session_leaves(self):
        proxy = pf.Proxy(pf.bed(), {"limits": {"shutdown_grace": 30}})
        self.addCleanup(proxy.stop)
        proxy.start()
        with proxy.raw() as relay:
            self.assertTrue(relay.command("a", "LOGIN bob {%d+}\r\n%s" % (
                len(proxy.tb.users["bob"]), proxy.tb.users["bob"])).startswith(b"a OK"))
            t0 = time.monotonic()
            proxy.signal(signal.SIGTERM)
            proxy.wait_log(r"stop: no new connections; 1 logged-in session")
            self.assertTrue(relay.command("b", "LOGOUT").startswith(b"b OK"))
        try:
            rc = proxy.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.fail("did not exit after the last session ended\n" + proxy.log_tail())
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 5)

    def test_sigterm_idle_exits_at_once(self):
        proxy = pf.Proxy(pf.bed(), {"limits": {"shutdown_grace": 30}})
        self.addCleanup(proxy.stop)
        proxy.start()
        # The fixture's accept probes (one per listener) are gone: no session is open.
        proxy.wait_log(r"session closed before login client=")
        proxy.wait_log(r"tls handshake failed client=")
        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        try:
            rc = proxy.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.fail("did not exit\n" + proxy.log_tail())
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 2)


def cert_der(path: str) -> bytes:
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def make_cert(directory: str, cn: str) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        f"/CN={cn}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-keyout", key, "-out", cert], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"openssl: {r.stderr}")
    return cert, key


def presented_cert(port: int, starttls: bool = False) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if starttls:
        c = pf.RawClient.connect("127.0.0.1", port, timeout=5)
        try:
            c.readline()
            c.send(b"a STARTTLS\r\n")
            _, tagged = c.read_tagged("a")
            assert tagged.startswith(b"a OK"), tagged
            c.starttls(ctx)
            return c.sock.getpeercert(binary_form=True)
        finally:
            c.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return t.getpeercert(binary_form=True)


class ReloadTests(unittest.TestCase):
    def test_sighup_reloads_certificate(self):
        proxy = pf.Proxy(pf.bed())
        self.addCleanup(proxy.stop)
        proxy.start()
        old = cert_der(proxy.cert)
        self.assertEqual(presented_cert(proxy.imaps_port), old)
        # A session from before the reload.
        before = proxy.raw(tls="implicit")
        self.addCleanup(before.close)

        new_cert, new_key = make_cert(os.path.join(proxy.dir, "new"), "suction-reloaded")
        new = cert_der(new_cert)
        self.assertNotEqual(new, old)
        os.replace(new_key, proxy.key)
        os.replace(new_cert, proxy.cert)
        at = len(proxy.log())
        proxy.signal(signal.SIGHUP)
        proxy.wait_log(r"SIGHUP: TLS certificate reloaded", after=at)

        self.assertEqual(hashlib.sha256(presented_cert(proxy.imaps_port)).hexdigest(),
                         hashlib.sha256(new).hexdigest())
        self.assertEqual(presented_cert(proxy.imap_port, starttls=True), new)
        # Verifiable with the new certificate as the trust anchor, not with the old one.
        ctx = ssl.create_default_context(cafile=proxy.cert)
        with socket.create_connection(("127.0.0.1", proxy.imaps_port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                self.assertTrue(t.recv(100).startswith(b"* OK"))
        with self.assertRaises(ssl.SSLCertVerificationError):
            proxy.raw(tls="implicit")  # verifies with the bed's (old) CA
        # The old session goes on, and the process is still the same one.
        self.assertTrue(before.command("a", "NOOP").startswith(b"a OK"))
        self.assertTrue(proxy.running())

    def test_sighup_with_broken_certificate_keeps_old(self):
        proxy = pf.Proxy(pf.bed())
        self.addCleanup(proxy.stop)
        proxy.start()
        old = cert_der(proxy.cert)
        with open(proxy.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        at = len(proxy.log())
        proxy.signal(signal.SIGHUP)
        proxy.wait_log(r"SIGHUP: keeping the old certificate", after=at)
        self.assertEqual(presented_cert(proxy.imaps_port), old)
        self.assertTrue(proxy.running())
        m = proxy.imap("implicit")
        self.assertEqual(m.login("alice", "wonderland")[0], "OK")
        m.logout()


if __name__ == "__main__":
    unittest.main()
