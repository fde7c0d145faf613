#!/usr/bin/env bash
# suction quick start on a fresh Debian 12 machine: installs dependencies,
# builds, starts a local "legacy" and a local "new" Dovecot server on loopback
# with seeded sample mailboxes, and plays a cutover: the new server knows none
# of the users' passwords (a master user only); suction in front of it checks
# them on legacy ([auth] verify = "legacy"). `suction report` says nobody is
# done; alice logs in through suction with her legacy password and her mailbox
# is copied while she works; bob and carol never log in: `suction migrate`
# hands them to the daemon, which copies them with legacy's master user;
# `suction report` then exits 0 (the legacy server may go off).
#
#   deploy/quickstart.sh         # start and show
#   deploy/quickstart.sh stop    # stop the servers and remove the state
#
# Works from any checkout (root's 0700 home too). Everything runs as root except the
# Dovecot servers' own processes (users dovecot, dovenull): their files go to a fresh
# $TMPDIR/suction-bed-* directory (tests/testbed/README.md), removed by `stop`; the rest
# (testbed.json, suction's config, log, state and status socket) to $state below.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${SUCTION_QUICKSTART_DIR:-/tmp/suction-quickstart}

if [ "${1:-}" = "stop" ]; then
  if [ -f "$state/suction.pid" ]; then
    kill -TERM "$(cat "$state/suction.pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$state/suction.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  # down also removes the servers' run dir (recorded in $state/testbed.json)
  [ -d "$state" ] && python3 tests/testbed/testbed.py down --dir "$state"
  rm -rf "$state"
  echo "quickstart: stopped; removed $state and the servers' files"
  exit 0
fi

bash deploy/install-deps.sh
echo "== building suction"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target suction
./build/proxy/cli/suction --version

if [ -f "$state/testbed.json" ]; then
  echo "== servers from an earlier run are still up in $state (stop them with: $0 stop)"
else
  echo "== starting legacy and new Dovecot servers in $state"
  mkdir -p "$state"
  python3 tests/testbed/testbed.py up --dir "$state" >/dev/null
  echo "== a cutover: the new server gets a master user and no password of any user"
  umask 077
  python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$state/master.pw"
  umask 022
  python3 - "$state" "$root/tests/testbed" <<'PY'
import secrets, sys
sys.path.insert(0, sys.argv[2])
from testbed import Testbed
bed = Testbed.attach(sys.argv[1])
master_pw = open(sys.argv[1] + "/master.pw").read().strip()
for server in (bed.legacy, bed.new):       # Dovecot master passdb, auth_master_user_separator = *
    server.add_master_user("suction-master", master_pw)
for user in ("alice", "bob", "carol"):     # the new server: a password nobody knows
    bed.new.set_password(user, secrets.token_urlsafe(24))
for user in ("bob", "carol"):
    c = bed.legacy.connect(user)
    for i in range(3):
        c.append("INBOX", None, None, f"From: a@example.org\r\nSubject: {user} {i}\r\n\r\nhi\r\n".encode())
    c.logout()
PY
  printf 'alice\nbob\ncarol\n' >"$state/users.txt"
fi
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [d:=d[k] for k in sys.argv[2:]]; print(d)' "$state/testbed.json" "$@"; }
echo "   their own files (configs, logs, mail): $(json_get run_dir 2>/dev/null || echo "$state")"

show_mailboxes() {
python3 - "$state/testbed.json" "$root/tests/testbed" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from testbed import Testbed

bed = Testbed.attach(sys.argv[1].rsplit("/", 1)[0])
master_pw = open(sys.argv[1].rsplit("/", 1)[0] + "/master.pw").read().strip()
for role, server in (("legacy", bed.legacy), ("new", bed.new)):
    print(f"\n{role} server: imap://{server.host}:{server.imap_port} (STARTTLS)   "
          f"imaps://{server.host}:{server.imaps_port}   log {server.log_path}")
    if role == "legacy":
        c = server.connect("alice", tls="starttls")
    else:   # nobody knows alice's password there: the master user looks
        c = server.open("starttls")
        blob = f"alice\0suction-master\0{master_pw}".encode()
        c.authenticate("PLAIN", lambda _c: blob)
    total = 0
    typ, listed = c.list()
    from testbed import parse_list
    for box in parse_list(listed):
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
}
echo "== alice's mailbox before she logs in through suction"
show_mailboxes

new_port=$(json_get new imap_port)
ca_file=$(json_get ca_file)
tls_dir=$(dirname "$ca_file")

if [ -f "$state/suction.pid" ] && kill -0 "$(cat "$state/suction.pid")" 2>/dev/null; then
  echo "== suction is already running (pid $(cat "$state/suction.pid"))"
else
  read -r imap_port imaps_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
  cat > "$state/suction.toml" <<EOC
# Written by deploy/quickstart.sh: suction in front of the local "new" Dovecot.
[listen]
imap = "127.0.0.1:$imap_port"
imaps = "127.0.0.1:$imaps_port"
tls_cert = "$tls_dir/cert.pem"
tls_key = "$tls_dir/key.pem"

[new]
host = "127.0.0.1"
port = $new_port
tls = "none"
forward_client_info = true
master_user = "suction-master"          # the new server knows no user's password
master_password_file = "$state/master.pw"

[legacy]
host = "127.0.0.1"
port = $(json_get legacy imap_port)
tls = "starttls"
ca_file = "$ca_file"
master_user = "suction-master"          # for users who never log in (suction migrate)
master_password_file = "$state/master.pw"

[auth]
verify = "legacy"                       # passwords are checked where they live

[sync]
state_db = "$state/state.db"

[status]
socket = "$state/status.sock"

[log]
level = "info"
EOC
  echo "== starting suction in front of the new server (log: $state/suction.log)"
  ./build/proxy/cli/suction proxy --config "$state/suction.toml" >"$state/suction.log" 2>&1 &
  echo $! >"$state/suction.pid"
  for _ in $(seq 50); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$imap_port" 2>/dev/null && break
    sleep 0.1
  done
fi
proxy_port=$(sed -n 's/^imap = "127.0.0.1:\([0-9]*\)"/\1/p' "$state/suction.toml")
proxy_tls_port=$(sed -n 's/^imaps = "127.0.0.1:\([0-9]*\)"/\1/p' "$state/suction.toml")

suction=./build/proxy/cli/suction
echo "== suction report: may the legacy server go off? (not yet: exit 1)"
"$suction" report --config "$state/suction.toml" --users "$state/users.txt" | sed 's/^/   /' || echo "   exit $?"

echo "== the new server alone refuses alice's legacy password"
python3 - "$new_port" <<'PY' || true
import imaplib, sys
c = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
try:
    c.login("alice", "wonderland")
except imaplib.IMAP4.error as e:
    print("   LOGIN directly:", e)
PY

echo "== alice logs in through suction with her legacy password (STARTTLS, certificate verified)"
python3 - "$proxy_port" "$ca_file" <<'PY'
import imaplib, ssl, sys
c = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
c.starttls(ssl_context=ssl.create_default_context(cafile=sys.argv[2]))
typ, data = c.login("alice", "wonderland")
print("  LOGIN:", typ, data[0].decode()[:80] + "...")
typ, boxes = c.list()
print("  folders on the new server:", ", ".join(b.decode().rsplit(" ", 1)[1] for b in boxes))
c.logout()
PY
echo "  suction's log:"
grep -E "login ok" "$state/suction.log" | tail -1 | sed 's/^/    /'

echo "== her login queued her migration; suction status until it is done"
status=(./build/proxy/cli/suction status --socket "$state/status.sock")
for _ in $(seq 120); do
  out=$("${status[@]}" 2>&1) || true
  printf '%s\n\n' "$out"
  if printf '%s\n' "$out" | grep -Eq '^ *alice +(done|failed)'; then break; fi
  sleep 1
done
"${status[@]}" --user alice
echo "  suction's log:"
grep -E "migration user=alice" "$state/suction.log" | tail -1 | sed 's/^/    /'

echo "== bob and carol never log in: suction migrate hands them to the daemon (legacy's master user)"
printf 'bob\ncarol\n' >"$state/never-logged-in.txt"
"$suction" migrate --config "$state/suction.toml" --users "$state/never-logged-in.txt" | sed 's/^/   /'
for _ in $(seq 120); do
  "$suction" report --config "$state/suction.toml" --users "$state/users.txt" >/dev/null && break
  sleep 1
done
echo "== suction report: every listed user is done (exit 0: the legacy server may go off)"
"$suction" report --config "$state/suction.toml" --users "$state/users.txt" | sed 's/^/   /'

echo "== both servers now (the same messages, folders mapped to the new server's names)"
show_mailboxes

q() { printf '%q' "$1"; }   # the commands below stay right for a path with spaces
cat <<EOT

Everything runs until you stop it. Users: alice / wonderland (and bob, carol: see
$state/testbed.json): their legacy passwords work through suction, not on the new
server directly. Through suction:
  curl --user alice:wonderland 'imap://127.0.0.1:$proxy_port/'
  openssl s_client -quiet -connect 127.0.0.1:$proxy_tls_port -CAfile $(q "$ca_file")
  tail -f $(q "$state/suction.log")
  ./build/proxy/cli/suction status --socket $(q "$state/status.sock") [--user alice] [--json]
  ./build/proxy/cli/suction report --config $(q "$state/suction.toml") --users $(q "$state/users.txt")

Stop everything with:  $(q "$0") stop
EOT
