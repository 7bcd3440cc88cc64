#!/usr/bin/env bash
# bench/run.sh: syncrelay against Postfix's smtp-sink, same workload, one run.
#
# Scenarios, each DUR seconds (default 30), SESSIONS concurrent sessions
# (default 20) reusing their connections, SIZE-byte bodies (default 4096):
#   a1  smtp-sink driven by smtp-source -d -s 20 -l 4096     (Postfix's own client)
#   a2  smtp-sink driven by srload                           (our client)
#   b   syncrelay, 100% unrelated mail                       (discard path)
#   c   syncrelay, 100% matching DKIM-signed replies         (full pipeline)
#   c½  syncrelay, matching replies at half of c's rate      (latency target)
#   idle  2,000 idle sessions: RSS per connection
#   big   one 25 MB matching message: RSS added
#   c1M   the store filled to FILL stored messages (srload fill, default
#         1,000,000), then c again, and DELETE of messages through the API
# It prints the ratios b/a and c/a, latency percentiles and peak RSS, and
# writes everything to $OUT (summary.md, JSON results, daemon logs).
#
# Environment: DUR, SESSIONS, SIZE, OUT (results dir), PROFILE=1 (run b and c
# under bench/profiled and save a 10 s CPU profile of each), IDLE (sessions,
# default 2000), HALF (c½'s rate, default half of c's), BIG (bytes, default 25000000), FILL (messages for c1M, default
# 1000000; 0 skips it), BACKEND (bbolt, the default, or postgres: a throwaway
# PostgreSQL 15 cluster on 127.0.0.1 is started for the run, and c2 adds two
# nodes sharing it, each given half the sessions; PGWARM MiB of WAL segments,
# default 1024, are written and recycled first, as on a server in service;
# PGOPTS adds server settings, e.g. PGOPTS="-c commit_delay=200"), KEEP=1
# (keep the store: data/, and pg/ with postgres; by default they are
# deleted at the end, being gigabytes after the 1M fill).
#
# Everything listens on 127.0.0.1 only. Postfix is installed if missing
# (Debian package, "No configuration", its service never started): only
# /usr/sbin/smtp-sink and /usr/sbin/smtp-source are used.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

DUR=${DUR:-30}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
IDLE=${IDLE:-2000}
BIG=${BIG:-25000000}
BACKEND=${BACKEND:-bbolt}
if [ "$BACKEND" = postgres ]; then
	FILL=${FILL:-0} # filling PostgreSQL to 1M takes a long while; set FILL to do it
	PGWARM=${PGWARM:-1024} # MiB of WAL segments made ready before the run (see below)
fi
FILL=${FILL:-1000000}
PROFILE=${PROFILE:-0}
OUT=${OUT:-$(mktemp -d /tmp/srbench.XXXXXX)}
mkdir -p "$OUT"
BIN="$OUT/bin"
log() { printf '== %s\n' "$*" >&2; }

# --- tools ------------------------------------------------------------------
if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
	log "installing postfix (for smtp-sink/smtp-source; the service is not started)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	# policy-rc.d 101 keeps the package scripts from starting the service.
	prc=/usr/sbin/policy-rc.d
	made_prc=0
	if [ ! -e "$prc" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod +x "$prc" && made_prc=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >"$OUT/apt.log" 2>&1 ||
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$OUT/apt.log" 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >>"$OUT/apt.log" 2>&1; } ||
		{ tail -20 "$OUT/apt.log" >&2; exit 1; }
	[ "$made_prc" = 1 ] && rm -f "$prc"
fi
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

log "building into $BIN"
mkdir -p "$BIN"
go build -o "$BIN/" ./cmd/syncrelay ./cmd/srload
DAEMON="$BIN/syncrelay"
DAEMON_ARGS=(serve)
if [ "$PROFILE" = 1 ]; then
	go build -o "$BIN/" ./bench/profiled
fi

# --- helpers ----------------------------------------------------------------
PIDS=()
cleanup() {
	for p in "${PIDS[@]:-}"; do
		[ -n "$p" ] && kill "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT

free_port() {
	local p
	for _ in $(seq 1 50); do
		p=$((20000 + RANDOM % 20000))
		if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	echo "no free port" >&2
	exit 1
}
jget() { grep -m1 "\"$2\"" "$1" | sed 's/.*: *//; s/,$//; s/"//g'; }
# jmap FILE KEY: a JSON object of counts as "k=v k=v".
jmap() {
	awk -v k="\"$2\": {" 'index($0, k) {if (index($0, "{}")) exit; on = 1; next}
		on && /}/ {exit}
		on {gsub(/[",]/, ""); sub(/: /, "="); gsub(/ /, ""); if ($0 !~ /^-=/) printf "%s ", $0}' "$1"
}
# peak_anon PID FLAGFILE OUTFILE: samples RssAnon every 10 ms until FLAGFILE
# disappears, then writes the maximum (KiB). VmHWM would also count the
# pages of bbolt's mmap, which the daemon touches at start.
peak_anon() {
	local max=0 v
	while [ -e "$2" ]; do
		v=$(kib "$1" RssAnon)
		[ -n "$v" ] && [ "$v" -gt "$max" ] && max=$v
		sleep 0.01
	done
	echo "$max" >"$3"
}
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

CFG="$OUT/syncrelay.toml"
cat >"$CFG" <<EOF
[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
max_connections = $((IDLE + 100))
max_connections_per_ip = $((IDLE + 100))
[http]
listen = "127.0.0.1:0"
[store]
dir = "$OUT/data"
[dns]
zone_file = "$OUT/zone.txt"
[log]
level = "info"
EOF

# --- PostgreSQL (BACKEND=postgres) ---------------------------------------------
if [ "$BACKEND" = postgres ]; then
	PGBIN=/usr/lib/postgresql/15/bin
	[ -x "$PGBIN/initdb" ] || { echo "BACKEND=postgres needs postgresql-15 (apt-get install postgresql-15)" >&2; exit 1; }
	PGDIR="$OUT/pg"
	mkdir -p "$PGDIR"
	AS=()
	if [ "$(id -u)" = 0 ]; then
		chown postgres:postgres "$PGDIR"
		# mktemp -d makes OUT 0700: the postgres user must be able to
		# pass through it to its own directory (traverse only, no listing).
		chmod o+x "$OUT"
		AS=(runuser -u postgres --)
	fi
	PGPORT=$(free_port)
	# track_wal_io_timing: pg_stat_wal times each WAL fsync, so that the
	# per-second record (waits_start) can say how long the flushes took.
	"${AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres >"$OUT/pg-initdb.log" 2>&1
	"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/pg.log" -w start \
		-o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$PGDIR -c fsync=on -c synchronous_commit=on -c max_connections=200 -c min_wal_size=${PGWARM}MB -c max_wal_size=4GB -c track_wal_io_timing=on ${PGOPTS:-}" >/dev/null
	trap 'cleanup; "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1 || true; [ "${KEEP:-0}" = 1 ] || rm -rf "$PGDIR/data"' EXIT
	# A new cluster has no WAL segments to recycle: every 16 MiB of WAL
	# the committing backend creates and zero-fills the next segment (waits
	# IO WALInitWrite/WALInitSync at COMMIT), stalling the commits queued
	# behind it by tens of milliseconds. A server in service recycles its
	# old segments. So that this one does too, write PGWARM MiB of WAL
	# (logical messages: no table is touched) and checkpoint, which keeps
	# them for reuse (min_wal_size); max_wal_size keeps a checkpoint out
	# of the scenarios. PGWARM=0 skips it.
	if [ "$PGWARM" -gt 0 ]; then
		t0=$(date +%s.%N)
		"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -q -At \
			-c "SELECT count(pg_logical_emit_message(false, 'bench-warm', repeat('x', 1048576))) FROM generate_series(1, $PGWARM)" \
			-c "CHECKPOINT" >/dev/null
		log "PostgreSQL: $PGWARM MiB of WAL written and recycled in $(calc "$(date +%s.%N) - $t0" 1)s ($(ls "$PGDIR/data/pg_wal" | grep -c '^[0-9A-F]\{24\}$') segments ready)"
	fi
	DSN="postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"
	printf '[store]\nbackend = "postgres"\ndsn = "%s"\ndir = "%s"\n' "$DSN" "$OUT/data" >"$OUT/store.toml"
	# The [store] section above names the bbolt dir: swap it for this one.
	awk -v f="$OUT/store.toml" '/^\[store\]/{while ((getline l < f) > 0) print l; skip=1; next} /^\[/{skip=0} !skip' "$CFG" >"$CFG.pg" && mv "$CFG.pg" "$CFG"
	log "PostgreSQL 15 on 127.0.0.1:$PGPORT (fsync on, synchronous_commit on${PGOPTS:+, $PGOPTS})"
fi
# waits_start NAME / waits_stop NAME (postgres only): sample what the
# client backends wait for every 50 ms during a scenario (pg_stat_activity,
# ungranted pg_locks) into $OUT/NAME.waits; waits_stop leaves the counts,
# most frequent first, in $OUT/NAME.waits.txt (count per "samples" line).
# Once a second they also record, in $OUT/NAME.seconds, the WAL fsyncs so
# far and their milliseconds (pg_stat_wal), the checkpoints completed and
# the daemon's "." -> reply histogram counts at 16 ms, 32 ms and in all
# (node A's in c2), for seconds_top.
WPID=
SPID=
waits_start() {
	[ "$BACKEND" = postgres ] || return 0
	cat >"$OUT/waits.sql" <<'EOS'
SELECT 'A|' || coalesce(wait_event_type, 'CPU') || '|' || coalesce(wait_event, '-') || '|' || state || '|' || left(regexp_replace(query, '\s+', ' ', 'g'), 40)
	FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'
UNION ALL SELECT 'L|' || locktype || '|' || mode || '|' || coalesce(relation::regclass::text, '') FROM pg_locks WHERE NOT granted
UNION ALL SELECT 'samples';
\watch 0.05
EOS
	"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -At -q -f "$OUT/waits.sql" >"$OUT/$1.waits" 2>/dev/null &
	WPID=$!
	local http=$HTTP
	while :; do
		printf '%s %s %s\n' "$(date +%s.%N)" \
			"$("$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -At -F' ' -c "SELECT w.wal_sync, w.wal_sync_time, b.checkpoints_timed + b.checkpoints_req FROM pg_stat_wal w, pg_stat_bgwriter b" 2>/dev/null)" \
			"$(curl -s -m 0.5 "http://$http/metrics" 2>/dev/null | awk '/^syncrelay_smtp_data_reply_seconds_bucket/ && /le="(0.016|0.032|\+Inf)"/ {printf "%s ", $2}')"
		sleep 1
	done >"$OUT/$1.seconds" &
	SPID=$!
}
waits_stop() {
	[ -n "$WPID" ] || return 0
	kill "$WPID" "$SPID" 2>/dev/null || true
	wait "$WPID" "$SPID" 2>/dev/null || true
	WPID=
	SPID=
	sort "$OUT/$1.waits" | uniq -c | sort -rn >"$OUT/$1.waits.txt"
}
# seconds_top NAME: from NAME.seconds, the share of each second's replies
# over 16 ms (the histogram's bucket nearest the 20 ms target) and its
# correlation with that second's mean WAL fsync: a tail set by the flush
# shows as r near 1. Also the checkpoints completed in the scenario.
seconds_top() {
	awk 'NF >= 7 && p && $7 > r && $2 > s {
			x = ($3 - ms) / ($2 - s); y = 100 * ((($7 - $5) - (r - r16)) / ($7 - r))
			n++; sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y
			if (n == 1 || y < lo) lo = y; if (n == 1 || y > hi) hi = y }
		NF >= 7 {p = 1; s = $2; ms = $3; r16 = $5; r = $7; c1 = $4; if (c0 == "") c0 = $4}
		END {vx = n * sxx - sx * sx; vy = n * syy - sy * sy
			printf "%d s; replies over 16 ms %.1f %% to %.1f %% of a second'"'"'s; mean WAL fsync %.2f ms; per-second correlation of the two r = %s; checkpoints completed: %d",
				n, lo, hi, n ? sx / n : 0, (vx > 0 && vy > 0) ? sprintf("%.2f", (n * sxy - sx * sy) / sqrt(vx * vy)) : "n/a", c1 - c0}' "$OUT/$1.seconds"
}
# waits_top NAME: the samples and the three most frequent waits, one line.
waits_top() {
	awk '{c = $1; sub(/^ *[0-9]+ /, "")} $0 == "samples" {n = c; next}
		/^A\|/ && !/^A\|(CPU|Client)\|/ && k < 3 {w = w sprintf("%s × %s; ", c, $0); k++}
		END {printf "%s samples; %s", n, w}' "$OUT/$1.waits.txt"
}

DPID=
SMTP=
HTTP=
# avg_ms FILE METRIC [LABEL]: mean of a Prometheus histogram, in ms.
avg_ms() {
	awk -v m="$2" -v l="${3:-}" '
		index($1, m "_sum") == 1 && index($0, l) {s = $2}
		index($1, m "_count") == 1 && index($0, l) {c = $2}
		END { if (c > 0) printf "%.2f", s / c * 1000; else printf "n/a" }' "$1"
}
start_daemon() { # name [profile]
	local name=$1 prof=${2:-0}
	if [ "$prof" = 1 ]; then
		PPROF="127.0.0.1:$(free_port)"
		"$BIN/profiled" -config "$CFG" -pprof "$PPROF" >"$OUT/$name.stdout" 2>"$OUT/$name.log" &
	else
		"$DAEMON" "${DAEMON_ARGS[@]}" -config "$CFG" >"$OUT/$name.stdout" 2>"$OUT/$name.log" &
	fi
	DPID=$!
	PIDS+=("$DPID")
	for _ in $(seq 1 400); do
		SMTP=$(grep -m1 -o 'syncrelay serving.*' "$OUT/$name.log" 2>/dev/null | grep -o 'smtp=[^ ]*' | cut -d= -f2 || true)
		HTTP=$(grep -m1 -o 'syncrelay serving.*' "$OUT/$name.log" 2>/dev/null | grep -o 'http=[^ ]*' | cut -d= -f2 || true)
		[ -n "$SMTP" ] && return 0
		kill -0 "$DPID" 2>/dev/null || { cat "$OUT/$name.log" >&2; exit 1; }
		sleep 0.05
	done
	echo "daemon did not start" >&2
	exit 1
}
stop_daemon() {
	kill -TERM "$DPID" 2>/dev/null || true
	wait "$DPID" 2>/dev/null || true
}

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/{printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
	echo "go: $(go version | cut -d' ' -f3-)"
	echo "tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
	echo "filesystem of $OUT: $(df -T "$OUT" | awk 'NR==2{print $2" on "$1}')"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

# fdatasync latency of the data directory's disk: the floor of a durable commit.
dd if=/dev/zero of="$OUT/dd.probe" bs=4k count=200 oflag=dsync 2>"$OUT/dd.txt" || true
DD_S=$(awk '/copied/{for(i=1;i<=NF;i++) if($i ~ /^s,?$/) print $(i-1)}' "$OUT/dd.txt" | tr -d ',' | head -1)
FSYNC_MS=$(calc "${DD_S:-0} * 1000 / 200" 2)
rm -f "$OUT/dd.probe"
log "4 KiB O_DSYNC write: $FSYNC_MS ms each (dd, 200 writes)"

# --- a: smtp-sink -----------------------------------------------------------
SINK_PORT=$(free_port)
# smtp-sink must drop root; "postfix" exists once the package is installed.
SINK_USER=postfix
id "$SINK_USER" >/dev/null 2>&1 || SINK_USER=nobody
smtp-sink -u "$SINK_USER" -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$OUT/sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
sleep 0.3

log "a1: smtp-source -d -s $SESSIONS -l $SIZE -> smtp-sink (calibrating)"
t0=$(date +%s.%N)
smtp-source -d -s "$SESSIONS" -l "$SIZE" -m 5000 -f load@srload.test -t sink@srload.test "127.0.0.1:$SINK_PORT"
t1=$(date +%s.%N)
N=$(awk -v a="$t0" -v b="$t1" -v d="$DUR" 'BEGIN { r = 5000/(b-a); n = int(r*d); if (n > 5000000) n = 5000000; print n }')
log "a1: smtp-source sending $N messages (about ${DUR}s)"
t0=$(date +%s.%N)
smtp-source -d -s "$SESSIONS" -l "$SIZE" -m "$N" -f load@srload.test -t sink@srload.test "127.0.0.1:$SINK_PORT"
t1=$(date +%s.%N)
A1_SECS=$(calc "$t1 - $t0" 2)
A1=$(calc "$N / ($t1 - $t0)" 1)
log "a1: $A1 msgs/s ($N in ${A1_SECS}s)"

log "a2: srload -> smtp-sink"
"$BIN/srload" run -addr "127.0.0.1:$SINK_PORT" -rcpt sink@srload.test -c "$SESSIONS" -size "$SIZE" \
	-d "${DUR}s" -warmup 1s -json "$OUT/a2.json" | tee "$OUT/a2.txt" >&2
A2=$(jget "$OUT/a2.json" msgs_per_sec)
kill "$SINK_PID" 2>/dev/null || true
wait "$SINK_PID" 2>/dev/null || true

# --- syncrelay: prepare (daemon stopped) ---------------------------------------
log "prepare: tenant, user, candidate, 64 threads, DKIM key"
"$BIN/srload" prepare -config "$CFG" -manifest "$OUT/manifest.json" -zone "$OUT/zone.txt" -threads 64 >&2

# --- b: discard path ----------------------------------------------------------
log "b: syncrelay, 100% unrelated (discard)"
start_daemon b "$PROFILE"
if [ "$PROFILE" = 1 ]; then
	(sleep $((DUR / 3)) && curl -s -o "$OUT/b.cpu.prof" "http://$PPROF/debug/pprof/profile?seconds=10") &
fi
"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix unrelated=100 -c "$SESSIONS" -size "$SIZE" \
	-d "${DUR}s" -warmup 1s -json "$OUT/b.json" | tee "$OUT/b.txt" >&2
B_HWM=$(kib "$DPID" VmHWM)
stop_daemon
wait 2>/dev/null || true
B=$(jget "$OUT/b.json" msgs_per_sec)

# --- c: full pipeline ----------------------------------------------------------
log "c: syncrelay, 100% matching (DKIM + match + durable commit)"
start_daemon c "$PROFILE"
if [ "$PROFILE" = 1 ]; then
	(sleep $((DUR / 3)) && curl -s -o "$OUT/c.cpu.prof" "http://$PPROF/debug/pprof/profile?seconds=10") &
fi
# commits DIR: stored messages the daemon has committed so far (its own
# counter, so that the bytes below are divided by the messages of the same
# window: srload's count leaves out its warm-up second).
commits() { curl -s "http://$HTTP/metrics" 2>/dev/null | awk '/^syncrelay_store_commit_seconds_count/ && /op="commit_inbound"/ {n += $2} END {print n + 0}'; }
# sectors DEVSTAT: sectors written to the data dir's block device so far.
# write_bytes (below) counts the pages a process dirties, and on kernels
# with large folios (6.18 here) a 4 KiB write into a page cached as part of
# a larger folio counts the whole folio (up to 2 MiB, measured); the
# device's own count has no such error but includes every other writer.
DEVSTAT=/sys/class/block/$(basename "$(df --output=source "$OUT" | tail -1)")/stat
sectors() { [ -r "$DEVSTAT" ] && awk '{print $7}' "$DEVSTAT" || echo 0; }
CM0=$(commits)
# batches: the daemon's group-commit counters "batches requests seconds"
# (every commit, not only inbound ones), for the mean batch size and time.
batches() { curl -s "http://$HTTP/metrics" 2>/dev/null | awk '/^syncrelay_store_commit_batches_total/ {b = $2} /^syncrelay_store_commit_batched_requests_total/ {r = $2} /^syncrelay_store_commit_batch_seconds_total/ {s = $2} END {print b + 0, r + 0, s + 0}'; }
# batch_means "B0 R0 S0" "B1 R1 S1": "<requests per batch> <ms per batch>" in between.
batch_means() { echo "$1 $2" | awk '{b = $4 - $1; if (b > 0) printf "%.2f %.2f", ($5 - $2) / b, ($6 - $3) / b * 1000; else printf "n/a n/a"}'; }
BT0=$(batches)
# wal_lsn: PostgreSQL's WAL position in bytes (postgres only), for the WAL
# written per stored message.
wal_lsn() { [ "$BACKEND" = postgres ] && "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -At -c "SELECT pg_current_wal_lsn() - '0/0'" || echo 0; }
WAL0=$(wal_lsn)
DS0=$(sectors)
WB0=$(awk '/^write_bytes/{print $2}' "/proc/$DPID/io")
# cpu_ticks: the daemon's user + system CPU so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$DPID/stat"; }
CT0=$(cpu_ticks)
waits_start c
"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix match=100 -c "$SESSIONS" -size "$SIZE" \
	-d "${DUR}s" -warmup 1s -json "$OUT/c.json" | tee "$OUT/c.txt" >&2
waits_stop c
WB1=$(awk '/^write_bytes/{print $2}' "/proc/$DPID/io")
CT1=$(cpu_ticks)
DS1=$(sectors)
CM1=$(commits)
BT1=$(batches)
read -r C_BATCH C_BATCH_MS <<<"$(batch_means "$BT0" "$BT1")"
WAL1=$(wal_lsn)
C_HWM=$(kib "$DPID" VmHWM)
C=$(jget "$OUT/c.json" msgs_per_sec)
# Bytes the daemon caused to be written to disk per stored message: the
# whole run, warm-up included, over the messages it committed in it (until
# 2026-12-07 this divided by srload's count, which leaves out the warm-up:
# 3 % too high at DUR=30, 11 % at DUR=10).
C_STORED=$((CM1 - CM0))
[ "$C_STORED" -gt 0 ] || C_STORED=$(jget "$OUT/c.json" completed)
C_WB_KIB=$(calc "($WB1 - $WB0) / 1024 / ($C_STORED > 0 ? $C_STORED : 1)" 1)
# The daemon's CPU per stored message over the same window (utime + stime).
C_CPU_US=$(calc "($CT1 - $CT0) * 1000000 / $(getconf CLK_TCK) / ($C_STORED > 0 ? $C_STORED : 1)" 0)
C_DEV_KIB=$(calc "($DS1 - $DS0) / 2 / ($C_STORED > 0 ? $C_STORED : 1)" 1)
C_WAL_KIB=$(calc "($WAL1 - $WAL0) / 1024 / ($C_STORED > 0 ? $C_STORED : 1)" 2)
# Where a stored message's time goes, from the daemon's own histograms.
curl -s "http://$HTTP/metrics" >"$OUT/c.metrics" 2>/dev/null || true
C_REPLY=$(avg_ms "$OUT/c.metrics" syncrelay_smtp_data_reply_seconds)
C_COMMIT=$(avg_ms "$OUT/c.metrics" syncrelay_store_commit_seconds 'op="commit_inbound"')
# HALF fixes the rate instead: A/B runs of two trees compare at one rate.
HALF=${HALF:-$(calc "($C < 2 ? 2 : $C) / 2" 0)}
log "c½: syncrelay, matching at $HALF msgs/s"
waits_start c-half
BT0=$(batches)
"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix match=100 -c "$SESSIONS" -size "$SIZE" \
	-rate "$HALF" -d "${DUR}s" -warmup 1s -json "$OUT/c-half.json" | tee "$OUT/c-half.txt" >&2
read -r H_BATCH H_BATCH_MS <<<"$(batch_means "$BT0" "$(batches)")"
waits_stop c-half
stop_daemon
wait 2>/dev/null || true

# --- c2: two nodes on one PostgreSQL ------------------------------------------------
C2=
if [ "$BACKEND" = postgres ]; then
	log "c2: two syncrelay nodes on one PostgreSQL, $((SESSIONS / 2)) sessions each"
	CFG2="$OUT/node2.toml"
	mkdir -p "$OUT/data2"
	sed "s|^dir = \"$OUT/data\"|dir = \"$OUT/data2\"|" "$CFG" >"$CFG2"
	printf '[secrets]\nkey_file = "%s"\n' "$OUT/data/secret.key" >>"$CFG2"
	start_daemon c2a
	SMTP_A=$SMTP
	PID_A=$DPID
	"$DAEMON" serve -config "$CFG2" >"$OUT/c2b.stdout" 2>"$OUT/c2b.log" &
	PID_B=$!
	PIDS+=("$PID_B")
	SMTP_B=
	for _ in $(seq 1 400); do
		SMTP_B=$(grep -m1 -o 'syncrelay serving.*' "$OUT/c2b.log" 2>/dev/null | grep -o 'smtp=[^ ]*' | cut -d= -f2 || true)
		[ -n "$SMTP_B" ] && break
		kill -0 "$PID_B" 2>/dev/null || { cat "$OUT/c2b.log" >&2; exit 1; }
		sleep 0.05
	done
	waits_start c2
	"$BIN/srload" run -addr "$SMTP_A" -manifest "$OUT/manifest.json" -mix match=100 -c $((SESSIONS / 2)) -size "$SIZE" \
		-d "${DUR}s" -warmup 1s -json "$OUT/c2a.json" >"$OUT/c2a.txt" 2>&1 &
	LA=$!
	"$BIN/srload" run -addr "$SMTP_B" -manifest "$OUT/manifest.json" -mix match=100 -c $((SESSIONS / 2)) -size "$SIZE" \
		-d "${DUR}s" -warmup 1s -json "$OUT/c2b.json" >"$OUT/c2b.txt" 2>&1
	wait "$LA"
	waits_stop c2
	log "c2 waits: $(waits_top c2)"
	C2=$(calc "$(jget "$OUT/c2a.json" msgs_per_sec) + $(jget "$OUT/c2b.json" msgs_per_sec)" 1)
	log "c2: $C2 msgs/s (node A $(jget "$OUT/c2a.json" msgs_per_sec), node B $(jget "$OUT/c2b.json" msgs_per_sec))"
	kill -TERM "$PID_B" 2>/dev/null || true
	wait "$PID_B" 2>/dev/null || true
	DPID=$PID_A
	stop_daemon
fi

# --- idle connections -----------------------------------------------------------
log "idle: $IDLE idle sessions"
start_daemon idle
"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix match=100 -c 2 -n 20 -q # warm up
sleep 1
RSS0=$(kib "$DPID" VmRSS)
ANON0=$(kib "$DPID" RssAnon)
"$BIN/srload" idle -addr "$SMTP" -n "$IDLE" -hold 30s >"$OUT/idle.txt" 2>&1 &
IPID=$!
PIDS+=("$IPID")
for _ in $(seq 1 600); do
	grep -qs READY "$OUT/idle.txt" && break
	sleep 0.1
done
sleep 2
RSS1=$(kib "$DPID" VmRSS)
ANON1=$(kib "$DPID" RssAnon)
OPENED=$(awk '/READY/{print $2}' "$OUT/idle.txt")
kill -INT "$IPID" 2>/dev/null || true
wait "$IPID" 2>/dev/null || true
IDLE_KIB=$(calc "($RSS1 - $RSS0) / ${OPENED:-1}" 1)
IDLE_ANON_KIB=$(calc "($ANON1 - $ANON0) / ${OPENED:-1}" 1)
stop_daemon

# --- one big message ------------------------------------------------------------
log "big: one $BIG-byte matching message"
start_daemon big
"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix match=100 -c 2 -n 20 -q # warm up
sleep 1
HWM0=$(kib "$DPID" VmHWM)
ANON0=$(kib "$DPID" RssAnon)
touch "$OUT/big.sampling"
peak_anon "$DPID" "$OUT/big.sampling" "$OUT/big.peak" &
SAMPLER=$!
"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix match=100 -c 1 -n 1 -size "$BIG" \
	-timeout 120s -json "$OUT/big.json" | tee "$OUT/big.txt" >&2
sleep 0.2
rm -f "$OUT/big.sampling"
wait "$SAMPLER"
HWM1=$(kib "$DPID" VmHWM)
ANON1=$(cat "$OUT/big.peak")
BIG_CODE=$(jmap "$OUT/big.json" codes)
BIG_MIB=$(calc "($ANON1 - $ANON0) / 1024" 1)
stop_daemon

# --- c1M: a store of FILL stored messages ---------------------------------------
C1M=
if [ "$FILL" -gt 0 ]; then
	log "c1M: filling the store to $FILL stored messages (srload fill, daemon stopped)"
	"$BIN/srload" fill -config "$CFG" -manifest "$OUT/manifest.json" -n "$FILL" -size "$SIZE" -ids "$OUT/fill-ids.txt" >&2
	# The fill leaves gigabytes of dirty pages: write them out first, so
	# that c1M measures the store's size, not the kernel's writeback.
	sync
	DATA_MIB=$(du -sm "$OUT/data" | cut -f1)
	log "c1M: syncrelay, 100% matching on the filled store ($DATA_MIB MiB of data)"
	start_daemon c1m
	"$BIN/srload" run -addr "$SMTP" -manifest "$OUT/manifest.json" -mix match=100 -c "$SESSIONS" -size "$SIZE" \
		-d "${DUR}s" -warmup 1s -json "$OUT/c1m.json" | tee "$OUT/c1m.txt" >&2
	C1M=$(jget "$OUT/c1m.json" msgs_per_sec)
	log "c1M: DELETE of 2000 filled messages through the API, 4 clients"
	"$BIN/srload" delete -http "$HTTP" -token-file "$OUT/data/api-token" -tenant "$(jget "$OUT/manifest.json" tenant)" \
		-ids "$OUT/fill-ids.txt" -n 2000 -c 4 -json "$OUT/delete.json" | tee "$OUT/delete.txt" >&2
	DEL_P99=$(jget "$OUT/delete.json" p99_ms)
	DEL_CODES=$(jmap "$OUT/delete.json" codes)
	stop_daemon
fi

# --- profiles -------------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
	for s in b c; do
		[ -s "$OUT/$s.cpu.prof" ] || continue
		go tool pprof -top -cum -nodecount=30 "$BIN/profiled" "$OUT/$s.cpu.prof" >"$OUT/$s.pprof.txt" 2>/dev/null || true
		log "profile $s: $OUT/$s.cpu.prof (top: $OUT/$s.pprof.txt)"
	done
fi

# --- summary --------------------------------------------------------------------
AMAX=$(awk -v x="$A1" -v y="$A2" 'BEGIN{printf "%.1f", (x > y ? x : y)}')
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "met" : "NOT met" }'; }
row() { # name json
	printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(calc "$(jget "$2" msgs_per_sec)" 1)" \
		"$(jget "$2" p50_ms)" "$(jget "$2" p99_ms)" "$(jget "$2" p999_ms)" \
		"$(jmap "$2" codes)$(jmap "$2" decisions)$(jmap "$2" errors)"
}
R_B1=$(calc "$B / $A1" 3)
R_B2=$(calc "$B / $A2" 3)
R_C1=$(calc "$C / $A1" 3)
R_C2=$(calc "$C / $A2" 3)
P99H=$(jget "$OUT/c-half.json" p99_ms)
{
	echo '```'
	cat "$OUT/machine.txt"
	echo "4 KiB O_DSYNC write (dd): $FSYNC_MS ms"
	echo "workload: $SESSIONS sessions, connection reuse, ${SIZE}-byte bodies, ${DUR}s per scenario"
	echo "store backend: $BACKEND${PGOPTS:+ (PostgreSQL settings: $PGOPTS)}"
	echo '```'
	echo
	echo '| scenario | msgs/s | p50 ms | p99 ms | p99.9 ms | reply codes |'
	echo '|---|---|---|---|---|---|'
	echo "| a1 smtp-source → smtp-sink | $A1 | – | – | – | ($N messages in ${A1_SECS}s) |"
	row "a2 srload → smtp-sink" "$OUT/a2.json"
	row "b syncrelay discard (100% unrelated)" "$OUT/b.json"
	row "c syncrelay full pipeline (100% matching)" "$OUT/c.json"
	row "c½ full pipeline at $HALF msgs/s" "$OUT/c-half.json"
	[ -n "$C1M" ] && row "c1M full pipeline, $FILL messages stored" "$OUT/c1m.json"
	[ -n "$C2" ] && echo "| c2 two nodes on one PostgreSQL ($((SESSIONS / 2)) sessions each) | $C2 | node A: $(jget "$OUT/c2a.json" p99_ms) ms p99, node B: $(jget "$OUT/c2b.json" p99_ms) ms p99 | | | |"
	echo
	echo '| target | measured | verdict |'
	echo '|---|---|---|'
	echo "| full pipeline ≥ 0.30 × smtp-sink | c/a1 = $R_C1, c/a2 = $R_C2 | $(verdict "$(calc "$C / $AMAX" 3)" 0.30 '>=') |"
	echo "| discard path ≥ 0.90 × smtp-sink | b/a1 = $R_B1, b/a2 = $R_B2 | $(verdict "$(calc "$B / $AMAX" 3)" 0.90 '>=') |"
	echo "| p99 \".\" → 250 ≤ 10 ms at half the full rate | $P99H ms at $HALF msgs/s | $(verdict "$P99H" 10 '<=') |"
	echo "| bytes written per stored ${SIZE}-byte message ≤ 16 KiB | $C_WB_KIB KiB (/proc/PID/io write_bytes over run c; the device: $C_DEV_KIB KiB, every writer on it included) | $(verdict "$C_WB_KIB" 16 '<=') |"
	if [ -n "$C2" ]; then
		echo "| p99 \".\" → 250 ≤ 20 ms at half the full rate (PostgreSQL, issue 14) | $P99H ms at $HALF msgs/s | $(verdict "$P99H" 20 '<=') |"
		echo "| two nodes ≥ one node (PostgreSQL) | c2/c = $(calc "$C2 / $C" 3) ($C2 vs $C msgs/s) | $(verdict "$(calc "$C2 / $C" 3)" 1 '>=') |"
	fi
	if [ -n "$C1M" ]; then
		echo "| full pipeline at $FILL stored ≥ 0.9 × empty store | c1M/c = $(calc "$C1M / $C" 3) ($C1M vs $C msgs/s) | $(verdict "$(calc "$C1M / $C" 3)" 0.9 '>=') |"
		echo "| DELETE p99 ≤ 10 ms at $FILL stored | $DEL_P99 ms (2000 removals, 4 clients; codes $DEL_CODES) | $(verdict "$DEL_P99" 10 '<=') |"
	fi
	echo "| idle connection ≤ 16 KiB RSS | $IDLE_KIB KiB ($OPENED sessions: VmRSS $RSS0 → $RSS1 KiB; anonymous $IDLE_ANON_KIB KiB each) | $(verdict "$IDLE_KIB" 16 '<=') |"
	echo "| 25 MB message adds ≤ 16 MiB RSS | $BIG_MIB MiB (peak RssAnon $ANON0 → $ANON1 KiB, sampled every 10 ms; VmHWM $HWM0 → $HWM1 KiB; replies $BIG_CODE) | $(verdict "$BIG_MIB" 16 '<=') |"
	echo
	if [ "$BACKEND" = postgres ]; then
		commit_desc="queue, then one PostgreSQL transaction per batch with the raw bytes as bytea, through its WAL flush"
	else
		commit_desc="raw bytes to the segment log, queue, one fdatasync of the segment and the fsynced bbolt transaction per batch"
	fi
	echo "Full pipeline (c), per message, from the daemon's /metrics: \".\" → reply $C_REPLY ms on average, of which the commit ($commit_desc) $C_COMMIT ms. Daemon CPU (user + system, /proc/PID/stat) per stored message: $C_CPU_US µs."
	echo "Group commit, from the daemon's counters: c $C_BATCH requests per batch, $C_BATCH_MS ms per batch; c½ $H_BATCH requests per batch, $H_BATCH_MS ms per batch."
	echo
	echo "Peak RSS (VmHWM, includes the touched pages of bbolt's mmap) of the daemon: discard run $((B_HWM / 1024)) MiB, full-pipeline runs $((C_HWM / 1024)) MiB."
	echo "Ratios are judged against the faster of a1 and a2 ($AMAX msgs/s)."
	if [ "$BACKEND" = postgres ]; then
		echo
		echo "PostgreSQL WAL per stored message in c: $C_WAL_KIB KiB (pg_current_wal_lsn over the run, warm-up included, over the daemon's commits)."
		echo "PostgreSQL waits (client backends, sampled every 50 ms; CPU and client reads left out): c: $(waits_top c)"
		echo "c½: $(waits_top c-half)"
		[ -n "$C2" ] && echo "c2: $(waits_top c2)"
		echo "(all counts in $OUT/*.waits.txt)"
		echo
		echo "By second (\$OUT/*.seconds): c: $(seconds_top c)"
		echo "c½: $(seconds_top c-half)"
		[ -n "$C2" ] && echo "c2 (node A's replies): $(seconds_top c2)"
		echo "Checkpoints started (pg.log): $(grep -o '^[0-9-]* [0-9:.]* UTC.*checkpoint starting: .*' "$PGDIR/pg.log" | sed 's/^[0-9-]* \([0-9:]*\)[0-9.]* UTC.*checkpoint starting: /\1 /' | paste -sd ';' - | sed 's/;/; /g')"
	fi
} | tee "$OUT/summary.md"
log "results in $OUT"
# Runs left behind filled this machine's disk (a 1M fill is 5-6 GB).
if [ "${KEEP:-0}" != 1 ]; then
	rm -rf "$OUT/data" "$OUT/data2"
	log "deleted the store under $OUT (KEEP=1 keeps it)"
fi
