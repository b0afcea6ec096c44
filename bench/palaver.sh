#!/usr/bin/env bash
# Run ../shared/bench scenarios against Palaver, pinned like the anchors:
# server on CPU 0, load tool on CPU 1.
#   bench/palaver.sh [USERS] [RESULTS]
# Builds release binaries, starts palaver on 127.0.0.14 (domain pal.test) with
# a fresh data dir and the default modules, registers bench0..bench{USERS-1}
# in-band (XEP-0077), then runs login, chat and idle. Appends JSON lines to RESULTS.
# PALAVER_BIN=/path/to/palaver runs that binary instead of building this
# checkout (A/B against an older commit built into its own target dir).
# PALAVER_BENCH_ROSTER=0 skips the roster storm (1,000 users x 10 contacts).
# PALAVER_BENCH_MODULES="mod_mam" enables more modules (default options)
# besides the core set, e.g. the chat run with an archive.
# PALAVER_BENCH_SCENARIOS="chat muc" runs only those, after registration
# (default: login chat muc idle roster, muc only with PALAVER_BENCH_MUC=1).
# PALAVER_BENCH_CHAT="--rate R" runs chat open loop at R messages/s in all
# (default: closed loop, window 4).
# PALAVER_BENCH_MUC=1 adds mod_muc (conference.pal.test) and the muc scenario
# (200 occupants of one room, closed loop window 1, 15 s, grace 15 s) after chat.
# PALAVER_BENCH_DB=pgsql puts the store on a fresh PostgreSQL database
# palaver_bench (PALAVER_BENCH_PG, default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/.."
USERS="${1:-2000}"
RESULTS="${2:-/tmp/palaver-bench.jsonl}"
DATA=${PALAVER_BENCH_DATA:-/tmp/bench-palaver}
IP=${PALAVER_BENCH_IP:-127.0.0.14}
DOMAIN=pal.test
export CARGO_TARGET_DIR="${PALAVER_TARGET:-/tmp/palaver-release}"
if [ -n "${PALAVER_BIN:-}" ]; then
  PAL="$PALAVER_BIN"   # a build made elsewhere (A/B against an older commit)
else
  cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml"
  PAL="$CARGO_TARGET_DIR/release/palaver"
fi
BENCH_TARGET=/tmp/xmpp-bench-target
CARGO_TARGET_DIR=$BENCH_TARGET cargo build --quiet --release --locked --manifest-path "$ROOT/../shared/bench/xmpp-bench/Cargo.toml"
B="$BENCH_TARGET/release/xmpp-bench"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rm -rf "$DATA"; mkdir -p "$DATA"
DBKEYS=""
if [ "${PALAVER_BENCH_DB:-sqlite}" = pgsql ]; then
  PG="${PALAVER_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS palaver_bench WITH (FORCE)" -c "CREATE DATABASE palaver_bench"
  DBKEYS="default_db: sql
sql_type: pgsql
sql_url: \"$PG/palaver_bench\"
sql_pool_size: 10"
fi
cat >"$DATA/palaver.yml" <<YML
hosts: [$DOMAIN]
loglevel: warning
data_dir: $DATA
$DBKEYS
listen:
  - port: 5222
    ip: "$IP"
    module: c2s
    allow_plain_without_tls: true
    idle_timeout: 0
modules:
  mod_disco: {}
  mod_ping: {}
  mod_version: {}
  mod_time: {}
  mod_roster: {}
  mod_offline: {}
  mod_vcard: {}
  mod_private: {}
  mod_last: {}
  mod_blocking: {}
  mod_register: {registration_timeout: 0}
$( [ "${PALAVER_BENCH_MUC:-0}" = 1 ] && echo "  mod_muc: {}" )
$(for m in ${PALAVER_BENCH_MODULES:-}; do echo "  $m: {}"; done)
access_rules:
  register:
    allow: [all]
YML
taskset -c 0 "$PAL" serve --config "$DATA/palaver.yml" >"$DATA/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/$IP/5222) 2>/dev/null && break; sleep 0.1; done
T=(--host "$IP" --domain "$DOMAIN" --server-pid "$PID" --src-ips ${PALAVER_BENCH_SRC:-127.0.0.20-127.0.0.40} --json "$RESULTS")
taskset -c 1 "$B" register --users "$USERS" --concurrency 20 --register-batch 50 "${T[@]}"
SCEN=" ${PALAVER_BENCH_SCENARIOS:-login chat muc idle roster} "
on() { [[ $SCEN == *" $1 "* ]]; }
if on login; then
  sleep 2
  taskset -c 1 "$B" login --users "$USERS" --concurrency 100 "${T[@]}"
fi
if on chat; then
  sleep 2
  # PALAVER_BENCH_CHAT="--rate 12000" replaces the closed loop's pacing
  # (open loop: both configurations compared at one message rate).
  taskset -c 1 "$B" chat --users $((USERS / 2)) ${PALAVER_BENCH_CHAT:---window 4} --duration 20 --grace 15 "${T[@]}"
fi
if on muc && [ "${PALAVER_BENCH_MUC:-0}" = 1 ]; then
  sleep 2
  taskset -c 1 "$B" muc --users 200 --duration 15 --grace 15 "${T[@]}"
fi
if on idle; then
  sleep 2
  taskset -c 1 "$B" idle --users "$USERS" --hold 10 "${T[@]}"
fi
if on roster && [ "${PALAVER_BENCH_ROSTER:-1}" = 1 ]; then
  sleep 2
  # The roster storm: 1,000 users, 10 ring neighbours each, every request
  # approved at once; `roster_both_ok_users` must be 1000.
  taskset -c 1 "$B" roster --users 1000 --contacts 10 "${T[@]}"
fi
echo "server pid $PID; results appended to $RESULTS" >&2
