#!/usr/bin/env bash
# The MAM figures of BENCHMARKS.md, on one backend:
#
#   bench/mam_bench.sh sqlite|pgsql [ROUNDS]
#
# 1. a fresh data dir (and, for pgsql, a fresh database palaver_mam_bench on
#    PALAVER_BENCH_PG, default postgres://postgres@127.0.0.1:5432), schema
#    made by `palaver db migrate` with mod_mam enabled, account u42;
# 2. bench/mam_archive.sh fills 1,000,000 messages over 1,000 users and
#    prints the query plans;
# 3. the server is started on 127.0.0.61:5222 (pinned to CPU 0 when taskset
#    exists) and bench/mam_query.py, as u42, times the last-50-with-u43
#    query and the paged query by date ROUNDS times (default 500).
# PALAVER_BIN: the binary (default: release build in $CARGO_TARGET_DIR or
# /tmp/palaver-release). STEP=fill only makes and fills the archive;
# STEP=query only times an archive filled before (default: both).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
backend=${1:?sqlite|pgsql}
ROUNDS=${2:-500}
PAL=${PALAVER_BIN:-${CARGO_TARGET_DIR:-/tmp/palaver-release}/release/palaver}
STEP=${STEP:-all}
DATA=/tmp/bench-mam-$backend
IP=127.0.0.61
if [ "$STEP" != query ]; then
	rm -rf "$DATA"
	mkdir -p "$DATA"
fi
DBKEYS=""
if [ "$backend" = pgsql ]; then
	PG="${PALAVER_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
	if [ "$STEP" != query ]; then
		psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS palaver_mam_bench WITH (FORCE)" -c "CREATE DATABASE palaver_mam_bench"
	fi
	DBKEYS="default_db: sql
sql_type: pgsql
sql_url: \"$PG/palaver_mam_bench\"
sql_pool_size: 10"
	TARGET="$PG/palaver_mam_bench"
else
	TARGET="$DATA/palaver.db"
fi
if [ "$STEP" != query ]; then
cat >"$DATA/palaver.yml" <<YML
hosts: [localhost]
loglevel: warning
data_dir: $DATA
$DBKEYS
listen:
  - port: 5222
    ip: "$IP"
    module: c2s
    allow_plain_without_tls: true
modules:
  mod_disco: {}
  mod_mam: {}
YML
"$PAL" db migrate --config "$DATA/palaver.yml"
echo pw | "$PAL" user add --config "$DATA/palaver.yml" u42@localhost
if [ "$backend" = sqlite ] && [ ! -f "$TARGET" ]; then
	echo "no SQLite file at $TARGET" >&2
	ls "$DATA" >&2
	exit 1
fi
# The archive's time range (mam_archive.sh makes ids end at "now").
date +%s >"$DATA/filled_at"
"$HERE/mam_archive.sh" "$backend" "$TARGET"
fi
[ "$STEP" = fill ] && exit 0
NOW_US=$(($(cat "$DATA/filled_at") * 1000000))
PIN=""
command -v taskset >/dev/null && PIN="taskset -c 0"
$PIN "$PAL" serve --config "$DATA/palaver.yml" >"$DATA/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/$IP/5222) 2>/dev/null && break; sleep 0.1; done
QPIN=""
command -v taskset >/dev/null && QPIN="taskset -c 1"
# u42's messages are one a second over the archive's 1,000 seconds; a
# page by date starts somewhere leaving at least two pages after it.
$QPIN python3 "$HERE/mam_query.py" "$IP" 5222 localhost u42 pw u43@localhost \
	$((NOW_US - 1000 * 1000000)) $((NOW_US - 150 * 1000000)) "$ROUNDS"
echo "server rss: $(grep VmRSS /proc/$PID/status)"
