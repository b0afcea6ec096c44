#!/usr/bin/env bash
# Server memory per session in a state (BENCHMARKS.md):
#
#   bench/session_mem.sh [N]        (default N = 1000: two batches of N)
#
# Starts the release binary (PALAVER_BIN, default
# ${CARGO_TARGET_DIR:-/tmp/palaver-release}/release/palaver) on a fresh data
# dir on 127.0.0.62:5222 with stream management (resume_timeout 3600) and
# CSI, creates u0..u{2N-1} and `driver`, then runs bench/session_mem.py for
# each state (plain: no stream management; online: with it; inactive;
# inactive holding a presence; detached), each on a freshly started server.
# STATES="online detached" runs only those.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
N=${1:-1000}
PAL=${PALAVER_BIN:-${CARGO_TARGET_DIR:-/tmp/palaver-release}/release/palaver}
DATA=/tmp/bench-session-mem
IP=127.0.0.62
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rm -rf "$DATA"
mkdir -p "$DATA"
cat >"$DATA/palaver.yml" <<YML
hosts: [localhost]
loglevel: warning
data_dir: $DATA
listen:
  - port: 5222
    ip: "$IP"
    module: c2s
    allow_plain_without_tls: true
    idle_timeout: 0
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_stream_mgmt: {resume_timeout: 3600}
  mod_client_state: {}
YML
"$PAL" db migrate --config "$DATA/palaver.yml" >/dev/null
for i in $(seq 0 $((2 * N - 1))) driver; do
	u=$i
	[ "$i" = driver ] || u="u$i"
	echo "$u@localhost"
done | xargs -P 2 -I{} sh -c "echo pw | '$PAL' user add --config '$DATA/palaver.yml' {} >/dev/null 2>&1"
echo "accounts: $("$PAL" user list --config "$DATA/palaver.yml" localhost 2>/dev/null | wc -l)"
PIN=""
QPIN=""
if command -v taskset >/dev/null; then
	PIN="taskset -c 0"
	QPIN="taskset -c 1"
fi
run() {
	$PIN "$PAL" serve --config "$DATA/palaver.yml" >>"$DATA/log" 2>&1 &
	PID=$!
	for _ in $(seq 100); do (exec 3<>/dev/tcp/$IP/5222) 2>/dev/null && break; sleep 0.1; done
	$QPIN python3 "$HERE/session_mem.py" "$IP" 5222 localhost "$PID" "$N" "$1"
	kill "$PID"
	wait "$PID" 2>/dev/null || true
}
STATES=${STATES:-plain online inactive hold detached}
for st in $STATES; do
	case $st in
	hold) HOLD=1 run inactive ;;
	*) run "$st" ;;
	esac
done
