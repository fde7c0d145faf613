#!/usr/bin/env bash
# suction quick start on a fresh Debian 12 machine: installs dependencies,
# builds, starts a local "legacy" and a local "new" Dovecot server on loopback
# with a seeded sample mailbox, and shows them. (The proxy in front of the new
# server joins this script when the proxy lands.)
#
#   deploy/quickstart.sh         # start and show
#   deploy/quickstart.sh stop    # stop the servers and remove the state
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${SUCTION_QUICKSTART_DIR:-/tmp/suction-quickstart}

if [ "${1:-}" = "stop" ]; then
  [ -d "$state" ] && python3 tests/testbed/testbed.py down --dir "$state"
  rm -rf "$state"
  echo "quickstart: stopped and removed $state"
  exit 0
fi

bash deploy/install-deps.sh
echo "== building suction"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target suction
./build/src/proxy/suction --version

if [ -f "$state/testbed.json" ]; then
  echo "== servers from an earlier run are still up in $state (stop them with: $0 stop)"
else
  echo "== starting legacy and new Dovecot servers in $state"
  mkdir -p "$state"
  python3 tests/testbed/testbed.py up --dir "$state" >/dev/null
fi

python3 - "$state/testbed.json" "$root/tests/testbed" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from testbed import Testbed

bed = Testbed.attach(sys.argv[1].rsplit("/", 1)[0])
for role, server in (("legacy", bed.legacy), ("new", bed.new)):
    print(f"\n{role} server: imap://{server.host}:{server.imap_port} (STARTTLS)   "
          f"imaps://{server.host}:{server.imaps_port}   log {server.log_path}")
    c = server.connect("alice", tls="starttls")
    total = 0
    for box in server.list("alice"):
        name, shown = box["raw"], box["name"]
        if any(a.lower() == "\\noselect" for a in box["attrs"]):
            print(f"  {shown:32s}        (a parent folder, holds no messages)")
            continue
        typ, st = c.status('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"', "(MESSAGES)")
        n = int(st[0].decode().rsplit("MESSAGES ", 1)[1].split(")")[0])
        total += n
        special = " ".join(a for a in box["attrs"] if a.lower() in
                           ("\\sent", "\\trash", "\\drafts", "\\junk", "\\archive"))
        print(f"  {shown:32s} {n:5d} messages  {special}")
    print(f"  {'total':32s} {total:5d} messages")
    c.logout()
PY

legacy_port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["legacy"]["imap_port"])' "$state/testbed.json")
ca_file=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_file"])' "$state/testbed.json")
cat <<EOT

The servers run until you stop them. Users: alice / wonderland (and bob, carol: see
$state/testbed.json). Try:
  curl --user alice:wonderland 'imap://127.0.0.1:$legacy_port/'
  openssl s_client -quiet -starttls imap -connect 127.0.0.1:$legacy_port -CAfile $ca_file

Stop everything with:  $0 stop
EOT
