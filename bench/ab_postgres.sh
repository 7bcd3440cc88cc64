#!/usr/bin/env bash
# bench/ab_postgres.sh: two trees back to back on one throwaway PostgreSQL
# 15 cluster (a database each), alternating scenario by scenario, so that
# both see the same machine load (bench/run.sh runs minutes apart are not
# comparable on a shared machine).
#
#   OLD=/path/to/other/tree bench/ab_postgres.sh     (NEW defaults to this tree)
#
# Trees: old (OLD), new (NEW), new1 (NEW with SYNCRELAY_PG_COMMITS=1); pick
# with TREES (default "old new new1"). Per round and tree: c (20 sessions,
# matching), rate RATE (latency), b (discard, 5 s), c2 (two nodes, 10
# sessions each). Prints one line per scenario with the load average and
# the 4 KiB O_DSYNC write time (ms) taken just before the tree's turn.
# Everything listens on 127.0.0.1.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
OLD=${OLD:?set OLD to the other tree}
NEW=${NEW:-$(cd "$(dirname "$0")/.." && pwd)}
AB=${OUT:-$(mktemp -d /tmp/srab.XXXXXX)}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
RATE=${RATE:-200}
PGBIN=/usr/lib/postgresql/15/bin
TREES=${TREES:-old new new1}
rm -rf $AB/pg $AB/old $AB/new $AB/new1; mkdir -p $AB/pg
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres:postgres $AB/pg; AS=(runuser -u postgres --); fi
PGPORT=$((20000 + RANDOM % 20000))
"${AS[@]}" $PGBIN/initdb -D $AB/pg/data -A trust -U postgres >$AB/initdb.log 2>&1
"${AS[@]}" $PGBIN/pg_ctl -D $AB/pg/data -l $AB/pg/pg.log -w start \
	-o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$AB/pg -c fsync=on -c synchronous_commit=on -c max_connections=200" >/dev/null
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill $p 2>/dev/null || true; done; "${AS[@]}" $PGBIN/pg_ctl -D $AB/pg/data -m fast stop >/dev/null 2>&1 || true' EXIT
jget() { grep -m1 "\"$2\"" "$1" | sed 's/.*: *//; s/,$//; s/"//g'; }
for T in $TREES; do
	src=$OLD; [ $T != old ] && src=$NEW
	mkdir -p $AB/$T/bin $AB/$T/data $AB/$T/data2
	(cd $src && go build -o $AB/$T/bin/ ./cmd/syncrelay ./cmd/srload)
	"${AS[@]}" $PGBIN/createdb -h 127.0.0.1 -p $PGPORT -U postgres db_$T
	cat >$AB/$T/a.toml <<EOT
[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
max_connections = 200
max_connections_per_ip = 200
[http]
listen = "127.0.0.1:0"
[store]
backend = "postgres"
dsn = "postgres://postgres@127.0.0.1:$PGPORT/db_$T?sslmode=disable"
dir = "$AB/$T/data"
[dns]
zone_file = "$AB/$T/zone.txt"
[log]
level = "info"
EOT
	sed "s|^dir = .*|dir = \"$AB/$T/data2\"|" $AB/$T/a.toml >$AB/$T/b.toml
	printf '[secrets]\nkey_file = "%s"\n' "$AB/$T/data/secret.key" >>$AB/$T/b.toml
	$AB/$T/bin/srload prepare -config $AB/$T/a.toml -manifest $AB/$T/manifest.json -zone $AB/$T/zone.txt -threads 64 >/dev/null 2>&1
done
start() { # tree cfg log -> sets SMTP, DPID
	if [ $1 = new1 ]; then
		SYNCRELAY_PG_COMMITS=1 "$AB/$1/bin/syncrelay" serve -config "$2" >/dev/null 2>"$3" &
	else
		"$AB/$1/bin/syncrelay" serve -config "$2" >/dev/null 2>"$3" &
	fi
	DPID=$!; PIDS+=($DPID)
	for _ in $(seq 1 400); do
		SMTP=$(grep -m1 -o 'syncrelay serving.*' "$3" 2>/dev/null | grep -o 'smtp=[^ ]*' | cut -d= -f2 || true)
		[ -n "$SMTP" ] && return 0
		sleep 0.05
	done
	echo "no start"; cat "$3"; exit 1
}
echo "round tree scenario msgs/s p50 p99 load dd_ms"
for r in $(seq 1 $ROUNDS); do
	for T in $TREES; do
		dd if=/dev/zero of=$AB/dd.probe bs=4k count=100 oflag=dsync 2>$AB/dd.txt; rm -f $AB/dd.probe
		DDMS=$(awk '/copied/{for(i=1;i<=NF;i++) if($i ~ /^s,?$/) print $(i-1)*10}' $AB/dd.txt | tr -d ',')
		L=$(cut -d' ' -f1 /proc/loadavg)
		start $T $AB/$T/a.toml $AB/$T/c.log; A=$DPID
		$AB/$T/bin/srload run -addr $SMTP -manifest $AB/$T/manifest.json -mix match=100 -c 20 -size 4096 -d ${DUR}s -warmup 1s -json $AB/$T/c.json >/dev/null 2>&1
		echo "$r $T c $(jget $AB/$T/c.json msgs_per_sec) $(jget $AB/$T/c.json p50_ms) $(jget $AB/$T/c.json p99_ms) $L $DDMS"
		$AB/$T/bin/srload run -addr $SMTP -manifest $AB/$T/manifest.json -mix match=100 -c 20 -size 4096 -rate $RATE -d ${DUR}s -warmup 1s -json $AB/$T/r.json >/dev/null 2>&1
		echo "$r $T rate$RATE $(jget $AB/$T/r.json msgs_per_sec) $(jget $AB/$T/r.json p50_ms) $(jget $AB/$T/r.json p99_ms) $L $DDMS"
		$AB/$T/bin/srload run -addr $SMTP -manifest $AB/$T/manifest.json -mix unrelated=100 -c 20 -size 4096 -d 5s -warmup 1s -json $AB/$T/b.json >/dev/null 2>&1
		echo "$r $T b $(jget $AB/$T/b.json msgs_per_sec) $(jget $AB/$T/b.json p50_ms) $(jget $AB/$T/b.json p99_ms) $L $DDMS"
		start $T $AB/$T/b.toml $AB/$T/c2b.log; B=$DPID; SB=$SMTP
		SMTP_A=$(grep -m1 -o 'syncrelay serving.*' $AB/$T/c.log | grep -o 'smtp=[^ ]*' | cut -d= -f2)
		$AB/$T/bin/srload run -addr $SMTP_A -manifest $AB/$T/manifest.json -mix match=100 -c 10 -size 4096 -d ${DUR}s -warmup 1s -json $AB/$T/c2a.json >/dev/null 2>&1 &
		LA=$!
		$AB/$T/bin/srload run -addr $SB -manifest $AB/$T/manifest.json -mix match=100 -c 10 -size 4096 -d ${DUR}s -warmup 1s -json $AB/$T/c2b.json >/dev/null 2>&1
		wait $LA
		echo "$r $T c2 $(awk -v a=$(jget $AB/$T/c2a.json msgs_per_sec) -v b=$(jget $AB/$T/c2b.json msgs_per_sec) 'BEGIN{printf "%.1f", a+b}') - - $L $DDMS"
		kill -TERM $A $B; wait $A $B 2>/dev/null || true
	done
done
