#!/bin/sh
# suction [auth] provision_command for a Dovecot passwd-file on the new server:
# sets the user's password there (SHA512-CRYPT) the first time legacy confirms it,
# so the user can later log in to the new server directly.
#
#   [auth]
#   verify = "legacy"
#   provision_command = ["/usr/local/lib/suction/dovecot-passwd-file.sh", "/etc/dovecot/users"]
#
# suction appends the login name and the new name as arguments and writes the
# password on stdin (one line); it is never an argument (ps would show it).
# A user's existing line keeps its other fields; a new user gets an empty
# uid/gid/home (userdb default_fields). Exit 0 on success; anything on stderr
# is logged by suction with the password replaced by ***.
set -eu
[ $# -eq 3 ] || { echo "usage: $0 PASSWD_FILE LOGIN NEW_NAME (password on stdin)" >&2; exit 2; }
file=$1
user=$3
case "$user" in
  ""|*:*) echo "refusing user name \"$user\" (empty or with ':')" >&2; exit 2 ;;
esac
IFS= read -r password || true
[ -n "$password" ] || { echo "no password on stdin" >&2; exit 2; }
hash=$(printf '%s\n' "$password" | openssl passwd -6 -stdin)
password=
# One writer at a time, and the file replaced whole (Dovecot never reads half a file).
exec 9>>"$file.lock"
flock -w 10 9
tmp=$(mktemp "$file.XXXXXX")
trap 'rm -f "$tmp"' EXIT
awk -v u="$user" -v pw="{SHA512-CRYPT}$hash" 'BEGIN { FS = OFS = ":" }
  $1 == u { $2 = pw; found = 1 }
  { print }
  END { if (!found) print u, pw, "", "", "", "", "", "" }' "$file" > "$tmp"
chmod --reference="$file" "$tmp"
chown --reference="$file" "$tmp"
mv "$tmp" "$file"
trap - EXIT
