"""Prometheus metrics (issue 12 must 5) from a real daemon in front of the bed's Dovecot: after
a login that migrates a mailbox, a failed login and a pre-auth limit, GET /metrics is valid
exposition text for Prometheus's own `promtool check metrics`, and its values say what
happened: logins by result, sessions, pre-auth limits, migrations by state, messages and bytes
copied, the login and run duration histograms. Every metric the shipped Grafana dashboard
(deploy/grafana/suction.json) queries is exposed. No password in the scrape. A port that cannot
be bound stops the start in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import unittest
import urllib.request

from proxyfixture import HOST, SUCTION_BIN, Proxy, bed, login_through, start_bed, wait_until
from test_migration_e2e import seed, wait_state
from testbed import free_ports

SOURCE = os.environ.get("SUCTION_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def setUpModule():
    start_bed(seed=False)
    seed("alice", {"INBOX": 4, "INBOX.Metrics": 3}, tag="-metrics")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


class Metrics(unittest.TestCase):

    def test_scrape_after_logins_and_a_migration(self):
        tb = bed()
        (port,) = free_ports(1)
        with Proxy(overrides={"metrics": {"listen": f"{HOST}:{port}"},
                              "sync": {"resync_interval": 0}}) as p:
            p.wait_log(r"metrics at http://127\.0\.0\.1:%d/metrics" % port)
            self.assertEqual(login_through(p, "alice", tb.users["alice"]), ("OK", b""))
            self.assertEqual(login_through(p, "alice", "not her password")[0], "NO")
            c = p.raw()
            for i in range(4):              # [limits] max_bad_commands = 3, then BYE
                c.send(f"x{i} BOGUS\r\n")
            c.wait_closed(5)
            c.close()
            wait_state(p, "alice", ("done",), 60)
            text = ""

            def settled():
                nonlocal text
                text = scrape(port)
                s = samples(text)
                return s.get('suction_migrations{state="done"}') == 1 and \
                    s.get("suction_sessions_open") == 0
            self.assertTrue(wait_until(settled, 10), text)
            s = samples(text)
            self.assertEqual(s['suction_logins_total{result="ok"}'], 1)
            self.assertEqual(s['suction_logins_total{result="failed"}'], 1)
            self.assertEqual(s["suction_preauth_limits_total"], 1)
            self.assertEqual(s['suction_backend_failures_total{kind="unavailable"}'], 0)
            self.assertEqual(s["suction_messages_copied_total"], 7)
            self.assertGreater(s["suction_copied_bytes_total"], 7 * 1000)
            self.assertEqual(s["suction_queue_length"], 0)
            self.assertEqual(s["suction_legacy_connections"], 0)
            self.assertEqual(s["suction_login_duration_seconds_count"], 2)
            self.assertEqual(s['suction_login_duration_seconds_bucket{le="+Inf"}'], 2)
            self.assertEqual(s["suction_run_duration_seconds_count"], 1)
            self.assertGreater(s['suction_relayed_bytes_total{direction="to_client"}'], 0)
            self.assertNotIn(tb.users["alice"], text)

            if shutil.which("promtool"):
                r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                                   capture_output=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
                self.assertEqual(r.stdout.decode() + r.stderr.decode(), "")
            else:
                self.skipTest("promtool not installed (deploy/install-deps.sh installs Debian's "
                              "prometheus package); the values above were checked")

            # The dashboard asks only for what is exposed.
            with open(os.path.join(SOURCE, "deploy", "grafana", "suction.json")) as f:
                dashboard = json.load(f)
            exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
            self.assertGreaterEqual(len(exprs), 8)
            exposed = {k.split("{")[0] for k in s}
            for expr in exprs:
                for name in re.findall(r"\bsuction_[a-z_]+", expr):
                    self.assertIn(name, exposed, expr)

    def test_port_taken_stops_the_start(self):
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            port = taken.getsockname()[1]
            p = Proxy(overrides={"metrics": {"listen": f"{HOST}:{port}"}})
            p.write_config()
            r = subprocess.run([SUCTION_BIN, "proxy", "--config", p.config_path],
                               capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr.decode(),
                         r"suction: .*suction\.toml: \[metrics\] listen: cannot listen on "
                         r"127\.0\.0\.1:%d" % port)


if __name__ == "__main__":
    unittest.main()
