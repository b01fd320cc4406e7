#!/usr/bin/env bash
# Benchmarks the client's content store (issue 9).
#
# 1. Cold build importing a cache: the daemon's cache pruned before every run, then the same
#    build importing a local cache directory (type=local, served over the session) beside the
#    same build importing a registry cache (type=registry, pulled by the daemon). The build's
#    RUN steps make three 16 MiB random layers, so each run must fetch 48 MiB of cached layers
#    (the tar output forces them to be materialised). Reports the median wall time and the
#    client's peak RSS of $RUNS runs.
# 2. Streaming into the store: one RUN step writes a 1 GiB layer, exported as an uncompressed
#    local cache (the 1 GiB blob crosses the session into the cache directory). Reports the
#    client's peak RSS (target: under 64 MiB) and the wall time.
#
# Usage: eval "$(scripts/testenv start)"; scripts/bench-content.sh
# Environment: PF_TEST_DOCKER_HOST, PF_TEST_REGISTRY, PF_TEST_BASE_IMAGE (from testenv);
# PF_BENCH_ADDR (the daemon; default PF_TEST_BUILDKIT_ADDR, the standalone buildkitd, else the
# test Engine), PF_BENCH_DIR (default /tmp/pf-bench-content), PF_BENCH_RUNS (default 3),
# PF_BENCH_BIN (default target/release/pf-buildkit, built if missing), PF_BENCH_BIG (0 skips
# the 1 GiB case).
# The daemon's build cache is pruned (`prune --all`): do not run it beside the test suite.
set -euo pipefail

cd "$(dirname "$0")/.."
: "${PF_TEST_DOCKER_HOST:?run eval \"\$(scripts/testenv start)\" first}"
: "${PF_TEST_REGISTRY:?run eval \"\$(scripts/testenv start)\" first}"
: "${PF_TEST_BASE_IMAGE:?run eval \"\$(scripts/testenv start)\" first}"
ADDR=${PF_BENCH_ADDR:-${PF_TEST_BUILDKIT_ADDR:-docker+unix://${PF_TEST_DOCKER_HOST#unix://}}}
WORK=${PF_BENCH_DIR:-/tmp/pf-bench-content}
RUNS=${PF_BENCH_RUNS:-3}
BIN=${PF_BENCH_BIN:-$PWD/target/release/pf-buildkit}

log() { printf 'bench: %s\n' "$*" >&2; }

if [[ ! -x $BIN ]]; then
    cargo build --release --quiet
fi
rm -rf "$WORK"
mkdir -p "$WORK/cold" "$WORK/big"
# RUN steps get no network on the Engine (no bridge): force none everywhere, for equal runs.
OPTS=(--opt force-network-mode=none)

cat >"$WORK/cold/Dockerfile" <<EOF
FROM $PF_TEST_BASE_IMAGE
RUN head -c 16777216 /dev/urandom > /a
RUN head -c 16777216 /dev/urandom > /b
RUN head -c 16777216 /dev/urandom > /c
EOF
cat >"$WORK/big/Dockerfile" <<EOF
FROM $PF_TEST_BASE_IMAGE
RUN head -c 1073741824 /dev/urandom > /big
EOF

# Runs the binary under GNU time; prints "SECONDS PEAK_RSS_KIB" on stdout.
measure() {
    local out=$WORK/time.txt
    if ! /usr/bin/time -f '%e %M' -o "$out" "$BIN" --addr "$ADDR" "$@" >/dev/null 2>"$WORK/stderr.txt"; then
        log "failed: $*"
        tail -5 "$WORK/stderr.txt" >&2
        exit 1
    fi
    cat "$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

CACHE_REF=$PF_TEST_REGISTRY/pf-bench/content-cache:$$
log "seeding both caches on $ADDR"
measure build --progress quiet "${OPTS[@]}" --context "$WORK/cold" \
    --export-cache "type=local,dest=$WORK/local-cache,mode=max" \
    --export-cache "type=registry,ref=$CACHE_REF,mode=max,registry.insecure=true" >/dev/null

declare -A SECS RSS
for kind in local registry; do
    : >"$WORK/$kind.secs"
    : >"$WORK/$kind.rss"
    for run in $(seq "$RUNS"); do
        "$BIN" --addr "$ADDR" prune --all >/dev/null
        case $kind in
        local) spec="type=local,src=$WORK/local-cache" ;;
        registry) spec="type=registry,ref=$CACHE_REF,registry.insecure=true" ;;
        esac
        read -r secs rss < <(measure build --progress rawjson "${OPTS[@]}" --context "$WORK/cold" \
            --import-cache "$spec" --output "type=tar,dest=$WORK/out.tar")
        grep -q '"cached":true' "$WORK/stderr.txt" || { log "$kind run $run: nothing came from the cache"; exit 1; }
        log "cold build, $kind cache, run $run: ${secs}s, client peak RSS ${rss} KiB"
        echo "$secs" >>"$WORK/$kind.secs"
        echo "$rss" >>"$WORK/$kind.rss"
    done
    SECS[$kind]=$(median <"$WORK/$kind.secs")
    RSS[$kind]=$(median <"$WORK/$kind.rss")
done

if [[ ${PF_BENCH_BIG:-1} != 0 ]]; then
    log "streaming a 1 GiB layer into a local cache"
    "$BIN" --addr "$ADDR" prune --all >/dev/null
    read -r big_secs big_rss < <(measure build --progress quiet "${OPTS[@]}" --context "$WORK/big" \
        --export-cache "type=local,dest=$WORK/big-cache,mode=max,compression=uncompressed")
    largest=$(find "$WORK/big-cache/blobs" -type f -printf '%s\n' | sort -n | tail -1)
fi

printf '\n%-44s %10s %16s\n' "case (daemon: $ADDR)" "median s" "client RSS MiB"
for kind in local registry; do
    printf '%-44s %10s %16.1f\n' "cold build importing a $kind cache" "${SECS[$kind]}" \
        "$(echo "${RSS[$kind]} / 1024" | bc -l)"
done
if [[ ${PF_BENCH_BIG:-1} != 0 ]]; then
    printf '%-44s %10s %16.1f\n' "1 GiB layer into a local cache (1 run)" "$big_secs" \
        "$(echo "$big_rss / 1024" | bc -l)"
    printf 'largest blob written: %s bytes\n' "$largest"
fi
"$BIN" --addr "$ADDR" prune --all >/dev/null
rm -rf "$WORK/big-cache" "$WORK/out.tar"
