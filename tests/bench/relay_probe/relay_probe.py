#!/usr/bin/env python3
"""Probes under the proxy bench: what a relay costs with nothing around it, and what forwarding
in the kernel would save. Not suction: two small programs in this folder, each relaying one
connection to the test bed's Dovecot (pre-auth NOOPs, answered by imap-login).

Run by hand as root (the test bed starts Dovecot; the sockmap probe loads a BPF program), from
the repository root; about a minute:

    python3 tests/bench/relay_probe/relay_probe.py [--rounds 20] [--per-round 2000]

Paths, interleaved round by round, each round in a seeded order of its own:
  direct           the client talks to Dovecot
  epoll            epoll_relay.cpp, single-threaded
  epoll +thread    the same with one idle thread (the process is multi-threaded, like suction)
  epoll unshare    with one idle thread and a descriptor table of its own (unshare(CLONE_FILES))
  epoll raw        with one idle thread and raw syscall() (no glibc cancellation wrappers)
  sockmap          sockmap_relay.cpp: a BPF verdict program forwards every segment in the kernel
For each: NOOP p50/p99, the relay process's CPU per NOOP, and the whole machine's busy time
per NOOP (/proc/stat; the client's included), since the sockmap's work runs in other contexts.
Everything is on 127.0.0.1; each probe exits on its own after --max-seconds.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "testbed"))
from benchlib import CLK_TCK, pct, proc_times  # noqa: E402
from testbed import Testbed  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def machine_busy() -> float:
    """Seconds the machine's CPUs were busy since boot (all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK


def build(work: str) -> dict[str, str]:
    out = {}
    for name in ("epoll_relay", "sockmap_relay"):
        exe = os.path.join(work, name)
        subprocess.run(["g++", "-O2", "-std=c++20", "-o", exe, os.path.join(HERE, f"{name}.cpp"), "-lpthread"],
                       check=True)
        out[name] = exe
    return out


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection((HOST, port), timeout=5.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"port {port}: closed before the greeting")
        buf += chunk
    return s


def noop(s: socket.socket, n: int) -> float:
    """One NOOP round trip, microseconds."""
    tag = b"t%d" % n
    want = tag + b" OK"
    t0 = time.perf_counter_ns()
    s.sendall(tag + b" NOOP\r\n")
    buf = b""
    while want not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during a NOOP")
        buf += chunk
    return (time.perf_counter_ns() - t0) / 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=2000, help="NOOPs per path and round")
    ap.add_argument("--max-seconds", type=int, default=600, help="each probe exits after this")
    ap.add_argument("--no-sockmap", action="store_true", help="leave the BPF probe out")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="suction-rp-")
    procs: list[subprocess.Popen] = []
    try:
        exe = build(work)
        with Testbed(os.path.join(work, "bed"), seed=False, large_mb=0) as tb:
            try:
                measure(args, exe, tb.new.imap_port, procs)
            finally:  # the probes first: their connections would hold Dovecot's stop up
                stop_all(procs)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def measure(args: argparse.Namespace, exe: dict[str, str], dove: int, procs: list[subprocess.Popen]) -> None:
    variants = {"epoll": (0, 0), "epoll +thread": (1, 0), "epoll unshare": (1, 1), "epoll raw": (1, 2)}
    pids: dict[str, int] = {}
    ports: dict[str, int] = {"direct": dove}
    for name, (threads, mode) in variants.items():
        port = free_port()
        p = subprocess.Popen([exe["epoll_relay"], str(port), str(dove), str(threads), str(mode),
                              str(args.max_seconds)], start_new_session=True)
        procs.append(p)
        pids[name], ports[name] = p.pid, port
    if not args.no_sockmap:
        port = free_port()
        p = subprocess.Popen([exe["sockmap_relay"], str(port), str(dove), str(args.max_seconds)],
                             start_new_session=True)
        procs.append(p)
        pids["sockmap"], ports["sockmap"] = p.pid, port
    conns: dict[str, socket.socket] = {}
    for name, port in ports.items():
        try:
            conns[name] = connect(port)
        except (OSError, RuntimeError) as e:
            if name != "sockmap":
                raise
            # Its own error (no CAP_BPF, an old kernel) is on stderr above.
            print(f"relay_probe: sockmap left out ({e})", file=sys.stderr)
            del pids[name]
    rtt: dict[str, list[float]] = {name: [] for name in conns}
    busy = {name: 0.0 for name in conns}
    relay_cpu = {name: 0.0 for name in conns}
    n = 0
    for r in range(args.rounds):
        for name in random.Random(r).sample(list(conns), len(conns)):
            s = conns[name]
            b0 = machine_busy()
            c0 = proc_times(pids[name], children=False) if name in pids else 0.0
            for _ in range(args.per_round):
                n += 1
                rtt[name].append(noop(s, n))
            busy[name] += machine_busy() - b0
            if name in pids:
                relay_cpu[name] += proc_times(pids[name], children=False) - c0
    print(f"relay probes in front of Dovecot (pre-auth NOOP), {args.rounds} rounds x {args.per_round} "
          f"NOOPs per path, {os.cpu_count()} CPUs; CPU times in clock ticks of {1000 // CLK_TCK} ms")
    print(f"{'path':<14} {'p50 us':>8} {'p99 us':>8} {'added p50':>10} {'relay CPU/NOOP us':>18} "
          f"{'machine CPU/NOOP us':>20}")
    d50 = pct(rtt["direct"], 50)
    for name, v in rtt.items():
        count = len(v)
        relay = f"{relay_cpu[name] * 1e6 / count:.2f}" if name in pids else "-"
        print(f"{name:<14} {pct(v, 50):8.1f} {pct(v, 99):8.1f} {pct(v, 50) - d50:+10.1f} {relay:>18} "
              f"{busy[name] * 1e6 / count:20.1f}")
    for s in conns.values():
        s.close()


if __name__ == "__main__":
    sys.exit(main())
