#!/usr/bin/env bash
# Installs every Debian 12 package suction needs to build, test and run.
# Idempotent: quiet and fast when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libboost1.81-dev libssl-dev libspdlog-dev libfmt-dev doctest-dev
  libsqlite3-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  libpq-dev  # [sync] state_db = "postgresql://...": the state several nodes share
  clang libclang-rt-14-dev
  dovecot-imapd dovecot-core isync openssl curl python3
  fail2ban   # tests: fail2ban-regex checks deploy/fail2ban/ (Debian also enables its service)
  haproxy    # tests: a real load balancer sending the PROXY protocol (test_proxy_protocol.py)
  prometheus-cpp-dev   # the [metrics] endpoint
  prometheus # tests: promtool check metrics on a scrape (Debian also enables its service)
  postgresql-15 postgresql-client-15   # tests: a private PostgreSQL (tests/testbed/pgbed.py)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
