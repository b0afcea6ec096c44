#!/usr/bin/env bash
# Every test of Palaver, as CI runs them (`.ci/run` calls exactly this):
#  0. browser/setup.sh installs Debian's chromium and the pinned npm packages
#     for the Converse.js test, clients/setup.sh the clients of the interop
#     matrix (tests/interop.rs), interop/s2s-setup.sh Debian's ejabberd and
#     Prosody for the federation interop test (tests/s2s_interop.rs) (once;
#     idempotent);
#  1. the whole workspace on the embedded SQLite store, including the
#     PostgreSQL-specific tests (fresh database per test from PALAVER_TEST_PG_URL);
#  2. every fuzz target (fuzz/, cargo-fuzz on stable via RUSTC_BOOTSTRAP) for
#     PALAVER_FUZZ_SECONDS each (default 10; 7 targets), failing on any crash;
#  3. the end-to-end suite (tests/*.rs) again with every server on PostgreSQL.
# Needs PostgreSQL (default postgres://postgres@127.0.0.1:5432/postgres, trust
# auth). Plain `cargo test --workspace` needs no service: it runs the
# embedded-store tests and skips the PostgreSQL ones (outside CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PALAVER_TEST_PG_URL="${PALAVER_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export PALAVER_TEST_REDIS_URL="${PALAVER_TEST_REDIS_URL:-redis://127.0.0.1:6379/}"

echo "== browser test setup (chromium, npm packages) =="
bash browser/setup.sh

echo "== client interop matrix setup (slixmpp, xmpp.js, mcabber, sendxmpp) =="
bash clients/setup.sh

echo "== federation interop setup (ejabberd, prosody) =="
bash interop/s2s-setup.sh

echo "== workspace tests (SQLite store) =="
cargo test --workspace --all-targets

echo "== fuzz targets (${PALAVER_FUZZ_SECONDS:-10} s each) =="
bash fuzz/run.sh "${PALAVER_FUZZ_SECONDS:-10}"

echo "== end-to-end suite on PostgreSQL =="
PALAVER_TEST_BACKEND=pgsql cargo test --workspace --test '*'
