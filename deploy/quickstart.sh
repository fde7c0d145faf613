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
  python3 tests/testbed/testbed.py up --dir "$state"
fi

python3 - "$state/testbed.json" <<'PY'
import imaplib, json, ssl, sys

bed = json.load(open(sys.argv[1]))
user, password = "alice", bed["users"]["alice"]

def show(role):
    s = bed[role]
    print(f"\n{role} server: imap://{s['host']}:{s['imap_port']} (STARTTLS)   "
          f"imaps://{s['host']}:{s['imaps_port']}   log {s['log_path']}")
    ctx = ssl.create_default_context(cafile=bed["ca_file"])
    c = imaplib.IMAP4(s["host"], s["imap_port"])
    c.starttls(ssl_context=ctx)
    c.login(user, password)
    typ, lines = c.list()
    total = 0
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        name = line.rsplit(" ", 1)[1] if not line.endswith('"') else '"' + line.rsplit(' "', 1)[1]
        if "\\Noselect" in line:
            print(f"  {name:40s}  (no messages: a parent folder)")
            continue
        typ, st = c.status(name, "(MESSAGES)")
        n = int(st[0].decode().rsplit("MESSAGES ", 1)[1].rstrip(")"))
        total += n
        print(f"  {name:40s} {n:5d} messages")
    print(f"  {'total':40s} {total:5d} messages")
    c.logout()

show("legacy")
show("new")
PY

legacy_port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["legacy"]["imap_port"])' "$state/testbed.json")
cat <<EOT

The servers run until you stop them. Users: alice / wonderland (and bob, carol: see
$state/testbed.json). Try:
  curl --user alice:wonderland 'imap://127.0.0.1:$legacy_port/'
  openssl s_client -quiet -starttls imap -connect 127.0.0.1:$legacy_port -CAfile $state/cert.pem

Stop everything with:  $0 stop
EOT
