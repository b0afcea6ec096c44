#!/bin/sh
# Fill a mod_mam archive with 1,000,000 messages over 1,000 users (1,000
# each, with 20 correspondents each), then show the plans of the two
# queries BENCHMARKS.md times: the last 50 messages with one contact, and a
# page by date.
#
#   bench/mam_archive.sh sqlite DATA_DIR/palaver.db
#   bench/mam_archive.sh pgsql  postgres://postgres@127.0.0.1:5432/bench
#
# The tables must exist: start Palaver once on that database with mod_mam
# enabled (its migrations create them), stop it, then run this. Users are
# u0..u999 on host `localhost`; the rows are written straight with SQL
# (ids are microsecond timestamps ending now, as the module makes them):
# on SQLite into mam_msg, then indexed as the module's fold does
# (crates/modules/src/mam/store.rs), with mam_ixw up to date as every
# account's first query "with" someone leaves it; on PostgreSQL into
# mam_archive.
# Env: MESSAGES (default 1000000), USERS (default 1000).
set -eu
backend=${1:?sqlite|pgsql}
target=${2:?database file or URL}
MESSAGES=${MESSAGES:-1000000}
USERS=${USERS:-1000}
PER_USER=$((MESSAGES / USERS))
NOW_US=$(($(date +%s) * 1000000))
FIRST_US=$((NOW_US - MESSAGES * 1000))

# SQLite: $1 yields n = 0..MESSAGES-1, $2 n = 0..USERS-1 (same rows as fill_sql).
fill_sqlite() {
	cat <<SQL
INSERT INTO mam_jid (jid) SELECT 'u' || n || '@localhost' FROM $2 WHERE true ON CONFLICT DO NOTHING;
INSERT INTO mam_msg (acct, w, id, with_res, origin_id, xml)
SELECT (SELECT k FROM mam_jid WHERE jid = 'u' || (n % $USERS) || '@localhost'),
       (SELECT k FROM mam_jid WHERE jid = 'u' || ((n % $USERS + 1 + (n / $USERS) % 20) % $USERS) || '@localhost'),
       $FIRST_US + n * 1000,
       'phone',
       'o' || n,
       '<message xmlns=''jabber:client'' from=''u' || ((n % $USERS + 1 + (n / $USERS) % 20) % $USERS) || '@localhost/phone'' to=''u' || (n % $USERS) || '@localhost'' type=''chat'' id=''m' || n || '''><body>benchmark message ' || n || '</body></message>'
FROM $1;
INSERT INTO mam_ix (acct, id, w, msg) SELECT acct, id, w, rowid FROM mam_msg
 WHERE rowid > (SELECT upto FROM mam_folded) ORDER BY acct, id, rowid ON CONFLICT DO NOTHING;
INSERT INTO mam_ixw (acct, w, id, msg) SELECT acct, w, id, rowid FROM mam_msg
 WHERE rowid > (SELECT upto FROM mam_folded) ORDER BY acct, w, id, rowid ON CONFLICT DO NOTHING;
INSERT INTO mam_wm (acct, upto, gen) SELECT acct, MAX(id), 0 FROM mam_ix WHERE true GROUP BY acct
 ON CONFLICT (acct) DO UPDATE SET upto = excluded.upto;
UPDATE mam_folded SET upto = (SELECT MAX(rowid) FROM mam_msg), settled = 0;
SQL
}

fill_sql() {
	# $1: integer-series expression yielding n = 0..MESSAGES-1 as column n.
	cat <<SQL
INSERT INTO mam_archive (host, username, id, with_bare, with_res, origin_id, xml)
SELECT 'localhost',
       'u' || (n % $USERS),
       $FIRST_US + n * 1000,
       'u' || ((n % $USERS + 1 + (n / $USERS) % 20) % $USERS) || '@localhost',
       'phone',
       'o' || n,
       '<message xmlns=''jabber:client'' from=''u' || ((n % $USERS + 1 + (n / $USERS) % 20) % $USERS) || '@localhost/phone'' to=''u' || (n % $USERS) || '@localhost'' type=''chat'' id=''m' || n || '''><body>benchmark message ' || n || '</body></message>'
FROM $1;
SQL
}

# The two timed queries, for user u42 and correspondent u43, as the module
# runs them (crates/modules/src/mam/store.rs): the RSM count, then the page
# (one more row than asked, to know whether the page is complete).
LAST50="SELECT id, xml FROM mam_archive WHERE host = 'localhost' AND username = 'u42' AND with_bare = 'u43@localhost' ORDER BY id DESC LIMIT 51"
COUNT50="SELECT COUNT(*) FROM mam_archive WHERE host = 'localhost' AND username = 'u42' AND with_bare = 'u43@localhost'"
BYDATE="SELECT id, xml FROM mam_archive WHERE host = 'localhost' AND username = 'u42' AND id >= $((FIRST_US + MESSAGES * 500)) ORDER BY id ASC LIMIT 51"
COUNTDATE="SELECT COUNT(*) FROM mam_archive WHERE host = 'localhost' AND username = 'u42' AND id >= $((FIRST_US + MESSAGES * 500))"
# The same on SQLite's tables.
ACCT="(SELECT k FROM mam_jid WHERE jid = 'u42@localhost')"
W="(SELECT k FROM mam_jid WHERE jid = 'u43@localhost')"
SQ_LAST50="SELECT x.id, m.xml FROM mam_ixw x JOIN mam_msg m ON m.rowid = x.msg WHERE x.acct = $ACCT AND x.w = $W ORDER BY x.id DESC LIMIT 51 OFFSET 0"
SQ_COUNT50="SELECT COUNT(*) FROM mam_ixw x WHERE x.acct = $ACCT AND x.w = $W"
SQ_BYDATE="SELECT x.id, m.xml FROM mam_ix x JOIN mam_msg m ON m.rowid = x.msg WHERE x.acct = $ACCT AND x.id >= $((FIRST_US + MESSAGES * 500)) ORDER BY x.id ASC LIMIT 51 OFFSET 0"
SQ_COUNTDATE="SELECT COUNT(*) FROM mam_ix x WHERE x.acct = $ACCT AND x.id >= $((FIRST_US + MESSAGES * 500))"

case $backend in
sqlite)
	sqlite3 "$target" <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
$(fill_sqlite "(WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < $MESSAGES) SELECT n FROM s)" \
	"(WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < $USERS) SELECT n FROM s)")
COMMIT;
ANALYZE;
SELECT 'rows', COUNT(*) FROM mam_msg;
SELECT 'last 50 with one contact:';
EXPLAIN QUERY PLAN $SQ_COUNT50;
EXPLAIN QUERY PLAN $SQ_LAST50;
SELECT 'a page by date:';
EXPLAIN QUERY PLAN $SQ_COUNTDATE;
EXPLAIN QUERY PLAN $SQ_BYDATE;
SQL
	;;
pgsql)
	psql -v ON_ERROR_STOP=1 "$target" <<SQL
BEGIN;
$(fill_sql "generate_series(0, $MESSAGES - 1) AS s(n)")
COMMIT;
ANALYZE mam_archive;
SELECT 'rows', COUNT(*) FROM mam_archive;
EXPLAIN ANALYZE $COUNT50;
EXPLAIN ANALYZE $LAST50;
EXPLAIN ANALYZE $COUNTDATE;
EXPLAIN ANALYZE $BYDATE;
SQL
	;;
*)
	echo "backend: sqlite or pgsql" >&2
	exit 2
	;;
esac
echo "archive: $MESSAGES messages, $USERS users of $PER_USER ($backend)"
