#!/usr/bin/env python3
"""Login storm through HAProxy (issue 12's bench): one suction node or two, one io thread or two,
all with the state in one PostgreSQL; the time until every user is migrated, login p50/p99, and
each node's CPU.

Run by hand (root: the test bed starts Dovecot, PostgreSQL runs as `postgres`), from the
repository root, after building the daemon; the default (200 users, 3 repetitions of 3
layouts) takes about 3 minutes on 2 cores:

    python3 tests/bench/cluster_bench.py [--users 200] [--reps 3] [--out FILE] [--keep]

What it starts (all on 127.0.0.0/8, all stopped at the end, also on failure):
  * the test bed with --users extra users, each legacy mailbox seeded as login_storm_bench.py
    does (10-20 messages of 1-20 KB over 2-3 folders);
  * a private PostgreSQL 15 (tests/testbed/pgbed.py), emptied before each phase;
  * login_storm_bench.py's counting forwarder in front of legacy ([legacy] max_connections = 16
    for the whole cluster);
  * per phase: the layout's suction nodes ([sync] state_db = the PostgreSQL, node_name
    node-1.., [listen] proxy_protocol_from = 127.0.0.2) and one HAProxy (roundrobin,
    send-proxy-v2, source 127.0.0.2) in front of them.

Layouts, rotated per repetition: "1 node, 1 thread", "1 node, 2 threads", "2 nodes, 1 thread
each". The machine has 2 cores: two nodes of one thread each and one node of two threads use
the same two cores, and Dovecot (legacy, new), PostgreSQL, HAProxy and this client share them
too. Two nodes here show that the cluster works and what its coordination costs (every job
start and end is a PostgreSQL transaction), not what a second machine would add.

The storm is login_storm_bench.py's: every user at once from its own 127.0.x.y, connect,
greeting, LOGIN, LOGOUT; here through HAProxy. Done: the sum over the nodes of the status
socket's users_done reaches N (polled every 0.1 s). Checked after every phase: STATUS MESSAGES
of every folder of every user equal on both servers and the plan, and the runs table: one
done run per user, none overlapping another of the same user.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed"))

import login_storm_bench as lsb  # noqa: E402
from benchlib import dovecot_version, pct  # noqa: E402
from pgbed import PgBed  # noqa: E402

BenchError = lsb.BenchError

HOST = "127.0.0.1"
BALANCER = "127.0.0.2"
LAYOUTS = [("1 node, 1 thread", 1, 1), ("1 node, 2 threads", 1, 2), ("2 nodes, 1 thread each", 2, 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class HAProxy:
    def __init__(self, d: str, nodes: list[lsb.Proxy]):
        self.port = free_port()
        cfg = os.path.join(d, "haproxy.cfg")
        servers = "".join(f"  server n{i} {HOST}:{p.port} send-proxy-v2 source {BALANCER}\n"
                          for i, p in enumerate(nodes))
        with open(cfg, "w") as f:
            f.write(f"global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                    f"  timeout client 120s\n  timeout server 120s\nfrontend imap\n"
                    f"  bind {HOST}:{self.port}\n  default_backend suction\nbackend suction\n"
                    f"  balance roundrobin\n{servers}")
        self.logf = open(os.path.join(d, "haproxy.log"), "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=self.logf, stderr=self.logf)
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            time.sleep(0.05)
        self.stop()
        raise BenchError("haproxy did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.logf.close()


def runs_check(pg: PgBed, users: list[str]) -> list[str]:
    """One done run per user; no two runs of a user overlap."""
    rows = pg.psql('SELECT "user", id, result, started_at, finished_at, node FROM runs ORDER BY "user", id')
    by: dict[str, list[tuple]] = {}
    for line in rows.splitlines():
        u, i, res, s, f, node = line.split("|")
        by.setdefault(u, []).append((int(i), res, int(s), int(f), node))
    bad = []
    for u in users:
        runs = by.get(u, [])
        if sum(1 for r in runs if r[1] == "done") < 1:
            bad.append(f"{u}: no done run ({runs})")
        for a, b in zip(runs, runs[1:]):
            if a[3] > b[2]:
                bad.append(f"{u}: runs {a[0]} and {b[0]} overlap")
    return bad


def run_phase(layout: tuple[str, int, int], e, rep: int) -> dict:
    name, nodes_n, threads = layout
    tb, users, args = e.tb, e.users, e.args
    lsb.wait_no_mail_processes(tb)
    lsb.empty_new_homes(tb, users)
    e.pg.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    os.sync()
    nodes: list[lsb.Proxy] = []
    hap = None
    r: dict = {"layout": name}
    try:
        for i in range(nodes_n):
            sets = {"listen": {"proxy_protocol_from": [BALANCER]},
                    "sync": {"state_db": e.pg.dsn, "node_name": f"node-{i + 1}"},
                    "proxy": {"threads": threads}, "log": {"level": "info"}}
            nodes.append(lsb.Proxy(args.binary, os.path.join(e.workdir, f"r{rep}-{nodes_n}x{threads}-n{i + 1}"),
                                   tb, e.fwd.port, sets))
        d = os.path.join(e.workdir, f"r{rep}-{nodes_n}x{threads}-haproxy")
        os.makedirs(d, exist_ok=True)
        hap = HAProxy(d, nodes)
        e.fwd.ask("reset")
        time.sleep(0.5)
        cpu0 = [lsb._times(p.pid, False) for p in nodes]
        s = lsb.storm(hap.port, users, tb.users, args.login_timeout)
        r.update(s)
        if s["errors"]:
            lsb.log(f"{name}: {len(s['errors'])} logins failed, e.g. {s['errors'][:3]}")
        deadline = time.monotonic() + args.done_timeout
        done = 0
        while time.monotonic() < deadline:
            done = sum(p.ask({"cmd": "status"})["migration"]["users_done"] for p in nodes)
            if done >= len(users):
                break
            time.sleep(0.1)
        r["done_s"] = time.perf_counter() - s["start"] if done >= len(users) else float("nan")
        r["node_cpu"] = [lsb._times(p.pid, False) - c for p, c in zip(nodes, cpu0)]
        r["node_users"] = [p.ask({"cmd": "status"})["migration"]["users_done"] for p in nodes]
        r["hwm_kib"] = [lsb.proc_status(p.pid, "VmHWM") for p in nodes]
        r["fwd"] = e.fwd.ask()
        r["verify"] = lsb.verify(e)
        r["runs_bad"] = runs_check(e.pg, users)
    finally:
        if hap:
            hap.stop()
        for p in nodes:
            p.stop()
    return r


def report(e, reps: list[dict[str, dict]]) -> str:
    n = len(e.users)
    out = [f"Login storm through HAProxy, {n} users at once, state in PostgreSQL 15; median over "
           f"{len(reps)} reps (per rep: p50/p99 over the {n} logins)"]
    rows = []
    base = None
    for name, nodes_n, threads in LAYOUTS:
        rs = [r[name] for r in reps]
        done = lsb.med([x["done_s"] for x in rs])
        if base is None:
            base = done
        cpu = [lsb.med([x["node_cpu"][i] for x in rs]) for i in range(nodes_n)]
        users_on = [lsb.med([x["node_users"][i] for x in rs]) for i in range(nodes_n)]
        rows.append([name, f"{sum(x['ok'] for x in rs)}/{n * len(rs)}",
                     f"{lsb.med([pct(x['full_ms'], 50) for x in rs]):.1f}",
                     f"{lsb.med([pct(x['full_ms'], 99) for x in rs]):.1f}",
                     f"{done:.2f}", f"{done / base:.2f}x",
                     " + ".join(f"{c:.2f}" for c in cpu), " + ".join(f"{u:.0f}" for u in users_on),
                     str(max(x["fwd"]["peak"] for x in rs)),
                     "ok" if not any(x["verify"]["bad"] or x["runs_bad"] for x in rs) else "BAD"])
    out.append(lsb.fmt_table(["layout", "logins ok", "login p50 ms", "p99 ms", "all migrated s",
                              "ratio", "node CPU s", "users per node", "legacy peak", "check"], rows))
    out.append("all migrated s: from the barrier (first login) until the nodes' users_done add up to N. "
               "ratio: to '1 node, 1 thread'. node CPU s: each suction process over the storm and "
               "the migrations. legacy peak: connections at once at the forwarder in front of legacy "
               "(cap 16 for the cluster). check: every folder's STATUS MESSAGES equal on both servers "
               "and the plan, sha256 of a sample, and the runs table (a done run per user, none "
               "overlapping).")
    out.append("Per rep, all migrated s: " + "; ".join(
        f"{name}: " + " ".join(f"{r[name]['done_s']:.2f}" for r in reps) for name, _, _ in LAYOUTS))
    for i, r in enumerate(reps):
        for name, _, _ in LAYOUTS:
            x = r[name]
            if x["verify"]["bad"] or x["runs_bad"]:
                out.append(f"  rep {i + 1} {name} BAD: {(x['verify']['bad'] + x['runs_bad'])[:5]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="login storm through HAProxy, 1 or 2 nodes, 1 or 2 threads")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--verify-sample", type=int, default=10)
    ap.add_argument("--login-timeout", type=float, default=120.0)
    ap.add_argument("--done-timeout", type=float, default=300.0)
    ap.add_argument("--max-seconds", type=int, default=2400)
    ap.add_argument("--binary", default=lsb.DEFAULT_BINARY)
    ap.add_argument("--out")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (the Dovecot test bed, PostgreSQL as postgres)")
    if not shutil.which("haproxy"):
        ap.error("haproxy not installed (deploy/install-deps.sh)")

    from testbed import Testbed, extra_user_names

    def on_alarm(signum, frame):
        raise TimeoutError(f"whole run exceeded --max-seconds={args.max_seconds}")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    lsb.resource.setrlimit(lsb.resource.RLIMIT_NOFILE, (8192, max(8192, lsb.resource.getrlimit(
        lsb.resource.RLIMIT_NOFILE)[1])))
    workdir = tempfile.mkdtemp(prefix="suction-cb-", dir="/tmp")
    tb = fwd = pg = None
    try:
        binary = os.path.join(workdir, "suction")
        shutil.copy2(args.binary, binary)
        args.binary = binary
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        tb = Testbed(os.path.join(workdir, "bed"), seed=False, large_mb=0, extra_users=args.users)
        tb.start()
        users = list(extra_user_names(args.users))
        lsb.log(f"seeding {len(users)} legacy mailboxes")
        counts = lsb.parallel(lambda u: lsb.seed_user(tb, u, args.seed), users, 4, 1800)
        pg = PgBed().start()
        fwd = lsb.ForwarderProc(tb.legacy.imap_port, args.max_seconds + 60)
        e = argparse.Namespace(tb=tb, users=users, args=args, workdir=workdir, fwd=fwd, pg=pg,
                               expected=dict(zip(users, counts)))
        reps = []
        for rep in range(1, args.reps + 1):
            r = {}
            order = LAYOUTS[(rep - 1) % 3:] + LAYOUTS[:(rep - 1) % 3]
            for layout in order:
                lsb.log(f"rep {rep}/{args.reps}: {layout[0]}")
                r[layout[0]] = x = run_phase(layout, e, rep)
                lsb.log(f"  {x['ok']}/{len(users)} ok, p50 {pct(x['full_ms'], 50):.1f} ms, all migrated "
                        f"{x['done_s']:.2f}s, per node {x['node_users']}")
            reps.append(r)
        head = (f"cluster bench: commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"nproc {os.cpu_count()}, {args.users} users, {args.reps} reps, {dovecot_version()}, "
                f"suction defaults ([sync] max_concurrent_users=4 per node, connections_per_user=2, "
                f"[legacy] max_connections=16 for the cluster)")
        text = head + "\n\n" + report(e, reps)
        print(text, flush=True)
        if args.out:
            cmd = "python3 tests/bench/cluster_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
            with open(args.out, "w") as f:
                f.write(f"Command: `{cmd}`\n\n```\n{text}\n```\n")
        bad = any(x["verify"]["bad"] or x["runs_bad"] for r in reps for x in r.values())
        return 1 if bad else 0
    finally:
        signal.alarm(0)
        if fwd is not None:
            fwd.stop()
        if pg is not None:
            pg.stop()
        if tb is not None:
            with contextlib.suppress(Exception):
                tb.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
