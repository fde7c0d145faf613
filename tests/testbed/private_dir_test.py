#!/usr/bin/env python3
"""ctest testbed.private_dir: the bed works from a checkout that no other user may enter and
whose path has a space, e.g. a clone in root's 0700 home (issue 13).

In a fresh 0700 directory, "check out" gets a copy of the source tree without its build
trees. The copy is configured (not built: the bed's own tests need no binary), and its
testbed.up must bring the bed up in "check out/build/tests/testbed", testbed.down must stop it
and remove the servers' run dir. Then the copied testbed.py's selftest runs with its --dir in
there, and an `up` interrupted while seeding must leave no process and no run dir behind.

Needs root (the bed does); exits 77 (ctest: skipped) otherwise. Loopback only; ~20 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SOURCE, "tests", "testbed"))
import testbed  # noqa: E402


def run(argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        sys.exit(f"FAIL: {argv} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def check(cond: bool, what: str) -> None:
    if not cond:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}", flush=True)


def bed_gone(d: str) -> None:
    """Nothing of the bed in d runs and its run dir is removed."""
    run_dir = testbed.load_state(d)["run_dir"]
    check(not testbed.bed_processes(d), f"no process of the bed in {d!r}")
    check(not os.path.exists(run_dir), f"its run dir {run_dir} is removed")


def main() -> int:
    if os.geteuid() != 0:
        print("skipped: the Dovecot test bed needs root")
        return 77
    private = tempfile.mkdtemp(prefix="suction-private-")   # 0700, like /root
    try:
        check(os.stat(private).st_mode & 0o777 == 0o700, f"{private} is 0700")
        src = os.path.join(private, "check out")
        top = os.path.realpath(SOURCE)
        shutil.copytree(SOURCE, src, ignore=lambda d, names: [
            n for n in names if n == "__pycache__" or
            (os.path.realpath(d) == top and (n.startswith("build") or n == ".git"))])
        build = os.path.join(src, "build")
        run(["cmake", "-S", src, "-B", build, "-G", "Ninja"], 120)

        # The C++ tests' bed: ctest's own command lines, from inside the private directory.
        bed = os.path.join(build, "tests", "testbed")
        run(["ctest", "--test-dir", build, "-R", "^testbed[.]up$", "--output-on-failure"], 120,
            cwd=private)
        run([sys.executable, os.path.join(src, "tests", "testbed", "testbed.py"), "status",
             "--dir", bed], 30)
        check(True, f"testbed.up brought the bed up in {bed!r}")
        run(["ctest", "--test-dir", build, "-R", "^testbed[.]down$", "--output-on-failure"], 120,
            cwd=private)
        bed_gone(bed)

        # Every check of the selftest, with the copied script and its --dir in there too.
        d = os.path.join(private, "check out", "self test")
        run([sys.executable, os.path.join(src, "tests", "testbed", "testbed.py"), "selftest",
             "--dir", d], 120, cwd=private)
        check(True, f"selftest passed with --dir {d!r}")
        bed_gone(d)

        # An `up` cut off (Ctrl-C) while seeding stops what it started and removes its run dir.
        d = os.path.join(private, "interrupted")
        p = subprocess.Popen([sys.executable, os.path.join(src, "tests", "testbed", "testbed.py"),
                              "up", "--dir", d, "--large-mb", "64"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with open(os.path.join(d, "testbed.json")) as f:
                    if (json.load(f).get("legacy") or {}).get("pid"):
                        break           # both servers run; seeding the 64 MiB message now
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        check(p.poll() is None, "up still seeding when interrupted")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        check(p.returncode != 0, f"interrupted up failed (exit {p.returncode})")
        check("KeyboardInterrupt" in err, "it was the interruption that stopped it")
        bed_gone(d)
        check(os.stat(private).st_mode & 0o777 == 0o700, f"{private} is still 0700")
        return 0
    finally:
        for d in ("check out/build/tests/testbed", "check out/self test", "interrupted"):
            testbed.down(os.path.join(private, d), quiet=True)
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
