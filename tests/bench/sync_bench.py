#!/usr/bin/env python3
"""`suction sync` against Dovecot's dsync through imapc: one user's mailbox, first copy and re-run.

Run by hand (root: the test bed starts Dovecot), from the repository root, after building the
daemon; a full run (10,000 messages, about 1.1 GB, 3 repetitions) takes about 2 minutes here:

    python3 tests/bench/sync_bench.py [--messages 10000] [--folders 20] [--large-mb 50]
        [--reps 3] [--reruns 3] [--only suction,suction-base,dsync] [--out FILE] [--binary PATH]
        [--baseline-binary PATH] [--keep]

What it does (all on 127.0.0.1; everything stopped and the work directory removed at the end,
also on failure, Ctrl-C or SIGTERM):
  1. starts the test bed's two Dovecot servers (tests/testbed, unseeded): legacy is a
     Courier-style maildir ("INBOX." prefix, "." separator), new is sdbox ("/" separator);
  2. writes a deterministic corpus (gen_corpus.py) straight into legacy alice's Maildir:
     --messages messages in --folders folders, 1 KB-5 MB, plus one --large-mb MiB message, flags
     in the file names, INTERNALDATE as mtime; subscribes every folder; then one untimed pass
     over every folder (SELECT, FETCH of UID FLAGS INTERNALDATE RFC822.SIZE and the Date and
     Message-ID headers) so that Dovecot's maildir index and cache exist and the files are in the
     page cache before either tool runs;
  3. per repetition, for each tool (the order alternates between repetitions), into an emptied
     mailbox on the new server: the first copy, timed, then --reruns no-change re-runs:
       suction  `suction sync --config C --user alice --password-file F --json`, into new
                alice, with a fresh state db (the JSON report's duration_ms is the in-process
                time; the wall time includes process start, config and state-db open);
       suction-base  the same with the --baseline-binary binary (only when given), into new
                alice too (emptied again before its first copy), so that a before/after pair of
                binaries is measured alike, in the same repetitions;
       dsync    `doveadm -c <new dovecot.conf> -o imapc_host=127.0.0.1 -o imapc_port=P
                -o imapc_user=alice -o imapc_password=... -o imapc_list_prefix=INBOX
                -o "imapc_features=rfc822.size fetch-headers" -o mail_prefetch_count=20
                -o mail_fsync=never sync -1 -R -u bob imapc:` (the settings Dovecot's migration
                documentation gives for 2.3), into new bob, reading legacy alice;
     wall time (fork to exit), peak RSS (GNU time %M: the tool alone) and CPU time of the tool, and the CPU
     time each Dovecot (legacy, new) spent meanwhile (its master's and children's /proc times);
  4. checks every first copy: per folder MESSAGES and SIZE (STATUS) on the new server equal
     legacy's, and 40 sampled messages plus the large one (found by Message-ID) have legacy's
     bytes (sha256), flags and INTERNALDATE; a tool that fails the check is reported, not hidden;
  5. prints the tables (medians of the repetitions; ratio = suction (or suction-base) / dsync of
     the same row; with --baseline-binary also the paired suction / suction-base ratios) and
     writes them with the command line, commit, machine and versions to --out (markdown) if given.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import imaplib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed"))
sys.path.insert(0, HERE)
import testbed as tbm  # noqa: E402
import gen_corpus  # noqa: E402
from benchlib import dovecot_version, empty_dir, platform_cpu, proc_times as _proc_times  # noqa: E402

HOST = "127.0.0.1"
LEGACY_USER = "alice"
SUCTION_USER = "alice"          # new-server user the suction (and suction-base) copy goes to
                                # (suction logs in to both servers with the same login)
DSYNC_USER = "bob"              # new-server user the dsync copy goes to
DEFAULT_BINARY = os.path.join(ROOT, "build", "proxy", "cli", "suction")
TOOLS = ("suction", "suction-base", "dsync")   # suction-base: --baseline-binary, run like suction
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[sync-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Processes: timed runs, CPU of a Dovecot instance

_CURRENT: list[subprocess.Popen] = []


def run_timed(argv: list[str], timeout: float, out_path: str, err_path: str,
              env: dict | None = None) -> dict:
    """Run argv to completion; wall time from fork to reaping, wait4 rusage. Kills on timeout."""
    rss_path = err_path + ".rss"
    if GNU_TIME:
        # ru_maxrss of a process we fork counts this Python's own RSS (the kernel carries the
        # high-water mark across exec), so GNU time, small, forks the tool and reports its %M.
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss_path, "--"] + argv
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             start_new_session=True)
        _CURRENT.append(p)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
        except BaseException:           # Ctrl-C, SIGTERM: the tool goes too (own session)
            timer.cancel()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(p.pid, 0)
            except ChildProcessError:
                pass
            raise
        finally:
            timer.cancel()
            _CURRENT.remove(p)
        p.returncode = os.waitstatus_to_exitcode(status)
    if timed_out.is_set():
        raise BenchError(f"timed out after {timeout:g}s: {shlex.join(argv)} (stderr {err_path})")
    maxrss = ru.ru_maxrss
    if GNU_TIME:
        try:
            with open(rss_path) as f:
                maxrss = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            raise BenchError(f"no RSS from {GNU_TIME} in {rss_path}") from None
    return {"rc": p.returncode, "wall": wall, "maxrss_kib": maxrss,
            "cpu": ru.ru_utime + ru.ru_stime, "utime": ru.ru_utime, "stime": ru.ru_stime}


def kill_current() -> None:
    for p in list(_CURRENT):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def server_cpu(master: int) -> float:
    """CPU seconds of a Dovecot instance so far: every live process of it, with the times of
    reaped children (cutime/cstime), so a process that exits between two calls is counted once."""
    return _proc_times(master) + sum(_proc_times(pid) for pid, _ in tbm._descendants(master))


def _busy(pid: int) -> bool:
    """A zombie (its time not yet in the master's cutime) or a mail (imap) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    if stat[stat.rindex(b")") + 2:].split()[0] == b"Z":
        return True
    argv0 = (tbm._cmdline(pid) or [b""])[0]
    return b"/imap" in argv0 and b"imap-login" not in argv0


def settle_cpu(master: int, timeout: float = 3.0) -> float:
    """server_cpu once the instance has no mail process or unreaped child left (bounded), so
    that a logged-out session's time is counted in the interval where it was spent."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        kids = [pid for pid, _ in tbm._descendants(master)]
        # zombies are not in _descendants (no start time): look at the master's children too
        zombies = []
        try:
            with open(f"/proc/{master}/task/{master}/children") as f:
                zombies = [int(x) for x in f.read().split()]
        except OSError:
            pass
        if not any(_busy(pid) for pid in set(kids) | set(zombies)):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return server_cpu(master)


# ----------------------------------------------------------------------------------------------
# IMAP checks

def imap_connect(server: tbm.Server, user: str, timeout: float = 120) -> imaplib.IMAP4:
    return server.connect(user, timeout=timeout)


def _ok(resp, what: str):
    typ, data = resp
    if typ != "OK":
        raise BenchError(f"{what}: {typ} {data!r}")
    return data


def status_all(imap: imaplib.IMAP4, names: list[str]) -> dict[str, tuple[int, int]]:
    """raw (mUTF-7) name -> (MESSAGES, SIZE); (-1, -1) for a missing folder."""
    out = {}
    for raw in names:
        typ, data = imap.status(tbm.quote(raw), "(MESSAGES SIZE)")
        if typ != "OK":
            out[raw] = (-1, -1)
            continue
        text = data[0].decode("utf-8", "replace")
        m = int(re.search(r"MESSAGES (\d+)", text).group(1))
        s = int(re.search(r"SIZE (\d+)", text).group(1))
        out[raw] = (m, s)
    return out


def new_name(legacy_raw: str) -> str:
    """Where both tools put a legacy folder: "INBOX.A.B" -> "A/B" (mUTF-7 kept)."""
    if legacy_raw == "INBOX":
        return "INBOX"
    return legacy_raw[len("INBOX."):].replace(".", "/")


def instant(internaldate: str) -> int:
    return int(_dt.datetime.strptime(internaldate, "%d-%b-%Y %H:%M:%S %z").timestamp())


def warm_legacy(server: tbm.Server, manifest: dict) -> float:
    """Subscribe every folder, build legacy's index/cache, page the files in. Returns seconds."""
    t0 = time.monotonic()
    imap = imap_connect(server, LEGACY_USER, timeout=600)
    try:
        for raw in manifest["folders"]:
            if raw != "INBOX":
                _ok(imap.subscribe(tbm.quote(raw)), f"SUBSCRIBE {raw}")
        for raw, f in manifest["folders"].items():
            data = _ok(imap.select(tbm.quote(raw), readonly=True), f"EXAMINE {raw}")
            if int(data[0]) != f["count"]:
                raise BenchError(f"legacy {raw}: {int(data[0])} messages, generated {f['count']}")
            _ok(imap.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE "
                         "BODY.PEEK[HEADER.FIELDS (DATE MESSAGE-ID)])"), f"FETCH {raw}")
        st = status_all(imap, list(manifest["folders"]))
        for raw, f in manifest["folders"].items():
            if st[raw] != (f["count"], f["bytes"]):
                raise BenchError(f"legacy {raw}: STATUS {st[raw]}, generated "
                                 f"{(f['count'], f['bytes'])}")
        imap.logout()
    except BaseException:
        imap.shutdown()
        raise
    # the files into the page cache (the first tool would otherwise pay the disk reads)
    home = os.path.join(manifest["maildir"])
    for d, _dirs, files in os.walk(home):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                while f.read(1 << 20):
                    pass
    return time.monotonic() - t0


def verify_copy(server: tbm.Server, user: str, manifest: dict) -> list[str]:
    """Problems of the copy in `user`'s new mailbox (empty list: complete and exact)."""
    problems = []
    imap = imap_connect(server, user, timeout=600)
    try:
        names = {raw: new_name(raw) for raw in manifest["folders"]}
        st = status_all(imap, list(names.values()))
        for raw, f in manifest["folders"].items():
            got = st[names[raw]]
            if got != (f["count"], f["bytes"]):
                problems.append(f"{names[raw]}: MESSAGES/SIZE {got}, legacy {(f['count'], f['bytes'])}")
        for s in manifest["samples"] + ([manifest["large"]] if manifest["large"] else []):
            folder = names[s["folder"]]
            _ok(imap.select(tbm.quote(folder), readonly=True), f"EXAMINE {folder}")
            data = _ok(imap.uid("SEARCH", "HEADER", "Message-ID", tbm.quote(s["message_id"])),
                       "SEARCH")
            uids = data[0].split()
            if len(uids) != 1:
                problems.append(f"{folder} {s['message_id']}: {len(uids)} copies")
                continue
            data = _ok(imap.uid("FETCH", uids[0].decode(), "(FLAGS INTERNALDATE BODY.PEEK[])"),
                       "FETCH")
            head, body = data[0]
            meta = head + b" ".join(x for x in data[1:] if isinstance(x, bytes))
            flags = sorted(x for x in re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode()
                           .split() if x != "\\Recent")
            idate = instant(re.search(rb'INTERNALDATE "([^"]+)"', meta).group(1).decode())
            what = f"{folder} {s['message_id']}"
            if hashlib.sha256(body).hexdigest() != s["sha256"]:
                problems.append(f"{what}: content differs ({len(body)} bytes, want {s['size']})")
            if flags != sorted(s["flags"]):
                problems.append(f"{what}: flags {flags}, want {s['flags']}")
            if idate != s["internaldate"]:
                problems.append(f"{what}: INTERNALDATE {idate}, want {s['internaldate']}")
        imap.logout()
    except BaseException:
        imap.shutdown()
        raise
    return problems


# ----------------------------------------------------------------------------------------------
# The two tools

def wipe_user(tb: tbm.Testbed, user: str) -> None:
    """Empty the user's home on the new server (no process of it runs between our runs)."""
    empty_dir(os.path.join(tb.new.home, user))


class Suction:
    user = SUCTION_USER

    def __init__(self, binary: str, work: str, tb: tbm.Testbed, timeout: float,
                 settings: list[str] | None = None, name: str = "suction"):
        # suction and suction-base differ only in the binary: own work dir, config and state db
        self.name = name
        self.binary = binary
        self.work = os.path.join(work, name)
        self.tb = tb
        self.timeout = timeout
        os.makedirs(self.work, exist_ok=True)
        self.pwfile = os.path.join(self.work, "password")
        with open(self.pwfile, "w") as f:
            f.write(tb.users[LEGACY_USER] + "\n")
        os.chmod(self.pwfile, 0o600)
        self.state_dir = os.path.join(self.work, "state")
        self.config = os.path.join(self.work, "suction.toml")
        cfg = {
            "listen": {"imap": f'"{HOST}:{tbm.free_ports(1)[0]}"', "imaps": '""'},
            "new": {"host": f'"{tb.new.host}"', "port": str(tb.new.imap_port), "tls": '"none"',
                    "connect_timeout": "10", "command_timeout": "300"},
            "legacy": {"host": f'"{tb.legacy.host}"', "port": str(tb.legacy.imap_port),
                       "tls": '"none"', "connect_timeout": "10", "command_timeout": "300"},
            "sync": {"state_db": f'"{self.state_dir}/state.db"'},
        }
        self.settings = list(settings or [])
        for item in self.settings:      # section.key=<TOML value>
            m = re.fullmatch(r"([a-z_]+)\.([a-z_]+)=(.+)", item)
            if not m:
                raise BenchError(f"--suction-set {item!r}: want section.key=value")
            cfg.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
        with open(self.config, "w") as f:
            for section, keys in cfg.items():
                f.write(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                        + "\n")
        self.n = 0

    def argv(self) -> list[str]:
        return [self.binary, "sync", "--config", self.config, "--user", LEGACY_USER,
                "--password-file", self.pwfile, "--json"]

    def display(self) -> str:
        extra = " (config C: the two servers, [sync] state_db" + \
            (", " + ", ".join(self.settings) if self.settings else "") + "; defaults otherwise)"
        return "`" + shlex.join(["suction", "sync", "--config", "C", "--user", LEGACY_USER,
                                 "--password-file", "F", "--json"]) + "`" + extra

    def reset(self) -> None:
        wipe_user(self.tb, self.user)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def run(self) -> dict:
        self.n += 1
        out = os.path.join(self.work, f"run{self.n}.json")
        err = os.path.join(self.work, f"run{self.n}.stderr")
        r = run_timed(self.argv(), self.timeout, out, err)
        try:
            with open(out) as f:
                rep = json.loads(f.read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            rep = None
        r["report"] = rep
        if rep is not None:
            r["inproc"] = rep.get("duration_ms", 0) / 1000.0
            r["copied"] = rep.get("messages_copied")
        if r["rc"] != 0 or rep is None or rep.get("outcome") not in (None, "ok", "complete",
                                                                      "success"):
            r["error"] = f"rc {r['rc']}, outcome {rep and rep.get('outcome')}: " \
                         f"{tbm._tail(err, 8)}"
        return r


class Dsync:
    name = "dsync"
    user = DSYNC_USER

    def __init__(self, work: str, tb: tbm.Testbed, timeout: float, extra: list[str]):
        self.work = os.path.join(work, "dsync")
        self.tb = tb
        self.timeout = timeout
        self.extra = extra
        os.makedirs(self.work, exist_ok=True)
        self.n = 0

    def argv(self, password: str | None = None) -> list[str]:
        pw = password if password is not None else self.tb.users[LEGACY_USER]
        return [tbm.DOVEADM, "-c", self.tb.new.config_path,
                "-o", f"imapc_host={HOST}", "-o", f"imapc_port={self.tb.legacy.imap_port}",
                "-o", f"imapc_user={LEGACY_USER}", "-o", f"imapc_password={pw}",
                "-o", "imapc_list_prefix=INBOX",
                "-o", "imapc_features=rfc822.size fetch-headers",
                "-o", "mail_prefetch_count=20", "-o", "mail_fsync=never",
                *self.extra, "sync", "-1", "-R", "-u", self.user, "imapc:"]

    def display(self) -> str:
        a = self.argv("...")
        a[0] = "doveadm"
        a[2] = "NEWCONF"
        a[6] = "imapc_port=PORT"
        return "`" + shlex.join(a) + "` (NEWCONF: the new server's dovecot.conf, PORT: legacy's)"

    def reset(self) -> None:
        wipe_user(self.tb, self.user)

    def run(self) -> dict:
        self.n += 1
        out = os.path.join(self.work, f"run{self.n}.stdout")
        err = os.path.join(self.work, f"run{self.n}.stderr")
        r = run_timed(self.argv(), self.timeout, out, err)
        if r["rc"] != 0:
            r["error"] = f"rc {r['rc']}: {tbm._tail(err, 8)}"
        return r


# ----------------------------------------------------------------------------------------------
# Report

def fmt_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_ratios(runs: list[dict], ref: list[dict], per: int) -> list[float]:
    """Per repetition, the median wall of `runs` over that of `ref` (`per` runs of each in one
    repetition): the two ran back to back, so machine noise hits both alike."""
    if per <= 0:
        return []
    out = []
    for i in range(min(len(runs), len(ref)) // per):
        a = med([r["wall"] for r in runs[i * per:(i + 1) * per]])
        b = med([r["wall"] for r in ref[i * per:(i + 1) * per]])
        out.append(a / b)
    return out


def base_line(results: dict, args) -> str | None:
    """suction against the baseline binary, paired per repetition (the before/after figure;
    dsync is only the common yardstick of the table). None without suction-base."""
    cur, base = results.get("suction"), results.get("suction-base")
    if not cur or not base:
        return None

    def ratio(kind: str, per: int) -> str:
        pr = paired_ratios(cur[kind], base[kind], per)
        return f"{med(pr):.2f}x" if pr else "-"
    return (f"suction vs suction-base: first copy {ratio('first', 1)} (paired median), "
            f"re-run {ratio('rerun', args.reruns)}")


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def report(results: dict, manifest: dict, args, meta: dict) -> str:
    """results[tool]["first"|"rerun"] = list of run dicts."""
    total_msgs = manifest["total_messages"]
    total_mb = manifest["total_bytes"] / 1e6
    out = []
    base = f", suction-base binary {meta['base_sha']}" if meta.get("base_sha") else ""
    out.append(f"suction sync vs dsync: commit {meta['commit']} (suction binary "
               f"{meta['binary_sha']}{base}), {meta['date']}, {meta['nproc']} cores ({meta['cpu']}), "
               f"Dovecot {meta['dovecot']}, Python {platform.python_version()}")
    out.append(f"Corpus: {total_msgs} messages ({manifest['messages']} + one "
               f"{manifest['large_mb']:g} MiB) in {len(manifest['folders'])} folders, "
               f"{total_mb:.1f} MB (CRLF, as FETCHed), seed {manifest['seed']}; legacy maildir "
               f"-> new sdbox, both on 127.0.0.1, plaintext.")
    out.append(f"Load average at start {meta.get('load_start', '?')}, at end "
               f"{meta.get('load_end', '?')} (others compile on this machine).")
    out.append(f"Medians of {args.reps} repetitions (first copy into an emptied mailbox) and "
               f"{args.reps} x {args.reruns} no-change re-runs; min-max in brackets; tool order "
               "alternates per repetition.")
    out.append("")
    hdr = ["tool", "run", "n", "wall s", "[min-max]", "msg/s", "MB/s", "peak RSS MiB",
           "tool CPU s", "legacy CPU s", "new CPU s", "total CPU s", "ratio wall", "paired"]
    rows = []
    for kind in ("first", "rerun"):
        ref = results.get("dsync", {}).get(kind) or []
        ref_wall = med([r["wall"] for r in ref]) if ref else None
        for tool in TOOLS:
            runs = results.get(tool, {}).get(kind) or []
            if not runs:
                continue
            walls = [r["wall"] for r in runs]
            w = med(walls)
            ratio = f"{w / ref_wall:.3f}x" if ref_wall else "-"
            # median of the per-repetition ratios (the tools ran back to back in each)
            paired = "-"
            if ref and tool != "dsync":
                pr = paired_ratios(runs, ref, args.reruns if kind == "rerun" else 1)
                if pr:
                    paired = f"{med(pr):.3f}x"
            elif ref:
                paired = "1.000x"
            rows.append([tool, "first copy" if kind == "first" else "no-change re-run",
                         str(len(runs)), f"{w:.3f}", f"[{min(walls):.3f}-{max(walls):.3f}]",
                         f"{total_msgs / w:,.0f}",
                         f"{total_mb / w:.1f}" if kind == "first" else "-",
                         f"{med([r['maxrss_kib'] for r in runs]) / 1024:.1f}",
                         f"{med([r['cpu'] for r in runs]):.2f}",
                         f"{med([r['legacy_cpu'] for r in runs]):.2f}",
                         f"{med([r['new_cpu'] for r in runs]):.2f}",
                         f"{med([r['cpu'] + r['legacy_cpu'] + r['new_cpu'] for r in runs]):.2f}",
                         ratio, paired])
    out.append(fmt_table(hdr, rows))
    out.append("wall: fork to exit of the tool process. msg/s and MB/s: the whole corpus over wall "
               "(for a re-run: messages checked per second; no MB/s, nothing is copied).")
    out.append("ratio wall: the tool's median / dsync's median, same row kind; paired: median "
               "over the repetitions of tool / dsync within one repetition (they ran back to back).")
    out.append("CPU: tool = the suction or doveadm process (wait4); legacy/new = the Dovecot "
               "instance meanwhile (dsync writes the new sdbox in its own process, so its 'new' "
               "is ~0; suction APPENDs through the new server's imap process).")
    vs_base = base_line(results, args)
    if vs_base:
        out.append("")
        out.append(vs_base)
    sre = results.get("suction", {}).get("rerun") or []
    if sre:
        inproc = [r["inproc"] for r in sre if "inproc" in r]
        out.append("")
        out.append(f"suction no-change re-run, {len(sre)} runs: wall median {med([r['wall'] for r in sre]) * 1000:.0f} ms "
                   f"[{min(r['wall'] for r in sre) * 1000:.0f}-{max(r['wall'] for r in sre) * 1000:.0f}], "
                   f"in-process duration_ms median {med(inproc) * 1000:.0f} ms "
                   f"[{min(inproc) * 1000:.0f}-{max(inproc) * 1000:.0f}]; goal < 100 ms for "
                   f"{total_msgs} messages: "
                   f"{'met' if med(inproc) < 0.1 else 'NOT met'} (in-process), "
                   f"{'met' if med([r['wall'] for r in sre]) < 0.1 else 'NOT met'} (wall).")
    sf = results.get("suction", {}).get("first") or []
    if sf and "inproc" in sf[0]:
        out.append(f"suction first copy in-process duration_ms median "
                   f"{med([r['inproc'] for r in sf]):.3f} s.")
    out.append("")
    out.append("Per run (s):")
    for tool in TOOLS:
        for kind in ("first", "rerun"):
            runs = results.get(tool, {}).get(kind) or []
            if runs:
                out.append(f"  {tool:12} {kind:6} " + " ".join(f"{r['wall']:.3f}" for r in runs))
    out.append("")
    out.append("Checks of each first copy (STATUS MESSAGES/SIZE of every folder vs legacy; "
               f"{len(manifest['samples'])} sampled messages + the large one by Message-ID: "
               "sha256, flags, INTERNALDATE):")
    for tool in TOOLS:
        v = results.get(tool, {}).get("verify")
        if v is None:
            continue
        bad = [p for rep in v for p in rep]
        out.append(f"  {tool}: " + ("all complete and exact" if not bad else
                                    f"{len(bad)} problems, e.g. {bad[:5]}"))
    for tool in TOOLS:
        for e in results.get(tool, {}).get("errors", []):
            out.append(f"  {tool} error: {e}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Main

def private_copy(path: str, work: str, name: str) -> tuple[str, str]:
    """Copy a suction binary into the work directory (others may rebuild build/ while this
    runs); returns the copy's path and a short sha256 naming it in the report."""
    os.makedirs(os.path.join(work, "bin"), exist_ok=True)
    dest = os.path.join(work, "bin", name)
    shutil.copy2(path, dest)
    with open(dest, "rb") as f:
        return dest, "sha256:" + hashlib.sha256(f.read()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="suction sync vs dsync through imapc")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--folders", type=int, default=20)
    ap.add_argument("--large-mb", type=float, default=50)
    ap.add_argument("--seed", type=int, default=gen_corpus.DEFAULT_SEED)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reruns", type=int, default=3, help="no-change re-runs per first copy")
    ap.add_argument("--only", default=None, help="comma-separated subset of "
                    f"{','.join(TOOLS)} (default: suction,dsync, and suction-base with "
                    "--baseline-binary)")
    ap.add_argument("--binary", default=DEFAULT_BINARY)
    ap.add_argument("--baseline-binary", default=None,
                    help="a second suction binary, the tool suction-base, run exactly like "
                         "suction in the same repetitions (a before/after pair in one run)")
    ap.add_argument("--timeout", type=float, default=1200, help="per tool run, seconds")
    ap.add_argument("--max-seconds", type=int, default=4 * 3600, help="whole run")
    ap.add_argument("--dsync-opt", action="append", default=[],
                    help="extra doveadm -o setting=value (repeatable)")
    ap.add_argument("--suction-set", action="append", default=[],
                    help="a suction config key, section.key=<TOML value>, e.g. "
                         "sync.connections_per_user=1 (repeatable; default: the shipped defaults)")
    ap.add_argument("--out", help="also write the report here (markdown section)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if args.only is None:
        args.only = "suction,suction-base,dsync" if args.baseline_binary else "suction,dsync"
    tools = [t for t in args.only.split(",") if t]
    if any(t not in TOOLS for t in tools):
        ap.error(f"--only: {TOOLS}")
    if "suction-base" in tools and not args.baseline_binary:
        ap.error("--only suction-base needs --baseline-binary")
    if os.geteuid() != 0:
        print("sync_bench.py: must run as root (the test bed starts Dovecot)", file=sys.stderr)
        return 2
    for t, path in (("suction", args.binary), ("suction-base", args.baseline_binary)):
        if t in tools and not os.access(path, os.X_OK):
            print(f"sync_bench.py: {path} not found; build it first", file=sys.stderr)
            return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(args.max_seconds)

    cmdline = "python3 tests/bench/sync_bench.py " + shlex.join(sys.argv[1:] if argv is None
                                                               else argv)
    work = tempfile.mkdtemp(prefix="suction-sb-", dir="/tmp")  # short socket paths
    ok = False
    tb = None
    try:
        meta = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "nproc": os.cpu_count(), "cpu": platform_cpu(), "dovecot": dovecot_version(),
                "binary_sha": "-",
                "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
        binary = base_binary = None
        if "suction" in tools:
            binary, meta["binary_sha"] = private_copy(args.binary, work, "suction")
            meta["binary_mtime"] = time.strftime("%H:%M UTC", time.gmtime(os.path.getmtime(args.binary)))
        if "suction-base" in tools:
            base_binary, meta["base_sha"] = private_copy(args.baseline_binary, work,
                                                         "suction-base")
        log(f"work dir {work}; starting the test bed")
        tb = tbm.Testbed(os.path.join(work, "bed"), seed=False)
        tb.start()
        maildir = os.path.join(tb.legacy.home, LEGACY_USER, "Maildir")
        log(f"generating {args.messages} messages in {args.folders} folders + {args.large_mb:g} MiB")
        manifest = gen_corpus.generate(maildir, args.messages, args.folders, args.large_mb,
                                       args.seed, owner="dovecot")
        manifest["maildir"] = maildir
        log(f"corpus: {manifest['total_messages']} messages, {manifest['total_bytes'] / 1e6:.1f} MB "
            f"in {manifest['generate_seconds']} s; warming legacy")
        log(f"legacy warm in {warm_legacy(tb.legacy, manifest):.1f} s")
        objs = {}
        if "suction" in tools:
            objs["suction"] = Suction(binary, work, tb, args.timeout, args.suction_set)
        if "suction-base" in tools:
            # same config shape, own state db; same new-server user as suction (its reset
            # empties alice's home again before each first copy)
            objs["suction-base"] = Suction(base_binary, work, tb, args.timeout, args.suction_set,
                                           name="suction-base")
        if "dsync" in tools:
            objs["dsync"] = Dsync(work, tb, args.timeout, [x for o in args.dsync_opt
                                                            for x in ("-o", o)])
        results: dict = {t: {"first": [], "rerun": [], "verify": [], "errors": []} for t in tools}

        def timed(obj) -> dict:
            l0, n0 = settle_cpu(tb.legacy.pid), settle_cpu(tb.new.pid)
            r = obj.run()
            r["legacy_cpu"] = settle_cpu(tb.legacy.pid) - l0
            r["new_cpu"] = settle_cpu(tb.new.pid) - n0
            return r

        for rep in range(args.reps):
            order = tools if rep % 2 == 0 else list(reversed(tools))
            for t in order:
                obj = objs[t]
                obj.reset()
                # the previous copy's dirty pages written out now, not during this run
                os.sync()
                r = timed(obj)
                extra = f", in-process {r['inproc']:.3f} s" if "inproc" in r else ""
                log(f"rep {rep + 1} {t} first copy: {r['wall']:.2f} s{extra}, rc {r['rc']}, "
                    f"RSS {r['maxrss_kib'] / 1024:.0f} MiB, CPU {r['cpu']:.1f} s (user {r['utime']:.1f}, "
                    f"sys {r['stime']:.1f}), legacy "
                    f"{r['legacy_cpu']:.1f} s, new {r['new_cpu']:.1f} s")
                if "error" in r:
                    results[t]["errors"].append(f"rep {rep + 1} first: {r['error']}")
                    log(f"{t} FAILED: {r['error']}")
                results[t]["first"].append(r)
                problems = verify_copy(tb.new, obj.user, manifest)
                results[t]["verify"].append(problems)
                if problems:
                    log(f"{t}: {len(problems)} problems in the copy, e.g. {problems[:3]}")
                for k in range(args.reruns):
                    r = timed(obj)
                    extra = f", in-process {r['inproc'] * 1000:.0f} ms" if "inproc" in r else ""
                    log(f"rep {rep + 1} {t} no-change re-run {k + 1}: {r['wall'] * 1000:.0f} ms"
                        f"{extra}, rc {r['rc']}, RSS {r['maxrss_kib'] / 1024:.0f} MiB")
                    if "error" in r:
                        results[t]["errors"].append(f"rep {rep + 1} re-run {k + 1}: {r['error']}")
                    if r.get("copied"):
                        results[t]["errors"].append(f"rep {rep + 1} re-run {k + 1}: copied "
                                                    f"{r['copied']} messages")
                    results[t]["rerun"].append(r)
        if "suction" in objs:
            last = results["suction"]["rerun"][-1:] or results["suction"]["first"][-1:]
            if last and last[0].get("report"):
                with open(os.path.join(work, "suction-last-report.json"), "w") as f:
                    json.dump(last[0]["report"], f, indent=1)
        meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["suction_cmd"] = objs["suction"].display() if "suction" in objs else "-"
        meta["dsync_cmd"] = objs["dsync"].display() if "dsync" in objs else "-"
        text = report(results, manifest, args, meta)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(f"Command: `{cmdline}`\n\n")
                f.write(f"suction: {meta['suction_cmd']}\n\ndsync: {meta['dsync_cmd']}\n\n")
                if "suction-base" in objs:
                    f.write(f"suction-base: the same command with `{args.baseline_binary}` "
                            f"({meta['base_sha']})\n\n")
                f.write("```\n" + text + "\n```\n")
                sre = results.get("suction", {}).get("rerun")
                if sre and sre[-1].get("report"):
                    f.write("\nLast suction re-run report (folders trimmed):\n\n```\n")
                    rep_ = dict(sre[-1]["report"])
                    rep_["folders"] = rep_.get("folders", [])[:3]
                    f.write(json.dumps(rep_, indent=None) + "\n```\n")
        ok = all(not results[t]["errors"] and not any(results[t]["verify"]) for t in tools)
        return 0 if ok else 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        return 130
    finally:
        signal.alarm(0)
        kill_current()
        if tb is not None:
            tbm.down(tb.dir, quiet=True)
        else:
            tbm.down(os.path.join(work, "bed"), quiet=True)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
