"""Small helpers the benchmark scripts share: percentiles as proxy_bench.py defines them, the
CPU model and Dovecot version for a results header, a process's CPU time from /proc, reading
`strace -c` summaries, and emptying a directory."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    """Nearest rank on the sorted values; nan for none."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def platform_cpu() -> str:
    """The CPU model from /proc/cpuinfo (the machine type if it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def proc_times(pid: int, children: bool = True) -> float:
    """utime + stime (+ cutime + cstime) of pid in seconds; 0 if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return 0.0
    return sum(int(x) for x in fields[11:15 if children else 13]) / CLK_TCK


def dovecot_version() -> str:
    """"Dovecot 2.3.19.1" from `dovecot --version`, "Dovecot ?" if it cannot be run."""
    try:
        v = subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                           timeout=10).stdout.split()
        return f"Dovecot {v[0]}" if v else "Dovecot ?"
    except (OSError, subprocess.TimeoutExpired):
        return "Dovecot ?"


def strace_counts(summary: str) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} from the table `strace -c` writes (the "total" line left out)."""
    out: dict[str, tuple[int, int]] = {}
    for line in summary.splitlines():
        f = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(f) not in (5, 6) or f[-1] == "total" or not f[3].isdigit():
            continue
        try:
            float(f[0])
        except ValueError:
            continue
        out[f[-1]] = (int(f[3]), int(f[4]) if len(f) == 6 else 0)
    return out


def empty_dir(path: str) -> None:
    """Removes everything inside `path` (links themselves, not what they point to)."""
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
