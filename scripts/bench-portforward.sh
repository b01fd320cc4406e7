#!/usr/bin/env bash
# Benchmarks the production path of out-of-cluster builds: a cold build of bench-context.sh's
# `ctx` (20,004 files, about 350 MB; FROM scratch + COPY . /, exported as a tar) through the
# real kube-apiserver's port-forward to the standalone buildkitd, side by side with a
# kubectl-style port-forward and with direct TCP.
#
# Paths:
#   direct     pf-buildkit --addr tcp:// straight to the standalone buildkitd (no Kubernetes)
#   kube-pod   pf-buildkit --addr kube-pod://bench-0?namespace=pf-bench: a port-forward
#              WebSocket per connection, opened by pf-buildkit itself
#   relay      the kubectl stand-in: examples/portforward_relay.rs listens on 127.0.0.1 and
#              carries each connection over its own port-forward WebSocket the way client-go
#              copies (each read of up to 32 KiB sent and flushed as one message); pf-buildkit
#              builds through it with --addr tcp:// (as buildctl would through kubectl's)
#   before     kube-pod with the binary PF_BENCH_BEFORE (e.g. a build of an older commit)
# Every run is cold (a new session shared key: everything is sent). The paths take turns,
# round by round. Reports medians of $PF_BENCH_RUNS rounds: wall time, the client's peak RSS,
# the client's CPU (user+sys; for `relay` the relay's CPU is added, as kubectl's would be)
# and CPU per MB of context, and the CPU the kubelet's port-forward handler and the API
# server spent during the run.
#
# Usage: eval "$(scripts/testenv start)"; scripts/bench-portforward.sh
# Environment: PF_TEST_KUBE_DIR, PF_TEST_KUBE_KUBECONFIG, PF_TEST_BUILDKIT_ADDR (from testenv),
# PF_BENCH_DIR (default /tmp/pf-bench), PF_BENCH_RUNS (default 3), PF_BENCH_PATHS (default
# "direct kube-pod relay", plus "before" when PF_BENCH_BEFORE is set), PF_BENCH_NO_BUILD (set:
# use the release builds as they are), PF_BENCH_BIN (the pf-buildkit binary to measure),
# PF_BENCH_RELAY (the relay binary), PF_BENCH_BEFORE (an older pf-buildkit, adds path `before`).
set -euo pipefail

cd "$(dirname "$0")/.."
: "${PF_TEST_KUBE_KUBECONFIG:?run eval \"\$(scripts/testenv start)\" first (with ../shared/kube present)}"
: "${PF_TEST_BUILDKIT_ADDR:?the standalone buildkitd is needed}"
WORK=${PF_BENCH_DIR:-/tmp/pf-bench}
RUNS=${PF_BENCH_RUNS:-3}
PATHS=${PF_BENCH_PATHS:-direct kube-pod relay${PF_BENCH_BEFORE:+ before}}
BIN=${PF_BENCH_BIN:-$PWD/target/release/pf-buildkit}
RELAY=${PF_BENCH_RELAY:-$PWD/target/release/examples/portforward_relay}
KUBE=$PF_TEST_KUBE_DIR
SERVER=$(awk '$1 == "server:" { print $2; exit }' "$PF_TEST_KUBE_KUBECONFIG")
NS=pf-bench
POD=bench-0

log() { printf 'bench: %s\n' "$*" >&2; }

if [[ -z ${PF_BENCH_NO_BUILD:-} ]]; then
    cargo build --release --quiet --bin pf-buildkit --example portforward_relay
fi
if [[ ! -f $WORK/ctx.done ]]; then
    log "generating the context with scripts/bench-context.sh"
    PF_BENCH_CASES=cold PF_BENCH_RUNS=0 PF_BENCH_TOOLS=none PF_BENCH_NO_BUILD=1 PF_BENCH_DIR=$WORK \
        scripts/bench-context.sh >/dev/null
fi
CTX=$WORK/ctx
mkdir -p "$WORK/df"
printf 'FROM scratch\nCOPY . /\n' >"$WORK/df/Dockerfile"
CTX_MB=$(du -sm "$CTX" | cut -f1)

# The pod, in a namespace of its own (the fleet tests clear `buildkit`): on node-1, whose
# kubelet handler sends port 1234 to the standalone buildkitd.
api() { # method path [json]
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$KUBE/pki/ca.crt" \
        -H "Authorization: Bearer $(awk -F, '$2 == "pf-admin" { print $1 }' "$KUBE/tokens.csv")" \
        -H 'Content-Type: application/json' -X "$1" ${3:+--data-binary "$3"} "$SERVER$2")
    [[ $code == 2?? || $code == 409 ]] || { log "$1 $2 answered $code"; exit 1; }
}
api POST /api/v1/namespaces "{\"metadata\":{\"name\":\"$NS\"}}"
api POST /api/v1/namespaces/$NS/serviceaccounts '{"metadata":{"name":"default"}}'
api POST /api/v1/namespaces/$NS/pods "{\"metadata\":{\"name\":\"$POD\"},\"spec\":{\"nodeName\":\"node-1\",\"containers\":[{\"name\":\"buildkitd\",\"image\":\"moby/buildkit:v0.32.2\"}]}}"

# CPU seconds (user+sys) a process has used so far.
cpu_of() { # pid
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
# A daemon's pid as pf-testenv's supervisor recorded it (`processes`: NAME PID lines), or as
# an older scripts/testenv did (pids/NAME.pid).
pid_of() { # name
    local d=${PF_TESTENV_DIR:-/tmp/pf-buildkit-testenv} pid
    pid=$(awk -v n="$1" '$1 == n { print $2 }' "$d/processes" 2>/dev/null) || true
    [[ -n $pid ]] || pid=$(cat "$d/pids/$1.pid")
    echo "$pid"
}
KUBELET_PID=$(pid_of kubelet-portforward)
APISERVER_PID=$(pid_of kube-apiserver)

RELAY_PID=
stop_relay() { [[ -z $RELAY_PID ]] || kill "$RELAY_PID" 2>/dev/null || true; RELAY_PID=; }
trap stop_relay EXIT
start_relay() {
    rm -f "$WORK/relay.port"
    KUBECONFIG=$PF_TEST_KUBE_KUBECONFIG "$RELAY" "$NS" "$POD" 1234 >"$WORK/relay.port" 2>"$WORK/relay.log" &
    RELAY_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $WORK/relay.port ]] && return 0
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/relay.log" >&2
    log "the relay did not start"
    exit 1
}

# One cold run: prints "wall client_cpu rss_kb kubelet_cpu apiserver_cpu".
run() { # path
    local bin=$BIN addr out state k0 a0 r0=0 r1=0
    case $1 in
    direct) addr=$PF_TEST_BUILDKIT_ADDR ;;
    kube-pod) addr="kube-pod://$POD?namespace=$NS" ;;
    before) bin=$PF_BENCH_BEFORE addr="kube-pod://$POD?namespace=$NS" ;;
    relay) addr=tcp://127.0.0.1:$(<"$WORK/relay.port") r0=$(cpu_of "$RELAY_PID") ;;
    esac
    state=$(mktemp -d "$WORK/state.XXXX")
    out=$(mktemp)
    k0=$(cpu_of "$KUBELET_PID") a0=$(cpu_of "$APISERVER_PID")
    KUBECONFIG=$PF_TEST_KUBE_KUBECONFIG XDG_CACHE_HOME=$state /usr/bin/time -f '%e %U %S %M' -o "$out" \
        "$bin" --addr "$addr" build --context "$CTX" --file "$WORK/df/Dockerfile" --progress plain \
        --output "type=tar,dest=$WORK/out-pf.tar" >/dev/null 2>"$WORK/last.log" || {
        cat "$WORK/last.log" >&2
        exit 1
    }
    [[ $1 == relay ]] && r1=$(cpu_of "$RELAY_PID")
    read -r wall user sys rss <"$out"
    awk -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v r0="$r0" -v r1="$r1" \
        -v k0="$k0" -v k1="$(cpu_of "$KUBELET_PID")" -v a0="$a0" -v a1="$(cpu_of "$APISERVER_PID")" \
        'BEGIN { printf "%s %.2f %s %.2f %.2f\n", w, u + s + r1 - r0, r, k1 - k0, a1 - a0 }'
    rm -rf "$state" "$out"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "context: $(find "$CTX" -type f | wc -l) files, ${CTX_MB} MB; cold builds; runs: $RUNS (medians)"
echo "binary: $BIN${PF_BENCH_BEFORE:+; before: $PF_BENCH_BEFORE}"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
# Interleaved: each round runs every path once, so a change in the machine's load (other
# jobs) falls on all paths alike; the medians are taken per path over the rounds.
[[ " $PATHS " == *" relay "* ]] && start_relay
declare -A lines=()
for round in $(seq 1 "$RUNS"); do
    for path in $PATHS; do
        result=$(run "$path")
        log "round $round $path: $result (load $(cut -d' ' -f1 /proc/loadavg))"
        lines[$path]+="$result"$'\n'
    done
done
stop_relay
for path in $PATHS; do
    col() { printf '%s' "${lines[$path]}" | awk -v c="$1" 'NF { print $c }' | median; }
    cpu=$(col 2)
    printf '%-9s wall %6ss  client cpu %6ss (%s ms/MB)  rss %7s KiB  kubelet cpu %6ss  apiserver cpu %6ss\n' \
        "$path" "$(col 1)" "$cpu" "$(awk -v c="$cpu" -v m="$CTX_MB" 'BEGIN { printf "%.2f", c * 1000 / m }')" \
        "$(col 3)" "$(col 4)" "$(col 5)"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$WORK"/state.* "$WORK/out-pf.tar"
