#!/bin/bash
# bench-cluster.sh: key creations from 16 clients spread over three daemons
# sharing one three-member etcd cluster, all on this machine.
#
#   scripts/bench-cluster.sh [-r ROUNDS] BINARY [BINARY...]
#
# For each round, and in it each binary in turn (so that builds alternate),
# it starts a new etcd cluster (members on 127.0.0.1:25790-25792, peers on
# 25800-25802, data in a new temporary directory), three daemons of the
# binary on it (--store etcd, each with its own state directory, socket
# and audit log), initialises the master key on the first and unseals each,
# runs
#
#   BINARY bench --create --clients 16 --runs 3 --json --socket S0,S1,S2
#
# and stops everything. One line per invocation: the binary, the creations
# per second (median of the runs, and each run), the p50 of a creation, and
# per creation the processor time of the daemons and of the etcd members
# (from /proc over the bench) and the etcd transactions (from the cluster's
# revision). Needs etcd, curl and jq.
set -u
rounds=2
if [ "${1:-}" = -r ]; then rounds=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: $0 [-r ROUNDS] BINARY [BINARY...]" >&2; exit 2; }
for t in etcd curl jq; do command -v $t >/dev/null || { echo "$0: $t not found" >&2; exit 1; }; done

eps=http://127.0.0.1:25790,http://127.0.0.1:25791,http://127.0.0.1:25792
hz=$(getconf CLK_TCK)

# cpu PID...: the processor time of the processes so far, in clock ticks.
cpu() {
	local t=0 p f
	for p in "$@"; do
		f=$(cut -d')' -f2 "/proc/$p/stat")
		set -- $f
		t=$((t + ${12} + ${13}))
	done
	echo $t
}

rev() {
	curl -s -X POST -d '{}' http://127.0.0.1:25790/v3/maintenance/status | jq -r .header.revision
}

once() {
	local bin=$1 d i cl="" out
	d=$(mktemp -d)
	for i in 0 1 2; do cl="$cl,m$i=http://127.0.0.1:2580$i"; done
	cl=${cl#,}
	local epids=() kpids=()
	for i in 0 1 2; do
		etcd --name m$i --data-dir $d/e$i --logger zap --log-level warn \
			--listen-client-urls http://127.0.0.1:2579$i --advertise-client-urls http://127.0.0.1:2579$i \
			--listen-peer-urls http://127.0.0.1:2580$i --initial-advertise-peer-urls http://127.0.0.1:2580$i \
			--initial-cluster $cl --initial-cluster-state new --initial-cluster-token bench$$ >$d/e$i.log 2>&1 &
		epids+=($!)
	done
	for i in $(seq 100); do
		curl -sf http://127.0.0.1:25790/health >/dev/null && curl -sf http://127.0.0.1:25791/health >/dev/null &&
			curl -sf http://127.0.0.1:25792/health >/dev/null && break
		sleep 0.2
	done
	echo 'a passphrase for the benchmark' >$d/pass
	chmod 600 $d/pass
	for i in 0 1 2; do
		mkdir -m 700 $d/s$i
		"$bin" serve --store etcd --etcd-endpoints $eps --max-keys-per-user 1000000 \
			--state $d/s$i --socket $d/k$i.sock >$d/k$i.log 2>&1 &
		kpids+=($!)
	done
	for i in 0 1 2; do
		for t in $(seq 100); do [ -S $d/k$i.sock ] && break; sleep 0.1; done
	done
	"$bin" init --socket $d/k0.sock --passphrase-file $d/pass --memory 65536 >/dev/null 2>&1 || echo "$0: init failed" >&2
	for i in 0 1 2; do
		"$bin" unseal --socket $d/k$i.sock --passphrase-file $d/pass >/dev/null 2>&1 || echo "$0: unseal of daemon $i failed" >&2
	done
	local k0 e0 r0 k1 e1 r1
	r0=$(rev) k0=$(cpu "${kpids[@]}") e0=$(cpu "${epids[@]}")
	out=$("$bin" bench --create --clients 16 --runs 3 --duration 5s --json --socket $d/k0.sock,$d/k1.sock,$d/k2.sock 2>$d/bench.err)
	k1=$(cpu "${kpids[@]}") e1=$(cpu "${epids[@]}") r1=$(rev)
	kill "${kpids[@]}"
	wait "${kpids[@]}" 2>/dev/null
	kill "${epids[@]}"
	wait "${epids[@]}" 2>/dev/null
	echo "$out" | jq -r --arg bin "$bin" --argjson kt $((k1 - k0)) --argjson et $((e1 - e0)) \
		--argjson txns $((r1 - r0)) --argjson hz $hz --arg load "$(cut -d' ' -f1 /proc/loadavg)" '
		.[0] | (([.runs_ops_per_sec[]] | add) * 5) as $n |
		"\($bin) creations/s \(.ops_per_sec | floor) runs \([.runs_ops_per_sec[] | floor]) p50 \(.p50_us / 1000 | floor) ms" +
		" daemons-µs/creation \($kt * 1000000 / $hz / $n | floor) etcd-µs/creation \($et * 1000000 / $hz / $n | floor)" +
		" creations/txn \($n / $txns * 100 | floor / 100) load \($load)"' || cat $d/bench.err >&2
	rm -rf "$d"
}

for r in $(seq $rounds); do
	for bin in "$@"; do
		once "$bin"
	done
done
