#!/usr/bin/env bash
# Installs what the tests need, builds everything and runs every test through
# ctest (unit tests, real-Dovecot integration tests, fuzzers for a bounded
# time). Exits non-zero on any failure. Works on a fresh Debian 12 machine.
#
#   tests/run.sh                      # everything
#   SUCTION_FUZZ_SECONDS=5 tests/run.sh   # shorter fuzzing
#   ctest --test-dir build -R imap_client   # afterwards: one group of tests
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)

bash deploy/install-deps.sh

echo "== fuzz targets (clang, ASan+UBSan+libFuzzer)"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DSUCTION_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$jobs"

echo "== build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSUCTION_FUZZ_BIN_DIR="$root/build-fuzz/tests/fuzz" \
  -DSUCTION_FUZZ_SECONDS="${SUCTION_FUZZ_SECONDS:-20}" >/dev/null
cmake --build build -j"$jobs"

echo "== tests"
ctest --test-dir build --output-on-failure -j2 --timeout 600
