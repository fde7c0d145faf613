"""The PROXY protocol on the listeners (issue 12 must 4), against the bed's real Dovecot and a
real HAProxy (Debian's haproxy, `send-proxy` and `send-proxy-v2`).

suction trusts 127.0.0.2 only ([listen] proxy_protocol_from); a test connects from another
loopback address by binding it as its source.

- HAProxy (connecting from 127.0.0.2) in front of suction, v1 and v2: a client connecting to
  HAProxy from 127.0.0.3 logs in; suction logs client=127.0.0.3 and the new server's log shows
  rip=127.0.0.3 (x-originating-ip from the header's address, not HAProxy's).
- Hand-made headers from 127.0.0.2: v1 TCP4 and v2 TCP6 give the client addresses 192.0.2.7 and
  2001:db8::7 (suction's log, the new server's rip); v2 before implicit TLS (the ClientHello
  right behind the header is not lost); LOCAL (a health check) keeps the balancer's address.
- The header's address is the one limits count: max_connections_per_ip = 2 refuses a third
  connection of one header address, not connections of other addresses behind the same balancer.
- Refused: a header from 127.0.0.1 (not listed), no header from 127.0.0.2 (the deadline), a
  malformed header from 127.0.0.2.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import unittest

from proxyfixture import HOST, Proxy, RawClient, bed, start_bed, tmp_root, wait_until
from testbed import free_ports

BALANCER = "127.0.0.2"
CLIENT = "127.0.0.3"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_tcp4(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 143) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + sport.to_bytes(2, "big") + \
        dport.to_bytes(2, "big")
    return V2_SIG + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body


def v2_tcp6(src: str, sport: int, dst: str = "::1", dport: int = 143) -> bytes:
    body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + \
        sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return V2_SIG + bytes([0x21, 0x21]) + len(body).to_bytes(2, "big") + body


def setUpModule():
    start_bed(seed=False)


def behind(p: Proxy, header: bytes, tls: bool = False, source: str = BALANCER) -> RawClient:
    """A connection from `source` that opens with `header`, then IMAP (over TLS if asked)."""
    s = socket.create_connection((HOST, p.imaps_port if tls else p.imap_port), timeout=10,
                                 source_address=(source, 0))
    s.sendall(header)
    if tls:
        s = p.client_context().wrap_socket(s, server_hostname=HOST)
    c = RawClient(s)
    c.greeting = c.readline()
    return c


def log_in(c: RawClient, user: str = "alice") -> bytes:
    pw = bed().users[user].replace("\\", "\\\\").replace('"', '\\"')
    return c.command("a1", f'LOGIN {user} "{pw}"')


class ProxyProtocol(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.p = Proxy(overrides={"listen": {"proxy_protocol_from": [BALANCER]},
                                 "limits": {"max_connections_per_ip": 2, "preauth_idle": 2}})
        cls.p.start()

    @classmethod
    def tearDownClass(cls):
        cls.p.stop()

    def test_v1_and_v2_headers_name_the_client(self):
        p, new = self.p, bed().new
        cases = [(b"PROXY TCP4 192.0.2.7 127.0.0.1 40007 143\r\n", False, "192.0.2.7:40007",
                  "192.0.2.7"),
                 (v2_tcp6("2001:db8::7", 40008), False, r"\[2001:db8::7\]:40008", "2001:db8::7"),
                 (v2_tcp4("198.51.100.9", 40009), True, "198.51.100.9:40009", "198.51.100.9")]
        for header, tls, client, rip in cases:
            with self.subTest(client=client):
                c = behind(p, header, tls=tls)
                try:
                    self.assertTrue(c.greeting.startswith(b"* OK"), c.greeting)
                    self.assertIn(b"a1 OK", log_in(c))
                    c.command("a2", "LOGOUT")
                finally:
                    c.close()
                p.wait_log(r"login ok user=alice client=" + client + " ")
                new.wait_log(r"Login: user=<alice>.* rip=" + rip + ",")

    def test_local_keeps_the_balancers_address(self):
        c = behind(self.p, V2_SIG + bytes([0x20, 0x00, 0x00, 0x00]))
        try:
            self.assertIn(b"a1 OK", log_in(c))
        finally:
            c.close()
        self.p.wait_log(r"login ok user=alice client=127\.0\.0\.2:")

    def test_limits_count_the_headers_address(self):
        p = self.p
        held = []
        try:
            for port in (41001, 41002):
                held.append(behind(p, f"PROXY TCP4 203.0.113.5 127.0.0.1 {port} 143\r\n".encode()))
                self.assertTrue(held[-1].greeting.startswith(b"* OK"))
            third = behind(p, b"PROXY TCP4 203.0.113.5 127.0.0.1 41003 143\r\n")
            self.assertEqual(third.greeting, b"* BYE Too many connections.\r\n")
            third.close()
            # Another client behind the same balancer is not counted with them.
            other = behind(p, b"PROXY TCP4 203.0.113.6 127.0.0.1 41004 143\r\n")
            self.assertTrue(other.greeting.startswith(b"* OK"), other.greeting)
            other.close()
        finally:
            for c in held:
                c.close()
        p.wait_log(r"connection refused client=203\.0\.113\.5:41003 reason=\"too many connections "
                   r"from this address\"")

    def test_refused_header_from_elsewhere_missing_or_malformed(self):
        p = self.p
        # From 127.0.0.1, not listed: the header is refused after the greeting.
        c = RawClient.connect(HOST, p.imap_port)
        try:
            self.assertTrue(c.readline().startswith(b"* OK"))
            c.send(b"PROXY TCP4 192.0.2.66 127.0.0.1 40000 143\r\n")
            self.assertEqual(c.readline(),
                             b"* BYE PROXY protocol header not accepted from this address.\r\n")
        finally:
            c.close()
        p.wait_log(r"proxy protocol refused client=127\.0\.0\.1:\d+ reason=\"a header from an "
                   r"address not in \[listen\] proxy_protocol_from\"")
        # From the balancer without a header: nothing is answered; closed at the deadline.
        s = socket.create_connection((HOST, p.imap_port), timeout=10, source_address=(BALANCER, 0))
        try:
            t0 = time.monotonic()
            self.assertEqual(s.recv(100), b"")
            self.assertLess(time.monotonic() - t0, 8)
        finally:
            s.close()
        p.wait_log(r"proxy protocol refused client=127\.0\.0\.2:\d+ reason=\"no PROXY protocol "
                   r"header within 2000ms\"")
        # A malformed one: closed at once, unanswered (a reset: its bytes were never read).
        s = socket.create_connection((HOST, p.imap_port), timeout=10, source_address=(BALANCER, 0))
        try:
            s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 143\r\n")
            try:
                self.assertEqual(s.recv(100), b"")
            except ConnectionResetError:
                pass
        finally:
            s.close()
        p.wait_log(r"proxy protocol refused client=127\.0\.0\.2:\d+ reason=\"v1 header with a bad "
                   r"port\"")


@unittest.skipUnless(shutil.which("haproxy"), "haproxy not installed (deploy/install-deps.sh "
                     "installs Debian's haproxy)")
class BehindHAProxy(unittest.TestCase):

    def test_haproxy_send_proxy_v1_and_v2(self):
        p = Proxy(overrides={"listen": {"proxy_protocol_from": [BALANCER]}})
        p.start()
        self.addCleanup(p.stop)
        v1_port, v2_port = free_ports(2)
        cfg = os.path.join(tmp_root(), "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
  maxconn 100
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend v1
  bind {HOST}:{v1_port}
  default_backend suction_v1
frontend v2
  bind {HOST}:{v2_port}
  default_backend suction_v2
backend suction_v1
  server s1 {HOST}:{p.imap_port} send-proxy source {BALANCER}
backend suction_v2
  server s1 {HOST}:{p.imap_port} send-proxy-v2 source {BALANCER}
""")
        log = open(os.path.join(tmp_root(), "haproxy.log"), "wb")
        hap = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=log, stderr=log)
        self.addCleanup(log.close)
        self.addCleanup(lambda: (hap.terminate(), hap.wait(10)))

        def accepting(port):
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return True
            except OSError:
                return False
        self.assertTrue(wait_until(lambda: accepting(v1_port) and accepting(v2_port), 10),
                        "haproxy did not start")
        for port in (v1_port, v2_port):
            with self.subTest(port=port):
                c = RawClient.connect(HOST, port, source=CLIENT)
                try:
                    c.greeting = c.readline()
                    self.assertTrue(c.greeting.startswith(b"* OK"), c.greeting)
                    self.assertIn(b"a1 OK", log_in(c, "bob"))
                    c.command("a2", "LOGOUT")
                finally:
                    c.close()
        # Both logins name the client, not HAProxy, in suction's log and the new server's.
        wait_until(lambda: p.log().count("login ok user=bob client=127.0.0.3:") == 2, 10)
        self.assertEqual(p.log().count("login ok user=bob client=127.0.0.3:"), 2, p.log_tail())
        bed().new.wait_log(r"Login: user=<bob>.* rip=127\.0\.0\.3,")


if __name__ == "__main__":
    unittest.main()
