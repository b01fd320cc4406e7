#!/usr/bin/env bash
# Benchmarks the production path of out-of-cluster builds: a cold build of bench-context.sh's
# `ctx` (20,004 files, about 350 MB; FROM scratch + COPY . /, exported as a tar) through the
# real kube-apiserver's port-forward to the standalone buildkitd, side by side with a
# kubectl-style port-forward and with direct TCP.
#
# Paths:
#   direct     pf-buildkit --addr tcp:// straight to the standalone buildkitd (no Kubernetes)
#   kube-pod   pf-buildkit --addr kube-pod://bench-0?namespace=pf-bench: a port-forward per
#              connection, opened by pf-buildkit itself (SPDY/3.1, which the API server passes
#              to the kubelet untouched; a v4 WebSocket where SPDY is refused)
#   kubectl    what a user does today: `kubectl port-forward pod/bench-0 :1234` (a real kubectl,
#              $PF_BENCH_KUBECTL, default the one on PATH; skipped with a line when there is
#              none) and pf-buildkit --addr tcp:// through it. kubectl 1.32 opens ONE WebSocket
#              to the API server offering `SPDY/3.1+portforward.k8s.io`: SPDY frames tunnelled
#              in WebSocket messages, every local connection a pair of SPDY streams (data,
#              error) on it. The API server unwraps the tunnel and speaks plain SPDY/3.1 to the
#              kubelet (`POST /portForward/...`, upgrade SPDY/3.1 in the kubelet's log).
#              kubectl refuses a pod that is not Running, so the pod's status is set Running.
#   relay      a kubectl stand-in for machines without kubectl: examples/portforward_relay.rs
#              listens on 127.0.0.1 and carries each connection over its own v4 WebSocket the
#              way client-go copies (each read of up to 32 KiB sent and flushed as one
#              message); pf-buildkit builds through it with --addr tcp://
#   before     kube-pod with the binary PF_BENCH_BEFORE (e.g. a build of an older commit)
# Every run is cold (a new session shared key: everything is sent). The paths take turns,
# round by round. Reports medians of $PF_BENCH_RUNS rounds: wall time, the client's peak RSS,
# the client's CPU (user+sys; for `kubectl` and `relay` the forwarder's CPU is added)
# and CPU per MB of context, and the CPU the kubelet's port-forward handler, the API server and
# buildkitd spent during the run (theirs include whatever else used them meanwhile: other
# tests on a shared test environment).
#
# Usage: eval "$(scripts/testenv start)"; scripts/bench-portforward.sh
# Environment: PF_TEST_KUBE_DIR, PF_TEST_KUBE_KUBECONFIG, PF_TEST_BUILDKIT_ADDR (from testenv),
# PF_BENCH_DIR (default /tmp/pf-bench), PF_BENCH_RUNS (default 3), PF_BENCH_PATHS (default
# "direct kube-pod kubectl relay", plus "before" when PF_BENCH_BEFORE is set; `kubectl` is
# dropped when there is no kubectl), PF_BENCH_KUBECTL (the kubectl), PF_BENCH_NO_BUILD (set:
# use the release builds as they are), PF_BENCH_BIN (the pf-buildkit binary to measure),
# PF_BENCH_RELAY (the relay binary), PF_BENCH_BEFORE (an older pf-buildkit, adds path `before`),
# PF_BENCH_LOAD (a number N: N busy loops run beside every round, in a session of their own as
# another job on a CI runner would be; default 0).
set -euo pipefail

cd "$(dirname "$0")/.."
: "${PF_TEST_KUBE_KUBECONFIG:?run eval \"\$(scripts/testenv start)\" first (with ../shared/kube present)}"
: "${PF_TEST_BUILDKIT_ADDR:?the standalone buildkitd is needed}"
WORK=${PF_BENCH_DIR:-/tmp/pf-bench}
RUNS=${PF_BENCH_RUNS:-3}
PATHS=${PF_BENCH_PATHS:-direct kube-pod kubectl relay${PF_BENCH_BEFORE:+ before}}
KUBECTL=${PF_BENCH_KUBECTL:-$(command -v kubectl || true)}
BIN=${PF_BENCH_BIN:-$PWD/target/release/pf-buildkit}
RELAY=${PF_BENCH_RELAY:-$PWD/target/release/examples/portforward_relay}
KUBE=$PF_TEST_KUBE_DIR
SERVER=$(awk '$1 == "server:" { print $2; exit }' "$PF_TEST_KUBE_KUBECONFIG")
NS=pf-bench
POD=bench-0

log() { printf 'bench: %s\n' "$*" >&2; }

if [[ " $PATHS " == *" kubectl "* && ! -x $KUBECTL ]]; then
    echo "kubectl: skipped (no kubectl on PATH; set PF_BENCH_KUBECTL to measure the real one)"
    PATHS=$(printf '%s\n' $PATHS | grep -vx kubectl | xargs)
fi

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
    local code type=application/json
    [[ $1 == PATCH ]] && type=application/merge-patch+json
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$KUBE/pki/ca.crt" \
        -H "Authorization: Bearer $(awk -F, '$2 == "pf-admin" { print $1 }' "$KUBE/tokens.csv")" \
        -H "Content-Type: $type" -X "$1" ${3:+--data-binary "$3"} "$SERVER$2")
    [[ $code == 2?? || $code == 409 ]] || { log "$1 $2 answered $code"; exit 1; }
}
api POST /api/v1/namespaces "{\"metadata\":{\"name\":\"$NS\"}}"
api POST /api/v1/namespaces/$NS/serviceaccounts '{"metadata":{"name":"default"}}'
api POST /api/v1/namespaces/$NS/pods "{\"metadata\":{\"name\":\"$POD\"},\"spec\":{\"nodeName\":\"node-1\",\"containers\":[{\"name\":\"buildkitd\",\"image\":\"moby/buildkit:v0.32.2\"}]}}"
# What the kubelet would report (there is none to run the pod): kubectl port-forward refuses
# a pod that is not Running.
api PATCH /api/v1/namespaces/$NS/pods/$POD/status \
    '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}'

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
BUILDKITD_PID=$(pid_of buildkitd)

# The forwarders (`relay`, `kubectl`) run for all rounds, as a user's would; their pids by path.
declare -A FWD_PID=() FWD_PORT=()
stop_forwarders() {
    local pid
    for pid in "${FWD_PID[@]}"; do kill "$pid" 2>/dev/null || true; done
    FWD_PID=()
}
LOAD_PIDS=()
stop_load() {
    local pid
    for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    LOAD_PIDS=()
}
trap 'stop_forwarders; stop_load' EXIT
start_forwarder() { # path
    local out=$WORK/$1.out i port
    rm -f "$out"
    case $1 in
    relay) KUBECONFIG=$PF_TEST_KUBE_KUBECONFIG "$RELAY" "$NS" "$POD" 1234 >"$out" 2>"$WORK/$1.log" & ;;
    kubectl) "$KUBECTL" --kubeconfig "$PF_TEST_KUBE_KUBECONFIG" -n "$NS" port-forward \
        --address 127.0.0.1 "pod/$POD" :1234 >"$out" 2>"$WORK/$1.log" & ;;
    esac
    FWD_PID[$1]=$!
    for ((i = 0; i < 100; i++)); do
        # The relay prints its port; kubectl "Forwarding from 127.0.0.1:PORT -> 1234".
        port=$(sed -nE '1{s/^Forwarding from 127\.0\.0\.1:([0-9]+) .*/\1/;/^[0-9]+$/p}' "$out" 2>/dev/null)
        if [[ -n $port ]]; then
            FWD_PORT[$1]=$port
            return 0
        fi
        kill -0 "${FWD_PID[$1]}" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/$1.log" >&2
    log "$1 did not start forwarding"
    exit 1
}

# One cold run: prints "wall client_cpu rss_kb kubelet_cpu apiserver_cpu buildkitd_cpu".
run() { # path
    local bin=$BIN addr out state k0 a0 b0 r0=0 r1=0
    case $1 in
    direct) addr=$PF_TEST_BUILDKIT_ADDR ;;
    kube-pod) addr="kube-pod://$POD?namespace=$NS" ;;
    before) bin=$PF_BENCH_BEFORE addr="kube-pod://$POD?namespace=$NS" ;;
    relay | kubectl) addr=tcp://127.0.0.1:${FWD_PORT[$1]} r0=$(cpu_of "${FWD_PID[$1]}") ;;
    esac
    state=$(mktemp -d "$WORK/state.XXXX")
    out=$(mktemp)
    # Nothing of the previous run's tar is left to be written back during this one.
    rm -f "$WORK/out-pf.tar"
    sync
    k0=$(cpu_of "$KUBELET_PID") a0=$(cpu_of "$APISERVER_PID") b0=$(cpu_of "$BUILDKITD_PID")
    KUBECONFIG=$PF_TEST_KUBE_KUBECONFIG XDG_CACHE_HOME=$state /usr/bin/time -f '%e %U %S %M' -o "$out" \
        "$bin" --addr "$addr" build --context "$CTX" --file "$WORK/df/Dockerfile" --progress plain \
        --output "type=tar,dest=$WORK/out-pf.tar" >/dev/null 2>"$WORK/last.log" || {
        cat "$WORK/last.log" >&2
        exit 1
    }
    [[ -n ${FWD_PID[$1]:-} ]] && r1=$(cpu_of "${FWD_PID[$1]}")
    read -r wall user sys rss <"$out"
    awk -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v r0="$r0" -v r1="$r1" \
        -v k0="$k0" -v k1="$(cpu_of "$KUBELET_PID")" -v a0="$a0" -v a1="$(cpu_of "$APISERVER_PID")" \
        -v b0="$b0" -v b1="$(cpu_of "$BUILDKITD_PID")" \
        'BEGIN { printf "%s %.2f %s %.2f %.2f %.2f\n", w, u + s + r1 - r0, r, k1 - k0, a1 - a0, b1 - b0 }'
    rm -rf "$state" "$out"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "context: $(find "$CTX" -type f | wc -l) files, ${CTX_MB} MB; cold builds; runs: $RUNS (medians)"
echo "binary: $BIN${PF_BENCH_BEFORE:+; before: $PF_BENCH_BEFORE}"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
# Interleaved: each round runs every path once, so a change in the machine's load (other
# jobs) falls on all paths alike; the medians are taken per path over the rounds.
for path in relay kubectl; do
    [[ " $PATHS " != *" $path "* ]] || start_forwarder "$path"
done
for ((i = 0; i < ${PF_BENCH_LOAD:-0}; i++)); do
    setsid sh -c 'while :; do :; done' &
    LOAD_PIDS+=($!)
done
[[ ${PF_BENCH_LOAD:-0} == 0 ]] || echo "load: ${PF_BENCH_LOAD} busy loops beside the builds"
# One unmeasured build first: the first build of the context also runs its COPY, and every
# later one (a new session, so the context is still sent whole) finds that step cached. Without
# it the first path measured would do more of the daemon's work than the others.
run direct >/dev/null
declare -A lines=()
for round in $(seq 1 "$RUNS"); do
    for path in $PATHS; do
        result=$(run "$path")
        log "round $round $path: $result (load $(cut -d' ' -f1 /proc/loadavg))"
        lines[$path]+="$result"$'\n'
    done
done
stop_forwarders
stop_load
for path in $PATHS; do
    col() { printf '%s' "${lines[$path]}" | awk -v c="$1" 'NF { print $c }' | median; }
    cpu=$(col 2)
    printf '%-9s wall %6ss  client cpu %6ss (%s ms/MB)  rss %7s KiB  kubelet cpu %6ss  apiserver cpu %6ss  buildkitd cpu %6ss\n' \
        "$path" "$(col 1)" "$cpu" "$(awk -v c="$cpu" -v m="$CTX_MB" 'BEGIN { printf "%.2f", c * 1000 / m }')" \
        "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)"
done
# Each round's wall time against the port-forward users have (kubectl's, else the stand-in's),
# pair by pair: the rounds ran side by side, so the ratio drifts less than the times do.
base=
for path in kubectl relay; do [[ " $PATHS " == *" $path "* ]] && { base=$path; break; }; done
if [[ -n $base ]]; then
    for path in $PATHS; do
        [[ $path == "$base" || $path == direct ]] && continue
        ratios=$(paste -d' ' <(printf '%s' "${lines[$path]}" | awk 'NF { print $1 }') \
            <(printf '%s' "${lines[$base]}" | awk 'NF { print $1 }') |
            awk '{ printf "%.2f\n", $1 / $2 }')
        printf '%s/%s wall, per round: %s; median %s\n' "$path" "$base" \
            "$(echo $ratios)" "$(printf '%s\n' $ratios | median)"
    done
fi
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$WORK"/state.* "$WORK/out-pf.tar"
